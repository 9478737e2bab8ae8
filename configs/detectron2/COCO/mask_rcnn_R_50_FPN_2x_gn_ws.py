"""Baseline of the paper: Mask R-CNN R-50-FPN 2x with GN+WS in every place BCN+WS is
(LazyConfig of the .yaml beside it)."""
from ..common.rcnn_fpn_bcn_ws import use_gn_ws
from .mask_rcnn_R_50_FPN_2x_bcn_ws import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401 (config keys)

use_gn_ws(model, dataloader)
train.init_checkpoint = "pretrained/R-50-GN-WS.pkl"  # cs.jhu.edu/~syqiao/WeightStandardization/
train.output_dir = "output/mask_rcnn_R_50_FPN_2x_gn_ws"
