"""BCN on the Triton kernels (bcn.triton_kernels): the autograd node and the first-use check.

Imported only where Triton runs (CUDA tensors, or CPU tensors with TRITON_INTERPRET=1).
"""
import contextlib

import torch
import torch.nn.functional as F

from . import triton_kernels as tk

MODES = {"batch": tk.BATCH, "estimate": tk.ESTIMATE, "fixed": tk.FIXED}


class TritonBatchChannelNorm(torch.autograd.Function):
    """BCN in the kernels, forward and backward. Running state (mean, var, batches tracked,
    skipped updates) is updated in place by the forward when ``update``."""

    @staticmethod
    def forward(ctx, x, bn_weight, bn_bias, gn_weight, gn_bias, groups, mode, update, state,
                rate, scalars):
        running_mean, running_var, tracked, skipped = state
        with _on(x.device):
            y, saved = tk.forward(x, groups, bn_weight, bn_bias, gn_weight, gn_bias, running_mean,
                                  running_var, tracked, skipped, rate, scalars, mode, update)
        ctx.save_for_backward(*saved, bn_weight, bn_bias, gn_weight, gn_bias)
        ctx.groups, ctx.mode, ctx.scalars = groups, mode, scalars
        return y

    @staticmethod
    def backward(ctx, dy):
        *saved, bn_weight, bn_bias, gn_weight, gn_bias = ctx.saved_tensors
        try:
            with _on(dy.device):
                dx, dbw, dbb, dgw, dgb = tk.backward(dy, tuple(saved), ctx.groups, gn_weight, ctx.mode)
        except Exception as error:  # a variant that does not compile here: same gradients, slower
            from . import dispatch

            dispatch.triton_failed(dy.device, saved[0].dtype, "backward", error)
            dx, dbw, dbb, dgw, dgb = _reference_backward(ctx, dy, saved, bn_weight, bn_bias,
                                                         gn_weight, gn_bias)
        return as_parameter_gradients(dx, (dbw, dbb, dgw, dgb),
                                      (bn_weight, bn_bias, gn_weight, gn_bias)) + (None,) * 6


def as_parameter_gradients(dx, grads, params):
    """(dx, then each parameter's gradient in its own shape and dtype): the kernels give them
    flat (in the parameters' dtype; the reference fallback in float64)."""
    return (dx,) + tuple(g.view(p.shape).to(p.dtype) for g, p in zip(grads, params))


def _reference_backward(ctx, dy, saved, bn_weight, bn_bias, gn_weight, gn_bias):
    """The same gradients by autograd through torch's BatchNorm / GroupNorm, from what the
    forward saved: step 1's statistics, or the batch's in batch mode."""
    x, mu, inv = saved[0], saved[6], saved[7]
    bn_eps, gn_eps = float(ctx.scalars[0]), float(ctx.scalars[2])
    with torch.enable_grad():
        inputs = [t.detach().requires_grad_() for t in (x, bn_weight, bn_bias, gn_weight, gn_bias)]
        xr, bw, bb, gw, gb = inputs
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        if ctx.mode == tk.BATCH:
            x1 = F.batch_norm(xr.to(dtype), None, None, bw.to(dtype), bb.to(dtype), True, 0.0, bn_eps)
        else:
            scale = (inv * bw.double()).to(dtype).view(1, -1, 1, 1)
            x1 = (xr.to(dtype) - mu.to(dtype).view(1, -1, 1, 1)) * scale + bb.to(dtype).view(1, -1, 1, 1)
        n = x1.shape[0]
        z = F.group_norm(x1, ctx.groups, eps=gn_eps)
        if gw.dim() == 1:
            y = z * gw.to(dtype).view(1, -1, 1, 1) + gb.to(dtype).view(1, -1, 1, 1)
        else:
            y = (z.view(n, ctx.groups, -1) * gw.to(dtype) + gb.to(dtype)).view_as(z)
        grads = torch.autograd.grad(y, inputs, dy.to(dtype))
    return (grads[0].to(x.dtype),) + tuple(g.reshape(-1).double() for g in grads[1:])


