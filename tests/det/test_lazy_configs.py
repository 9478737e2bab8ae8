"""The LazyConfigs build what their YAML twins build, save and load unchanged, fail clearly on
BCN/WS mistakes, and train, evaluate and resume through tools/train_net.py.

"What the YAML builds" is checked on the built objects: the module tree with every plain
setting of every module (and of its matchers / box transforms), the parameter and buffer
shapes, the optimizer's per-parameter groups, the LR multiplier over the schedule, the data
mappers; the YAML configs themselves are checked against the paper by test_paper_configs.py.
"""
import os
import shutil
from collections.abc import Mapping, Sequence
import subprocess
import sys

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetMapper
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler, build_optimizer

import bcn
import bcn_det
from bcn_det.cli import run
from tests.det.helpers import load_cfg

COCO = "configs/detectron2/COCO"
TOY = "configs/detectron2/toy/mask_rcnn_R18_FPN_bcn_ws_toy"
TWINS = [f"{COCO}/{name}" for name in (
    "mask_rcnn_R_50_FPN_2x_bcn_ws", "mask_rcnn_R_101_FPN_2x_bcn_ws", "faster_rcnn_R_50_FPN_1x_bcn_ws",
    "mask_rcnn_R_50_FPN_2x_gn_ws", "faster_rcnn_R_50_FPN_1x_gn_ws")] + [TOY]
SIMPLE = (bool, int, float, str, type(None))


def plain(value):
    """``value`` if it is made of plain settings only (lists as tuples), else None."""
    if isinstance(value, SIMPLE):
        return value
    if isinstance(value, Sequence):  # list, tuple, or omegaconf's ListConfig
        items = [plain(v) for v in value]
        return tuple(items) if all(i is not None or v is None for i, v in zip(items, value)) else None
    if isinstance(value, Mapping):
        items = {k: plain(v) for k, v in value.items()}
        return items if all(i is not None or value[k] is None for k, i in items.items()) else None
    return None


def settings(obj):
    out = {}
    for key, value in vars(obj).items():
        if key.startswith("_") and key not in ("_out_features", "_out_feature_strides"):
            continue
        if key == "training":
            continue
        p = plain(value)
        if p is not None or value is None:
            out[key] = p
        elif not isinstance(value, (torch.nn.Module, torch.Tensor)) and hasattr(value, "__dict__"):
            out[key] = (type(value).__name__, settings(value))  # Matcher, Box2BoxTransform, ...
    return out


# The LazyConfig forms of detectron2's classes; a float loss weight is detectron2's shorthand
# for the same weight on every loss (FastRCNNOutputLayers), a dict is read with default 1.0.
LAZY_FORMS = {"BCNFPN": "FPN", "BCNResNet": "ResNet"}


def describe(model):
    """Every module's class and plain settings, and every tensor's shape."""
    modules = {}
    for name, m in model.named_modules():
        s = settings(m)
        if "loss_weight" in s and "box2box_transform" in s:
            s["loss_weight"] = {k: s["loss_weight"].get(k, 1.0) for k in ("loss_cls", "loss_box_reg")}
        modules[name] = (LAZY_FORMS.get(type(m).__name__, type(m).__name__), s)
    tensors = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return modules, tensors


def yaml_twin(path):
    cfg = load_cfg(path + ".yaml", "MODEL.DEVICE", "cpu")
    bcn_det.check_bcn_config(cfg)
    return cfg


def lazy_model(cfg):
    bcn_det.check_lazy_model(cfg.model)
    return instantiate(cfg.model)


