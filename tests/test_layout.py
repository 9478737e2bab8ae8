"""The project's layering, read from its source: no import circles in bcn, bcn_det and
bcn_seg (imports inside functions included: a deferred import is still a dependency), the
framework-free layer imports no adapter, the adapters reach the kernels only through bcn's
method layer, and the kernels' status module is a leaf."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bcn", "bcn_det", "bcn_seg")


def modules():
    """{module name: path} of every module of the three packages."""
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known) -> set:
    """The project modules ``name`` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # a name inside a module: the module
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def graph():
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def is_parent_package(a: str, b: str) -> bool:
    """Whether ``a`` is a package that contains ``b`` (importing b runs a's __init__ first,
    which is not a circle of the code's dependencies)."""
    return b.startswith(a + ".")


def test_no_import_circles():
    edges = {name: {t for t in targets if not is_parent_package(t, name)}
             for name, targets in graph().items()}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_layers_point_one_way():
    edges = graph()
    for name, targets in edges.items():
        if name.startswith("bcn.") or name == "bcn":
            assert not any(t.split(".")[0] in ("bcn_det", "bcn_seg") for t in targets), name
        if name.split(".")[0] in ("bcn_det", "bcn_seg"):
            reached = {t for t in targets if t.startswith("bcn.kernels.")}
            assert not reached, f"{name} reaches into the kernels: {reached}"
    assert not edges["bcn.kernels.status"], "bcn.kernels.status must stay a leaf"
    assert not {t for t in edges["bcn.kernels.arguments"] if t.startswith("bcn")}
