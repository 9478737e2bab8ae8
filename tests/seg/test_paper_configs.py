"""The VOC configs build the paper's DeepLabV3 (its Sec. 4.3, configs/README.md's table).

Checked on the networks and pipelines they build, against what this project did not write:
torchvision's dilated ResNet in the published layout, PIL's resampling, mmengine's schedulers.
"""
import glob
import math
import os
import random

import numpy as np
import pytest
import torch
from PIL import Image

import bcn
from tests.helpers import rel_err
from tests.published_model import reference_model, save_variant, stage_outputs
from tests.seg.helpers import build_model, load_config

VOC = "configs/mmseg/voc"
PAPER = f"{VOC}/deeplabv3_r101_bcn_ws_4xb4-30k_voc12aug-513x513.py"
CONFIGS = sorted(glob.glob(f"{VOC}/*.py"))


def flat(cfg) -> dict:
    """A config as {dotted.key: value}, lists indexed."""
    out = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(value, (list, tuple)) and any(isinstance(v, dict) for v in value):
            for i, v in enumerate(value):
                walk(f"{prefix}[{i}]", v)
        else:
            out[prefix] = value

    walk("", cfg.to_dict())
    return out


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.split("/")[-1])
def test_stage4_is_dilated_2_2_2_and_the_head_is_deeplabv3s(path):
    model = build_model(load_config(path), init=False)
    backbone = model.backbone
    strides = [layer[0].conv2.stride[0] if hasattr(layer[0], "conv2") else None
               for layer in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4)]
    assert strides == [1, 2, 2, 1] and backbone.conv1.kernel_size == (7, 7) and backbone.conv1.stride == (2, 2)
    assert [b.conv2.dilation for b in backbone.layer4] == [(2, 2)] * 3
    assert [b.conv2.padding for b in backbone.layer4] == [(2, 2)] * 3
    assert all(b.conv2.dilation == (1, 1) for layer in (backbone.layer1, backbone.layer2, backbone.layer3) for b in layer)
    assert len(backbone.layer3) == 23, "ResNet-101"
    assert backbone.layer4[0].downsample[0].stride == (1, 1)
    head = model.decode_head
    assert type(head).__name__ == "DeepLabV3Head" and head.channels == 256 and head.num_classes == 21
    aspp = [(m.conv.kernel_size, m.conv.dilation) for m in head.aspp_modules]
    assert aspp == [((1, 1), (1, 1)), ((3, 3), (6, 6)), ((3, 3), (12, 12)), ((3, 3), (18, 18))]
    assert head.image_pool[1].conv.kernel_size == (1, 1)
    assert head.bottleneck.conv.kernel_size == (1, 1) and head.bottleneck.conv.in_channels == 5 * 256
    assert head.dropout is None and head.align_corners is True
    assert not model.with_auxiliary_head
    assert type(head.conv_seg) is torch.nn.Conv2d and head.conv_seg.bias is not None
    loss = head.loss_decode
    assert (loss.avg_non_ignore, loss.use_sigmoid, loss.loss_weight, head.ignore_index) == (True, False, 1.0, 255)


def test_a_513_crop_gives_33x33_stage4_features_output_stride_16():
    model = build_model(load_config(PAPER), init=False).eval()
    with torch.no_grad():
        features = model.backbone(torch.randn(1, 3, 513, 513))
        logits = model.decode_head(features)
    assert [tuple(f.shape[-2:]) for f in features] == [(129, 129), (65, 65), (33, 33), (33, 33)]
    assert logits.shape == (1, 21, 33, 33)


@pytest.mark.parametrize("multi_grid,rates", [(None, (2, 2, 2)), ((1, 2, 2), (1, 2, 2))],
                         ids=["paper", "authors_script"])
def test_stage4_equals_torchvisions_dilated_resnet_loaded_with_the_same_weights(tmp_path, multi_grid, rates):
    """The config's backbone (depth 50 to stay fast) against torchvision's dilated ResNet in the
    published layout, float64; multi_grid=(1, 2, 2) is how to get the authors' script's rates."""
    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
    reference = reference_model(resnext=False, layer4_dilations=rates).double()
    save_variant(reference.float(), "pbn", tmp_path / "published.pth")
    reference.double()
    cfg = load_config(PAPER)
    backbone_cfg = dict(cfg.model.backbone, depth=50, multi_grid=multi_grid,
                        init_cfg=dict(type="BCNPretrained", checkpoint=str(tmp_path / "published.pth")))
    from mmseg.registry import MODELS

    backbone = MODELS.build(backbone_cfg)
    backbone.init_weights()
    backbone.double().eval()
    x = torch.randn(1, 3, 97, 97, dtype=torch.float64)
    with torch.no_grad():
        ours, expected = backbone(x), stage_outputs(reference, x)
    for stage, (a, b) in enumerate(zip(ours, expected), 1):
        assert a.shape == b.shape, stage
        assert rel_err(a, b) < 1e-10, stage


