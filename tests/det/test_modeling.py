"""Models built from every detectron2 config: BCN / WS exactly where asked (real detectron2)."""
import glob

import pytest
import torch
import yaml
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import DefaultTrainer
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer

import bcn
import bcn_det
from tests.det.helpers import TOY_CONFIG, load_cfg

PAPER_CONFIGS = sorted(glob.glob("configs/detectron2/COCO/*.yaml"))
PLAIN_NORMS = (torch.nn.GroupNorm, torch.nn.BatchNorm2d, FrozenBatchNorm2d, torch.nn.SyncBatchNorm)


def sections(model):
    """The parts of a model that the configs normalize: name -> module."""
    parts = {"backbone": model.backbone.bottom_up, "box_head": model.roi_heads.box_head}
    parts["fpn"] = torch.nn.ModuleList(list(model.backbone.lateral_convs) + list(model.backbone.output_convs))
    if model.roi_heads.mask_on:
        parts["mask_head"] = model.roi_heads.mask_head
    return parts


def norm_layers(module):
    return [m.norm for m in module.modules() if isinstance(m, Conv2d) and m.norm is not None]


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.split("/")[-1])
def test_paper_configs_build_with_norms_and_ws_where_asked(path):
    cfg = load_cfg(path, "MODEL.DEVICE", "cpu")
    bcn_det.check_bcn_config(cfg)
    model = build_model(cfg)
    expect_bcn = cfg.MODEL.RESNETS.NORM == "BCN"
    expect_ws = cfg.MODEL.RESNETS.WS
    for name, part in sections(model).items():
        norms = norm_layers(part)
        assert norms, name
        for norm in norms:
            if expect_bcn:
                assert isinstance(norm, (bcn.BatchChannelNorm2d, bcn.FrozenBatchChannelNorm2d)), name
                if isinstance(norm, bcn.BatchChannelNorm2d):
                    assert norm.mode == "estimate" and norm.num_groups == 32
            else:
                assert type(norm) is torch.nn.GroupNorm, name
        assert not any(type(m) in PLAIN_NORMS for m in part.modules()) or not expect_bcn, name
        convs = [m for m in part.modules() if isinstance(m, Conv2d) and m.norm is not None]
        assert all(isinstance(c, bcn_det.StandardizedConv2d) == expect_ws for c in convs), name
    # predictors stay plain layers
    assert not isinstance(model.proposal_generator.rpn_head.conv, bcn_det.StandardizedConv2d)
    if cfg.MODEL.MASK_ON:
        assert type(model.roi_heads.mask_head.predictor) is Conv2d
    # frozen stem and res2: BCN's frozen variant, nothing trainable
    frozen = [model.backbone.bottom_up.stem] + list(model.backbone.bottom_up.res2.children())
    for block in frozen:
        assert not any(p.requires_grad for p in block.parameters())
        if expect_bcn:
            assert all(isinstance(n, bcn.FrozenBatchChannelNorm2d) for n in norm_layers(block))
    # every config prints and reloads (cfg.dump round trip)
    again = get_cfg()
    bcn_det.add_bcn_config(again)
    again.merge_from_other_cfg(CfgNode.load_cfg(cfg.dump()))
    assert yaml.safe_load(again.dump()) == yaml.safe_load(cfg.dump())


def test_paper_schedule_rescales_with_reference_world_size():
    cfg = load_cfg("configs/detectron2/COCO/mask_rcnn_R_50_FPN_2x_bcn_ws.yaml")
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER) == (4, 0.005, 720000)
    scaled = DefaultTrainer.auto_scale_workers(cfg, 8)
    assert (scaled.SOLVER.IMS_PER_BATCH, scaled.SOLVER.BASE_LR, scaled.SOLVER.MAX_ITER) == (8, 0.01, 360000)


