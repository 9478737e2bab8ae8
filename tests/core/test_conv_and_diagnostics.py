import pytest
import torch
import torch.nn.functional as F

import bcn
from tests.helpers import rel_err
from tests.core import reference as ref


@pytest.mark.parametrize("form", ["eps_in_sqrt", "eps_on_std"])
@pytest.mark.parametrize("groups", [1, 4])
def test_ws_conv_matches_reference(fresh_seed, form, groups):
    conv = bcn.WSConv2d(16, 32, 3, padding=1, groups=groups, bias=False, ws_form=form)
    with torch.no_grad():
        conv.weight.mul_(3).add_(0.7)
    raw = conv.weight.detach().clone()
    x = torch.randn(2, 16, 7, 7, requires_grad=True)
    y = conv(x)
    w64 = raw.double().requires_grad_(True)
    x64 = x.detach().double().requires_grad_(True)
    expected = F.conv2d(x64, ref.standardize_weight(w64, form=form), padding=1, groups=groups)
    assert rel_err(y, expected) < 1e-5
    g = torch.randn_like(y)
    y.backward(g)
    expected.backward(g.double())
    assert rel_err(x.grad, x64.grad) < 1e-5
    assert rel_err(conv.weight.grad, w64.grad) < 1e-5
    assert torch.equal(conv.state_dict()["weight"], raw), "the stored parameter is the raw weight"


def test_ws_forms_differ_and_bad_form_fails():
    w = torch.randn(8, 4, 3, 3)
    a = bcn.functional.standardize_weight(w, form="eps_in_sqrt")
    b = bcn.functional.standardize_weight(w, form="eps_on_std")
    assert 0 < (a - b).abs().max() < 1e-4
    with pytest.raises(ValueError, match="unknown weight-standardization form"):
        bcn.WSConv2d(4, 8, 3, ws_form="biased")


def test_statdiff_matches_reference(fresh_seed):
    mu, sigma = torch.randn(64), torch.rand(64) + 0.1
    assert torch.allclose(bcn.statdiff(mu, sigma, 32), ref.statdiff(mu, sigma, 32).float(), rtol=1e-5)
    assert torch.allclose(bcn.statdiff(torch.full((64,), 2.0), sigma, 8), torch.zeros(8), atol=1e-6)
    with pytest.raises(ValueError, match="does not divide"):
        bcn.statdiff(mu, sigma, 7)


def test_the_estimate_rate_follows_the_weights_lr_not_a_bias_factor():
    """With biases at twice the lr (the paper configs' bias lr factor) in groups listed first,
    the estimate rate is still the lr of BCN's weights, which is also the base lr."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, bias=False), bcn.BatchChannelNorm2d(64, 32, mode="estimate"))
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    weights = [p for n, p in model.named_parameters() if not n.endswith("bias")]
    optimizer = torch.optim.SGD([{"params": biases, "lr": 0.2}, {"params": weights, "lr": 0.1}], lr=0.1)
    bcn.EstimateRateFollower(model, optimizer)()
    assert float(model[1].pbn.rate) == pytest.approx(0.1)
    assert optimizer.param_groups[bcn.base_lr_group(model, optimizer)]["lr"] == 0.1
