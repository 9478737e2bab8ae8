"""MMSegmentation adapter of BCN / WS. In a config: ``custom_imports = dict(imports=['bcn_seg'])``.

Registers (mmengine root registries, visible from the mmseg scope):
    MODELS:   'BCN' (norm_cfg), 'WSConv2d' (conv_cfg)
    HOOKS:    'EstimateRateHook', 'StatDiffHook', 'ExactResumeHook'
    WEIGHT_INITIALIZERS: 'BCNPretrained' (the published BCN+WS ImageNet files, any variant)
    DATASETS: 'ToyVOCDataset' (the built-in toy set, VOC layout)
"""
from . import compat  # noqa: F401  (first: mmseg imports need it)
from .checkpoint import BCNPretrainedInit
from .fold import fold_bcn
from .hooks import EstimateRateHook, ExactResumeHook, StatDiffHook
from .registry import BCN_TYPES, CONV_TYPES
from .toy import ToyVOCDataset, ensure_toy_voc

__all__ = ["fold_bcn", "BCNPretrainedInit", "EstimateRateHook", "ExactResumeHook", "StatDiffHook", "ToyVOCDataset", "ensure_toy_voc", "BCN_TYPES", "CONV_TYPES"]
