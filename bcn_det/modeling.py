"""BCN and WS in detectron2's models, for YAML configs and LazyConfigs alike.

YAML: registered builders that read NORM "BCN" and the WS switches from the config. Each
delegates the structure to detectron2 itself and only decides the norm and conv layers, so the
models are detectron2's own. They accept every detectron2 norm name too, which is how the GN
and GN+WS baselines are built by the same builders.

LazyConfig: the same pieces as callables a config can name and save -- BCNFactory (a norm),
StandardizeConvs (the WS rule), BCNResNet / BCNFPN / the BCN heads (detectron2's classes with
a ``ws`` argument and BCN-aware freezing). Both paths build through the same functions.
"""
import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, ROI_BOX_HEAD_REGISTRY, ROI_MASK_HEAD_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, build_resnet_fpn_backbone
from detectron2.modeling.backbone.resnet import ResNet, build_resnet_backbone
from detectron2.modeling.roi_heads.box_head import FastRCNNConvFCHead
from detectron2.modeling.roi_heads.mask_head import MaskRCNNConvUpsampleHead

import bcn
from bcn.conv import standardize_weight
from bcn.functional import WS_FORMS

NORM_KEYS = ("MODEL.RESNETS.NORM", "MODEL.FPN.NORM", "MODEL.ROI_BOX_HEAD.NORM",
             "MODEL.ROI_MASK_HEAD.NORM")
# Which of our builders each section needs once its NORM is "BCN" (detectron2's do not know it).
BCN_BUILDERS = {
    "MODEL.RESNETS.NORM": ("MODEL.BACKBONE.NAME",
                           ("build_bcn_resnet_backbone", "build_bcn_resnet_fpn_backbone")),
    "MODEL.FPN.NORM": ("MODEL.BACKBONE.NAME", ("build_bcn_resnet_fpn_backbone",)),
    "MODEL.ROI_BOX_HEAD.NORM": ("MODEL.ROI_BOX_HEAD.NAME", ("BCNConvFCHead",)),
    "MODEL.ROI_MASK_HEAD.NORM": ("MODEL.ROI_MASK_HEAD.NAME", ("BCNMaskRCNNConvUpsampleHead",)),
}


def lookup(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


class BCNFactory:
    """``factory(channels)`` -> a BatchChannelNorm2d with these settings: what detectron2's
    ``get_norm`` calls when a norm is a callable. The YAML builders make one per section from
    cfg.MODEL.BCN (``from_config``); a LazyConfig names it directly, and it saves and loads:

        model.backbone.norm = L(BCNFactory)(num_groups=32, mode="estimate")

    Settings are checked here, so a bad one fails before any layer is built; errors name
    where the norm came from (``source``)."""

    def __init__(self, num_groups: int = 32, mode: str = "estimate", affine: str = "group",
                 eps: float = 1e-5, momentum: float = 0.1, impl: str = "auto",
                 source: str = "BCNFactory"):
        self.source = source
        self.kwargs = dict(num_groups=num_groups, eps=eps, momentum=momentum, mode=mode,
                           affine=affine, impl=impl)
        try:
            bcn.norm.check_bcn_args(num_groups, num_groups, mode, affine)
            bcn.kernels.requested(impl)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None

    @classmethod
    def from_config(cls, cfg, key: str) -> "BCNFactory":
        o = cfg.MODEL.BCN
        return cls(o.NUM_GROUPS, o.MODE, o.AFFINE, o.EPS, o.MOMENTUM, o.IMPL,
                   source=f"{key}='BCN' with MODEL.BCN settings")

    def __call__(self, channels: int) -> bcn.BatchChannelNorm2d:
        try:
            return bcn.BatchChannelNorm2d(channels, **self.kwargs)
        except ValueError as e:
            raise ValueError(f"{self.source}: {e}") from None

    def __repr__(self) -> str:
        return "BCNFactory(" + ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items()) + ")"


def norm_spec(cfg, key: str):
    """The config's norm name, checked: a BCNFactory for "BCN", else detectron2's own name."""
    name = lookup(cfg, key)
    if name == "BCN":
        return BCNFactory.from_config(cfg, key)
    try:
        get_norm(name, 32)
    except KeyError:
        raise ValueError(
            f"{key}={name!r} is not a known norm: use 'BCN' or one of detectron2's get_norm "
            "names ('', 'BN', 'SyncBN', 'FrozenBN', 'GN', 'nnSyncBN', 'naiveSyncBN', "
            "'naiveSyncBN_N'; 'LN' on detectron2's main branch)") from None
    return name


def check_bcn_config(cfg) -> None:
    """Fail early, with the fix, when a norm is "BCN" but the builder of its section is
    detectron2's own (which would raise a bare KeyError deep inside get_norm)."""
    for norm_key, (name_key, ours) in BCN_BUILDERS.items():
        if lookup(cfg, norm_key) == "BCN" and lookup(cfg, name_key) not in ours:
            if norm_key == "MODEL.FPN.NORM" and "fpn" not in lookup(cfg, name_key):
                continue  # no FPN in this model: its NORM is unused
            raise ValueError(f"{norm_key}='BCN' needs {name_key} to be one of {ours} (registered "
                             f"by bcn_det), not {lookup(cfg, name_key)!r}")
    for key in NORM_KEYS:
        norm_spec(cfg, key)
    _check_group_count(cfg)


