"""The COCO configs build the paper's detectors (its Sec. 4.4, configs/README.md's table).

The settings are checked on what detectron2 builds from them -- augmentations, poolers, losses,
optimizer groups, the LR schedule -- against the table's values, which come from the paper's
detection code (maskrcnn-benchmark as the authors' WS fork configures it for 4 images).
"""
import glob

import numpy as np
import pytest
import torch
from detectron2.data import detection_utils
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler, build_optimizer

import bcn
import bcn_det
from tests.det.helpers import TOY_CONFIG, load_cfg

COCO = "configs/detectron2/COCO"
BCN_WS = sorted(glob.glob(f"{COCO}/*_bcn_ws.yaml"))
BASELINES = sorted(set(glob.glob(f"{COCO}/*.yaml")) - set(BCN_WS))
SCHEDULES = {"mask_rcnn": ((600000, 680000), 720000), "faster_rcnn": ((240000, 320000), 360000)}


def flat(cfg, prefix=""):
    out = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def conv_norm_pairs(module):
    return [(m, m.norm) for m in module.modules() if isinstance(m, torch.nn.Conv2d) and getattr(m, "norm", None) is not None]


def check_detector(cfg, model):
    """What every config built on Base-RCNN-FPN-BCN.yaml shares (paper and toy alike)."""
    box_head = model.roi_heads.box_head
    assert len(box_head.conv_norm_relus) == 4 and all(c.kernel_size == (3, 3) for c in box_head.conv_norm_relus)
    assert len(box_head.fcs) == 1
    assert box_head.fcs[0].out_features == cfg.MODEL.ROI_BOX_HEAD.FC_DIM
    poolers = [model.roi_heads.box_pooler] + ([model.roi_heads.mask_pooler] if cfg.MODEL.MASK_ON else [])
    for pooler, size in zip(poolers, (7, 14)):
        for level in pooler.level_poolers:  # maskrcnn-benchmark's ROIAlign: no half-pixel shift
            assert (level.output_size, level.sampling_ratio, level.aligned) == ((size, size), 2, False)
    assert model.proposal_generator.anchor_boundary_thresh == 0
    assert model.proposal_generator.smooth_l1_beta == pytest.approx(1 / 9)
    assert model.roi_heads.box_predictor.smooth_l1_beta == 1.0
    # BCN / WS in the backbone, FPN, box and mask heads; never in RPN head or predictors
    norm_type = {"BCN": (bcn.BatchChannelNorm2d, bcn.FrozenBatchChannelNorm2d), "GN": torch.nn.GroupNorm}[cfg.MODEL.RESNETS.NORM]
    parts = [model.backbone.bottom_up, box_head] + list(model.backbone.lateral_convs) + list(model.backbone.output_convs)
    parts += [model.roi_heads.mask_head] if cfg.MODEL.MASK_ON else []
    for part in parts:
        pairs = conv_norm_pairs(part)
        assert pairs
        for conv, norm in pairs:
            assert isinstance(norm, norm_type)
            assert isinstance(conv, bcn_det.StandardizedConv2d) == cfg.MODEL.RESNETS.WS
            if cfg.MODEL.RESNETS.WS:
                assert conv.ws_form == cfg.MODEL.WS.FORM
    assert not isinstance(model.proposal_generator.rpn_head.conv, bcn_det.StandardizedConv2d)
    assert not any(isinstance(m, bcn_det.StandardizedConv2d) for m in model.roi_heads.box_predictor.modules())


