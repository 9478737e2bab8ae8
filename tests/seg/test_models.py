"""Models built from every MMSegmentation config: BCN / WS where asked (real mmseg)."""
import glob

import pytest
import torch
from mmengine.optim import build_optim_wrapper
from torch import nn

import bcn
from bcn_seg.engine import check_config
from tests.seg.helpers import TOY_CONFIG, build_model, load_config

CONFIGS = sorted(glob.glob("configs/mmseg/voc/*.py")) + [TOY_CONFIG]


def normalized_convs(model):
    """(conv, norm) of every ConvModule and ResNet conv/bn pair of backbone and heads."""
    from mmcv.cnn import ConvModule

    pairs = [(m.conv, m.norm) for m in model.modules() if isinstance(m, ConvModule) and m.with_norm]
    for m in model.backbone.modules():
        for i in (1, 2, 3):  # mmseg's ResNet, its blocks: conv{i} and the norm named norm{i}_name
            if hasattr(m, f"conv{i}") and hasattr(m, f"norm{i}_name"):
                pairs.append((getattr(m, f"conv{i}"), getattr(m, getattr(m, f"norm{i}_name"))))
        if hasattr(m, "downsample") and isinstance(m.downsample, nn.Sequential):
            pairs.append((m.downsample[0], m.downsample[1]))
    return pairs


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.split("/")[-1])
def test_configs_build_with_norm_and_ws_everywhere_asked(path):
    cfg = load_config(path)
    check_config(cfg, path)
    model = build_model(cfg, init=False)
    norm_type = cfg.model.backbone.norm_cfg["type"]
    ws = cfg.model.backbone.conv_cfg is not None
    pairs = normalized_convs(model)
    assert len(pairs) > 20
    for conv, norm in pairs:
        assert isinstance(conv, bcn.WSConv2d) == ws, conv
        if norm_type == "BCN":
            assert isinstance(norm, bcn.BatchChannelNorm2d)
            expected = {"estimate": bcn.EstimateBatchNorm2d, "batch": nn.modules.batchnorm._BatchNorm}[
                cfg.model.backbone.norm_cfg["mode"]]
            assert isinstance(norm.pbn, expected)
            if cfg.model.backbone.norm_cfg.get("sync_batch"):
                assert isinstance(norm.pbn, nn.SyncBatchNorm)
        else:
            assert not isinstance(norm, bcn.BatchChannelNorm2d)
            assert isinstance(norm, {"GN": nn.GroupNorm, "SyncBN": nn.SyncBatchNorm}[norm_type])
    assert type(model.decode_head.conv_seg) is nn.Conv2d, "the classifier is never standardized"
    # the published layout: mmseg's ResNet names equal torchvision's
    keys = model.backbone.state_dict().keys()
    if norm_type == "BCN":
        assert {"conv1.weight", "bn1.weight", "bn1.pbn.running_mean",
                "layer2.0.downsample.1.pbn.weight", "layer2.0.downsample.0.weight"} <= set(keys)
        assert model.backbone.bn1.weight.shape == (1, 32, 1)


def test_norm_eval_frozen_stages_and_init_treat_bcn_like_bn():
    cfg = load_config(TOY_CONFIG, **{"model.backbone.frozen_stages": 1, "model.backbone.norm_eval": False})
    model = build_model(cfg)
    assert torch.equal(model.backbone.bn1.weight, torch.ones(1, 32, 1))  # ResNet's Constant init
    model.train()
    for module in (model.backbone.bn1, model.backbone.layer1):
        assert not any(p.requires_grad for p in module.parameters())
    frozen = {k: v.clone() for k, v in model.backbone.layer1.state_dict().items()}
    trained = {k: v.clone() for k, v in model.backbone.layer2.state_dict().items()}
    bcn.set_estimate_rate(model, 0.5)
    model.backbone(torch.randn(2, 3, 64, 64))
    assert all(torch.equal(v, model.backbone.layer1.state_dict()[k]) for k, v in frozen.items())
    assert not all(torch.equal(v, model.backbone.layer2.state_dict()[k]) for k, v in trained.items())

    cfg = load_config(TOY_CONFIG, **{"model.backbone.norm_eval": True})
    model = build_model(cfg).train()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    bcn.set_estimate_rate(model, 0.5)
    model.backbone(torch.randn(2, 3, 64, 64))
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in before.items())


def test_norm_decay_mult_applies_to_bcn_parameters():
    cfg = load_config(TOY_CONFIG)
    model = build_model(cfg)
    wrapper = build_optim_wrapper(model, dict(
        optimizer=dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=1e-4),
        paramwise_cfg=dict(norm_decay_mult=0.0)))
    decay = {id(p): g["weight_decay"] for g in wrapper.param_groups for p in g["params"]}
    bcn_params = [p for m in model.modules() if isinstance(m, bcn.BatchChannelNorm2d) for p in m.parameters()]
    assert bcn_params and all(decay[id(p)] == 0.0 for p in bcn_params)
    assert all(decay[id(m.weight)] == 1e-4 for m in model.modules() if isinstance(m, bcn.WSConv2d))


@pytest.mark.parametrize("options,message", [
    ({"model.backbone.norm_cfg.type": "BCNN"}, r"type 'BCNN' is not registered; did you mean \['BCN'"),
    ({"model.decode_head.conv_cfg.type": "WSConv"}, r"type 'WSConv' is not registered"),
    ({"custom_imports.imports": []}, r"registered by bcn_seg, but the config does not import it"),
])
def test_config_errors_name_the_problem(options, message):
    with pytest.raises(ValueError, match=message):
        check_config(load_config(TOY_CONFIG, **options))


def test_bad_group_count_fails_at_build_with_the_channels():
    cfg = load_config(TOY_CONFIG, **{"norm_cfg.num_groups": 48, "model.backbone.norm_cfg.num_groups": 48})
    with pytest.raises(ValueError, match=r"num_groups=48 does not divide num_channels=64"):
        build_model(cfg)
