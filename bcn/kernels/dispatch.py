"""Which implementation runs a BCN call: ``implementation`` below, the whole decision.

``impl`` (BatchChannelNorm2d's argument, ``MODEL.BCN.IMPL``, ``norm_cfg=dict(impl=...)``) is
what a user may ask for, fixed at construction:

    "auto"       (default) the C++ kernels on the CPU, Triton on CUDA, the reference elsewhere
    "cpu"        the C++ CPU kernels (bcn.kernels.cpu) where they apply, else the reference
    "triton"     the Triton kernels (bcn.kernels.triton_kernels) where they apply -- on CUDA, and on
                 CPU tensors under TRITON_INTERPRET=1 (how the tests run them) -- else reference
    "reference"  the composition: the batch part's own forward, then F.group_norm and the
                 group affine (bcn.functional); every other path is tested against it

Per call, the first row that matches decides (dtype: under CPU autocast, float32, since the
statistics are taken in float32 and the CPU path converts the map):

    | condition                                                        | runs      |
    |------------------------------------------------------------------|-----------|
    | torch.jit.trace / ONNX export records a graph (a kernel call is  | reference |
    |   opaque to it), or the batch is empty                           |           |
    | impl "reference"; or step 1 moves its running statistics by a    | reference |
    |   cumulative average (BatchNorm's momentum=None); or it takes    |           |
    |   batch statistics synchronized across processes (sync_batch)   |           |
    |   while dynamo records a graph                                   |           |
    | CPU tensor, impl "auto"/"cpu", float32/float64, the parameters   | cpu       |
    |   in the map's dtype, the C++ kernels built                      |           |
    | CUDA tensor with impl "auto"/"triton", or a CPU tensor with      | triton    |
    |   impl "triton" under TRITON_INTERPRET=1; float32/float16/       |           |
    |   bfloat16/float64; Triton importable; the first-use check on    |           |
    |   this (device, dtype) passed                                    |           |
    | otherwise                                                        | reference |

While torch.compile or torch.export records a graph (dynamo), "cpu" and "triton" run as the
operators of bcn.kernels.ops, which the graph keeps: the same kernels as in eager mode. Whether the
kernels are ready is looked up in a dict that eager calls fill; a compiled first call finds it
out once outside the graph.

On the Triton path the map keeps its dtype under autocast (no float32 copy); the statistics
are float32 or wider. Eval, and a batch part that a framework's ``norm_eval`` put in eval,
take step 1 from the running state ("fixed"), with gradients when autograd asks for them.
The frozen variant follows the same table with the statistics fixed. Weight standardization
runs the C++ kernel on the CPU and the reference elsewhere (``standardize_weight_implementation``):
a layer's weights are small next to its activations.

First use of Triton per (device, dtype) runs ``bcn.kernels.triton_autograd.self_check``; a compile or
launch error, or a mismatch, then or later, warns once (``KernelUnavailableWarning``) and the
layers run the reference path on that device and dtype from then on.
"""
import os

import torch

from . import status
from .arguments import Step1

IMPLS = ("auto", "cpu", "triton", "reference")
CPU_DTYPES = (torch.float32, torch.float64)
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def requested(impl: str) -> str:
    """The user's ``impl``, validated."""
    if impl not in IMPLS:
        raise ValueError(f"unknown BCN impl {impl!r}; choose one of {IMPLS}")
    return impl


def implementation(impl: str, x: torch.Tensor, step1: Step1, param_dtype: torch.dtype) -> str:
    """"cpu", "triton" or "reference" for this call (the module docstring's table)."""
    if impl == "reference" or torch.jit.is_tracing() or x.shape[0] == 0:
        return "reference"
    if step1.kind == "batch":
        if step1.momentum is None:
            return "reference"
        if step1.synchronized and torch.compiler.is_compiling():
            return "reference"
    device = x.device
    if device.type == "cpu" and impl != "triton":
        dtype = torch.float32 if torch.is_autocast_enabled("cpu") else x.dtype
        return "cpu" if dtype in CPU_DTYPES and param_dtype == dtype and cpu_ready() else "reference"
    if (impl == "triton" or (impl == "auto" and device.type == "cuda")) and x.dtype in TRITON_DTYPES:
        if triton_ready(device, x.dtype):
            return "triton"
    return "reference"


def standardize_weight_implementation(weight: torch.Tensor, form: str) -> str:
    """"cpu" for the published form of a float32/float64 CPU weight with more than one value per
    output channel (not while torch.jit.trace records: a kernel call is opaque to it), else
    "reference"."""
    if (form == "eps_in_sqrt" and weight.numel() > weight.shape[0] and not torch.jit.is_tracing()
            and weight.device.type == "cpu" and weight.dtype in CPU_DTYPES and cpu_ready()):
        return "cpu"
    return "reference"


def cpu_ready() -> bool:
    """Whether the C++ kernels are built (built on first use)."""
    if "cpu" in status.cpu_built:
        return status.cpu_built["cpu"]
    return status.outside_graph(_probe_cpu)


def _probe_cpu() -> bool:
    from . import cpu

    status.cpu_built["cpu"] = cpu.extension() is not None
    return status.cpu_built["cpu"]


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_ready(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether Triton runs here -- on CUDA, or on CPU tensors in its interpreter; importable,
    and its first-use check on (device, dtype) passed."""
    key = (str(device), dtype)
    if key in status.triton_ok:
        return status.triton_ok[key]
    return status.outside_graph(_probe_triton, device, dtype)


def _probe_triton(device: torch.device, dtype: torch.dtype) -> bool:
    key = (str(device), dtype)
    if device.type != "cuda" and not (device.type == "cpu" and triton_interpreted()):
        status.triton_ok[key] = False  # no device Triton runs on
        return False
    try:
        from . import triton_autograd

        problem = triton_autograd.self_check(device, dtype)
    except Exception as error:  # no triton, no compiler for the device, a launch failure...
        problem = status.describe(error)
    if problem:
        status.triton_failed(device, dtype, "its first-use check", problem)
    else:
        status.triton_ok[key] = True
    return status.triton_ok[key]