def check_solver(cfg, model, steps, max_iter, ims=4, lr=0.005):
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.SOLVER.STEPS, cfg.SOLVER.MAX_ITER) == (ims, lr, steps, max_iter)
    optimizer = build_optimizer(cfg, model)
    groups = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    assert optimizer.defaults["momentum"] == 0.9
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # maskrcnn-benchmark: every "bias" at twice the LR without decay, everything else decayed
        expected = (2 * lr, 0.0) if name.endswith("bias") else (lr, 1e-4)
        assert groups[id(p)] == pytest.approx(expected), name
    scheduler = build_lr_scheduler(cfg, optimizer)
    multiplier = lambda it: scheduler._multiplier(it / max_iter)  # noqa: E731
    warmup = cfg.SOLVER.WARMUP_ITERS
    assert warmup == 500 and multiplier(0) == pytest.approx(1 / 3)
    assert multiplier(warmup // 2) == pytest.approx(1 / 3 + (2 / 3) * 0.5)
    assert multiplier(warmup) == pytest.approx(1.0)
    assert multiplier(steps[0] - 1) == pytest.approx(1.0) and multiplier(steps[0]) == pytest.approx(0.1)
    assert multiplier(steps[1]) == pytest.approx(0.01) and multiplier(max_iter - 1) == pytest.approx(0.01)


@pytest.mark.parametrize("path", sorted(glob.glob(f"{COCO}/*.yaml")), ids=lambda p: p.split("/")[-1])
def test_paper_config_builds_the_papers_detector_and_schedule(path):
    cfg = load_cfg(path, "MODEL.DEVICE", "cpu")
    model = build_model(cfg)
    check_detector(cfg, model)
    assert model.proposal_generator.post_nms_topk == {True: 2000, False: 1000}
    assert model.proposal_generator.pre_nms_topk == {True: 2000, False: 1000}
    steps, max_iter = SCHEDULES[path.split("/")[-1].split("_R_")[0].split("_X_")[0]]
    check_solver(cfg, model, steps, max_iter)
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 2 and cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False


@pytest.mark.parametrize("path", BCN_WS, ids=lambda p: p.split("/")[-1])
def test_single_scale_800_1333_in_training_and_test(path):
    cfg = load_cfg(path)
    for is_train in (True, False):
        augs = detection_utils.build_augmentation(cfg, is_train)
        resize = augs[0]
        assert isinstance(resize, T.ResizeShortestEdge)
        assert tuple(resize.short_edge_length) in ((800,), (800, 800)) and resize.max_size == 1333
        transform = resize.get_transform(np.zeros((480, 640, 3), np.uint8))
        assert (transform.new_h, transform.new_w) == (800, 1067)
        tall = resize.get_transform(np.zeros((300, 1000, 3), np.uint8))  # long side capped at 1333
        assert max(tall.new_h, tall.new_w) == 1333
        if is_train:
            assert [type(a) for a in augs[1:]] == [T.RandomFlip] and augs[1].prob == 0.5 and augs[1].horizontal
        else:
            assert len(augs) == 1


@pytest.mark.parametrize("path", BASELINES, ids=lambda p: p.split("/")[-1])
def test_a_baseline_differs_from_its_bcn_ws_config_only_in_norm_conv_and_weights(path):
    baseline = flat(load_cfg(path))
    ours = flat(load_cfg(path.replace("_gn_ws.yaml", "_bcn_ws.yaml").replace("_gn.yaml", "_bcn_ws.yaml")))
    differing = {k for k in set(baseline) | set(ours) if baseline.get(k) != ours.get(k)}
    norm_and_conv = {f"MODEL.{part}.{key}" for part in ("RESNETS", "FPN", "ROI_BOX_HEAD", "ROI_MASK_HEAD")
                     for key in ("NORM", "WS")}
    weights_and_input = {"MODEL.WEIGHTS", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "INPUT.FORMAT", "MODEL.WS.FORM", "OUTPUT_DIR"}
    assert differing - norm_and_conv - weights_and_input == set()
    assert any(k.endswith(".NORM") for k in differing)


def test_toy_config_shares_the_papers_structure(toy_root):
    cfg = load_cfg(TOY_CONFIG, "DATASETS.TOY_ROOT", str(toy_root))
    model = build_model(cfg)
    check_detector(cfg, model)
    optimizer = build_optimizer(cfg, model)
    groups = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        expected = (2 * cfg.SOLVER.BASE_LR, 0.0) if name.endswith("bias") else (cfg.SOLVER.BASE_LR, 1e-4)
        assert groups[id(p)] == pytest.approx(expected), name
