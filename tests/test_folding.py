"""Inference folding: WS and BCN's batch part folded into the convs leave plain convs and
GroupNorm, with the unfolded model's outputs, in both frameworks; the result exports.

Compared in float64 (1e-10): the folding is exact algebra. In float32 a whole network differs
by ~3e-5 relative (rounding accumulated over ~20 layers), not by the folding."""
import pytest
import torch

import bcn
from tests.conftest import rel_err

pytestmark = pytest.mark.slow


def train_a_little(model, x_fn, steps=3):
    """Non-trivial statistics: a few training forwards (estimates move at rate 0.5)."""
    model.train()
    bcn.set_estimate_rate(model, 0.5)
    with torch.no_grad():
        for _ in range(steps):
            x_fn()


def assert_folded(model):
    assert not any(isinstance(m, (bcn.BatchChannelNorm2d, bcn.FrozenBatchChannelNorm2d)) for m in model.modules())
    assert not any(hasattr(m, "ws_eps") for m in model.modules())


def test_detectron2_backbone_folds_exactly():
    from detectron2.modeling import build_backbone

    import bcn_det
    from tests.det.conftest import TOY_CONFIG, load_cfg

    cfg = load_cfg(TOY_CONFIG, "MODEL.BACKBONE.FREEZE_AT", "2")
    backbone = build_backbone(cfg).double()
    x = torch.randn(2, 3, 96, 128, dtype=torch.float64)
    train_a_little(backbone, lambda: backbone(x))
    backbone.eval()
    with torch.no_grad():
        expected = backbone(x)
        bcn_det.fold_bcn(backbone)
        assert_folded(backbone)
        out = backbone(x)
    for key in expected:
        assert rel_err(out[key], expected[key]) < 1e-10, key


def test_mmseg_model_folds_exactly_and_exports_to_torchscript(tmp_path):
    import bcn_seg
    from tests.seg.conftest import TOY_CONFIG, build_model, load_config

    model = build_model(load_config(TOY_CONFIG)).double()
    x = torch.randn(2, 3, 96, 96, dtype=torch.float64)
    train_a_little(model, lambda: model._forward(x))
    model.eval()
    with torch.no_grad():
        expected = model._forward(x)
        bcn_seg.fold_bcn(model)
        assert_folded(model)
        out = model._forward(x)
        assert rel_err(out, expected) < 1e-10
        traced = torch.jit.trace(model.backbone, x)
        traced.save(str(tmp_path / "backbone.pt"))
        reloaded = torch.jit.load(str(tmp_path / "backbone.pt"))
        for a, b in zip(reloaded(x), model.backbone(x)):
            assert torch.equal(a, b)
