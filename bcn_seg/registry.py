"""BCN and WS registered by name in mmengine's MODELS, so configs pick them like BN/GN:

    norm_cfg = dict(type='BCN', num_groups=32, mode='estimate', requires_grad=True)
    conv_cfg = dict(type='WSConv2d')        # ws_eps=1e-5, ws_form='eps_in_sqrt' by default

They go into mmengine's root registry, which every scope (mmseg's included) falls back to.
'WSConv2d' is ours on purpose: mmcv's 'ConvWS' puts eps outside the root and 'ConvAWS'
re-derives its statistics when a checkpoint lacks them, neither matching the published models.
"""
from mmengine.registry import MODELS

from bcn import BatchChannelNorm2d, WSConv2d

MODELS.register_module("BCN", module=BatchChannelNorm2d, force=True)
MODELS.register_module("WSConv2d", module=WSConv2d, force=True)

BCN_TYPES = ("BCN",)
CONV_TYPES = ("WSConv2d",)
