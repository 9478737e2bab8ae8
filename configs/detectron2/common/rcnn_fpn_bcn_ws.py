"""LazyConfig twin of Base-RCNN-FPN-BCN.yaml: Mask/Faster R-CNN with FPN and the "4conv1fc" box
head, BCN + WS in the backbone, FPN, box head and mask head (the paper's Sec. 4.4), 4 GPUs x 1 image,
unsynchronized: BCN in estimate mode. Built on detectron2's common configs; every setting that
differs from them is the YAML base's, with the sources of configs/README.md (the tests build
both and compare the networks, optimizer groups and schedules). Train with tools/train_net.py.
"""
import detectron2.data.transforms as T
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from bcn_det.modeling import (BCNConvFCHead, BCNFactory, BCNFPN, BCNMaskRCNNConvUpsampleHead,
                              BCNResNet, StandardizeConvs)

model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
dataloader = model_zoo.get_config("common/data/coco.py").dataloader
optimizer = model_zoo.get_config("common/optim.py").SGD
train = model_zoo.get_config("common/train.py").train

# The norm of every normalized layer, and the WS rule of every conv followed by one.
_bcn = L(BCNFactory)(num_groups=32, mode="estimate")
_ws = L(StandardizeConvs)(eps=1e-5, form="eps_in_sqrt")

# The published BCN+WS ImageNet models are torchvision-style: RGB, ImageNet mean/std.
model.input_format = "RGB"
model.pixel_mean = [123.675, 116.28, 103.53]
model.pixel_std = [58.395, 57.12, 57.375]

_backbone = model.backbone
_backbone._target_ = BCNFPN
_backbone.bottom_up._target_ = BCNResNet
_backbone.bottom_up.stages.stride_in_1x1 = False
_backbone.bottom_up.freeze_at = 2
# fmt: off
_backbone.bottom_up.stem.norm = _backbone.bottom_up.stages.norm = _backbone.norm = _bcn
model.roi_heads.box_head.conv_norm = model.roi_heads.mask_head.conv_norm = _bcn
_backbone.bottom_up.ws = _backbone.ws = _ws
model.roi_heads.box_head.ws = model.roi_heads.mask_head.ws = _ws
# fmt: on

_rpn = model.proposal_generator
_rpn.pre_nms_topk = (2000, 1000)
_rpn.post_nms_topk = (2000, 1000)  # maskrcnn-benchmark keeps 2000 per GPU batch: 1 image here
_rpn.anchor_boundary_thresh = 0    # anchors crossing the image border are ignored
_rpn.smooth_l1_beta = 1.0 / 9

_heads = model.roi_heads
_heads.box_head._target_ = BCNConvFCHead
_heads.box_head.conv_dims = [256, 256, 256, 256]
_heads.box_head.fc_dims = [1024]
_heads.box_predictor.smooth_l1_beta = 1.0
_heads.mask_head._target_ = BCNMaskRCNNConvUpsampleHead
_heads.mask_head.conv_dims = [256, 256, 256, 256, 256]  # 4 convs, then the deconv's width
for _pooler in (_heads.box_pooler, _heads.mask_pooler):
    _pooler.pooler_type = "ROIAlign"  # maskrcnn-benchmark's ROIAlign: no half-pixel shift
    _pooler.sampling_ratio = 2

dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(800,), max_size=1333, sample_style="choice"),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.train.mapper.image_format = "RGB"
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333, sample_style="choice"),
]

# The 16-image schedules scaled linearly to 4 images: LR 0.02 -> 0.005, iterations x4 (each
# config sets max_iter and the steps). train.reference_world_size rescales all of it for
# other GPU counts (bcn_det.lazy.scale_to_world_size).
dataloader.train.total_batch_size = 4
optimizer.lr = 0.005
optimizer.momentum = 0.9
optimizer.weight_decay = 1e-4
optimizer.params.base_lr = "${..lr}"
optimizer.params.weight_decay_norm = 1e-4  # maskrcnn-benchmark decays norm weights ...
optimizer.params.weight_decay_bias = 0.0   # ... and no bias (norm biases included), at 2x LR
optimizer.params.bias_lr_factor = 2.0


def schedule(steps, max_iter, warmup_iters=500):
    """A step schedule of ``max_iter`` iterations: warm-up from 1/3, then x0.1 at each step."""
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[0.1 ** k for k in range(len(steps) + 1)], milestones=list(steps),
            num_updates=max_iter),
        warmup_length=warmup_iters / max_iter,
        warmup_method="linear",
        warmup_factor=1.0 / 3,
    )


train.reference_world_size = 4
train.checkpointer.period = 20000
train.eval_period = 0  # evaluate at the end
train.statdiff_period = 0


def use_gn_ws(model, dataloader):
    """The paper's GN+WS baseline: GN where BCN is, and the WS paper's detection pickles as the
    authors' fork (maskrcnn-benchmark) reads them -- BGR 0-255 minus Detectron's means, and
    their WS form (std + eps)."""
    backbone, heads = model.backbone, model.roi_heads
    backbone.bottom_up.stem.norm = backbone.bottom_up.stages.norm = backbone.norm = "GN"
    for head in (heads.box_head, heads.get("mask_head")):
        if head is not None:
            head.conv_norm = "GN"
    for module in (backbone.bottom_up, backbone, heads.box_head, heads.get("mask_head")):
        if module is not None:
            module.ws.form = "eps_on_std"
    model.input_format = dataloader.train.mapper.image_format = "BGR"
    model.pixel_mean = [102.9801, 115.9465, 122.7717]
    model.pixel_std = [1.0, 1.0, 1.0]
