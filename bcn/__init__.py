"""Batch-Channel Normalization and Weight Standardization, framework-free (torch only).

The detectron2 adapter (bcn_det) and the MMSegmentation adapter (bcn_seg) build on these.
"""
from . import fold, functional, kernels
from .conv import WSConv2d
from .convert import convert_to_estimate_mode, freeze_batch_channel_norm, replace_batchnorm
from .diagnostics import ChannelStatsTracker, statdiff
from .nonfinite import SkippedUpdateReporter, skipped_updates
from .norm import (AFFINES, MODES, BatchChannelNorm2d, EstimateBatchNorm2d,
                   EstimateRateNotSetWarning, FrozenBatchChannelNorm2d, FrozenBatchPart2d)
from .rate import EstimateRateFollower, base_lr_group, estimate_layers, set_estimate_rate

__all__ = [
    "functional", "fold", "kernels", "WSConv2d", "BatchChannelNorm2d", "EstimateBatchNorm2d",
    "FrozenBatchChannelNorm2d", "FrozenBatchPart2d", "EstimateRateNotSetWarning", "MODES",
    "AFFINES", "EstimateRateFollower", "SkippedUpdateReporter", "skipped_updates",
    "set_estimate_rate", "base_lr_group", "estimate_layers", "convert_to_estimate_mode",
    "freeze_batch_channel_norm", "replace_batchnorm", "statdiff", "ChannelStatsTracker",
]
