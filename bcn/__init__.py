"""Batch-Channel Normalization and Weight Standardization, framework-free (torch only).

The detectron2 adapter (bcn_det) and the MMSegmentation adapter (bcn_seg) build on these.
"""
from . import allocator, functional, fold, fused
from .conv import WSConv2d
from .convert import (EstimateRateFollower, SkippedUpdateReporter, bcn_learning_rate,
                      convert_to_estimate_mode, estimate_layers, freeze_batch_channel_norm,
                      replace_batchnorm, set_estimate_rate, skipped_updates)
from .diagnostics import ChannelStatsTracker, statdiff
from .norm import (AFFINES, MODES, BatchChannelNorm2d, EstimateBatchNorm2d,
                   EstimateRateNotSetWarning, FrozenBatchChannelNorm2d, FrozenChannelNorm2d)

__all__ = [
    "allocator", "functional", "fold", "fused", "WSConv2d", "BatchChannelNorm2d", "EstimateBatchNorm2d",
    "FrozenBatchChannelNorm2d", "FrozenChannelNorm2d", "EstimateRateNotSetWarning", "MODES",
    "AFFINES", "EstimateRateFollower", "SkippedUpdateReporter", "skipped_updates",
    "set_estimate_rate", "bcn_learning_rate", "estimate_layers", "convert_to_estimate_mode",
    "freeze_batch_channel_norm", "replace_batchnorm", "statdiff", "ChannelStatsTracker",
]
