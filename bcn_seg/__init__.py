"""MMSegmentation adapter of BCN / WS. In a config: ``custom_imports = dict(imports=['bcn_seg'])``.

Registers (mmengine root registries, visible from the mmseg scope):
    MODELS:   'BCN' (norm_cfg), 'WSConv2d' (conv_cfg), 'DeepLabV3Head' (DeepLabV3's 1x1 fusion)
    TRANSFORMS: 'RandomRescale' (the authors' log-uniform rescaling of an image's own size)
    HOOKS:    'EstimateRateHook', 'StatDiffHook', 'ExactResumeHook'
    WEIGHT_INITIALIZERS: 'BCNPretrained' (the published BCN+WS ImageNet files, any variant)
    DATASETS: 'ToyVOCDataset' (the built-in toy set, VOC layout)
"""
from . import compat  # noqa: F401  (first: mmseg imports need it)
from .checkpoint import BCNPretrainedInit
from .fold import fold_bcn
from .heads import DeepLabV3Head
from .hooks import EstimateRateHook, ExactResumeHook, StatDiffHook
from .registry import BCN_TYPES, CONV_TYPES, build_model
from .toy import ToyVOCDataset, ensure_toy_voc
from .transforms import RandomRescale

__all__ = ["build_model", "fold_bcn", "BCNPretrainedInit", "DeepLabV3Head", "RandomRescale", "EstimateRateHook", "ExactResumeHook", "StatDiffHook", "ToyVOCDataset", "ensure_toy_voc", "BCN_TYPES", "CONV_TYPES"]
