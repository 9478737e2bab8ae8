"""BCN's kernels behind one entry: ``batch_channel_norm`` and ``standardize_weight``.

Given the map, the parameters, the running state and what step 1 does (arguments.py), the entry
picks the implementation (dispatch.py: the C++ kernels on the CPU, Triton on CUDA, or the
reference composition), calls it eagerly or as the ``bcn::`` operator while dynamo records a
graph (ops.py), commits the running state an operator returns, and when a kernel fails runs
the reference instead (status.py keeps what failed and warns once).

    arguments.py        Params, RunningState, Step1: what a call hands over, by name
    dispatch.py         which implementation runs a call
    status.py           readiness, failures, the warning, which implementation served
    cpu.py, csrc/       the C++ CPU kernels: build and calls
    triton_kernels.py   the Triton kernels and their launchers
    triton_autograd.py  the Triton autograd node and its first-use check
    ops.py              the kernels as torch.library operators, for compiled and exported graphs
"""
import functools
from typing import Callable

import torch

from .. import functional as BF
from . import cpu, dispatch, status, sync
from .arguments import STEP1_KINDS, Params, RunningState, Step1
from .dispatch import IMPLS, requested
from .status import KernelUnavailableWarning, served_implementations

__all__ = ["batch_channel_norm", "standardize_weight", "Params", "RunningState", "Step1",
           "STEP1_KINDS", "IMPLS", "requested", "served_implementations", "KernelUnavailableWarning"]

SMALL_BATCH_VALUES = 8  # values per channel at or below which batch statistics run in float64