def test_training_and_test_data_follow_the_authors_script():
    cfg = load_config(PAPER)
    train = [t["type"] for t in cfg.train_dataloader.dataset.datasets[0].pipeline]
    assert train == ["LoadImageFromFile", "LoadAnnotations", "RandomFlip", "RandomRescale", "RandomCrop", "PackSegInputs"]
    crop = cfg.train_dataloader.dataset.datasets[0].pipeline[4]
    assert crop["crop_size"] == (513, 513) and crop.get("cat_max_ratio", 1.0) == 1.0
    assert cfg.train_dataloader.dataset.datasets[0].pipeline[3]["ratio_range"] == (0.5, 2.0)
    assert [d.ann_file for d in cfg.train_dataloader.dataset.datasets] == [
        "ImageSets/Segmentation/train.txt", "ImageSets/Segmentation/aug.txt"]
    assert [t["type"] for t in cfg.val_dataloader.dataset.pipeline] == ["LoadImageFromFile", "LoadAnnotations", "PackSegInputs"]
    assert cfg.val_dataloader.dataset.ann_file == "ImageSets/Segmentation/val.txt"
    pre = cfg.model.data_preprocessor
    assert pre.size == (513, 513) and pre.test_cfg == dict(size=(513, 513))
    assert (pre.pad_val, pre.seg_pad_val, pre.bgr_to_rgb) == (0, 255, True)
    assert pre.mean == [123.675, 116.28, 103.53] and pre.std == [58.395, 57.12, 57.375]


def test_random_rescale_is_log_uniform_of_the_images_own_size_with_pils_filter():
    from mmseg.registry import TRANSFORMS
    from mmengine.registry import init_default_scope

    init_default_scope("mmseg")
    rescale = TRANSFORMS.build(dict(type="RandomRescale", ratio_range=(0.5, 2.0)))
    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    image = rng.integers(0, 256, (75, 100, 3), dtype=np.uint8)
    labels = rng.choice(np.array([0, 3, 7, 255], dtype=np.uint8), (75, 100))
    factors = []
    random.seed(int.from_bytes(os.urandom(4), "little"))
    for _ in range(300):
        state = random.getstate()
        out = rescale.transform(dict(img=image.copy(), gt_seg_map=labels.copy(), seg_fields=["gt_seg_map"],
                                     img_shape=image.shape[:2]))
        random.setstate(state)
        factor = 2.0 ** random.uniform(-1.0, 1.0)  # the draw the transform made
        size = (int(100 * factor + 0.5), int(75 * factor + 0.5))
        assert out["img"].shape[:2] == (size[1], size[0])
        factors.append(factor)
        if len(factors) <= 5:
            expected = np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS))
            assert np.array_equal(out["img"], expected)
            assert np.array_equal(out["gt_seg_map"], np.asarray(Image.fromarray(labels).resize(size, Image.NEAREST)))
        assert set(np.unique(out["gt_seg_map"])) <= {0, 3, 7, 255}
    logs = np.log2(factors)
    assert logs.min() >= -1 and logs.max() <= 1
    assert abs(np.mean(logs < 0) - 0.5) < 0.12 and abs(np.mean(np.abs(logs) < 0.5) - 0.5) < 0.12  # uniform in log2


def test_schedule_is_the_papers():
    cfg = load_config(PAPER)
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.momentum, opt.weight_decay) == ("SGD", 0.007, 0.9, 1e-4)
    assert "paramwise_cfg" not in cfg.optim_wrapper, "the script decays every parameter alike"
    assert cfg.train_cfg.max_iters == 30000 and cfg.train_dataloader.batch_size == 4  # x 4 GPUs = 16
    [poly] = cfg.param_scheduler
    assert (poly.type, poly.power, poly.eta_min, poly.begin, poly.end) == ("PolyLR", 0.9, 0.0, 0, 30000)
    from mmengine.optim.scheduler import PolyLR

    param = torch.nn.Parameter(torch.zeros(1))
    sgd = torch.optim.SGD([param], lr=0.007)
    scheduler = PolyLR(sgd, power=0.9, eta_min=0.0, begin=0, end=30000, by_epoch=False)
    lrs = {}
    for it in range(30000):
        if it in (0, 1, 15000, 29999):
            lrs[it] = sgd.param_groups[0]["lr"]
        scheduler.step()
    for it, lr in lrs.items():  # the script: base_lr * (1 - it / max_iter) ** 0.9; mmengine's
        # PolyLR reaches 0 one iteration earlier, (1 - it / (max_iter - 1)) ** 0.9
        assert math.isclose(lr, 0.007 * (1 - it / 30000) ** 0.9, abs_tol=1e-6), it
    estimate = load_config(f"{VOC}/deeplabv3_r101_bcn_ws_estimate_16xb1-30k_voc12aug-513x513.py")
    assert estimate.train_dataloader.batch_size == 1 and estimate.auto_scale_lr.base_batch_size == 16


