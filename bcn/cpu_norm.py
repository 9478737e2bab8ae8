"""BCN as GroupNorm runs: the fast path of BatchChannelNorm2d, on bcn.cpu_kernels.

Both steps follow from the per-(sample, channel) moments m[n,c], v[n,c] of x:
    step-1 statistics  mean[c] = avg_n m,   var[c] = avg_n v + avg_n (m - mean)^2
    after step 1       m1 = a m + b,        v1 = a^2 v     (a = gamma_b / sqrt(var + eps), b = beta_b - a mean)
    group statistics   mu[n,g] = avg_{c in g} m1,   s2[n,g] = avg v1 + avg (m1 - mu)^2
so BCN(x) = A[n,c] x + B[n,c]. Channel c's statistics involve only the planes (n, c) and group
g's only the channels of g, so the planes of one group, over all samples, are a closed block
forward and backward: the kernels run one task per group that reads its block, solves its
(N, C/G) coefficients in double and writes its output while the block is in cache -- the
memory traffic of GroupNorm. Inference (step 1 fixed) runs one task per (sample, group).
Training forward and backward are one autograd node written in C++ (``extension().train``):
no Python runs per call in backward, which detection heads' small maps would notice.

Weight standardization (Eq. 9, the published eps-in-sqrt form) has a kernel too, one task per
block of output channels at a copy's memory traffic (tools/benchmark_ws.py compares it with
the reference path).

Callers check ``bcn.cpu_kernels.serves(x)`` first (BatchChannelNorm2d does, and runs its
reference path otherwise). The numerics match the reference composition (tests).
"""
from typing import Tuple

from torch import Tensor

from .cpu_kernels import extension


def batch_channel_norm_training(x: Tensor, groups: int, bn_weight: Tensor, bn_bias: Tensor,
                                gn_weight: Tensor, gn_bias: Tensor, eps: float, estimate: bool,
                                state: Tuple[Tensor, Tensor, Tensor, Tensor], rate: float,
                                update: bool = True) -> Tensor:
    """BCN in training. state: step 1's (running_mean, running_var, num_batches_tracked,
    skipped_updates). estimate False: step 1 with the batch's statistics (differentiated
    through, Eq. 16), and with update the running averages move at momentum ``rate``
    (BatchNorm's: unbiased variance). estimate True: step 1 with the estimates moved at
    ``rate`` towards the batch first (Algorithm 1; constants to autograd), and with update they
    are stored. A batch whose new running state is not finite leaves it as it was and counts
    in skipped_updates. gn_weight / gn_bias: (1, G, 1) per group or (C,) per channel."""
    return extension().train(x, estimate, *state, float(rate), update, bn_weight, bn_bias,
                             gn_weight, gn_bias, groups, eps)


def batch_channel_norm_inference(x: Tensor, groups: int, bn_weight: Tensor, bn_bias: Tensor,
                                 gn_weight: Tensor, gn_bias: Tensor, eps: float, mean: Tensor,
                                 var: Tensor) -> Tensor:
    """BCN with step 1 fixed to (mean, var), outside autograd (the output has no gradient): one
    task per (sample, group), the group's moments and then its output while it is in cache, as
    GroupNorm runs."""
    return extension().inference_forward(x.contiguous(), mean, var, bn_weight, bn_bias, gn_weight,
                                         gn_bias, groups, eps)


def standardize_weight(weight: Tensor, eps: float) -> Tensor:
    """(W - mean) / sqrt(var_unbiased + eps) over each output channel's weights, differentiable
    (an autograd node in C++). Needs more than one weight per output channel."""
    return extension().standardize_weight(weight, eps)