def batch_channel_norm(x: torch.Tensor, groups: int, params: Params, state: RunningState,
                       step1: Step1, eps: float, impl: str,
                       reference: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """BCN(x) for x of shape (N, C, H, W): step 1 as ``step1`` says, then step 2 over ``groups``
    with ``eps``; the running state updated in place where step 1 updates it.

    ``impl`` is the layer's request (dispatch.IMPLS); ``reference`` computes the same from the
    layer's own modules (the composition every kernel is tested against), for the calls no
    kernel serves.
    """
    chosen = dispatch.implementation(impl, x, step1, params.gn_weight.dtype)
    if chosen != "reference" and _few_batch_values(x, step1) and not torch.compiler.is_compiling() \
            and not (chosen == "triton" and _whole_layer_in_triton(x, groups, step1)):
        y = _in_float64(x, groups, params, state, step1, eps, chosen)
        if y is not None:
            status.record_served(chosen)
            return y
        chosen = "reference"
    if chosen == "triton":  # any float dtype as it comes, statistics float32 or wider
        y = _triton(x, groups, params, state, step1, eps)
        if y is not None:
            status.record_served("triton")
            return y
        chosen = "reference"
    status.record_served(chosen)
    if not torch.is_autocast_enabled(x.device.type):
        return _cpu(x, groups, params, state, step1, eps) if chosen == "cpu" else reference(x)
    # Statistics in float32 under mixed precision; the result goes back to the input dtype.
    with torch.autocast(x.device.type, enabled=False):
        wide = x.float()
        y = _cpu(wide, groups, params, state, step1, eps) if chosen == "cpu" else reference(wide)
    return y.to(x.dtype)


def standardize_weight(weight: torch.Tensor, eps: float = 1e-5, form: str = "eps_in_sqrt") -> torch.Tensor:
    """Weight standardization (Eq. 9), differentiable: the C++ kernel where it applies (the
    published form of a float32/float64 CPU weight), else bcn.functional.standardize_weight;
    same numerics (tests)."""
    if dispatch.standardize_weight_implementation(weight, form) == "cpu":
        if torch.compiler.is_compiling():  # the same kernel as an operator a graph can keep
            from . import ops

            return ops.standardize_weight_forward(weight, eps)[0]
        return cpu.extension().standardize_weight(weight, eps)  # an autograd node in C++
    return BF.standardize_weight(weight, eps, form)


def _cpu(x, groups: int, params: Params, state: RunningState, step1: Step1, eps: float):
    """Both steps in the C++ kernels, which update the running state as the reference does --
    BatchNorm's momentum and unbiased variance for "batch", Algorithm 1 for "estimate" --
    guarded against non-finite batches the same way."""
    inference = step1.kind == "fixed" and not _needs_grad(x, params)
    if torch.compiler.is_compiling():  # the same kernels as operators a graph can keep
        from . import ops

        if inference:
            return ops.cpu_inference(x, groups, *params, state.running_mean, state.running_var, eps)
        # the estimate rate stays a tensor: it changes every iteration, and a float would be a
        # constant of the graph
        rate = step1.rate if step1.kind == "estimate" else torch.full(
            (), step1.momentum if step1.kind == "batch" else 0.0, dtype=torch.float64)
        out = ops.cpu_train_forward(x, groups, *params, *state, step1.code, step1.update, rate, eps)
        y, _, new_state = ops.split(out, ops.CPU_SAVED)
        if step1.update:
            _commit(state, new_state)
        return y
    if inference:
        return cpu.inference(x, groups, params, state, eps)
    gather = sync.gather_for(step1)
    if gather is not None:
        return cpu.train_synchronized(x, groups, params, state, step1, eps, gather)
    return cpu.train(x, groups, params, state, step1, eps)


def _triton(x, groups: int, params: Params, state: RunningState, step1: Step1, eps: float):
    """Both steps in the Triton kernels, which update the running state as the reference does
    (guarded against non-finite batches), on the device, without synchronizing. None if they
    failed: the caller runs the reference (nothing was updated)."""
    scalars = _device_scalars(x.device, step1.eps, step1.momentum or 0.0, eps)
    if torch.compiler.is_compiling():  # the same kernels as an operator a graph can keep
        from . import ops

        rate = scalars if step1.rate is None else step1.rate
        out = ops.triton_forward(x, groups, *params, *state, step1.code, step1.update, rate, scalars)
        y, _, new_state = ops.split(out, ops.TRITON_SAVED)
        if step1.update:
            _commit(state, new_state)
        return y
    try:
        from . import triton_autograd

        return triton_autograd.batch_channel_norm(x, groups, params, state, step1, scalars)
    except Exception as error:
        if step1.synchronized and step1.kind == "batch":
            raise  # the other processes wait in the kernels' all-gather: no fallback alone
        status.triton_failed(x.device, x.dtype, "forward", status.describe(error))
        return None


def _in_float64(x, groups: int, params: Params, state: RunningState, step1: Step1, eps: float,
                chosen: str):
    """The kernels in float64, result in x's dtype, for batch statistics of a handful of values
    per channel (e.g. DeepLabV3's image-pooling branch, N x C x 1 x 1): there the gradient
    through the batch statistics nearly cancels (two values normalize to +-1 whatever they
    are), and the kernels' folded per-plane coefficients, rounded to float32, would leave an
    error larger than the gradient itself. The running state is updated as usual."""
    wide_state = state._replace(running_mean=state.running_mean.double(),
                                running_var=state.running_var.double())
    wide_params = Params(*(p.double() for p in params))
    if chosen == "triton":
        y = _triton(x.double(), groups, wide_params, wide_state, step1, eps)
    else:
        y = _cpu(x.double(), groups, wide_params, wide_state, step1, eps)
    if y is None:
        return None
    if step1.update:
        _commit(state[:2], wide_state[:2])
    return y.to(x.dtype)


def _few_batch_values(x: torch.Tensor, step1: Step1) -> bool:
    """Batch statistics over at most SMALL_BATCH_VALUES values per channel, of a map narrower
    than float64."""
    return (step1.kind == "batch" and x.dtype != torch.float64
            and x.numel() <= SMALL_BATCH_VALUES * x.shape[1])


def _whole_layer_in_triton(x: torch.Tensor, groups: int, step1: Step1) -> bool:
    """Whether one Triton program takes the whole layer (small 1x1 maps): its algebra is
    float64 throughout, so the map need not be widened."""
    from .triton_kernels import whole_layer_launch

    n, c, h, w = x.shape
    return whole_layer_launch(n, c, groups, h * w, sync.gather_for(step1) is not None) is not None


def _needs_grad(x: torch.Tensor, params: Params) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params))


def _commit(state, new_state) -> None:
    """Running state computed elsewhere (an operator's output, a float64 copy) into the
    layer's buffers."""
    with torch.no_grad():
        for buffer, value in zip(state, new_state):
            buffer.copy_(value)


@functools.lru_cache(maxsize=64)
def _device_scalars(device: torch.device, bn_eps: float, momentum: float, gn_eps: float) -> torch.Tensor:
    """(bn_eps, momentum, gn_eps) as a float64 tensor on the device, made once: a Python float
    passed to a Triton kernel would become float32, and a tensor made per call a copy."""
    return torch.tensor([bn_eps, momentum, gn_eps], dtype=torch.float64, device=device)
