"""BCN's kernels as PyTorch operators (``torch.library``, namespace ``bcn``), for graphs.

torch.compile and torch.export cannot see inside a call into the C++ extension or a Triton
launcher; as operators, with a fake implementation (the output shapes) and their autograd
formula registered, the kernels stay in a compiled or exported graph -- with the numerics of
eager mode, since the same kernels run. The training operators are functional (an autograd
formula needs that): they take the running state (mean, var, batches tracked, skipped updates)
and return its new values, which the layer copies into its buffers -- so the estimate update
and the non-finite guard keep working in a compiled graph. Rates arrive as tensors: a Python
float would be a constant of the graph and recompile it whenever the learning rate moves.

Eager calls do not go through here (bcn.norm calls the kernels directly: an operator call
costs microseconds that small maps notice); bcn.dispatch picks these while a graph is being
recorded by dynamo (torch.compile, torch.export).

    bcn::cpu_train_forward / bcn::cpu_train_backward   the C++ training kernels
    bcn::cpu_inference                                  the C++ eval kernel (no autograd)
    bcn::standardize_weight_forward / _backward         weight standardization (C++)
    bcn::triton_forward / bcn::triton_backward          the Triton kernels, every mode
                                                        (triton_ops: inductor sees the launches)
"""
from typing import List, Tuple

import torch
from torch import Tensor

from .dispatch import triton_interpreted
from .cpu_kernels import extension



def _fresh(*state):
    """Copies the kernels update in place, so that the operators stay functional."""
    return [t.clone() for t in state]


# --- C++ CPU kernels ------------------------------------------------------------------------

@torch.library.custom_op("bcn::cpu_train_forward", mutates_args=())
def cpu_train_forward(x: Tensor, estimate: bool, running_mean: Tensor, running_var: Tensor,
                      tracked: Tensor, skipped: Tensor, rate: Tensor, update: bool,
                      bn_weight: Tensor, bn_bias: Tensor, gamma: Tensor, beta: Tensor,
                      groups: int, eps: float) -> List[Tensor]:
    """[y, plane mean, plane var, step-1 mean, step-1 var, then the new running mean, var,
    batches tracked, skipped updates]: bcn.cpu_norm's training forward."""
    state = _fresh(running_mean, running_var, tracked, skipped)
    out = extension().train_forward(x.contiguous(), estimate, *state, float(rate), update,
                                    bn_weight, bn_bias, gamma, beta, groups, eps)
    return list(out) + state


@cpu_train_forward.register_fake
def _(x, estimate, running_mean, running_var, tracked, skipped, rate, update, bn_weight, bn_bias,
      gamma, beta, groups, eps):
    n, c = x.shape[:2]
    return [torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(n, c),
            x.new_empty(n, c), x.new_empty(c), x.new_empty(c)] + [
            torch.empty_like(t) for t in (running_mean, running_var, tracked, skipped)]