@pytest.mark.parametrize("path", TWINS, ids=os.path.basename)
def test_lazy_config_builds_its_yaml_twins_network_optimizer_and_schedule(path, toy_root):
    lazy, yaml = LazyConfig.load(path + ".py"), yaml_twin(path)
    model, reference = lazy_model(lazy), build_model(yaml)
    assert describe(model) == describe(reference)
    norms = [type(m) for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    kind = bcn.BatchChannelNorm2d if "bcn" in path else torch.nn.GroupNorm
    assert norms and all(issubclass(t, kind) for t in norms)
    ws = [m for m in model.modules() if isinstance(m, bcn_det.StandardizedConv2d)]
    assert len(ws) == sum(1 for m in reference.modules() if isinstance(m, bcn_det.StandardizedConv2d)) > 0

    lazy.optimizer.params.model = model
    optimizer, expected = instantiate(lazy.optimizer), build_optimizer(yaml, reference)
    names = {id(p): n for n, p in model.named_parameters()}
    ref_names = {id(p): n for n, p in reference.named_parameters()}

    def groups(opt, ids):
        return {ids[id(p)]: (g["lr"], g["weight_decay"], g["momentum"], g["nesterov"])
                for g in opt.param_groups for p in g["params"]}

    assert groups(optimizer, names) == groups(expected, ref_names)

    multiplier = instantiate(lazy.lr_multiplier)
    yaml_schedule = build_lr_scheduler(yaml, expected)
    max_iter = lazy.train.max_iter
    assert max_iter == yaml.SOLVER.MAX_ITER
    for it in sorted({0, 1, yaml.SOLVER.WARMUP_ITERS - 1, yaml.SOLVER.WARMUP_ITERS, max_iter - 1}
                     | {s + d for s in yaml.SOLVER.STEPS for d in (-1, 0, 1)}):
        assert multiplier(it / max_iter) == pytest.approx(
            yaml_schedule._multiplier(it / yaml_schedule._max_iter), rel=1e-12), it

    for is_train, loader in ((True, lazy.dataloader.train), (False, lazy.dataloader.test)):
        mapper, ref_mapper = instantiate(loader.mapper), DatasetMapper(yaml, is_train)
        augs, ref_augs = ([(type(a).__name__, settings(a)) for a in m.augmentations.augs]
                          for m in (mapper, ref_mapper))
        assert augs == ref_augs and len(augs) == 1 + is_train
        ours, theirs = settings(mapper), settings(ref_mapper)
        if not is_train:  # a test mapper drops the annotations: their masks are never read
            del ours["use_instance_mask"], theirs["use_instance_mask"]
        assert ours == theirs
    assert lazy.dataloader.train.total_batch_size == yaml.SOLVER.IMS_PER_BATCH
    assert (lazy.dataloader.train.dataset.names,) == tuple(yaml.DATASETS.TRAIN)
    assert (lazy.dataloader.test.dataset.names,) == tuple(yaml.DATASETS.TEST)
    assert lazy.train.init_checkpoint == yaml.MODEL.WEIGHTS
    assert lazy.train.output_dir == yaml.OUTPUT_DIR
    assert lazy.train.checkpointer.period == yaml.SOLVER.CHECKPOINT_PERIOD
    assert lazy.train.reference_world_size == yaml.SOLVER.REFERENCE_WORLD_SIZE
    assert lazy.train.eval_period == yaml.TEST.EVAL_PERIOD
    assert lazy.train.statdiff_period == yaml.DIAGNOSTICS.STATDIFF_PERIOD


@pytest.mark.parametrize("path", TWINS, ids=os.path.basename)
def test_lazy_config_survives_save_and_load(path, tmp_path):
    cfg = LazyConfig.load(path + ".py")
    LazyConfig.save(cfg, str(tmp_path / "saved.yaml"))
    assert not (tmp_path / "saved.yaml.pkl").exists(), "fell back to pickle: not saveable as YAML"
    loaded = LazyConfig.load(str(tmp_path / "saved.yaml"))
    LazyConfig.save(loaded, str(tmp_path / "again.yaml"))
    assert (tmp_path / "saved.yaml").read_text() == (tmp_path / "again.yaml").read_text()
    text = (tmp_path / "saved.yaml").read_text()
    assert "_target_: bcn_det.StandardizeConvs" in text
    assert ("_target_: bcn_det.BCNFactory" in text) == ("bcn_ws" in path)
    # (the same network; not the same initialization: YAML sorts the keys, and instantiate
    # builds the arguments in their order)
    assert describe(lazy_model(cfg)) == describe(lazy_model(loaded))


def test_the_toy_models_of_both_config_systems_compute_the_same(toy_root):
    """Same parameters in both: the same losses in training and the same detections."""
    lazy, yaml = LazyConfig.load(TOY + ".py"), yaml_twin(TOY)
    model, reference = lazy_model(lazy), build_model(yaml)
    model.load_state_dict(reference.state_dict())
    mapper = DatasetMapper(yaml, True)
    from detectron2.data import DatasetCatalog

    batch = [mapper(d) for d in DatasetCatalog.get("bcn_toy_coco_train")[:2]]
    bcn.set_estimate_rate(model, 0.01), bcn.set_estimate_rate(reference, 0.01)
    from detectron2.utils.events import EventStorage

    losses = []
    for m in (model, reference):
        torch.manual_seed(0)
        with EventStorage():
            losses.append({k: v.item() for k, v in m(batch).items()})
    assert losses[0] == losses[1]
    for key, value in model.state_dict().items():  # the estimates moved alike
        assert torch.equal(value, reference.state_dict()[key]), key
    model.eval(), reference.eval()
    with torch.no_grad():
        a, b = model(batch)[0]["instances"], reference(batch)[0]["instances"]
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)


