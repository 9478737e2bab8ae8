"""BCN's kernels as PyTorch operators (``torch.library``, namespace ``bcn``), for graphs.

torch.compile and torch.export cannot see inside a call into the C++ extension or a Triton
launcher; as operators, with a fake implementation (the output shapes) and their autograd
formula registered, the kernels stay in a compiled or exported graph -- with the numerics of
eager mode, since the same kernels run. The training operators are functional (an autograd
formula needs that): they take the running state (mean, var, batches tracked, skipped updates)
and return its new values, which the layer copies into its buffers -- so the estimate update
and the non-finite guard keep working in a compiled graph. Rates arrive as tensors: a Python
float would be a constant of the graph and recompile it whenever the learning rate moves.

Eager calls do not go through here (bcn.kernels calls the kernels directly: an operator call
costs microseconds that small maps notice); bcn.kernels picks these while a graph is being
recorded by dynamo (torch.compile, torch.export). Arguments come in bcn.kernels.arguments'
order; a step-1 kind is its integer code.

    bcn::cpu_train_forward / bcn::cpu_train_backward   the C++ training kernels
    bcn::cpu_inference                                  the C++ eval kernel (no autograd)
    bcn::standardize_weight_forward / _backward         weight standardization (C++)
    bcn::triton_forward / bcn::triton_backward          the Triton kernels, every mode
                                                        (triton_ops: inductor sees the launches)
"""
import inspect
from typing import List, Tuple

import torch
from torch import Tensor

from .cpu import extension
from .dispatch import triton_interpreted

_STATE = 4  # running_mean, running_var, num_batches_tracked, skipped_updates


def _fresh(*state):
    """Copies the kernels update in place, so that the operators stay functional."""
    return [t.clone() for t in state]


def split(out: List[Tensor], saved: int):
    """(y, the ``saved`` tensors after it, the new running state) of a training operator's
    output list."""
    return out[0], out[1:1 + saved], out[len(out) - _STATE:]


def _operator(name: str, make=torch.library.custom_op):
    """A functional operator (``make``: custom_op or triton_op) whose arguments its autograd
    formula can read by name (``arguments(op, inputs)``)."""
    def register(fn):
        op = make(name, mutates_args=())(fn)
        op.argument_names = tuple(inspect.signature(fn).parameters)
        return op
    return register


def arguments(op, inputs) -> dict:
    return dict(zip(op.argument_names, inputs))


def _no_gradients(count: int) -> tuple:
    return (None,) * count


# --- C++ CPU kernels ------------------------------------------------------------------------

CPU_SAVED = 4  # plane_mean, plane_var, mean, var


@_operator("bcn::cpu_train_forward")
def cpu_train_forward(x: Tensor, groups: int, bn_weight: Tensor, bn_bias: Tensor,
                      gn_weight: Tensor, gn_bias: Tensor, running_mean: Tensor,
                      running_var: Tensor, num_batches_tracked: Tensor, skipped_updates: Tensor,
                      step1: int, update: bool, rate: Tensor, eps: float) -> List[Tensor]:
    """[y, plane mean, plane var, step-1 mean, step-1 var, then the new running mean, var,
    batches tracked, skipped updates]: the C++ training forward."""
    state = _fresh(running_mean, running_var, num_batches_tracked, skipped_updates)
    out = extension().train_forward(x.contiguous(), groups, bn_weight, bn_bias, gn_weight, gn_bias,
                                    *state, step1, update, float(rate), eps)
    return list(out) + state


@cpu_train_forward.register_fake
def _(x, groups, bn_weight, bn_bias, gn_weight, gn_bias, running_mean, running_var,
      num_batches_tracked, skipped_updates, step1, update, rate, eps):
    n, c = x.shape[:2]
    return [torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(n, c),
            x.new_empty(n, c), x.new_empty(c), x.new_empty(c)] + [
            torch.empty_like(t) for t in (running_mean, running_var, num_batches_tracked, skipped_updates)]


