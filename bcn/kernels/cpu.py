"""BCN's CPU kernels (csrc/cpu_kernels.cpp): the build, and the calls.

Both steps follow from the per-(sample, channel) moments m[n,c], v[n,c] of x (docs/method.md
derives it): BCN(x) = A[n,c] x + B[n,c]. Channel c's statistics involve only the planes (n, c)
and group g's only the channels of g, so the planes of one group, over all samples, are a
closed block forward and backward: the kernels run one task per group that reads its block,
solves its (N, C/G) coefficients in double and writes its output while the block is in cache --
the memory traffic of GroupNorm. Inference (step 1 fixed) runs one task per (sample, group).
Training forward and backward are one autograd node written in C++ (``train``): no Python
runs per call in backward, which detection heads' small maps would notice. Weight
standardization (Eq. 9, the published eps-in-sqrt form) has a kernel too, one task per block of
output channels at a copy's memory traffic.

The kernels are written once in C++ so that no per-shape compilation is ever needed (detection
inputs change size every image). The build is torch's own JIT extension build (a C++ compiler
and ninja; ~35 s once per CPU model and torch version, cached under $TORCH_EXTENSIONS_DIR,
default ~/.cache/torch_extensions). Where it cannot be built, ``extension()`` warns once and
returns None and BCN runs its reference path. ``BCN_KERNELS=0`` turns the kernels off.

The build targets the CPU it runs on (-march=native): the kernels' sums are vector code, and a
build for baseline x86-64 (SSE2) leaves most of a modern CPU's vector width unused. ATen's own
kernels pick their instruction set at run time; ours is compiled for one, so the cache name
includes the CPU's model and feature flags: a build is never loaded on a CPU it was not
compiled for (a shared home directory on a mixed cluster). Where the CPU can't be identified
(no /proc/cpuinfo) or -march=native does not build, the portable flags are used.
"""
import functools
import hashlib
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from . import sync
from .arguments import Params, RunningState, Step1
from .status import KernelUnavailableWarning

SOURCE = Path(__file__).with_name("csrc") / "cpu_kernels.cpp"
# OpenMP: torch's own intra-op threads (same libgomp soname). -fno-math-errno: std::sqrt may then
# be vectorized (errno is never read; a negative argument still gives NaN); bitwise-identical
# results.
CFLAGS = ["-O3", "-fopenmp", "-fno-math-errno"]
NATIVE_CFLAGS = CFLAGS + ["-march=native"]
DTYPES = (torch.float32, torch.float64)


@functools.lru_cache(maxsize=None)
def extension() -> Optional[object]:
    """The compiled module, or None (after one KernelUnavailableWarning) where it can't be."""
    if os.environ.get("BCN_KERNELS", "1") == "0":
        return None
    try:
        return _build()
    except Exception as error:  # no compiler, no ninja, a read-only cache...: run without
        warnings.warn(
            f"BCN's CPU kernels could not be built ({type(error).__name__}: {error}). BCN runs "
            "its reference path, with the same results but ~2.5x GroupNorm's time. A C++ "
            "compiler (g++) and ninja (pip install ninja) make the fast path available.",
            KernelUnavailableWarning, stacklevel=3)
        return None


def _build():
    # cpp_extension logs a CUDA_HOME warning at import on machines without CUDA; not ours.
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        logger.setLevel(level)
    _put_pip_ninja_on_path()
    cpu = cpu_fingerprint()
    attempts = [(NATIVE_CFLAGS, cpu)] if cpu else []
    attempts.append((CFLAGS, ""))
    for i, (flags, target) in enumerate(attempts):
        name = extension_name(flags, target)
        announce_build(_build_folder(cpp_extension, name), name)
        try:
            return cpp_extension.load(name=name, sources=[str(SOURCE)],
                                      extra_cflags=flags, extra_ldflags=["-fopenmp"], verbose=False)
        except Exception:
            if i == len(attempts) - 1:
                raise


def extension_name(flags, target_cpu: str) -> str:
    """The name pins source (its text and its path), flags, torch version, the Python
    environment and the target CPU: a cached build of another one is never loaded, and two
    checkouts or environments sharing one cache folder never rebuild each other's (torch
    rebuilds an extension whose sources or include paths differ from its last build)."""
    parts = list(flags) + [torch.__version__, target_cpu, str(SOURCE.resolve()), sys.prefix,
                           str(Path(torch.__file__).resolve().parent)]
    key = SOURCE.read_bytes() + "\0".join(parts).encode()
    return f"bcn_cpu_kernels_{hashlib.sha256(key).hexdigest()[:12]}"


def _build_folder(cpp_extension, name: str) -> str:
    try:
        return cpp_extension._get_build_directory(name, verbose=False)
    except Exception:  # a private helper of torch's; the folder is only for the message
        root = os.environ.get("TORCH_EXTENSIONS_DIR", "~/.cache/torch_extensions")
        return os.path.join(os.path.expanduser(root), name)


