"""The README's main job as a LazyConfig (twin of the .yaml beside it): BCN+WS Mask R-CNN
trained from scratch on the built-in toy set (bcn_det.toy, under $DETECTRON2_DATASETS), on
the CPU in a few minutes."""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

import detectron2.data.transforms as T

from ..common.rcnn_fpn_bcn_ws import dataloader, model, optimizer, schedule, train  # noqa: F401 (config keys)

_resnet = model.backbone.bottom_up
_resnet.stages.depth = 18
_resnet.stages.pop("stride_in_1x1")  # basic blocks have no 1x1 conv
_resnet.freeze_at = 0
model.backbone.out_channels = 64
_rpn = model.proposal_generator
_rpn.head.in_channels = 64
_rpn.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
_rpn.batch_size_per_image = 64
_rpn.pre_nms_topk = (500, 300)
_rpn.post_nms_topk = (200, 100)
_heads = model.roi_heads
_heads.num_classes = 3
_heads.batch_size_per_image = 64
_heads.box_head.input_shape = ShapeSpec(channels=64, height=7, width=7)
_heads.box_head.conv_dims = [64, 64, 64, 64]
_heads.box_head.fc_dims = [256]
_heads.box_predictor.input_shape = ShapeSpec(channels=256)
_heads.box_predictor.test_topk_per_image = 20
_heads.mask_head.input_shape = ShapeSpec(channels=64, height=14, width=14)
_heads.mask_head.conv_dims = [64, 64, 64, 64, 64]

dataloader.train.dataset.names = "bcn_toy_coco_train"
dataloader.test.dataset.names = "bcn_toy_coco_val"
dataloader.train.num_workers = dataloader.test.num_workers = 0
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(128,), max_size=128, sample_style="choice"),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=128, max_size=128, sample_style="choice"),
]
dataloader.train.total_batch_size = 2

optimizer.lr = 0.02
train.reference_world_size = 0
train.device = "cpu"
train.init_checkpoint = ""
train.max_iter = 300
train.checkpointer.period = 100
train.statdiff_period = 20  # StatDiff / dead channels into metrics.json (tools/plot_statdiff.py)
train.output_dir = "output/toy_mask_rcnn_bcn_ws"
lr_multiplier = schedule(steps=(240, 280), max_iter=train.max_iter, warmup_iters=50)
