"""The published BCN+WS checkpoints load exactly into detectron2 and MMSegmentation.

A reference model in the published layout (tests/published_model.py) is saved in every
variant, loaded into each framework's backbone (estimate mode: estimates from the BatchNorm
statistics), and its stage outputs compared in float64 eval.
"""
import shutil
import subprocess
import sys

import pytest
import torch

from bcn.pretrained import CheckpointError, read_published
from tests.helpers import rel_err
from tests.published_model import VARIANTS, reference_model, save_variant, stage_outputs

pytestmark = pytest.mark.slow
ARCHS = {"R50": False, "X50": True}


@pytest.fixture(scope="module", params=list(ARCHS))
def published(request, tmp_path_factory):
    torch.manual_seed(int.from_bytes(__import__("os").urandom(4), "little"))
    model = reference_model(ARCHS[request.param]).double()
    directory = tmp_path_factory.mktemp(request.param)
    files = {}
    for variant in VARIANTS:
        files[variant] = directory / f"{variant}.pth"
        save_variant(model.float(), variant, files[variant])
    model.double()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        expected = stage_outputs(model, x)
    yield request.param, files, x, expected
    # ~0.5 GB per architecture: free it before the next one is written.
    shutil.rmtree(directory, ignore_errors=True)


def detectron2_backbone(arch):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_backbone

    import bcn_det

    cfg = get_cfg()
    bcn_det.add_bcn_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_bcn_resnet_backbone"
    cfg.MODEL.RESNETS.update(DEPTH=50, NORM="BCN", WS=True, STRIDE_IN_1X1=False,
                             OUT_FEATURES=["res2", "res3", "res4", "res5"])
    if arch == "X50":
        cfg.MODEL.RESNETS.update(NUM_GROUPS=32, WIDTH_PER_GROUP=4)
    cfg.MODEL.BCN.MODE = "estimate"
    return build_backbone(cfg)


def mmseg_backbone(arch, init_cfg):
    import bcn_seg  # noqa: F401
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope("mmseg")
    extra = dict(type="ResNeXt", groups=32, base_width=4) if arch == "X50" else dict(type="ResNet")
    backbone = MODELS.build(dict(
        depth=50, num_stages=4, out_indices=(0, 1, 2, 3), style="pytorch", deep_stem=False,
        norm_cfg=dict(type="BCN", num_groups=32, mode="estimate"), conv_cfg=dict(type="WSConv2d"),
        init_cfg=init_cfg, **extra))
    backbone.init_weights()
    return backbone


def assert_same_stages(outputs, expected):
    for ours, ref in zip(outputs, expected):
        assert ours.shape == ref.shape
        assert rel_err(ours, ref) < 1e-6


@pytest.mark.parametrize("variant", VARIANTS)
def test_detectron2_loads_the_original_file_exactly(published, variant):
    from bcn_det.checkpoint import BCNCheckpointer

    arch, files, x, expected = published
    backbone = detectron2_backbone(arch)
    BCNCheckpointer(backbone).load(str(files[variant]))
    backbone.double().eval()
    with torch.no_grad():
        out = backbone(x)
    assert_same_stages([out[k] for k in ("res2", "res3", "res4", "res5")], expected)


@pytest.mark.parametrize("variant", VARIANTS)
def test_mmseg_loads_the_original_file_exactly(published, variant):
    arch, files, x, expected = published
    backbone = mmseg_backbone(arch, dict(type="BCNPretrained", checkpoint=str(files[variant])))
    backbone.double().eval()
    with torch.no_grad():
        assert_same_stages(backbone(x), expected)


def test_converted_files_load_through_each_frameworks_own_loader(published, tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer

    arch, files, x, expected = published
    d2_file, seg_file = tmp_path / "d2.pkl", tmp_path / "seg.pth"
    for target, out in (("detectron2", d2_file), ("mmseg", seg_file)):
        subprocess.run([sys.executable, "tools/convert_pretrained.py", str(files["wrapped"]),
                        "--to", target, str(out)], check=True)
    backbone = detectron2_backbone(arch)
    DetectionCheckpointer(backbone).load(str(d2_file))  # detectron2's own suffix matching
    backbone.double().eval()
    with torch.no_grad():
        out = backbone(x)
    assert_same_stages([out[k] for k in ("res2", "res3", "res4", "res5")], expected)
    seg = mmseg_backbone(arch, dict(type="Pretrained", checkpoint=str(seg_file))).double()
    seg.eval()  # mmseg's ResNet.train() returns None
    with torch.no_grad():
        assert_same_stages(seg(x), expected)


def test_the_readme_layers_rate_buffers_are_left_out_and_reported(published, tmp_path):
    arch, files, x, expected = published
    notes = []
    state = read_published(str(files["estbn"]), notes=notes)
    assert not any("estbn_moving_speed" in k for k in state)
    assert any("left out 53 'estbn_moving_speed' buffers" in n for n in notes), notes
    result = subprocess.run([sys.executable, "tools/convert_pretrained.py", str(files["estbn"]),
                             "--to", "mmseg", str(tmp_path / "seg.pth")], check=True, capture_output=True, text=True)
    assert "left out 53 'estbn_moving_speed' buffers" in result.stdout


def test_bad_checkpoints_fail_naming_the_problem(published, tmp_path):
    from bcn_det.checkpoint import BCNCheckpointer

    arch, files, x, expected = published
    state = read_published(files["pbn"])
    broken = dict(state)
    del broken["layer2.1.conv2.weight"]
    broken["layer9.0.conv1.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    with pytest.raises(CheckpointError, match=r"(?s)1 missing.*layer2.1.conv2.weight.*1 unexpected.*layer9"):
        mmseg_backbone(arch, dict(type="BCNPretrained", checkpoint=str(path)))
    other = "X50" if arch == "R50" else "R50"
    with pytest.raises(CheckpointError, match=r"(?s)shape mismatches:.*res2.0.conv2.weight: checkpoint \(\d+, \d+, 3, 3\) vs model \(\d+, \d+, 3, 3\)"):
        BCNCheckpointer(detectron2_backbone(other)).load(str(files["pbn"]))
    torch.save({"encoder.weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="unknown layout: expected a torchvision-style ResNet"):
        read_published(str(path))
    path.write_bytes(files["pbn"].read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="cannot be read as a weights-only torch checkpoint"):
        read_published(str(path))
    with pytest.raises(CheckpointError, match="sha256"):
        read_published(str(files["pbn"]), sha256="0" * 64)
