"""BCN as GroupNorm runs: the fast path of BatchChannelNorm2d, on bcn.kernels.

Both steps follow from the per-(sample, channel) moments m[n,c], v[n,c] of x:
    step-1 statistics  mean[c] = avg_n m,   var[c] = avg_n v + avg_n (m - mean)^2
    after step 1       m1 = a m + b,        v1 = a^2 v     (a = gamma_b / sqrt(var + eps), b = beta_b - a mean)
    group statistics   mu[n,g] = avg_{c in g} m1,   s2[n,g] = avg v1 + avg (m1 - mu)^2
so BCN(x) = A[n,c] x + B[n,c]. Channel c's statistics involve only the planes (n, c) and group
g's only the channels of g, so the planes of one group, over all samples, are a closed block
forward and backward: the kernels run one task per group that reads its block, solves its
(N, C/G) coefficients in double and writes its output while the block is in cache -- the
memory traffic of GroupNorm. Inference (step 1 fixed) runs one task per (sample, group).

Callers check ``bcn.kernels.serves(x)`` first (BatchChannelNorm2d does, and runs its
reference path otherwise). The numerics match the reference composition (tests).
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .kernels import plane_ops


def _per_channel(weight: Tensor, groups: int, channels: int) -> Tensor:
    """BCN's step-2 affine, (1, G, 1) per group or (C,) per channel, as (C,) (differentiable)."""
    return weight.reshape(groups, -1).expand(groups, channels // groups).reshape(channels)


class _TrainingBatchChannelNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, estimate, old_mean, old_var, rate, bn_weight, bn_bias, gamma, beta, groups, eps):
        y, plane_mean, plane_var, mean, var = plane_ops().train_forward(
            x, estimate, old_mean, old_var, rate, bn_weight, bn_bias, gamma, beta, groups, eps)
        ctx.save_for_backward(x, plane_mean, plane_var, mean, var, bn_weight, bn_bias, gamma)
        ctx.estimate, ctx.groups, ctx.eps = estimate, groups, eps
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad, _grad_mean, _grad_var):
        x, plane_mean, plane_var, mean, var, bn_weight, bn_bias, gamma = ctx.saved_tensors
        dx, d_bn_weight, d_bn_bias, d_gamma, d_beta = plane_ops().train_backward(
            grad.contiguous(), x, plane_mean, plane_var, ctx.estimate, mean, var, bn_weight,
            bn_bias, gamma, ctx.groups, ctx.eps)
        return dx, None, None, None, None, d_bn_weight, d_bn_bias, d_gamma, d_beta, None, None


def batch_channel_norm_training(x: Tensor, groups: int, bn_weight: Tensor, bn_bias: Tensor,
                                gn_weight: Tensor, gn_bias: Tensor, eps: float,
                                estimates: Optional[Tuple[Tensor, Tensor, float]] = None
                                ) -> Tuple[Tensor, Tensor, Tensor]:
    """BCN in training. estimates None: step 1 with the batch's statistics (differentiated
    through, Eq. 16); (mean, var, rate): step 1 with these estimates moved at ``rate`` towards
    the batch first (Algorithm 1; constants to autograd). Returns the output and the step-1
    statistics used: the batch's mean and biased variance, or the updated estimates -- for
    the caller to commit to its running state."""
    channels = x.shape[1]
    gamma, beta = (_per_channel(t, groups, channels) for t in (gn_weight, gn_bias))
    if estimates is None:
        old_mean = old_var = torch.empty(0, dtype=x.dtype)
        rate, estimate = 0.0, False
    else:
        old_mean, old_var, rate = estimates
        old_mean, old_var, estimate = old_mean.detach().contiguous(), old_var.detach().contiguous(), True
    return _TrainingBatchChannelNorm.apply(x.contiguous(), estimate, old_mean, old_var, float(rate),
                                           bn_weight.contiguous(), bn_bias.contiguous(), gamma, beta,
                                           groups, eps)


def batch_channel_norm_inference(x: Tensor, groups: int, bn_weight: Tensor, bn_bias: Tensor,
                                 gn_weight: Tensor, gn_bias: Tensor, eps: float, mean: Tensor,
                                 var: Tensor) -> Tensor:
    """BCN with step 1 fixed to (mean, var), without gradient: one task per (sample, group),
    the group's moments and then its output while it is in cache, as GroupNorm runs."""
    with torch.no_grad():
        channels = x.shape[1]
        gamma, beta = (_per_channel(t, groups, channels).contiguous() for t in (gn_weight, gn_bias))
        return plane_ops().inference_forward(x.contiguous(), mean.contiguous(), var.contiguous(),
                                             bn_weight.contiguous(), bn_bias.contiguous(), gamma, beta,
                                             groups, eps)
