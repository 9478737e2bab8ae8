"""BCN on the Triton kernels (triton_kernels): the autograd node and the first-use check.

Imported only where Triton runs (CUDA tensors, or CPU tensors with TRITON_INTERPRET=1).
"""
import contextlib

import torch

from .. import functional as BF
from . import status, sync
from . import triton_kernels as tk
from .arguments import Params, RunningState, Step1


class TritonBatchChannelNorm(torch.autograd.Function):
    """BCN in the kernels, forward and backward. The running state is updated in place by the
    forward when ``step1.update``."""

    @staticmethod
    def forward(ctx, x, groups, bn_weight, bn_bias, gn_weight, gn_bias, state, step1, scalars):
        rate = scalars if step1.rate is None else step1.rate  # read in "estimate" only
        gather = sync.gather_for(step1)
        with on_device(x.device):
            y, saved = tk.forward(x, groups, bn_weight, bn_bias, gn_weight, gn_bias, *state,
                                  step1.code, step1.update, rate, scalars, gather=gather)
        ctx.save_for_backward(*saved, bn_weight, bn_bias, gn_weight, gn_bias)
        ctx.groups, ctx.step1, ctx.scalars, ctx.gather = groups, step1, scalars, gather
        return y

    @staticmethod
    def backward(ctx, dy):
        *saved, bn_weight, bn_bias, gn_weight, gn_bias = ctx.saved_tensors
        saved = tk.Saved(*saved)
        params = Params(bn_weight, bn_bias, gn_weight, gn_bias)
        try:
            with on_device(dy.device):
                grads = tk.backward(dy, ctx.groups, bn_weight, bn_bias, gn_weight, ctx.scalars, saved,
                                    ctx.step1.code, gather=ctx.gather)
        except Exception as error:  # a variant that does not compile here: same gradients, slower
            if ctx.gather is not None:
                raise  # the other processes wait in the kernels' all-gather: no fallback alone
            status.triton_failed(dy.device, saved.x.dtype, "backward", status.describe(error))
            grads = _gradients_by_autograd(dy, ctx.groups, params, saved, ctx.step1, ctx.scalars)
        return (grads[0], None) + parameter_gradients(grads[1:], params) + (None,) * 3


def parameter_gradients(grads, params: Params):
    """Each parameter's gradient in its own shape and dtype (the kernels give them flat)."""
    return tuple(g.view(p.shape).to(p.dtype) for g, p in zip(grads, params))


def _gradients_by_autograd(dy, groups, params: Params, saved: "tk.Saved", step1: Step1, scalars):
    """The same gradients through the reference composition (bcn.functional), from what the
    forward saved: step 1's statistics, or the batch's for "batch"."""
    bn_eps, gn_eps = float(scalars[0]), float(scalars[2])
    dtype = torch.float64 if saved.x.dtype == torch.float64 else torch.float32
    with torch.enable_grad():
        inputs = [t.detach().to(dtype).requires_grad_() for t in (saved.x,) + tuple(params)]
        x, bn_weight, bn_bias, gn_weight, gn_bias = inputs
        if step1.kind == "batch":
            x1 = BF.batch_part_with_batch_statistics(x, bn_weight, bn_bias, bn_eps)
        else:
            var = saved.inv_std.pow(-2) - bn_eps
            x1 = BF.batch_part(x, saved.mean.to(dtype), var.to(dtype), bn_weight, bn_bias, bn_eps)
        y = BF.channel_part(x1, groups, gn_weight, gn_bias, gn_eps)
        grads = torch.autograd.grad(y, inputs, dy.to(dtype))
    return (grads[0].to(saved.x.dtype),) + tuple(g.reshape(-1) for g in grads[1:])


def on_device(device: torch.device):
    """Make ``device`` current while kernels launch there: Triton launches on the current CUDA
    device, which need not be the tensors' (a model on cuda:1 in a process whose current
    device is cuda:0)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def batch_channel_norm(x, groups, params: Params, state: RunningState, step1: Step1, scalars):
    """BCN through the kernels, with autograd. scalars: float64 (bn_eps, momentum, gn_eps) on
    x's device."""
    return TritonBatchChannelNorm.apply(x, groups, *params, state, step1, scalars)


TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-9, torch.float16: 1e-3, torch.bfloat16: 1e-2}
CHECKED = ("output", "input gradient", "bn_weight gradient", "bn_bias gradient",
           "gn_weight gradient", "gn_bias gradient", "running mean", "running var")


def compare_with_reference(device, dtype, shape=(3, 8, 5, 7), groups=4, kind="batch",
                           channels_last=False, per_channel_affine=False, seed=0):
    """The kernels on ``device`` against the reference composition (bcn.functional) in float64
    on the CPU, on the same (rounded) input: {what: relative error} for the output, the five
    gradients and the running state. Parameters and state in float32 (float64 for float64
    maps)."""
    generator = torch.Generator().manual_seed(seed)
    n, c = shape[:2]
    rand = lambda *size: torch.rand(*size, generator=generator, dtype=torch.float64)  # noqa: E731
    randn = lambda *size: torch.randn(*size, generator=generator, dtype=torch.float64)  # noqa: E731
    x = (randn(*shape) * 2 + 1).to(dtype).double()
    dy = randn(*shape).to(dtype).double()
    affine = (c,) if per_channel_affine else (1, groups, 1)
    params = [rand(c) + 0.5, randn(c), rand(*affine) + 0.5, randn(*affine)]
    running = (randn(c) * 0.1, rand(c) + 0.5)
    rate, momentum, eps = 0.25, 0.1, 1e-5
    ref_inputs = [t.clone().requires_grad_() for t in [x] + params]
    xr, bw, bb, gw, gb = ref_inputs
    mean, var = running
    if kind == "batch":
        x1 = BF.batch_part_with_batch_statistics(xr, bw, bb, eps)
        count = x.numel() // c
        batch_mean, batch_var = BF.channel_moments(x)
        new_state = ((1 - momentum) * mean + momentum * batch_mean,
                     (1 - momentum) * var + momentum * batch_var * count / (count - 1))
    else:
        if kind == "estimate":
            batch_mean, around_old = BF.estimate_moments(x, mean)
            mean, var = BF.update_estimates(mean, var, batch_mean, around_old, rate)
        new_state = (mean, var)
        x1 = BF.batch_part(xr, mean, var, bw, bb, eps)
    y_ref = BF.channel_part(x1, groups, gw, gb, eps)
    grads_ref = torch.autograd.grad(y_ref, ref_inputs, dy)
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    ours = [t.to(device=device, dtype=dtype if i == 0 else wide).clone() for i, t in enumerate([x] + params)]
    if channels_last:
        ours[0] = ours[0].contiguous(memory_format=torch.channels_last)
    ours = [t.requires_grad_() for t in ours]
    counter = lambda: torch.zeros((), dtype=torch.long, device=device)  # noqa: E731
    state = RunningState(running[0].to(device, wide), running[1].to(device, wide), counter(), counter())
    scalars = torch.tensor([eps, momentum, eps], dtype=torch.float64, device=device)
    step1 = Step1(kind, kind != "fixed", eps, momentum, torch.tensor(rate, dtype=torch.float32, device=device))
    y = batch_channel_norm(ours[0], groups, Params(*ours[1:]), state, step1, scalars)
    grads = torch.autograd.grad(y, ours, dy.to(device=device, dtype=dtype))
    got = [y] + list(grads) + list(state[:2])
    want = [y_ref] + list(grads_ref) + list(new_state)
    return {name: float((a.detach().double().cpu() - b.detach().reshape(a.shape)).norm()
                        / b.detach().norm().clamp_min(1e-300))
            for name, a, b in zip(CHECKED, got, want)}


def self_check(device: torch.device, dtype: torch.dtype) -> str:
    """The first-use check: a small map with each kind of step 1, forward and backward, against
    the float64 reference. Returns "" when they agree, else what differed."""
    problems = []
    # autograd on, whatever the caller's context: a first use under torch.no_grad() or
    # torch.inference_mode() (an evaluation, a demo) must check the backward all the same
    with torch.inference_mode(False), torch.enable_grad(), on_device(device):
        results = {kind: compare_with_reference(device, dtype, kind=kind)
                   for kind in ("batch", "estimate", "fixed")}
    for kind, errors in results.items():
        for name, error in errors.items():
            if not error <= TOLERANCE[dtype]:
                problems.append(f"step 1 {kind!r} {name}: relative error {error:.2e} > {TOLERANCE[dtype]:.0e}")
    return "; ".join(problems)
