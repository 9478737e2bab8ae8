"""Training under bfloat16 autocast (CPU) keeps BCN's statistics in float32 and follows the
float32 run for the first iterations, within the tolerances below (README).

The run trains backbone + FPN (BCN+WS everywhere) + RPN on the RPN losses: a continuous
function of the weights. The ROI heads are left out because bf16 rounding of the objectness
scores changes which proposals survive top-k/NMS -- a discrete choice that sends the two runs
down different gradients (0.36 vs 0.28 box loss at iteration 0 before any update)."""
import copy

import pytest
import torch
from detectron2.data import build_detection_train_loader
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import bcn

pytestmark = pytest.mark.slow
LOSS_TOLERANCE = 0.05      # relative, RPN losses, iterations 0-2
FEATURE_TOLERANCE = 0.15   # relative (norm-wise), FPN outputs: bf16 keeps 8 mantissa bits (0.4% a
                           # rounding), compounded over ~20 layers of a randomly initialized net and
                           # 2 SGD steps. Measured 0.07 (impl="reference") to 0.106 (fused kernels,
                           # 1 thread): which bf16 roundings flip is chaotic; per layer the two
                           # implementations agree under autocast (tests/core/test_norm.py).


def rpn_step(net, batch):
    images = net.preprocess_image(batch)
    features = net.backbone(images.tensor)
    _, losses = net.proposal_generator(images, features, [x["instances"] for x in batch])
    return features, losses


def test_bfloat16_autocast_training_follows_float32(toy_cfg):
    torch.manual_seed(0)
    model = build_model(toy_cfg)
    twin = copy.deepcopy(model)
    batches = [b for _, b in zip(range(3), build_detection_train_loader(toy_cfg))]
    runs = {}
    for name, net, autocast in (("fp32", model, False), ("bf16", twin, True)):
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        runs[name] = []
        with EventStorage():
            for batch in batches:
                torch.manual_seed(1)  # the same anchor sampling in both runs
                bcn.set_estimate_rate(net, 0.01)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    features, losses = rpn_step(net, batch)
                runs[name].append(({k: v.detach().float() for k, v in features.items()},
                                   {k: float(v) for k, v in losses.items()}))
                optimizer.zero_grad()
                sum(losses.values()).backward()
                optimizer.step()
    for layer in bcn.estimate_layers(twin):
        assert layer.running_mean.dtype == layer.running_var.dtype == torch.float32
    for it, ((fa, la), (fb, lb)) in enumerate(zip(runs["fp32"], runs["bf16"])):
        for key in la:
            assert abs(la[key] - lb[key]) <= LOSS_TOLERANCE * abs(la[key]) + 1e-3, (it, key, la[key], lb[key])
        for level in fa:
            err = float((fa[level] - fb[level]).norm() / fa[level].norm())
            assert err < FEATURE_TOLERANCE, (it, level, err)
