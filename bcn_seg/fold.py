"""Inference folding for MMSegmentation models (bcn.fold): the (conv, norm) pairs of mmcv's
ConvModule, mmseg's ResNet stem and blocks (conv{i} / norm{i}_name) and their downsample."""
import torch
from mmcv.cnn import ConvModule

from bcn.fold import fold_pairs


@torch.no_grad()
def fold_bcn(model: torch.nn.Module) -> torch.nn.Module:
    pairs = []
    for m in model.modules():
        if isinstance(m, ConvModule) and m.with_norm:
            pairs.append((m, "conv", m.norm_name))
        for i in (1, 2, 3):
            if hasattr(m, f"conv{i}") and hasattr(m, f"norm{i}_name"):
                pairs.append((m, f"conv{i}", getattr(m, f"norm{i}_name")))
        downsample = getattr(m, "downsample", None)
        if isinstance(downsample, torch.nn.Sequential) and len(downsample) == 2:
            pairs.append((downsample, "0", "1"))
    fold_pairs(pairs)
    return model
