"""Which implementation runs a BCN call. The whole decision is ``implementation`` below.

``impl`` (BatchChannelNorm2d's argument, ``MODEL.BCN.IMPL``, ``norm_cfg=dict(impl=...)``) is
what a user may ask for, fixed at construction:

    "auto"       (default) the C++ kernels on the CPU, Triton on CUDA, the reference elsewhere
    "cpu"        the C++ CPU kernels (bcn/csrc, bcn.cpu_norm) where they apply, else the reference
    "triton"     the Triton kernels (bcn.triton_kernels) where they apply -- on CUDA, and on
                 CPU tensors under TRITON_INTERPRET=1 (how the tests run them) -- else reference
    "reference"  the composition: the batch part's own forward, then F.group_norm and the
                 group affine (bcn.functional); every other path is tested against it

Per call, the first row that matches decides (dtype: under CPU autocast, float32, since the
statistics are taken in float32 and the CPU path converts the map):

    | condition                                                        | runs      |
    |------------------------------------------------------------------|-----------|
    | torch.jit.trace / ONNX export records a graph: a kernel call is  | reference |
    |   opaque to it                                                   |           |
    | impl "reference"; or the batch part is SyncBatchNorm, or         | reference |
    |   BatchNorm with momentum=None (cumulative averages)             |           |
    | CPU tensor, impl "auto"/"cpu", float32/float64, the parameters   | cpu       |
    |   in the map's dtype, the C++ kernels built                      |           |
    | CUDA tensor with impl "auto"/"triton", or a CPU tensor with      | triton    |
    |   impl "triton" under TRITON_INTERPRET=1; float32/float16/       |           |
    |   bfloat16/float64; Triton importable; the first-use check on    |           |
    |   this (device, dtype) passed                                    |           |
    | otherwise                                                        | reference |

While torch.compile or torch.export records a graph (dynamo), "cpu" and "triton" run as the
operators of bcn.ops, which the graph keeps: the same kernels as in eager mode. Whether the
kernels are ready is looked up in a dict that eager calls fill; a compiled first call finds it
out once outside the graph.

On the Triton path the map keeps its dtype under autocast (no float32 copy); the statistics
are float32 or wider. Eval, and a batch part that a framework's ``norm_eval`` put in eval,
take step 1 from the running state ("fixed"), with gradients when autograd asks for them.
The frozen variant follows the same table with the statistics fixed. Weight standardization
runs the C++ kernel on the CPU and the reference elsewhere (bcn.conv.standardize_weight): a layer's
weights are small next to its activations.

First use of Triton per (device, dtype) runs ``bcn.triton_norm.self_check``; a compile or
launch error, or a mismatch, then or later, warns once (``KernelUnavailableWarning``) and the
layers run the reference path on that device and dtype from then on.
"""
import collections
import contextlib
import os
import warnings

import torch

from . import cpu_kernels

IMPLS = ("auto", "cpu", "triton", "reference")
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_triton_status = {}  # (device, dtype) -> True / False, after the first-use check
_cpu_status = {}     # "cpu" -> whether the C++ kernels are built


_counters = []  # the Counters of the open served_implementations() contexts


@contextlib.contextmanager
def served_implementations():
    """Counts, per implementation, the BCN layer calls (eager) that it served while the
    context is open -- after any fallback, so "triton" means the Triton kernels ran:

        with bcn.dispatch.served_implementations() as served:
            model(x)
        assert served["triton"] and not served["reference"]
    """
    served = collections.Counter()
    _counters.append(served)
    try:
        yield served
    finally:
        _counters.remove(served)


def record_served(impl: str) -> None:
    """Called by the layers with the implementation that ran a call (cheap when no context is
    open; nothing while dynamo traces a graph)."""
    if _counters and not torch.compiler.is_compiling():
        for served in _counters:
            served[impl] += 1


def requested(impl: str) -> str:
    """The user's ``impl``, validated."""
    if impl not in IMPLS:
        raise ValueError(f"unknown BCN impl {impl!r}; choose one of {IMPLS}")
    return impl


def implementation(impl: str, x: torch.Tensor, batch_part: torch.nn.Module,
                   param_dtype: torch.dtype) -> str:
    """"cpu", "triton" or "reference" for this call (the module docstring's table)."""
    if torch.jit.is_tracing() or impl == "reference":
        return "reference"
    if isinstance(batch_part, torch.nn.SyncBatchNorm) or getattr(batch_part, "momentum", 0.1) is None:
        return "reference"
    device = x.device.type
    dtype = torch.float32 if device == "cpu" and torch.is_autocast_enabled("cpu") else x.dtype
    if device == "cpu" and impl in ("auto", "cpu"):
        if dtype in cpu_kernels.DTYPES and param_dtype == dtype and cpu_kernels_ready():
            return "cpu"
        return "reference"
    if (impl == "triton" or (impl == "auto" and device == "cuda")) and dtype in _TRITON_DTYPES:
        if triton_ready(x.device, x.dtype):
            return "triton"
    return "reference"


def cpu_kernels_ready() -> bool:
    """Whether the C++ kernels are built (built on first use)."""
    if "cpu" in _cpu_status:
        return _cpu_status["cpu"]
    return _outside_graph(_probe_cpu_kernels)


def _outside_graph(probe, *args):
    """Run a probe (a build, a check) as it is; while dynamo records a graph, outside it -- a
    graph break, once: later calls find the result in the status dicts."""
    if torch.compiler.is_compiling():
        return torch.compiler.disable(probe)(*args)
    return probe(*args)


def _probe_cpu_kernels() -> bool:
    _cpu_status["cpu"] = cpu_kernels.extension() is not None
    return _cpu_status["cpu"]


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_ready(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether Triton runs here -- on CUDA, or on CPU tensors in its interpreter; importable,
    and its first-use check on (device, dtype) passed."""
    key = (str(device), dtype)
    if key in _triton_status:
        return _triton_status[key]
    return _outside_graph(_probe_triton, device, dtype)


def _probe_triton(device: torch.device, dtype: torch.dtype) -> bool:
    key = (str(device), dtype)
    if device.type != "cuda" and not (device.type == "cpu" and triton_interpreted()):
        _triton_status[key] = False  # no device Triton runs on
    else:
        try:
            from . import triton_norm

            problem = triton_norm.self_check(device, dtype)
        except Exception as error:  # no triton, no compiler for the device, a launch failure...
            problem = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300] if str(error).strip() else ''}"
        _triton_status[key] = not problem
        if problem:
            _warn(device, dtype, "its first-use check", problem)
    return _triton_status[key]


def triton_failed(device: torch.device, dtype: torch.dtype, where: str, error: Exception) -> None:
    """A Triton call failed after the check (a tile variant that does not compile, say): warn
    once, and the reference path runs on (device, dtype) from now on."""
    key = (str(device), dtype)
    if _triton_status.get(key, True):
        _warn(device, dtype, where, f"{type(error).__name__}: {str(error).strip()[:300]}")
    _triton_status[key] = False


def _warn(device, dtype, where, problem) -> None:
    warnings.warn(
        f"BCN's Triton kernels failed {where} on {device} {dtype} ({problem}). BCN runs its "
        "reference path there from now on: same results, slower. Please report it on this "
        "project's issue tracker with the report `python tools/gpu_check.py` writes.",
        cpu_kernels.KernelUnavailableWarning, stacklevel=4)
