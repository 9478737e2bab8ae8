"""Step 1's batch statistics over every process's batch (``sync_batch=True``), as SyncBatchNorm
takes them: the kernels' per-channel sums travel between the passes, one all-gather per
direction, and every process merges the same rows in the same (rank) order."""
from typing import Optional

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