def _normalized_channels(cfg, norm_key):
    """{config key: channel count} of the layers a section's norm normalizes."""
    if norm_key == "MODEL.RESNETS.NORM":
        r = cfg.MODEL.RESNETS
        bottleneck = r.DEPTH >= 50
        channels = {"MODEL.RESNETS.STEM_OUT_CHANNELS": r.STEM_OUT_CHANNELS}
        for stage in range(4):
            scale = 2 ** stage
            channels[f"res{stage + 2} out (MODEL.RESNETS.RES2_OUT_CHANNELS x {scale})"] = r.RES2_OUT_CHANNELS * scale
            if bottleneck:
                channels[f"res{stage + 2} bottleneck (NUM_GROUPS x WIDTH_PER_GROUP x {scale})"] = \
                    r.NUM_GROUPS * r.WIDTH_PER_GROUP * scale
        return channels
    if norm_key == "MODEL.FPN.NORM":
        return {"MODEL.FPN.OUT_CHANNELS": cfg.MODEL.FPN.OUT_CHANNELS}
    section = norm_key.rsplit(".", 1)[0]
    return {f"{section}.CONV_DIM": lookup(cfg, section + ".CONV_DIM")}


def _check_group_count(cfg) -> None:
    """MODEL.BCN.NUM_GROUPS divides every layer a "BCN" norm normalizes: said with the config
    keys, before the model is built (where only the layer's channel count would be known)."""
    groups = cfg.MODEL.BCN.NUM_GROUPS
    for norm_key in NORM_KEYS:
        if lookup(cfg, norm_key) != "BCN":
            continue
        for where, channels in _normalized_channels(cfg, norm_key).items():
            if channels % groups:
                raise ValueError(f"MODEL.BCN.NUM_GROUPS={groups} does not divide {where}={channels}, "
                                 f"normalized with BCN ({norm_key}); choose a group count that divides "
                                 "every such layer's channels (32 for ResNets)")


class StandardizedConv2d(Conv2d):
    """detectron2's Conv2d (conv, then its norm and activation) with a standardized weight."""

    ws_eps = 1e-5
    ws_form = "eps_in_sqrt"

    def forward(self, x):
        x = self._conv_forward(x, standardize_weight(self.weight, self.ws_eps, self.ws_form), self.bias)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


class StandardizeConvs:
    """``rule(module)``: every detectron2 Conv2d in ``module`` that is followed by a norm
    becomes a StandardizedConv2d (eps, form: bcn.conv.standardize_weight). The one WS rule of both config
    systems: the YAML builders apply it where a section's WS is true (``from_config``), a
    LazyConfig passes it as ``ws`` to BCNResNet, BCNFPN and the BCN heads:

        model.backbone.bottom_up.ws = L(StandardizeConvs)(eps=1e-5, form="eps_in_sqrt")

    The class is changed in place rather than the module replaced: detectron2 keeps convs in
    plain Python lists too (FPN's lateral/output convs, the heads' conv_norm_relus), which a
    replacement would leave pointing at the old modules.
    """

    def __init__(self, eps: float = 1e-5, form: str = "eps_in_sqrt"):
        if form not in WS_FORMS:
            raise ValueError(f"unknown weight-standardization form {form!r}; choose one of "
                             f"{WS_FORMS}")
        self.eps, self.form = eps, form

    @classmethod
    def from_config(cls, cfg) -> "StandardizeConvs":
        return cls(cfg.MODEL.WS.EPS, cfg.MODEL.WS.FORM)

    def __call__(self, module: torch.nn.Module) -> torch.nn.Module:
        for m in module.modules():
            if type(m) is Conv2d and m.norm is not None:
                m.__class__ = StandardizedConv2d
                m.ws_eps, m.ws_form = self.eps, self.form
        return module

    def __repr__(self) -> str:
        return f"StandardizeConvs(eps={self.eps!r}, form={self.form!r})"


def ws_rule(ws) -> "StandardizeConvs | None":
    """A ``ws`` argument, checked: None (no WS) or a StandardizeConvs."""
    if ws is None or isinstance(ws, StandardizeConvs):
        return ws
    raise TypeError(f"ws={ws!r}: give None or a bcn_det.StandardizeConvs (in a LazyConfig: "
                    "L(StandardizeConvs)(eps=1e-5, form='eps_in_sqrt'))")


def freeze_resnet(resnet: ResNet, freeze_at: int) -> ResNet:
    """ResNet.freeze, with BCN's own frozen variant in the frozen blocks: detectron2's freeze
    knows BatchNorm only, and would turn the BatchNorm inside a BCN layer into FrozenBN."""
    parts = ([resnet.stem] if freeze_at >= 1 else []) + [
        block for idx, stage in enumerate(resnet.stages, start=2) if freeze_at >= idx
        for block in stage.children()]
    for part in parts:
        bcn.freeze_batch_channel_norm(part)
        part.freeze()
    return resnet


