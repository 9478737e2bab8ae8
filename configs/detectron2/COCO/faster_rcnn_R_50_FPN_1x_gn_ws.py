"""Baseline of the paper: Faster R-CNN R-50-FPN 1x with GN+WS in every place BCN+WS is
(LazyConfig of the .yaml beside it)."""
from ..common.rcnn_fpn_bcn_ws import use_gn_ws
from .faster_rcnn_R_50_FPN_1x_bcn_ws import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401 (config keys)

use_gn_ws(model, dataloader)
train.init_checkpoint = "pretrained/R-50-GN-WS.pkl"  # cs.jhu.edu/~syqiao/WeightStandardization/
train.output_dir = "output/faster_rcnn_R_50_FPN_1x_gn_ws"
