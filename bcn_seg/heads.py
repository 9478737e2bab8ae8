"""DeepLabV3's decoder head as the paper's code builds it (Sec. 4.3).

mmseg's ASPPHead fuses the five branches with a 3x3 conv; DeepLabV3 (Chen et al. 2017, §3.3)
and the authors' script (DeepLabV3/deeplab.py: ``conv2``) fuse them with a 1x1 conv, 256
channels, normalized. Everything else -- the 1x1 and three atrous branches, image pooling,
norm and conv layers from norm_cfg / conv_cfg -- is ASPPHead's.
"""
from mmcv.cnn import ConvModule
from mmengine.registry import MODELS
from mmseg.models.decode_heads import ASPPHead


@MODELS.register_module(force=True)
class DeepLabV3Head(ASPPHead):
    """ASPPHead with a ``bottleneck_kernel_size`` fusion conv (1, DeepLabV3's, by default)."""

    def __init__(self, bottleneck_kernel_size: int = 1, **kwargs):
        super().__init__(**kwargs)
        if bottleneck_kernel_size != self.bottleneck.conv.kernel_size[0]:
            self.bottleneck = ConvModule(
                self.bottleneck.conv.in_channels, self.channels, bottleneck_kernel_size,
                padding=bottleneck_kernel_size // 2, conv_cfg=self.conv_cfg,
                norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
