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


def build_model(model_cfg, init: bool = True):
    """An mmseg model from a config's ``model`` dict, built in mmseg's registry scope;
    ``init=False`` skips init_weights (and with it any pretrained file)."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS as SEG_MODELS

    init_default_scope("mmseg")
    model = SEG_MODELS.build(model_cfg)
    if init:
        model.init_weights()
    return model