@torch.library.custom_op("bcn::cpu_train_backward", mutates_args=())
def cpu_train_backward(grad: Tensor, x: Tensor, plane_mean: Tensor, plane_var: Tensor,
                       estimate: bool, mean: Tensor, var: Tensor, bn_weight: Tensor,
                       bn_bias: Tensor, gamma: Tensor, groups: int,
                       eps: float) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx, d bn_weight, d bn_bias, d gamma, d beta)."""
    return extension().train_backward(grad.contiguous(), x.contiguous(), plane_mean, plane_var,
                                      estimate, mean, var, bn_weight, bn_bias, gamma, groups, eps)


@cpu_train_backward.register_fake
def _(grad, x, plane_mean, plane_var, estimate, mean, var, bn_weight, bn_bias, gamma, groups, eps):
    return (torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(bn_weight),
            torch.empty_like(bn_bias), torch.empty_like(gamma), torch.empty_like(gamma))


def _cpu_setup(ctx, inputs, output):
    x, estimate, *_ = inputs
    bn_weight, bn_bias, gamma, groups, eps = inputs[8], inputs[9], inputs[10], inputs[12], inputs[13]
    _, plane_mean, plane_var, mean, var = output[:5]
    ctx.save_for_backward(x, plane_mean, plane_var, mean, var, bn_weight, bn_bias, gamma)
    ctx.estimate, ctx.groups, ctx.eps = estimate, groups, eps


def _cpu_backward(ctx, grads):
    x, plane_mean, plane_var, mean, var, bn_weight, bn_bias, gamma = ctx.saved_tensors
    dx, dbw, dbb, dgamma, dbeta = cpu_train_backward(grads[0], x, plane_mean, plane_var, ctx.estimate,
                                                     mean, var, bn_weight, bn_bias, gamma,
                                                     ctx.groups, ctx.eps)
    return (dx, None, None, None, None, None, None, None, dbw, dbb, dgamma, dbeta, None, None)


cpu_train_forward.register_autograd(_cpu_backward, setup_context=_cpu_setup)


@torch.library.custom_op("bcn::cpu_inference", mutates_args=())
def cpu_inference(x: Tensor, mean: Tensor, var: Tensor, bn_weight: Tensor, bn_bias: Tensor,
                  gamma: Tensor, beta: Tensor, groups: int, eps: float) -> Tensor:
    """BCN with step 1 fixed to (mean, var), no autograd: the eval kernel."""
    return extension().inference_forward(x.contiguous(), mean, var, bn_weight, bn_bias, gamma,
                                         beta, groups, eps)


@cpu_inference.register_fake
def _(x, mean, var, bn_weight, bn_bias, gamma, beta, groups, eps):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("bcn::standardize_weight_forward", mutates_args=())
def standardize_weight_forward(weight: Tensor, eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    """(standardized weight, row mean, row scale), the published form."""
    return extension().standardize_weight_forward(weight.contiguous(), eps)


@standardize_weight_forward.register_fake
def _(weight, eps):
    rows = weight.shape[0]
    return (torch.empty_like(weight, memory_format=torch.contiguous_format),
            weight.new_empty(rows, dtype=torch.float64), weight.new_empty(rows, dtype=torch.float64))


@torch.library.custom_op("bcn::standardize_weight_backward", mutates_args=())
def standardize_weight_backward(grad: Tensor, weight: Tensor, row_mean: Tensor, row_scale: Tensor) -> Tensor:
    return extension().standardize_weight_backward(grad.contiguous(), weight.contiguous(), row_mean, row_scale)


@standardize_weight_backward.register_fake
def _(grad, weight, row_mean, row_scale):
    return torch.empty_like(weight, memory_format=torch.contiguous_format)


def _standardize_weight_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], output[1], output[2])


def _standardize_weight_backward(ctx, grad_z, *unused):
    weight, row_mean, row_scale = ctx.saved_tensors
    return standardize_weight_backward(grad_z, weight, row_mean, row_scale), None


standardize_weight_forward.register_autograd(_standardize_weight_backward, setup_context=_standardize_weight_setup)


def standardize_weight(weight: Tensor, eps: float) -> Tensor:
    return standardize_weight_forward(weight, eps)[0]


# --- Triton kernels -------------------------------------------------------------------------
# With compiled Triton these are triton_ops: their body (bcn.triton_kernels' launchers, each
# launch through wrap_triton) is their fake implementation, and under torch.compile inductor
# sees the kernel launches themselves. Triton's interpreter (TRITON_INTERPRET=1, the CPU test
# runs) runs kernels on real data only, so there they are custom_ops around the same launchers
# with fake implementations of their own.

_TRACEABLE = not triton_interpreted()
_triton_operator = torch.library.triton_op if _TRACEABLE else torch.library.custom_op


@_triton_operator("bcn::triton_forward", mutates_args=())
def triton_forward(x: Tensor, bn_weight: Tensor, bn_bias: Tensor, gamma: Tensor, beta: Tensor,
                   groups: int, mode: int, update: bool, running_mean: Tensor, running_var: Tensor,
                   tracked: Tensor, skipped: Tensor, rate: Tensor, scalars: Tensor) -> List[Tensor]:
    """[y, the nine tensors the backward needs besides x, then the new running mean, var,
    batches tracked, skipped updates] (bcn.triton_kernels.forward)."""
    from . import triton_kernels

    state = _fresh(running_mean, running_var, tracked, skipped)
    y, saved = triton_kernels.forward(x, groups, bn_weight, bn_bias, gamma, beta, *state, rate,
                                      scalars, mode, update, traceable=_TRACEABLE)
    return [y] + list(saved[1:]) + state


def _triton_forward_fake(x, bn_weight, bn_bias, gamma, beta, groups, mode, update, running_mean,
                         running_var, tracked, skipped, rate, scalars):
    n, c = x.shape[:2]
    f64 = dict(dtype=torch.float64)
    coef = torch.float64 if x.dtype == torch.float64 else torch.float32
    planes, per_group = n * c, n * groups
    return [torch.empty_like(x), x.new_empty(planes, **f64), x.new_empty(planes, **f64),
            x.new_empty(planes, dtype=coef)] + \
        [x.new_empty(c, **f64) for _ in range(4)] + [x.new_empty(per_group, **f64) for _ in range(2)] + \
        [torch.empty_like(t) for t in (running_mean, running_var, tracked, skipped)]


@_triton_operator("bcn::triton_backward", mutates_args=())
def triton_backward(grad: Tensor, saved: List[Tensor], gamma: Tensor, groups: int,
                    mode: int) -> List[Tensor]:
    from . import triton_kernels

    return list(triton_kernels.backward(grad, tuple(saved), groups, gamma, mode,
                                        traceable=_TRACEABLE))


def _triton_backward_fake(grad, saved, gamma, groups, mode):
    x = saved[0]
    c = x.shape[1]
    shares = c if gamma.dim() == 1 else groups
    wide = dict(dtype=gamma.dtype)  # the parameters' dtype
    return [torch.empty_like(x), x.new_empty(c, **wide), x.new_empty(c, **wide),
            x.new_empty(shares, **wide), x.new_empty(shares, **wide)]


if not _TRACEABLE:
    triton_forward.register_fake(_triton_forward_fake)
    triton_backward.register_fake(_triton_backward_fake)


def _triton_setup(ctx, inputs, output):
    x, bn_weight, bn_bias, gamma, beta, groups, mode = inputs[:7]
    ctx.save_for_backward(x, *output[1:10], bn_weight, bn_bias, gamma, beta)
    ctx.groups, ctx.mode = groups, mode


def _triton_backward(ctx, grads):
    *saved, bn_weight, bn_bias, gamma, beta = ctx.saved_tensors
    dx, dbw, dbb, dgamma, dbeta = triton_backward(grads[0], saved, gamma, ctx.groups, ctx.mode)
    from .triton_norm import as_parameter_gradients

    return as_parameter_gradients(dx, (dbw, dbb, dgamma, dbeta), (bn_weight, bn_bias, gamma, beta)) + (None,) * 9


triton_forward.register_autograd(_triton_backward, setup_context=_triton_setup)