def test_bcn_and_ws_mistakes_in_a_lazy_config_are_named_with_their_fix():
    from detectron2.config import LazyCall as L
    from detectron2.modeling.backbone import FPN, ResNet

    def load():
        return LazyConfig.load(TOY + ".py")

    cfg = load()
    cfg.model.roi_heads.box_head.conv_norm = "BCN"
    with pytest.raises(ValueError, match=r"model.roi_heads.box_head.conv_norm='BCN'.*BCNFactory"):
        bcn_det.check_lazy_model(cfg.model)
    cfg = load()
    cfg.model.backbone.norm = "BNC"   # a typo: named with the key and the choices
    with pytest.raises(ValueError, match=r"model.backbone.norm='BNC' is not a norm detectron2 knows: "
                                         r"choose one of \[.*'GN'.*\], or BCN: L\(bcn_det.BCNFactory\)"):
        bcn_det.check_lazy_model(cfg.model)
    cfg = load()
    cfg.model.backbone._target_ = FPN
    with pytest.raises(ValueError, match=r"model.backbone: FPN takes no 'ws'.*bcn_det.BCNFPN"):
        bcn_det.check_lazy_model(cfg.model)
    cfg = load()
    cfg.model.backbone.bottom_up._target_ = ResNet
    cfg.model.backbone.bottom_up.ws = None
    cfg.model.backbone.bottom_up.freeze_at = 2
    with pytest.raises(ValueError, match=r"model.backbone.bottom_up: .*freeze_at=2.*bcn_det.BCNResNet"):
        bcn_det.check_lazy_model(cfg.model)
    cfg = load()
    cfg.model.backbone.norm = L(bcn_det.BCNFactory)(num_groups=48)  # FPN has 64 channels
    with pytest.raises(ValueError, match="BCNFactory: BCN: num_groups=48 does not divide num_channels=64"):
        instantiate(cfg.model)
    with pytest.raises(ValueError, match="BCNFactory: unknown BCN mode 'micro'"):
        bcn_det.BCNFactory(mode="micro")
    with pytest.raises(ValueError, match="unknown BCN impl 'cuda'"):
        bcn_det.BCNFactory(impl="cuda")
    with pytest.raises(ValueError, match="unknown weight-standardization form 'std'"):
        bcn_det.StandardizeConvs(form="std")
    with pytest.raises(TypeError, match="ws=.*StandardizeConvs"):
        bcn_det.BCNFPN(bottom_up=instantiate(load().model.backbone.bottom_up),
                       in_features=["res2"], out_channels=64, ws=(1e-5, "eps_in_sqrt"))


def test_frozen_stages_of_a_lazy_bcn_resnet_keep_bcn():
    cfg = LazyConfig.load(f"{COCO}/mask_rcnn_R_50_FPN_2x_bcn_ws.py")
    resnet = instantiate(cfg.model.backbone.bottom_up)
    assert isinstance(resnet.stem.conv1.norm, bcn.FrozenBatchChannelNorm2d)
    assert isinstance(resnet.res2[0].conv1.norm, bcn.FrozenBatchChannelNorm2d)
    assert isinstance(resnet.res3[0].conv1.norm, bcn.BatchChannelNorm2d)
    assert not any(p.requires_grad for p in resnet.res2.parameters())