def announce_build(folder: str, name: str) -> Optional[str]:
    """One line on stderr before torch's extension build blocks silently: the first build
    (tens of seconds), or a wait for another process's build (torch's lock file). Returns it."""
    if os.path.exists(os.path.join(folder, "lock")):
        line = (f"BCN: waiting for another process to finish building BCN's CPU kernels in {folder} "
                "(if none is running, delete its 'lock' file)")
    elif not os.path.exists(os.path.join(folder, f"{name}.so")):
        line = (f"BCN: building BCN's CPU kernels in {folder} (once per environment, ~1 minute; "
                "TORCH_EXTENSIONS_DIR chooses the folder)")
    else:
        return None
    print(line, file=sys.stderr, flush=True)
    return line


def cpu_fingerprint() -> str:
    """The CPU's model and feature flags (what -march=native compiles for); "" where unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    first = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("vendor_id", "model name", "cpu family", "model", "flags", "Features", "CPU part"):
            first.setdefault(key, value.strip())
    return repr(sorted(first.items())) if first else ""


def _put_pip_ninja_on_path() -> None:
    """torch finds ninja on PATH; a venv's pip-installed ninja is there only when activated."""
    try:
        import ninja
    except ImportError:
        return
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def train(x: Tensor, groups: int, params: Params, state: RunningState, step1: Step1,
          eps: float) -> Tensor:
    """BCN with autograd (one C++ node). Step 1 "batch": the batch's statistics, differentiated
    through (Eq. 16); with ``update`` the running averages move at BatchNorm's momentum
    (unbiased variance). "estimate": the estimates moved at ``rate`` towards the batch first
    (Algorithm 1; constants to autograd), stored with ``update``. "fixed": the running state
    as it is. A batch whose new running state is not finite leaves it as it was and counts in
    skipped_updates."""
    return extension().train(x, groups, *params, *state, step1.code, step1.update,
                             host_rate(step1), eps)


def train_synchronized(x: Tensor, groups: int, params: Params, state: RunningState,
                       step1: Step1, eps: float, gather: "sync.RowGather") -> Tensor:
    """BCN with step 1's batch statistics over every process's batch (sync_batch=True): the
    planes' moments, one all-gather of per-channel rows, the training kernel with those
    statistics; backward likewise with BatchNorm's sums."""
    return SynchronizedBatchChannelNorm.apply(x, groups, *params, state, step1, eps, gather)


class SynchronizedBatchChannelNorm(torch.autograd.Function):
    """train_synchronized's autograd node: two passes over the map each way, as GroupNorm's,
    with the collective between them. The parameters' gradients are this process's own (as
    SyncBatchNorm's); the input's take every process's batch into account."""

    @staticmethod
    def forward(ctx, x, groups, bn_weight, bn_bias, gn_weight, gn_bias, state, step1, eps, gather):
        kernels = extension()
        x = x.contiguous()
        stats, planes = sync.merge_moment_rows(gather(sync.moment_rows(*kernels.plane_moments(x))))
        values = int(planes[0]) * x.shape[2] * x.shape[3]
        y, plane_mean, plane_var, mean, var = kernels.train_forward_given(
            x, groups, bn_weight, bn_bias, gn_weight, gn_bias, *state, step1.update, step1.momentum,
            eps, stats, values)
        ctx.save_for_backward(x, bn_weight, bn_bias, gn_weight, plane_mean, plane_var, mean, var)
        ctx.groups, ctx.eps, ctx.gather, ctx.values = groups, eps, gather, values
        return y

    @staticmethod
    def backward(ctx, dy):
        kernels = extension()
        saved = ctx.saved_tensors
        dy = dy.contiguous()
        local = kernels.train_backward_sums(dy, saved[0], ctx.groups, *saved[1:], ctx.eps)
        every = ctx.gather(local[None]).sum(0)
        dx, *param_grads = kernels.train_backward_given(dy, saved[0], ctx.groups, *saved[1:],
                                                        ctx.eps, every, float(ctx.values))
        return (dx, None, *param_grads, None, None, None, None)


def inference(x: Tensor, groups: int, params: Params, state: RunningState, eps: float) -> Tensor:
    """BCN with step 1 fixed to the running state, outside autograd (no gradient): one task per
    (sample, group), the group's moments and then its output while it is in cache, as
    GroupNorm runs."""
    return extension().inference_forward(x.contiguous(), groups, *params, state.running_mean,
                                         state.running_var, eps)


def host_rate(step1: Step1) -> float:
    """The rate the C++ kernels move the running state at: BatchNorm's momentum ("batch"), the
    estimate rate ("estimate", read from its tensor), none ("fixed")."""
    if step1.kind == "estimate":
        return float(step1.rate)
    return step1.momentum if step1.kind == "batch" else 0.0

