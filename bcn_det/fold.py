"""Inference folding for detectron2 models (bcn.fold): every detectron2 Conv2d whose norm is
BCN, with or without WS."""
import torch
from detectron2.layers import Conv2d

from bcn.fold import FOLDABLE, folded_parameters


@torch.no_grad()
def fold_bcn(model: torch.nn.Module) -> torch.nn.Module:
    """For eval and export: fold WS and BCN's batch part into every detectron2 Conv2d whose
    norm is BCN, leaving a plain Conv2d with an nn.GroupNorm (bcn.fold). In place, so the
    lists detectron2 keeps its convs in stay valid."""
    for m in model.modules():
        if isinstance(m, Conv2d) and isinstance(m.norm, FOLDABLE):
            weight, bias, group_norm = folded_parameters(m, m.norm)
            m.__class__ = Conv2d
            m.__dict__.pop("ws_eps", None), m.__dict__.pop("ws_form", None)
            m.weight = torch.nn.Parameter(weight)
            m.bias = torch.nn.Parameter(bias)
            m.norm = group_norm
    return model