class BCNResNet(ResNet):
    """detectron2's ResNet (same arguments) that freezes BCN layers correctly and applies a WS
    rule to its convs: the LazyConfig form of build_bcn_resnet_backbone."""

    def __init__(self, stem, stages, num_classes=None, out_features=None, freeze_at=0, ws=None):
        """ws: None or a StandardizeConvs for the stem's and the blocks' convs."""
        super().__init__(stem, stages, num_classes, out_features, freeze_at=0)
        rule = ws_rule(ws)
        if rule is not None:
            rule(self)
        self.freeze(freeze_at)

    def freeze(self, freeze_at=0):
        return freeze_resnet(self, freeze_at)


class BCNFPN(FPN):
    """detectron2's FPN (same arguments) whose lateral and output convs follow a WS rule (the
    bottom-up network keeps its own): the LazyConfig form of build_bcn_resnet_fpn_backbone."""

    def __init__(self, *args, ws=None, **kwargs):
        """ws: None or a StandardizeConvs for the lateral and output convs."""
        super().__init__(*args, **kwargs)
        rule = ws_rule(ws)
        if rule is not None:
            for conv in list(self.lateral_convs) + list(self.output_convs):
                rule(conv)


def _build_backbone(cfg, input_shape, d2_builder, with_fpn: bool):
    # yacs stores plain values only, so detectron2 builds with a BatchNorm placeholder where a
    # norm is "BCN", and the placeholders are replaced below. Freezing waits for BCN too.
    resnet_norm = norm_spec(cfg, "MODEL.RESNETS.NORM")
    fpn_norm = norm_spec(cfg, "MODEL.FPN.NORM") if with_fpn else ""
    sub = cfg.clone()
    sub.defrost()
    sub.MODEL.BACKBONE.FREEZE_AT = 0
    if isinstance(resnet_norm, BCNFactory):
        sub.MODEL.RESNETS.NORM = "BN"
    if isinstance(fpn_norm, BCNFactory):
        sub.MODEL.FPN.NORM = "BN"
    backbone = d2_builder(sub, input_shape)
    resnet = backbone.bottom_up if with_fpn else backbone
    fpn_convs = list(backbone.lateral_convs) + list(backbone.output_convs) if with_fpn else []
    if isinstance(resnet_norm, BCNFactory):
        bcn.replace_batchnorm(resnet, resnet_norm)
    if isinstance(fpn_norm, BCNFactory):
        for conv in fpn_convs:
            bcn.replace_batchnorm(conv, fpn_norm)
    rule = StandardizeConvs.from_config(cfg)
    if cfg.MODEL.RESNETS.WS:
        rule(resnet)
    if with_fpn and cfg.MODEL.FPN.WS:
        for conv in fpn_convs:
            rule(conv)
    freeze_resnet(resnet, cfg.MODEL.BACKBONE.FREEZE_AT)
    return backbone


@BACKBONE_REGISTRY.register()
def build_bcn_resnet_backbone(cfg, input_shape):
    """detectron2's ResNet/ResNeXt with MODEL.RESNETS.NORM "BCN" and MODEL.RESNETS.WS."""
    return _build_backbone(cfg, input_shape, build_resnet_backbone, with_fpn=False)


@BACKBONE_REGISTRY.register()
def build_bcn_resnet_fpn_backbone(cfg, input_shape):
    """detectron2's ResNet-FPN with BCN / WS in the ResNet (RESNETS.*) and the FPN (FPN.*)."""
    return _build_backbone(cfg, input_shape, build_resnet_fpn_backbone, with_fpn=True)


def _head_with_bcn(base, section: str):
    """A subclass of a detectron2 head whose conv norm and WS come from cfg.MODEL.<section>
    (YAML), or from its ``conv_norm`` and ``ws`` arguments (LazyConfig)."""

    class Head(base):
        @configurable
        def __init__(self, *args, ws=None, **kwargs):
            """ws: None or a StandardizeConvs for the head's convs."""
            super().__init__(*args, **kwargs)
            rule = ws_rule(ws)
            if rule is not None:
                rule(self)

        @classmethod
        def from_config(cls, cfg, input_shape):
            ret = super().from_config(cfg, input_shape)
            ret["conv_norm"] = norm_spec(cfg, f"MODEL.{section}.NORM")
            ret["ws"] = StandardizeConvs.from_config(cfg) if cfg.MODEL[section].WS else None
            return ret

    Head.__name__ = Head.__qualname__ = "BCN" + base.__name__.replace("FastRCNN", "")
    Head.__doc__ = f"detectron2's {base.__name__} with MODEL.{section}.NORM 'BCN' and .WS."
    return Head


BCNConvFCHead = _head_with_bcn(FastRCNNConvFCHead, "ROI_BOX_HEAD")
BCNMaskRCNNConvUpsampleHead = _head_with_bcn(MaskRCNNConvUpsampleHead, "ROI_MASK_HEAD")
ROI_BOX_HEAD_REGISTRY.register(BCNConvFCHead)  # (register(obj) returns None)
ROI_MASK_HEAD_REGISTRY.register(BCNMaskRCNNConvUpsampleHead)
