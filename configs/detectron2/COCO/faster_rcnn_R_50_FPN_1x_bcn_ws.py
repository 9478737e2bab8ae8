"""Faster R-CNN R-50-FPN 1x, BCN+WS (LazyConfig of the .yaml beside it). Paper (Table 6): 39.7
box AP."""
from ..common.rcnn_fpn_bcn_ws import dataloader, model, optimizer, schedule, train  # noqa: F401 (config keys)

model.backbone.bottom_up.stages.depth = 50
model.roi_heads.update(mask_in_features=None, mask_pooler=None, mask_head=None)
dataloader.train.mapper.use_instance_mask = False
train.init_checkpoint = "pretrained/rn50_bcn_ws.pth"  # the published BCN+WS ImageNet checkpoint
train.output_dir = "output/faster_rcnn_R_50_FPN_1x_bcn_ws"
train.max_iter = 360000
lr_multiplier = schedule(steps=(240000, 320000), max_iter=train.max_iter)
