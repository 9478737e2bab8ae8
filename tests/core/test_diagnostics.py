import torch

import bcn
from tests.core import reference as ref


def test_tracker_reports_statdiff_of_the_norm_input_and_dead_channels(fresh_seed):
    layer = bcn.BatchChannelNorm2d(64, 8).eval()
    with torch.no_grad():
        layer.bias[0, :2] = -50.0  # groups 0-1 (16 channels) are never positive: dead
    model = torch.nn.Sequential(layer, torch.nn.ReLU())
    tracker = bcn.ChannelStatsTracker(model, momentum=1.0)
    assert list(tracker.layers) == ["0"], "BCN is one layer (its batch part is not another)"
    mu, sigma = torch.randn(64) * 2, torch.rand(64) + 0.5
    z = torch.randn(4, 64, 16, 16, dtype=torch.float64)
    z = (z - z.mean((0, 2, 3), keepdim=True)) / z.std((0, 2, 3), unbiased=False, keepdim=True)
    x = (mu.double().view(1, -1, 1, 1) + sigma.double().view(1, -1, 1, 1) * z).float()
    model(x)  # inactive: nothing recorded
    assert tracker.report() == {}
    tracker.active = True
    model(x)
    report = tracker.report()["0"]
    assert abs(report["statdiff"] - float(ref.statdiff(mu, sigma, 8).mean())) < 1e-4
    # dead: positive less than 1% of the time after the ReLU -- the forced groups, plus any
    # channel the group normalization pushes below zero (the elimination singularity)
    positive = (model(x) > 0).float().mean((0, 2, 3))
    assert (positive[:16] == 0).all()
    assert report["dead"] == float((positive < 0.01).float().mean())
    scalars = tracker.summary()
    assert set(scalars) == {"statdiff/0", "dead/0", "statdiff/mean", "dead/mean"}
    tracker.remove()
    assert not layer._forward_hooks
