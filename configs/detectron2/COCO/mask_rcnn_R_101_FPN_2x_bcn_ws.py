"""Mask R-CNN R-101-FPN 2x, BCN+WS (LazyConfig of the .yaml beside it). Paper (Table 4): 43.6
box AP / 39.1 mask AP."""
from .mask_rcnn_R_50_FPN_2x_bcn_ws import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401 (config keys)

model.backbone.bottom_up.stages.depth = 101
train.init_checkpoint = "pretrained/rn101_bcn_ws.pth"  # the published BCN+WS ImageNet checkpoint
train.output_dir = "output/mask_rcnn_R_101_FPN_2x_bcn_ws"