def lazy_opts(out, *extra):
    return ["train.output_dir=" + str(out), "train.max_iter=4", "train.checkpointer.period=2",
            "model.roi_heads.batch_size_per_image=32", *extra]


@pytest.mark.slow
def test_toy_lazy_config_trains_and_evaluates(toy_root, tmp_path):
    opts = lazy_opts(tmp_path / "out", "train.statdiff_period=2",
                     "model.roi_heads.box_predictor.test_score_thresh=0.0")
    results = run(["--config-file", TOY + ".py", *opts])
    for task in ("bbox", "segm"):
        assert 0.0 <= results[task]["AP"] <= 100.0, (task, results[task])
    assert (tmp_path / "out" / "model_final.pth").exists()
    saved = LazyConfig.load(str(tmp_path / "out" / "config.yaml"))  # default_setup saved it
    assert saved.train.max_iter == 4
    metrics = (tmp_path / "out" / "metrics.json").read_text()
    assert '"statdiff/mean"' in metrics
    assert (tmp_path / "out" / "inference" / "coco_instances_results.json").exists()  # as YAML runs
    with pytest.raises(SystemExit, match="train.output_dir"):  # a second run does not overwrite
        run(["--config-file", TOY + ".py", *opts])


def train_net(args, env, timeout=600):
    return subprocess.run([sys.executable, "tools/train_net.py", *args], env=env, timeout=timeout,
                          capture_output=True, text=True)


@pytest.mark.slow
def test_toy_lazy_config_in_two_cpu_processes(toy_root, tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(toy_root.parent), OMP_NUM_THREADS="1")
    result = train_net(["--config-file", TOY + ".py", "--num-gpus", "2", *lazy_opts(
        tmp_path / "out", "model.roi_heads.box_predictor.test_score_thresh=0.0")], env)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "World size: 2" in log
    assert "copypaste: Task: bbox" in log and "copypaste: Task: segm" in log  # evaluated
    state = torch.load(tmp_path / "out" / "model_final.pth", weights_only=False)
    assert state["iteration"] == 3


