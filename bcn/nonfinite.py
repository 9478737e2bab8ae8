"""Batches with non-finite statistics, which BCN layers refuse (skipped_updates): counted over
a model and reported once by the frameworks' hooks."""
from torch import nn

from .norm import BatchChannelNorm2d


def skipped_updates(model: nn.Module) -> int:
    """Batches whose non-finite statistics BCN layers refused, summed over the model."""
    return int(sum(int(m.skipped_updates) for m in model.modules() if isinstance(m, BatchChannelNorm2d)))


class SkippedUpdateReporter:
    """Checks, when asked, whether BCN layers refused non-finite batches since the last check.
    Returns a warning the first time (frameworks log it once) and the new total each time."""

    def __init__(self):
        self.total, self.warned = 0, False

    def check(self, model: nn.Module):
        total = skipped_updates(model)
        if total == self.total:
            return None, None
        self.total = total
        if self.warned:
            return None, total
        self.warned = True
        return (f"BCN refused {total} layer update(s) with NaN/inf statistics: the running "
                "statistics/estimates were kept (skipped_updates counts them); the loss of those "
                "batches is non-finite too. Check the data and the learning rate."), total
