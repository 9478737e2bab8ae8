"""BCN in two passes over the feature map, forward and backward: the fast path.

Both steps follow from the per-(sample, channel) moments m[n,c], v[n,c] of x:
    batch statistics   mean[c] = avg_n m,   var[c] = avg_n v + avg_n (m - mean)^2
    after step 1       m1 = a m + b,        v1 = a^2 v     (a = gamma_b / sqrt(var + eps), b = beta_b - a mean)
    group statistics   mu[n,g] = avg_{c in g} m1,   s2[n,g] = avg v1 + avg (m1 - mu)^2
so BCN(x) = A[n,c] * x + B[n,c] with (N, C) coefficients. Forward: one moments pass, one
multiply-add pass. Backward: one pass for S1 = sum_hw g and S2 = sum_hw g x, the (N, C)
coefficient graph differentiated by autograd, one pass for
    dx = A g + (dL/dm + 2 dL/dv (x - m)) / HW.
The same memory traffic as GroupNorm; the numerics match the reference composition (tests).
The four passes over the map are the C++ kernels of bcn.kernels; everything here between
them is (N, C)-sized. Callers check ``bcn.kernels.serves(x)`` first (BatchChannelNorm2d
does, and runs its reference path otherwise).
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .kernels import plane_ops


def _coefficients(m: Tensor, v: Tensor, mean: Optional[Tensor], var: Optional[Tensor],
                  bn_weight: Tensor, bn_bias: Tensor, gn_weight: Tensor, gn_bias: Tensor,
                  groups: int, eps: float) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(A, B, batch mean, batch var) from the (N, C) moments; mean/var given: step 1 uses them."""
    n, c = m.shape
    batch_mean = m.mean(0)
    batch_var = v.mean(0) + (m - batch_mean).pow(2).mean(0)
    if mean is None:
        mean, var = batch_mean, batch_var
    a = bn_weight * torch.rsqrt(var + eps)
    b = bn_bias - a * mean
    m1 = (a * m + b).view(n, groups, -1)
    v1 = (a * a * v).view(n, groups, -1)
    mu = m1.mean(-1, keepdim=True)
    r = torch.rsqrt(v1.mean(-1, keepdim=True) + (m1 - mu).pow(2).mean(-1, keepdim=True) + eps)
    if gn_weight.numel() == groups:  # per-group affine, (1, G, 1)
        gamma, beta = gn_weight.view(1, groups, 1), gn_bias.view(1, groups, 1)
    else:
        gamma, beta = gn_weight.view(1, groups, -1), gn_bias.view(1, groups, -1)
    scale = gamma * r                                                 # (N, G, 1 or C/G)
    A = (scale * a.view(1, groups, -1)).reshape(n, c)
    B = (scale * (b.view(1, groups, -1) - mu) + beta).reshape(n, c)
    return A, B, batch_mean, batch_var


class _BatchChannelNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, moments, mean, var, bn_weight, bn_bias, gn_weight, gn_bias, groups, eps):
        m, v = moments if moments is not None else plane_ops().plane_moments(x)
        params = [t.detach().requires_grad_(t.requires_grad) for t in (bn_weight, bn_bias, gn_weight, gn_bias)]
        with torch.enable_grad():
            md, vd = m.detach().requires_grad_(True), v.detach().requires_grad_(True)
            A, B, batch_mean, batch_var = _coefficients(md, vd, mean, var, *params, groups, eps)
        ctx.save_for_backward(x, m)
        ctx.graph = (md, vd, params, A, B)
        y = plane_ops().plane_affine(x, A.detach(), B.detach())
        return y, batch_mean.detach(), batch_var.detach()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g, _grad_mean, _grad_var):
        x, m = ctx.saved_tensors
        md, vd, params, A, B = ctx.graph
        s1, s2 = plane_ops().plane_grad_sums(g.contiguous(), x, m)
        s2 = s2 + m * s1  # sum g x, from the better-conditioned sum g (x - m)
        wanted = [md, vd] + [p for p in params if p.requires_grad]
        # retain: the (N, C) graph is tiny, and gradcheck-style callers backward twice
        grads = torch.autograd.grad((A, B), wanted, (s2, s1), allow_unused=True, retain_graph=True)
        dm, dv = (t if t is not None else torch.zeros_like(m) for t in grads[:2])
        hw = x.shape[2] * x.shape[3]
        p = (2.0 / hw) * dv
        q = (dm - 2.0 * dv * m) / hw
        dx = plane_ops().plane_affine_backward(g.contiguous(), x, A.detach(), p.contiguous(), q.contiguous())
        it = iter(grads[2:])
        dparams = [next(it) if p.requires_grad else None for p in params]
        return (dx, None, None, None, *dparams, None, None)


def _fixed_step1_forward(x, groups, bn_weight, bn_bias, gn_weight, gn_bias, eps, mean, var):
    """Inference with step 1 fixed: one C++ task per (sample, group), moments then output
    while the group is in cache, as GroupNorm itself runs."""
    with torch.no_grad():
        a = bn_weight * torch.rsqrt(var + eps)
        b = bn_bias - a * mean
        c = x.shape[1]
        gamma = gn_weight.reshape(groups, -1).expand(groups, c // groups).reshape(c)
        beta = gn_bias.reshape(groups, -1).expand(groups, c // groups).reshape(c)
        return plane_ops().fixed_step1_forward(x, a.contiguous(), b.contiguous(), gamma.contiguous(),
                                               beta.contiguous(), groups, eps)


def moments(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-(sample, channel) mean and biased variance over (H, W): the one statistics pass."""
    return plane_ops().plane_moments(x.contiguous())


def batch_channel_norm(x: Tensor, groups: int, bn_weight: Tensor, bn_bias: Tensor,
                       gn_weight: Tensor, gn_bias: Tensor, eps: float,
                       mean: Optional[Tensor] = None, var: Optional[Tensor] = None,
                       sample_moments: Optional[Tuple[Tensor, Tensor]] = None):
    """BCN in two passes. mean/var None: step 1 uses the batch statistics (large-batch
    training); given: step 1 uses them as constants (eval, estimate mode). sample_moments:
    moments(x) if the caller has them already. Returns the output and the batch's per-channel
    mean and biased variance (for running averages / estimates) -- None for both when step 1
    is given and no gradient is wanted: that is inference, run as GroupNorm runs (one task per
    sample and group), with no batch statistics computed."""
    if mean is not None:
        mean, var = mean.detach(), var.detach()
    params = (bn_weight, bn_bias, gn_weight, gn_bias)
    if not (torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params))):
        x = x.contiguous()
        if mean is not None and sample_moments is None:
            return _fixed_step1_forward(x, groups, *params, eps, mean, var), None, None
        m, v = sample_moments if sample_moments is not None else plane_ops().plane_moments(x)
        A, B, batch_mean, batch_var = _coefficients(m, v, mean, var, *params, groups, eps)
        return plane_ops().plane_affine(x, A.contiguous(), B.contiguous()), batch_mean, batch_var
    return _BatchChannelNorm.apply(x.contiguous(), sample_moments, mean, var, bn_weight, bn_bias,
                                   gn_weight, gn_bias, groups, eps)