@pytest.mark.slow
def test_resumed_lazy_run_ends_bit_exact(toy_root, tmp_path):
    """A run resumed from its checkpoint after iteration 2, in a fresh process, ends with the
    parameters, BCN estimates, optimizer and schedule of the uninterrupted run."""
    env = dict(os.environ, DETECTRON2_DATASETS=str(toy_root.parent), OMP_NUM_THREADS="1")
    opts = ["train.max_iter=8", "train.checkpointer.period=3", "train.seed=7",
            "dataloader.evaluator=null", "model.roi_heads.batch_size_per_image=32"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    result = train_net(["--config-file", TOY + ".py", *opts, f"train.output_dir={straight}"], env)
    assert result.returncode == 0, result.stderr[-3000:]
    shutil.copytree(straight, resumed)
    for name in ("model_0000005.pth", "model_final.pth"):
        (resumed / name).unlink()
    (resumed / "last_checkpoint").write_text("model_0000002.pth")
    result = train_net(["--config-file", TOY + ".py", "--resume", *opts,
                        f"train.output_dir={resumed}"], env)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = (torch.load(d / "model_final.pth", weights_only=False) for d in (straight, resumed))
    assert a["iteration"] == b["iteration"] == 7
    assert any("pbn.running_mean" in k for k in a["model"])
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["trainer"]["hooks"]["LRScheduler"] == b["trainer"]["hooks"]["LRScheduler"]
    momentum = [[s["momentum_buffer"] for s in t["trainer"]["optimizer"]["state"].values()]
                for t in (a, b)]
    assert momentum[0] and all(torch.equal(x, y) for x, y in zip(*momentum))


def test_a_lazy_schedule_scales_to_the_gpu_count_as_the_yaml_one():
    """train.reference_world_size = 4: on 8 GPUs the batch and LR double, the iterations and
    periods halve, and the steps and warm-up (fractions of train.max_iter) follow -- what
    DefaultTrainer.auto_scale_workers does to the YAML twin."""
    from detectron2.engine import DefaultTrainer

    from bcn_det.lazy import scale_to_world_size

    lazy, yaml = LazyConfig.load(f"{COCO}/mask_rcnn_R_50_FPN_2x_bcn_ws.py"), yaml_twin(f"{COCO}/mask_rcnn_R_50_FPN_2x_bcn_ws")
    scale_to_world_size(lazy, 8)
    yaml = DefaultTrainer.auto_scale_workers(yaml, 8)
    assert lazy.dataloader.train.total_batch_size == yaml.SOLVER.IMS_PER_BATCH == 8
    assert lazy.optimizer.lr == pytest.approx(yaml.SOLVER.BASE_LR) and yaml.SOLVER.BASE_LR == pytest.approx(0.01)
    assert lazy.train.max_iter == yaml.SOLVER.MAX_ITER == 360000
    assert lazy.train.checkpointer.period == yaml.SOLVER.CHECKPOINT_PERIOD
    multiplier = instantiate(lazy.lr_multiplier)
    for it, expected in ((0, 1 / 3), (yaml.SOLVER.WARMUP_ITERS, 1.0), (yaml.SOLVER.STEPS[0] - 1, 1.0),
                         (yaml.SOLVER.STEPS[0], 0.1), (yaml.SOLVER.STEPS[1], 0.01)):
        assert multiplier(it / lazy.train.max_iter) == pytest.approx(expected), it
    scale_to_world_size(lazy, 8)  # already scaled: unchanged
    assert lazy.train.max_iter == 360000
    odd = LazyConfig.load(f"{COCO}/mask_rcnn_R_50_FPN_2x_bcn_ws.py")
    odd.train.reference_world_size = 3  # 4 images written for 3 GPUs: 8/3 on 2
    with pytest.raises(ValueError, match="does not scale to 2 processes"):
        scale_to_world_size(odd, 2)


def test_bcn_outside_the_backbone_only_is_warned(caplog):
    """The snippet users write first -- BCN as model.backbone.norm on detectron2's common Mask
    R-CNN -- puts BCN in the FPN only; the ResNet keeps FrozenBatchNorm2d: said at build."""
    import logging

    from detectron2.config import LazyCall as L
    from detectron2.model_zoo import get_config

    cfg = get_config("common/models/mask_rcnn_fpn.py")
    cfg.model.backbone.norm = L(bcn_det.BCNFactory)(num_groups=32)
    model = instantiate(cfg.model)
    with caplog.at_level(logging.WARNING, logger="bcn_det"):
        bcn_det.lazy.warn_if_backbone_lacks_bcn(model)
    assert "backbone's ResNet has no BCN layer (its norms: FrozenBatchNorm2d)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bcn_det"):
        bcn_det.lazy.warn_if_backbone_lacks_bcn(instantiate(LazyConfig.load(TOY + ".py").model))
    assert caplog.text == ""


@pytest.mark.slow
def test_demo_and_analyze_model_take_lazy_configs(toy_root, tmp_path):
    model = instantiate(LazyConfig.load(TOY + ".py").model)
    weights = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, weights)
    env = dict(os.environ, DETECTRON2_DATASETS=str(toy_root.parent), OMP_NUM_THREADS="1")
    images = sorted((toy_root / "val").glob("*.png"))[:2]
    result = subprocess.run([sys.executable, "tools/demo.py", "det", "--config-file", TOY + ".py",
                             "--input", *map(str, images), "--output", str(tmp_path / "demo"),
                             "--opts", f"train.init_checkpoint={weights}"],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((tmp_path / "demo").glob("*.png"))) == 2
    result = subprocess.run([sys.executable, "tools/analyze_model.py", "det", "--config-file", TOY + ".py",
                             "--weights", str(weights), "--images", "2"],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "StatDiff" in result.stdout and "backbone.bottom_up" in result.stdout
