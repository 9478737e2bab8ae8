"""Detectron2 adapter of BCN / WS. ``import bcn_det`` registers everything.

Registered builders (name them in a YAML config):
    MODEL.BACKBONE.NAME:       build_bcn_resnet_backbone, build_bcn_resnet_fpn_backbone
    MODEL.ROI_BOX_HEAD.NAME:   BCNConvFCHead
    MODEL.ROI_MASK_HEAD.NAME:  BCNMaskRCNNConvUpsampleHead
LazyConfig pieces (configs/detectron2/common/rcnn_fpn_bcn_ws.py shows them in use):
    BCNFactory (a norm), StandardizeConvs (the WS rule, ``ws=``), BCNResNet, BCNFPN and the
    two heads above (detectron2's classes with ``ws`` and BCN-aware freezing).
Datasets: bcn_toy_coco_train, bcn_toy_coco_val (generated on first use).
"""
from .compat import has_fast_coco_eval, launch
from .config import add_bcn_config, load_config
from .hooks import BaseLRHook, EstimateRateHook, ExactResumeHook, StatDiffHook
from .fold import fold_bcn
from .lazy import check_lazy_model
from .modeling import (BCNFPN, BCNConvFCHead, BCNFactory, BCNMaskRCNNConvUpsampleHead, BCNResNet,
                       StandardizeConvs, StandardizedConv2d, build_bcn_resnet_backbone,
                       build_bcn_resnet_fpn_backbone, check_bcn_config)
from .toy import ensure_toy_coco, register_toy_coco

register_toy_coco()

__all__ = [
    "add_bcn_config", "load_config", "EstimateRateHook", "ExactResumeHook", "StatDiffHook", "BaseLRHook", "BCNConvFCHead", "BCNMaskRCNNConvUpsampleHead",
    "StandardizedConv2d", "BCNFactory", "StandardizeConvs", "BCNResNet", "BCNFPN", "check_lazy_model",
    "build_bcn_resnet_backbone", "build_bcn_resnet_fpn_backbone",
    "check_bcn_config", "fold_bcn", "launch", "has_fast_coco_eval", "ensure_toy_coco", "register_toy_coco",
]