@torch.library.custom_op("bcn::cpu_train_backward", mutates_args=())
def cpu_train_backward(grad: Tensor, x: Tensor, groups: int, bn_weight: Tensor, bn_bias: Tensor,
                       gn_weight: Tensor, plane_mean: Tensor, plane_var: Tensor, mean: Tensor,
                       var: Tensor, step1: int, eps: float) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx, d bn_weight, d bn_bias, d gn_weight, d gn_bias)."""
    return extension().train_backward(grad.contiguous(), x.contiguous(), groups, bn_weight, bn_bias,
                                      gn_weight, plane_mean, plane_var, mean, var, step1, eps)


@cpu_train_backward.register_fake
def _(grad, x, groups, bn_weight, bn_bias, gn_weight, plane_mean, plane_var, mean, var, step1, eps):
    return (torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(bn_weight),
            torch.empty_like(bn_bias), torch.empty_like(gn_weight), torch.empty_like(gn_weight))


def _cpu_setup(ctx, inputs, output):
    args = arguments(cpu_train_forward, inputs)
    _, saved, _ = split(output, CPU_SAVED)
    ctx.save_for_backward(args["x"], args["bn_weight"], args["bn_bias"], args["gn_weight"], *saved)
    ctx.groups, ctx.step1, ctx.eps, ctx.inputs = args["groups"], args["step1"], args["eps"], len(inputs)


def _cpu_backward(ctx, grads):
    x, bn_weight, bn_bias, gn_weight, *saved = ctx.saved_tensors
    dx, *param_grads = cpu_train_backward(grads[0], x, ctx.groups, bn_weight, bn_bias, gn_weight,
                                          *saved, ctx.step1, ctx.eps)
    return (dx, None, *param_grads) + _no_gradients(ctx.inputs - 6)  # x, groups, the 4 params


cpu_train_forward.register_autograd(_cpu_backward, setup_context=_cpu_setup)


@torch.library.custom_op("bcn::cpu_inference", mutates_args=())
def cpu_inference(x: Tensor, groups: int, bn_weight: Tensor, bn_bias: Tensor, gn_weight: Tensor,
                  gn_bias: Tensor, running_mean: Tensor, running_var: Tensor, eps: float) -> Tensor:
    """BCN with step 1 fixed to the running state, no autograd: the eval kernel."""
    return extension().inference_forward(x.contiguous(), groups, bn_weight, bn_bias, gn_weight,
                                         gn_bias, running_mean, running_var, eps)


@cpu_inference.register_fake
def _(x, groups, bn_weight, bn_bias, gn_weight, gn_bias, running_mean, running_var, eps):
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
    weight, _ = inputs
    _, row_mean, row_scale = output
    ctx.save_for_backward(weight, row_mean, row_scale)


def _standardize_weight_backward(ctx, grad_z, *unused):
    weight, row_mean, row_scale = ctx.saved_tensors
    return standardize_weight_backward(grad_z, weight, row_mean, row_scale), None


standardize_weight_forward.register_autograd(_standardize_weight_backward, setup_context=_standardize_weight_setup)



# --- Triton kernels -------------------------------------------------------------------------
# With compiled Triton these are triton_ops: their body (triton_kernels' launchers, each
# launch through wrap_triton) is their fake implementation, and under torch.compile inductor
# sees the kernel launches themselves. Triton's interpreter (TRITON_INTERPRET=1, the CPU test
# runs) runs kernels on real data only, so there they are custom_ops around the same launchers
# with fake implementations of their own.

_TRACEABLE = not triton_interpreted()
_make_triton_operator = torch.library.triton_op if _TRACEABLE else torch.library.custom_op
TRITON_SAVED = 9  # triton_kernels.Saved without x


@_operator("bcn::triton_forward", _make_triton_operator)
def triton_forward(x: Tensor, groups: int, bn_weight: Tensor, bn_bias: Tensor, gn_weight: Tensor,
                   gn_bias: Tensor, running_mean: Tensor, running_var: Tensor,
                   num_batches_tracked: Tensor, skipped_updates: Tensor, step1: int, update: bool,
                   rate: Tensor, scalars: Tensor) -> List[Tensor]:
    """[y, triton_kernels.Saved without x, then the new running mean, var, batches tracked,
    skipped updates] (triton_kernels.forward)."""
    from . import triton_kernels

    state = _fresh(running_mean, running_var, num_batches_tracked, skipped_updates)
    y, saved = triton_kernels.forward(x, groups, bn_weight, bn_bias, gn_weight, gn_bias, *state,
                                      step1, update, rate, scalars, traceable=_TRACEABLE)
    return [y] + list(saved[1:]) + state


def _triton_forward_fake(x, groups, bn_weight, bn_bias, gn_weight, gn_bias, running_mean,
                         running_var, num_batches_tracked, skipped_updates, step1, update, rate,
                         scalars):
    from .triton_kernels import BATCH, group_block_launch, reads_channels_last, whole_layer_launch

    n, c, h, w = x.shape
    f64 = dict(dtype=torch.float64)
    coef = torch.float64 if x.dtype == torch.float64 else torch.float32
    # the sizes triton_kernels.forward saves: whole 1x1 layers keep step 1's statistics only
    # (none for batch statistics), small planes no per-plane values
    if whole_layer_launch(n, c, groups, h * w) is not None:
        planes, per_channel, kept, per_group = 0, 0, c if step1 != BATCH else 0, 0
    else:
        small = group_block_launch(n, c, groups, h * w, reads_channels_last(x), coef) is not None
        planes, per_channel, kept, per_group = 0 if small else n * c, c, c, n * groups
    return [torch.empty_like(x), x.new_empty(planes, **f64), x.new_empty(planes, **f64),
            x.new_empty(planes, dtype=coef)] + \
        [x.new_empty(per_channel, **f64) for _ in range(2)] + [x.new_empty(kept, **f64) for _ in range(2)] + \
        [x.new_empty(per_group, **f64) for _ in range(2)] + \
        [torch.empty_like(t) for t in (running_mean, running_var, num_batches_tracked, skipped_updates)]


@_operator("bcn::triton_backward", _make_triton_operator)
def triton_backward(grad: Tensor, groups: int, bn_weight: Tensor, bn_bias: Tensor,
                    gn_weight: Tensor, scalars: Tensor, saved: List[Tensor],
                    step1: int) -> List[Tensor]:
    from . import triton_kernels

    return list(triton_kernels.backward(grad, groups, bn_weight, bn_bias, gn_weight, scalars,
                                        triton_kernels.Saved(*saved), step1, traceable=_TRACEABLE))


def _triton_backward_fake(grad, groups, bn_weight, bn_bias, gn_weight, scalars, saved, step1):
    x = saved[0]
    c = x.shape[1]
    shares = c if gn_weight.dim() == 1 else groups
    wide = dict(dtype=gn_weight.dtype)  # the parameters' dtype
    return [torch.empty_like(x), x.new_empty(c, **wide), x.new_empty(c, **wide),
            x.new_empty(shares, **wide), x.new_empty(shares, **wide)]


if not _TRACEABLE:
    triton_forward.register_fake(_triton_forward_fake)
    triton_backward.register_fake(_triton_backward_fake)


def _triton_setup(ctx, inputs, output):
    args = arguments(triton_forward, inputs)
    _, saved, _ = split(output, TRITON_SAVED)
    ctx.save_for_backward(args["x"], *saved, args["bn_weight"], args["bn_bias"], args["gn_weight"],
                          args["gn_bias"], args["scalars"])
    ctx.groups, ctx.step1, ctx.inputs = args["groups"], args["step1"], len(inputs)


def _triton_backward(ctx, grads):
    *saved, bn_weight, bn_bias, gn_weight, gn_bias, scalars = ctx.saved_tensors
    dx, *param_grads = triton_backward(grads[0], ctx.groups, bn_weight, bn_bias, gn_weight, scalars,
                                       saved, ctx.step1)
    from .arguments import Params
    from .triton_autograd import parameter_gradients

    params = Params(bn_weight, bn_bias, gn_weight, gn_bias)
    return (dx, None) + parameter_gradients(param_grads, params) + _no_gradients(ctx.inputs - 6)


triton_forward.register_autograd(_triton_backward, setup_context=_triton_setup)
