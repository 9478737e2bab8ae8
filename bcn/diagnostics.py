"""The elimination-singularity diagnostic StatDiff (BCN_SPEC §4, Eq. 8)."""
import torch
from torch import Tensor


def statdiff(channel_mean: Tensor, channel_std: Tensor, num_groups: int) -> Tensor:
    """StatDiff of each group: sqrt(mean_c(mu_c^2) - mean_c(mu_c)^2) / mean_c(sigma_c).

    channel_mean, channel_std: (C,) running mean and standard deviation of each channel of a
    convolution's output (before normalization). Returns a (G,) tensor; 0 means every channel
    of the group has the same statistics.
    """
    channels = channel_mean.numel()
    if channel_std.numel() != channels:
        raise ValueError(f"statdiff: {channels} means but {channel_std.numel()} standard deviations")
    if num_groups <= 0 or channels % num_groups != 0:
        raise ValueError(f"statdiff: num_groups={num_groups} does not divide {channels} channels")
    mu = channel_mean.reshape(num_groups, -1).double()
    sigma = channel_std.reshape(num_groups, -1).double()
    spread = (mu.pow(2).mean(1) - mu.mean(1).pow(2)).clamp_min(0).sqrt()
    return (spread / sigma.mean(1)).to(channel_mean.dtype)
