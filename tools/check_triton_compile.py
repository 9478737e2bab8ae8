#!/usr/bin/env python
"""Compile BCN's Triton kernels for real GPUs on a machine without one, and check what a GPU
would get: every variant the launchers (bcn.kernels.triton_kernels.forward / backward) pick for a
matrix of shapes, dtypes, layouts, step-1 modes and affines, compiled by Triton's compiler and
ptxas for each target; registers, spills (ptxas stack frame), shared memory, warps, occupancy
and whether the map is read and written with vector (128-bit) accesses.

    python tools/check_triton_compile.py [--targets 80,86,89,90] [--quick] [--out docs/triton_compile.md]

Exit status 1 when a variant fails to compile or spills. Kernels are not run: the launchers
are driven on meta tensors with a launch that only records (kernel, arguments), and each
distinct specialization is compiled the way Triton's JIT would (its own binder and packing).
Must run without TRITON_INTERPRET=1 (the interpreter has nothing to compile).
"""
import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"
import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import MockTensor, create_function_from_signature  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bcn.kernels import triton_kernels as tk  # noqa: E402

SHAPES = [(2, 256, 200, 336), (2, 256, 100, 168), (1, 64, 400, 672), (1, 2048, 25, 42),
          (512, 256, 7, 7), (128, 256, 14, 14), (4, 512, 65, 65), (4, 2048, 33, 33), (4, 256, 1, 1)]
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# step 1 in the kernels: (its code, update the running state, backward)
STEPS = {"batch": (tk.BATCH, True, True), "estimate": (tk.ESTIMATE, True, True),
         "eval": (tk.FIXED, False, False), "fixed+grad": (tk.FIXED, False, True)}
# per SM: (max warps, max blocks, registers, shared memory bytes)
SM_LIMITS = {80: (64, 32, 65536, 167936), 86: (48, 16, 65536, 102400),
             89: (48, 24, 65536, 102400), 90: (64, 32, 65536, 233472)}
QUICK = dict(  # the suite's part: one shape per tile class
    shapes=[(2, 256, 100, 168), (512, 256, 7, 7), (4, 256, 1, 1)],
    dtypes=(torch.float32, torch.float16, torch.float64),
    steps=("batch", "fixed+grad"))
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


def recorded_launches(shape, dtype, channels_last, step, per_channel, groups=32):
    """[(kernel, args, kwargs)] that the launchers make for one layer call (forward, and
    backward when the step has one), on meta tensors: nothing runs."""
    launches = []

    def recorder(kernel):
        class Launch:
            def __getitem__(self, grid):
                return lambda *args, **kwargs: launches.append((kernel, grid, args, kwargs))
        return Launch()

    meta = dict(device="meta")
    n, c = shape[:2]
    x = torch.empty(shape, dtype=dtype, **meta)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    p = lambda *size: torch.empty(*size, dtype=wide, **meta)  # noqa: E731
    affine = (c,) if per_channel else (1, groups, 1)
    long = lambda: torch.empty((), dtype=torch.long, **meta)  # noqa: E731
    state = (p(c), p(c), long(), long())
    scalars = torch.empty(3, dtype=torch.float64, **meta)
    step1, update, backward = STEPS[step]
    real = tk._launcher
    tk._launcher = lambda traceable: recorder
    try:
        y, saved = tk.forward(x, groups, p(c), p(c), p(*affine), p(*affine), *state, step1, update,
                              p(()), scalars)
        if backward:
            tk.backward(torch.empty_like(y), groups, p(c), p(c), p(*affine), scalars, saved, step1)
    finally:
        tk._launcher = real
    return launches


def specialization(kernel, args, kwargs, backend):
    """(signature, constexprs, attrs, options) as Triton's JIT derives them for this call
    (tensors as aligned pointers, integers specialized on 1 and on divisibility by 16)."""
    args = [MockTensor(a.dtype) if isinstance(a, torch.Tensor) else a for a in args]
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, spec, options = binder(*args, **kwargs)
    return kernel._pack_args(backend, kwargs, bound, spec, options)