def test_weight_decay_norm_applies_to_bcn_parameters():
    cfg = load_cfg(TOY_CONFIG, "SOLVER.WEIGHT_DECAY", "1e-4", "SOLVER.WEIGHT_DECAY_NORM", "0.0")
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    bcn_params = [p for m in model.modules() if isinstance(m, bcn.BatchChannelNorm2d) for p in m.parameters()]
    assert bcn_params and all(decay[id(p)] == 0.0 for p in bcn_params)
    conv_weights = [m.weight for m in model.modules() if isinstance(m, bcn_det.StandardizedConv2d)]
    assert all(decay[id(p)] == 1e-4 for p in conv_weights)


def test_models_without_bcn_are_untouched():
    from detectron2 import model_zoo

    cfg = get_cfg()
    bcn_det.add_bcn_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    assert not any(isinstance(m, (bcn.BatchChannelNorm2d, bcn_det.StandardizedConv2d, bcn.FrozenBatchChannelNorm2d))
                   for m in model.modules())


@pytest.mark.parametrize("opts,message", [
    (["MODEL.RESNETS.NORM", "BCNN"], r"MODEL.RESNETS.NORM='BCNN' is not a known norm"),
    (["MODEL.ROI_BOX_HEAD.NORM", "batchnorm"], r"MODEL.ROI_BOX_HEAD.NORM='batchnorm' is not a known norm"),
    (["MODEL.BCN.NUM_GROUPS", "48"], r"MODEL.BCN.NUM_GROUPS=48 does not divide MODEL.RESNETS.STEM_OUT_CHANNELS=64.*MODEL.RESNETS.NORM"),
    (["MODEL.BCN.MODE", "micro"], r"unknown BCN mode 'micro'"),
    (["MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone"], r"needs MODEL.BACKBONE.NAME to be one of"),
    (["MODEL.ROI_MASK_HEAD.NAME", "MaskRCNNConvUpsampleHead"], r"needs MODEL.ROI_MASK_HEAD.NAME"),
])
def test_bad_norm_settings_fail_at_build_time_with_the_key(opts, message):
    cfg = load_cfg(TOY_CONFIG, *opts)
    with pytest.raises(ValueError, match=message):
        bcn_det.check_bcn_config(cfg)
        build_model(cfg)


@pytest.mark.parametrize("training", [False, True])
def test_an_image_without_boxes_runs_through_the_bcn_heads(training):
    """With no detection above the score threshold, detectron2 runs the mask head on an empty
    batch of ROIs (N = 0); in training, the mask head sees none when no proposal is foreground."""
    cfg = load_cfg(TOY_CONFIG, "MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "1.01")
    torch.manual_seed(0)
    model = build_model(cfg)
    bcn.set_estimate_rate(model, 0.01)
    image = {"image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8), "height": 64, "width": 64}
    if not training:
        with torch.no_grad():
            instances = model.eval()([image])[0]["instances"]
        assert len(instances) == 0 and instances.pred_masks.shape[0] == 0
        return
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.events import EventStorage

    empty = Instances((64, 64), gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0, dtype=torch.long))
    empty.gt_masks = torch.zeros(0, 64, 64, dtype=torch.bool)
    mask_head = model.roi_heads.mask_head
    before = {k: v.clone() for k, v in mask_head.state_dict().items()}
    with EventStorage():
        losses = model.train()([dict(image, instances=empty)])
    sum(losses.values()).backward()
    assert torch.isfinite(sum(losses.values()))
    assert all(torch.equal(v, before[k]) for k, v in mask_head.state_dict().items())


def test_a_checkpointer_loads_again_after_a_failed_load(tmp_path):
    """detectron2's main branch kept a checkpointer 'inside' a load that failed, and its next
    load failed with a bare AssertionError (bcn_det.compat.forget_failed_load)."""
    from bcn_det.checkpoint import BCNCheckpointer
    from bcn.pretrained import CheckpointError

    model = build_model(load_cfg(TOY_CONFIG, "MODEL.DEVICE", "cpu"))
    checkpointer = BCNCheckpointer(model)
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(b"PK\x03\x04 not a whole checkpoint")
    with pytest.raises(CheckpointError, match="truncated.pth"):
        checkpointer.load(str(bad))
    good = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, good)
    checkpointer.load(str(good))
