"""Build and install detectron2 v0.6 on a machine that cannot reach GitHub.

PyPI's ``pb1-detectron2==0.6`` is an sdist whose Python files are identical to detectron2's
official v0.6 tag, minus the C++ sources. As shipped it does not build; this script applies
the three changes it needs (no extensions, model-zoo configs packaged, a pure-Python ``_C``)
and installs it into the current interpreter. The download is pinned by sha256.

Users with internet and a compiler should prefer the official build from source
(README, "Detectron2"); the project works with both.
"""
import hashlib
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import urllib.request

SDIST_URL = (
    "https://files.pythonhosted.org/packages/60/26/"
    "48f5bbb7ee492696a21da23303daeecdfe3942c498a70d34108acf63b2bd/pb1-detectron2-0.6.tar.gz"
)
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
HERE = pathlib.Path(__file__).resolve().parent


def fetch(cache: pathlib.Path) -> pathlib.Path:
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / "pb1-detectron2-0.6.tar.gz"
    if not target.exists() or sha256(target) != SDIST_SHA256:
        tmp = target.with_suffix(".part")
        with urllib.request.urlopen(SDIST_URL, timeout=120) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
        tmp.rename(target)
    digest = sha256(target)
    if digest != SDIST_SHA256:
        target.unlink()
        sys.exit(f"detectron2 sdist sha256 mismatch: got {digest}, expected {SDIST_SHA256}")
    return target


def sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def patch(src: pathlib.Path) -> None:
    setup_py = src / "setup.py"
    text = setup_py.read_text()
    text, n = re.subn(r"ext_modules=get_extensions\(\)", "ext_modules=[]", text)
    if n != 1:
        sys.exit("setup.py of the detectron2 sdist changed: cannot disable its C++ extensions")
    setup_py.write_text(text)
    # setup.py packages the model-zoo YAML files from a top-level configs/ directory.
    zoo = src / "detectron2" / "model_zoo" / "configs"
    if zoo.is_dir() and not (src / "configs").exists():
        shutil.move(str(zoo), str(src / "configs"))
    shutil.copy(HERE / "detectron2_cpu_C.py", src / "detectron2" / "_C.py")


def main() -> None:
    """build_detectron2.py [CACHE] [--wheel-only DIR]: install it, or (tools/gpu_kit.py) only
    build its wheel into DIR."""
    args = sys.argv[1:]
    wheel_dir = None
    if "--wheel-only" in args:
        at = args.index("--wheel-only")
        wheel_dir, args = args[at + 1], args[:at] + args[at + 2:]
    cache = pathlib.Path(args[0] if args else ".cache/detectron2")
    sdist = fetch(cache)
    build = cache / "src"
    shutil.rmtree(build, ignore_errors=True)
    with tarfile.open(sdist) as tar:
        tar.extractall(build, filter="data")
    src = build / "pb1-detectron2-0.6"
    patch(src)
    if wheel_dir:
        subprocess.check_call([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps",
                               "-w", wheel_dir, str(src)])
        return
    subprocess.check_call(
        [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", str(src)]
    )


if __name__ == "__main__":
    main()