def resources(cubin: bytes):
    """{REG, STACK, SHARED, LOCAL} of a cubin, from cuobjdump --dump-resource-usage."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(BIN / "cuobjdump"), "--dump-resource-usage", f.name],
                             capture_output=True, text=True, check=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    return dict(zip(("regs", "stack", "shared", "local"), map(int, found.groups())))


def occupancy(arch, regs, warps, shared):
    """Resident warps per SM / the SM's maximum (registers allocated per warp in 256s)."""
    max_warps, max_blocks, reg_file, smem = SM_LIMITS[arch]
    per_warp = -(-max(regs, 1) * 32 // 256) * 256
    blocks = min(max_blocks, max_warps // warps, reg_file // (per_warp * warps),
                 smem // shared if shared else max_blocks)
    return blocks * warps / max_warps


def vector_width(ptx: str) -> int:
    """The widest global load or store in the PTX (1 = scalar only)."""
    widths = [int(w) for w in re.findall(r"(?:ld|st)\.global(?:\.\w+)*?\.v(\d)", ptx)]
    return max(widths, default=1)


def check(shapes, dtypes, layouts, steps, affines, targets, log=print):
    """Rows, one per (target, distinct compiled variant), with the cases that select it."""
    variants = {}
    for shape in shapes:
        for dtype in dtypes:
            for channels_last in layouts:
                for step in steps:
                    for per_channel in affines:
                        case = (f"{tuple(shape)} {str(dtype)[6:]} {'cl' if channels_last else 'nchw'} "
                                f"{step} {'channel' if per_channel else 'group'}")
                        for kernel, grid, args, kwargs in recorded_launches(
                                shape, dtype, channels_last, step, per_channel):
                            key = (kernel, repr_key(kernel, args, kwargs))
                            variants.setdefault(key, [kernel, args, kwargs, [], 0])
                            entry = variants[key]
                            entry[3].append(case)
                            entry[4] = max(entry[4], math.prod(grid))
    rows = []
    for arch in targets:
        target = GPUTarget("cuda", arch, 32)
        backend = make_backend(target)
        for kernel, args, kwargs, cases, programs in variants.values():
            row = dict(arch=arch, kernel=kernel.__name__, cases=cases, programs=programs,
                       constexprs={k: v for k, v in kwargs.items() if k in constexpr_names(kernel)},
                       warps=kwargs.get("num_warps", 4))
            start = time.time()
            try:
                options, signature, constexprs, attrs = specialization(kernel, args, kwargs, backend)
                compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs),
                                          target=target, options=options.__dict__)
                row.update(resources(compiled.asm["cubin"]), error="",
                           vector=vector_width(compiled.asm["ptx"]))
                row["occupancy"] = occupancy(arch, row["regs"], row["warps"], compiled.metadata.shared)
                row["shared"] = compiled.metadata.shared
            except Exception as error:  # a failing variant is a row
                row.update(error=f"{type(error).__name__}: {str(error).strip().splitlines()[-1][:200]}")
            row["seconds"] = time.time() - start
            rows.append(row)
            log(format_row(row))
    return rows


def constexpr_names(kernel):
    return {p.name for p in kernel.params if p.is_constexpr}


def repr_key(kernel, args, kwargs):
    """What makes two launches the same compiled variant: tensor dtypes, integers' Triton
    specialization class (runtime arguments passed by name too), the constexprs and options."""
    def one(a):
        if isinstance(a, torch.Tensor):
            return str(a.dtype)
        if isinstance(a, bool) or not isinstance(a, int):
            return repr(a)
        return "1" if a == 1 else ("16k" if a % 16 == 0 else "i")
    named = constexpr_names(kernel) | {"num_warps", "num_stages"}
    return tuple(map(one, args)), tuple(sorted((k, repr(v) if k in named else one(v))
                                               for k, v in kwargs.items()))


def format_row(row):
    tiles = " ".join(f"{k}={v}" for k, v in row["constexprs"].items() if k.startswith("BLOCK"))
    flags = " ".join(f"{k}={v}" for k, v in row["constexprs"].items()
                     if not k.startswith("BLOCK") and k != "COMPUTE")
    if row["error"]:
        return f"| sm_{row['arch']} | {row['kernel']} | {tiles} {flags} | - | - | - | {row['warps']} | - | - | {row['programs']} | FAILED: {row['error']} |"
    return (f"| sm_{row['arch']} | {row['kernel']} | {tiles} {flags} | {row['regs']} | {row['stack']} | "
            f"{row['shared']} | {row['warps']} | {row['occupancy']:.0%} | v{row['vector']} | "
            f"{row['programs']} | {row['cases'][0]}{' (+%d)' % (len(row['cases']) - 1) if len(row['cases']) > 1 else ''} |")


HEADER = ("| target | kernel | variant | registers | spill stack (B) | shared (B) | warps | occupancy "
          "| widest access | programs (max) | first case (+ more) |\n|---|---|---|---|---|---|---|---|---|---|---|")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="80,86,89,90", help="compute capabilities")
    parser.add_argument("--quick", action="store_true", help="the suite's reduced matrix")
    parser.add_argument("--out", help="also write the table (Markdown) here")
    args = parser.parse_args(argv)
    matrix = QUICK if args.quick else dict(shapes=SHAPES, dtypes=DTYPES, steps=tuple(STEPS))
    targets = [int(t) for t in args.targets.split(",")]
    print(HEADER)
    rows = check(matrix["shapes"], matrix["dtypes"], (False, True), matrix["steps"], (False, True),
                 targets)
    failed = [r for r in rows if r["error"]]
    spilled = [r for r in rows if not r["error"] and (r["stack"] or r["local"])]
    summary = (f"{len(rows)} compiled variants on sm_{', sm_'.join(map(str, targets))} "
               f"(triton {triton.__version__}): {len(failed)} failed, {len(spilled)} spilled")
    print(summary)
    if args.out:
        Path(args.out).write_text(f"{summary}\n\n{HEADER}\n" + "\n".join(map(format_row, rows)) + "\n")
    return 1 if failed or spilled else 0


if __name__ == "__main__":
    sys.exit(main())
