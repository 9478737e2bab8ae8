"""Inference folding: WS and BCN's batch part folded into the convs leave plain convs and
GroupNorm, with the unfolded model's outputs, in both frameworks; the result exports.

Compared in float64 (1e-10): the folding is exact algebra. In float32 a whole network differs
by ~3e-5 relative (rounding accumulated over ~20 layers), not by the folding."""
import pytest
import torch

import bcn
from tests.helpers import rel_err

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
    from tests.det.helpers import TOY_CONFIG, load_cfg

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
    from tests.seg.helpers import TOY_CONFIG, build_model, load_config

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


def test_folded_network_exports_to_onnx_with_the_same_outputs(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator
    from torch import nn

    from bcn.fold import fold_pairs

    net = nn.Sequential(bcn.WSConv2d(3, 64, 3, padding=1, bias=False), bcn.BatchChannelNorm2d(64, 32),
                        nn.ReLU(), bcn.WSConv2d(64, 64, 3, stride=2, padding=1, bias=False),
                        bcn.BatchChannelNorm2d(64, 8, mode="estimate", affine="channel"), nn.ReLU())
    x = torch.randn(2, 3, 16, 16)
    train_a_little(net, lambda: net(x))
    net.eval()
    with torch.no_grad():
        expected = net(x)
        assert fold_pairs([(net, "0", "1"), (net, "3", "4")]) == 2
        assert_folded(net)
    path = tmp_path / "folded.onnx"
    torch.onnx.export(net, x, str(path), dynamo=False, opset_version=17)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    (out,) = ReferenceEvaluator(model).run(None, {model.graph.input[0].name: x.numpy()})
    assert rel_err(torch.from_numpy(out), expected) < 1e-5


def test_folded_mmseg_model_exports_to_a_valid_onnx_graph(tmp_path):
    onnx = pytest.importorskip("onnx")
    import bcn_seg
    from tests.seg.helpers import TOY_CONFIG, build_model, load_config

    model = build_model(load_config(TOY_CONFIG))
    model.eval()
    bcn_seg.fold_bcn(model)
    path = tmp_path / "deeplabv3.onnx"
    torch.onnx.export(model.backbone, torch.randn(1, 3, 64, 64), str(path), dynamo=False, opset_version=17)
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert {n.op_type for n in graph.graph.node} >= {"Conv", "InstanceNormalization"}