def test_bcn_ws_layers_are_the_published_ones():
    cfg = load_config(PAPER)
    norm, conv = cfg.model.backbone.norm_cfg, cfg.model.backbone.conv_cfg
    assert norm == dict(type="BCN", num_groups=32, mode="batch", sync_batch=True, requires_grad=True)
    assert cfg.model.decode_head.norm_cfg == norm and cfg.model.decode_head.conv_cfg == conv == dict(type="WSConv2d")
    layer = bcn.WSConv2d(4, 4, 3)
    assert (layer.ws_eps, layer.ws_form) == (1e-5, "eps_in_sqrt"), "the ImageNet checkpoints' form"
    assert cfg.model.backbone.init_cfg == dict(type="BCNPretrained", checkpoint="pretrained/rn101-bcn-ws.pth.tar")


BASELINE_KEYS = ("norm_cfg", "conv_cfg", "head_norm_cfg", "init_cfg")


@pytest.mark.parametrize("path", [p for p in CONFIGS if p != PAPER], ids=lambda p: p.split("/")[-1])
def test_a_baseline_differs_only_in_norm_conv_and_weights(path):
    ours, base = flat(load_config(path)), flat(load_config(PAPER))
    differing = {k for k in set(ours) | set(base) if ours.get(k, "absent") != base.get(k, "absent")}
    allowed = {k for k in differing if any(part in k.split(".") for part in BASELINE_KEYS)
               or k.split(".")[0] in BASELINE_KEYS}
    if "estimate" in path:  # 1 image per GPU is what the estimate mode is for
        allowed |= {"train_dataloader.batch_size"}
    assert differing - allowed == set(), sorted(differing - allowed)


def test_the_paper_pipeline_reads_a_real_voc_folder_and_pads_like_the_script(toy_voc, tmp_path):
    """The VOC layout the config reads (train + SBD aug lists), through mmseg's PascalVOCDataset,
    the pipeline and the model's data preprocessor: 513x513, padded with the mean image (0 after
    normalization) and label 255; test images keep their size and are padded the same way."""
    import shutil

    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS, MODELS

    root = tmp_path / "VOC2012"
    shutil.copytree(toy_voc, root)
    shutil.copytree(root / "SegmentationClass", root / "SegmentationClassAug")
    names = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    (root / "ImageSets/Segmentation/aug.txt").write_text("\n".join(names[:8]) + "\n")
    cfg = load_config(PAPER)
    init_default_scope("mmseg")
    for part in cfg.train_dataloader.dataset.datasets:
        part.data_root = str(root)
    train = DATASETS.build(cfg.train_dataloader.dataset)
    assert len(train) == len(names) + 8
    preprocessor = MODELS.build(cfg.model.data_preprocessor)
    samples = [train[i] for i in range(4)]
    batch = preprocessor(dict(inputs=[s["inputs"] for s in samples], data_samples=[s["data_samples"] for s in samples]), training=True)
    assert batch["inputs"].shape == (4, 3, 513, 513)
    for image, sample, raw in zip(batch["inputs"], batch["data_samples"], samples):
        h, w = raw["inputs"].shape[-2:]
        assert 64 <= h <= 256 and 64 <= w <= 256  # 128 px rescaled by 0.5-2, no crop below 513
        assert torch.all(image[:, h:, :] == 0) and torch.all(image[:, :, w:] == 0)
        labels = sample.gt_sem_seg.data
        assert labels.shape[-2:] == (513, 513) and torch.all(labels[:, h:, :] == 255) and torch.all(labels[:, :, w:] == 255)
    cfg.val_dataloader.dataset.data_root = str(root)
    val = DATASETS.build(cfg.val_dataloader.dataset)
    sample = val[0]
    assert sample["inputs"].shape[-2:] == (128, 128)  # original size: no resize at test
    batch = preprocessor(dict(inputs=[sample["inputs"]], data_samples=[sample["data_samples"]]), training=False)
    assert batch["inputs"].shape == (1, 3, 513, 513) and torch.all(batch["inputs"][:, :, 128:, :] == 0)
    assert tuple(batch["data_samples"][0].img_padding_size) == (0, 385, 0, 385)  # cropped off before the metric