def _on(device: torch.device):
    """Make ``device`` current while kernels launch there: Triton launches on the current CUDA
    device, which need not be the tensors' (a model on cuda:1 in a process whose current
    device is cuda:0)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def batch_channel_norm(x, groups, bn_weight, bn_bias, gn_weight, gn_bias, mode, update, state,
                       rate, scalars):
    """BCN through the kernels. mode: "batch", "estimate" or "fixed" (step 1 from the running
    state as it is); state: (running_mean, running_var, num_batches_tracked, skipped_updates);
    rate and scalars (bn_eps, momentum, gn_eps; float64): tensors on x's device."""
    return TritonBatchChannelNorm.apply(x, bn_weight, bn_bias, gn_weight, gn_bias, groups,
                                        MODES[mode], update, state, rate, scalars)


TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-9, torch.float16: 1e-3, torch.bfloat16: 1e-2}
CHECKED = ("output", "input gradient", "gamma_b gradient", "beta_b gradient", "gamma gradient",
           "beta gradient", "running mean", "running var")


def compare_with_reference(device, dtype, shape=(3, 8, 5, 7), groups=4, mode="batch",
                           channels_last=False, per_channel_affine=False, seed=0):
    """The kernels on ``device`` against torch's BatchNorm + GroupNorm in float64 on the CPU,
    on the same (rounded) input: {what: relative error} for the output, the five gradients and
    the running state. Parameters and state in float32 (float64 for float64 maps)."""
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
    if mode == "batch":
        x1 = F.batch_norm(xr, None, None, bw, bb, True, 0.0, eps)
        count = x.numel() // c
        batch_mean, batch_var = x.mean((0, 2, 3)), x.var((0, 2, 3), correction=0)
        new_state = ((1 - momentum) * mean + momentum * batch_mean,
                     (1 - momentum) * var + momentum * batch_var * count / (count - 1))
    else:
        if mode == "estimate":
            batch_mean = x.mean((0, 2, 3))
            around_old = ((x - mean.view(1, -1, 1, 1)) ** 2).mean((0, 2, 3))
            mean, var = mean + rate * (batch_mean - mean), var + rate * (around_old - var)
        new_state = (mean, var)
        x1 = F.batch_norm(xr, mean, var, bw, bb, False, 0.0, eps)
    z = F.group_norm(x1, groups, eps=eps)
    if per_channel_affine:
        y_ref = z * gw.view(1, -1, 1, 1) + gb.view(1, -1, 1, 1)
    else:
        y_ref = (z.view(n, groups, -1) * gw + gb).view_as(z)
    grads_ref = torch.autograd.grad(y_ref, ref_inputs, dy)
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    ours = [t.to(device=device, dtype=dtype if i == 0 else wide).clone() for i, t in enumerate([x] + params)]
    if channels_last:
        ours[0] = ours[0].contiguous(memory_format=torch.channels_last)
    ours = [t.requires_grad_() for t in ours]
    state = (running[0].to(device, wide), running[1].to(device, wide),
             torch.zeros((), dtype=torch.long, device=device), torch.zeros((), dtype=torch.long, device=device))
    scalars = torch.tensor([eps, momentum, eps], dtype=torch.float64, device=device)
    rate_t = torch.tensor(rate, dtype=torch.float32, device=device)
    y = batch_channel_norm(ours[0], groups, *ours[1:], mode, mode != "fixed", state, rate_t, scalars)
    grads = torch.autograd.grad(y, ours, dy.to(device=device, dtype=dtype))
    got = [y] + list(grads) + list(state[:2])
    want = [y_ref] + list(grads_ref) + list(new_state)
    return {name: float((a.detach().double().cpu() - b.detach().reshape(a.shape)).norm()
                        / b.detach().norm().clamp_min(1e-300))
            for name, a, b in zip(CHECKED, got, want)}


def self_check(device: torch.device, dtype: torch.dtype) -> str:
    """The first-use check: a small map in each mode, forward and backward, against the float64
    reference. Returns "" when they agree, else what differed."""
    problems = []
    # autograd on, whatever the caller's context: a first use under torch.no_grad() or
    # torch.inference_mode() (an evaluation, a demo) must check the backward all the same
    with torch.inference_mode(False), torch.enable_grad(), _on(device):
        results = {mode: compare_with_reference(device, dtype, mode=mode)
                   for mode in ("batch", "estimate", "fixed")}
    for mode, errors in results.items():
        for name, error in errors.items():
            if not error <= TOLERANCE[dtype]:
                problems.append(f"{mode} mode {name}: relative error {error:.2e} > {TOLERANCE[dtype]:.0e}")
    return "; ".join(problems)
