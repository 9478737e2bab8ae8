"""The paper's equations (Eqs. 9, 13-16, Algorithm 1) as pure functions of tensors: no modules, no state, no framework.

Shapes: x is (N, C, *spatial). Per-channel vectors are (C,). Statistics are taken over every
dimension except the channel one, biased (divide by the count), as BatchNorm does.
"""
import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

WS_FORMS = ("eps_in_sqrt", "eps_on_std")


def _reduce_dims(x: Tensor) -> list:
    return [0] + list(range(2, x.dim()))


def channel_moments(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance over (N, H, W)."""
    var, mean = torch.var_mean(x, dim=_reduce_dims(x), correction=0)
    return mean, var


def estimate_moments(x: Tensor, old_mean: Tensor) -> Tuple[Tensor, Tensor]:
    """Algorithm 1, steps 1-2: the batch mean, and the mean square around the OLD estimate.

    E[(x - a)^2] = Var[x] + (E[x] - a)^2, so one var_mean pass gives both.
    """
    mean, var = channel_moments(x)
    return mean, var + (mean - old_mean) ** 2


def update_estimates(
    mean_estimate: Tensor, var_estimate: Tensor, mean: Tensor, var: Tensor, rate: Tensor
) -> Tuple[Tensor, Tensor]:
    """Algorithm 1, steps 3-4: move each estimate towards the batch value at rate r."""
    return mean_estimate + rate * (mean - mean_estimate), var_estimate + rate * (var - var_estimate)


def batch_part(
    x: Tensor, mean: Tensor, var: Tensor, weight: Tensor, bias: Tensor, eps: float
) -> Tensor:
    """BCN step 1 with given statistics (Eq. 13-14): a fixed per-channel affine map of x.

    mean and var are treated as constants: no gradient flows into them.
    """
    return F.batch_norm(x, mean.detach(), var.detach(), weight, bias, False, 0.0, eps)


def batch_part_with_batch_statistics(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """BCN step 1 with the batch's own statistics (Eq. 16, BatchNorm in training), differentiated
    through them; no running state."""
    return F.batch_norm(x, None, None, weight, bias, True, 0.0, eps)


def channel_part(x: Tensor, num_groups: int, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """BCN step 2 (Eq. 15): per-sample normalization over groups of channels, then the affine.

    weight/bias hold one value per group (shape (1, G, 1), the published layout) or one per
    channel (shape (C,)). A per-group affine equals a per-channel one with each group's value
    repeated over its channels, which lets F.group_norm do the whole step in one kernel.
    """
    channels = x.shape[1]
    if weight.numel() == num_groups and channels != num_groups:
        weight = weight.reshape(num_groups).repeat_interleave(channels // num_groups)
        bias = bias.reshape(num_groups).repeat_interleave(channels // num_groups)
    return F.group_norm(x, num_groups, weight.reshape(channels), bias.reshape(channels), eps)


def standardize_weight(
    weight: Tensor, eps: float = 1e-5, form: str = "eps_in_sqrt"
) -> Tensor:
    """Eq. 9: standardize each output channel's weights over (in/groups, kh, kw).

    form="eps_in_sqrt": (W - mean) / sqrt(var + eps), unbiased var (the published ImageNet
    models). form="eps_on_std": (W - mean) / (std + eps), unbiased std (the authors'
    segmentation script).
    """
    flat = weight.reshape(weight.shape[0], -1)
    k = flat.shape[1]
    if form == "eps_in_sqrt" and k > 1:
        # The same value through F.layer_norm (biased variance): one kernel forward and one
        # backward instead of var_mean and several elementwise passes over the weight:
        #   (W - m) / sqrt(var_unbiased + eps) = sqrt((k-1)/k) (W - m) / sqrt(var_biased + eps (k-1)/k)
        shrink = (k - 1) / k
        scale = flat.new_full((k,), math.sqrt(shrink))  # as layer_norm's affine: no extra pass
        return F.layer_norm(flat, (k,), weight=scale, eps=eps * shrink).reshape(weight.shape)
    var, mean = torch.var_mean(flat, dim=1, keepdim=True, correction=1)
    if form == "eps_in_sqrt":
        flat = (flat - mean) / torch.sqrt(var + eps)
    elif form == "eps_on_std":
        flat = (flat - mean) / (torch.sqrt(var) + eps)
    else:
        raise ValueError(f"unknown weight-standardization form {form!r}; choose one of {WS_FORMS}")
    return flat.reshape(weight.shape)
