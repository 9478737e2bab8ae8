"""Step 1's batch statistics over every process's batch (``sync_batch=True``), as SyncBatchNorm
takes them: the kernels' per-channel sums travel between the passes, one all-gather per
direction, and every process merges the same rows in the same (rank) order."""
from typing import Optional, Tuple

import torch
import torch.distributed as dist

from .arguments import Step1


class RowGather:
    """rows (R, 3, C) -> every process's rows concatenated in rank order (world * R, 3, C).
    ``rank``: where this process's rows start, in units of R."""

    def __init__(self, group):
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        gathered = [torch.empty_like(rows) for _ in range(self.world)]
        dist.all_gather(gathered, rows.contiguous(), group=self.group)
        return torch.cat(gathered)


def gather_for(step1: Step1) -> Optional[RowGather]:
    """The gather a call needs: None unless step 1 takes synchronized batch statistics in a
    job of more than one process (SyncBatchNorm's own rule)."""
    if not (step1.synchronized and step1.kind == "batch" and dist.is_available()
            and dist.is_initialized()):
        return None
    group = step1.process_group or dist.group.WORLD
    return RowGather(group) if dist.get_world_size(group) > 1 else None


def moment_rows(plane_mean: torch.Tensor, plane_var: torch.Tensor) -> torch.Tensor:
    """This process's row (1, 3, C) from its planes' means and variances (N, C), float64: the
    planes, their mean of m, and their mean of v + (m - that mean)^2 -- what the Triton kernels'
    _channel_moments writes."""
    mean = plane_mean.mean(0)
    spread = (plane_var + (plane_mean - mean) ** 2).mean(0)
    return torch.stack([torch.full_like(mean, plane_mean.shape[0]), mean, spread])[None]


def merge_moment_rows(rows: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Step 1's batch statistics from every process's row, merged in order (Chan et al.):
    (2, C) float64 mean and biased variance, and the planes they cover (C,)."""
    count, mean, m2 = rows[0, 0], rows[0, 1], rows[0, 0] * rows[0, 2]
    for k, row_mean, spread in rows[1:]:
        delta = row_mean - mean
        merged = count + k
        mean = mean + delta * (k / merged)
        m2 = m2 + k * spread + delta * delta * (count * k / merged)
        count = merged
    return torch.stack([mean, m2 / count]), count
