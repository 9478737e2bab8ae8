"""Inference folding: WS and BCN's batch part folded into the preceding convolution.

In eval, BCN's step 1 is a fixed per-channel affine map (Eq. 13-14 with stored statistics)
and WS a fixed transform of the weight, so conv -> BCN equals conv' -> GroupNorm with
    W' = a[c] * WS(W),   bias' = a[c] * bias + b[c],   a = gamma_b / sqrt(var + eps),
    b = beta_b - a * mean,
and the group affine expanded to one value per channel. What remains is a plain convolution
and an nn.GroupNorm: what GN models run, and what ONNX / TorchScript export without custom ops.
"""
from typing import Tuple

import torch
from torch import nn

from .conv import standardize_weight
from .norm import BatchChannelNorm2d, FrozenBatchChannelNorm2d

FOLDABLE = (BatchChannelNorm2d, FrozenBatchChannelNorm2d)


@torch.no_grad()
def folded_parameters(conv: nn.Conv2d, norm) -> Tuple[torch.Tensor, torch.Tensor, nn.GroupNorm]:
    """(weight, bias, group norm) replacing ``conv`` followed by BCN ``norm`` in eval."""
    if not isinstance(norm, FOLDABLE):
        raise TypeError(f"cannot fold {type(norm).__name__}: only BatchChannelNorm2d and its frozen variant")
    weight = conv.weight
    if hasattr(conv, "ws_eps"):  # bcn.WSConv2d, or an adapter's WS conv
        weight = standardize_weight(weight, conv.ws_eps, conv.ws_form)
    pbn = norm.pbn
    a = pbn.weight / torch.sqrt(pbn.running_var + pbn.eps)
    b = pbn.bias - a * pbn.running_mean
    bias = conv.bias if conv.bias is not None else torch.zeros_like(a)
    channels, groups = norm.num_channels, norm.num_groups
    group_norm = nn.GroupNorm(groups, channels, eps=norm.eps).to(weight)  # device and dtype
    per_channel = channels // groups if norm.weight.numel() == groups else 1
    group_norm.weight.copy_(norm.weight.reshape(-1).repeat_interleave(per_channel))
    group_norm.bias.copy_(norm.bias.reshape(-1).repeat_interleave(per_channel))
    return weight * a.view(-1, 1, 1, 1), a * bias + b, group_norm


def folded_conv(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """A plain nn.Conv2d with ``conv``'s geometry and the given weight and bias."""
    new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode).to(weight)
    with torch.no_grad():
        new.weight.copy_(weight)
        new.bias.copy_(bias)
    return new.to(weight)


def fold_pairs(pairs) -> int:
    """Fold each (parent, conv name, norm name) whose norm is BCN: the conv becomes a plain
    nn.Conv2d, the norm an nn.GroupNorm, both set on ``parent``. Returns how many were folded.
    Names may be indices of an nn.Sequential."""
    count = 0
    for parent, conv_name, norm_name in pairs:
        conv, norm = _get(parent, conv_name), _get(parent, norm_name)
        if isinstance(norm, FOLDABLE):
            weight, bias, group_norm = folded_parameters(conv, norm)
            _set(parent, conv_name, folded_conv(conv, weight, bias))
            _set(parent, norm_name, group_norm)
            count += 1
    return count


def _get(parent, name):
    return parent[int(name)] if isinstance(parent, nn.Sequential) else getattr(parent, name)


def _set(parent, name, value):
    if isinstance(parent, nn.Sequential):
        parent[int(name)] = value
    else:
        setattr(parent, name, value)
