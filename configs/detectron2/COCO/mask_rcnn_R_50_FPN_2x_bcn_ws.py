"""Mask R-CNN R-50-FPN 2x, BCN+WS (LazyConfig of the .yaml beside it). Paper (Table 4): 41.4
box AP / 37.3 mask AP."""
from ..common.rcnn_fpn_bcn_ws import dataloader, model, optimizer, schedule, train  # noqa: F401 (config keys)

model.backbone.bottom_up.stages.depth = 50
train.init_checkpoint = "pretrained/rn50_bcn_ws.pth"  # the published BCN+WS ImageNet checkpoint
train.output_dir = "output/mask_rcnn_R_50_FPN_2x_bcn_ws"
train.max_iter = 720000
lr_multiplier = schedule(steps=(600000, 680000), max_iter=train.max_iter)
