"""BatchChannelNorm2d against the float64 reference (tests/core/reference.py)."""
import io
import warnings

import pytest
import torch

import bcn
from tests.core.helpers import random_bcn, random_input
from tests.helpers import rel_err
from tests.core import reference as ref

SHAPES = [  # (N, C, H, W, G)
    (2, 64, 5, 7, 32),   # the stem: 2 channels per group
    (1, 64, 8, 8, 32),   # batch 1
    (3, 32, 1, 1, 8),    # 1x1 maps
    (4, 96, 3, 3, 4),
]
# float32 against the float64 reference: 1e-5 relative. float64 against it: 1e-10, which checks
# the equations themselves on every shape. Where a gradient cancels (a 1x1 map in batch mode: 3
# values per channel, then 4 per group), float32 cannot reach 1e-5 at all; there the bound is 10x
# what the spec's own equations reach when evaluated in float32 on the same inputs (see
# float32_floor). Groups of 2 values are skipped in float32 (the float64 run checks them).
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])


def reference_params(layer):
    d = lambda t: t.detach().double().clone().requires_grad_(True)
    return {"gamma_b": d(layer.pbn.weight), "beta_b": d(layer.pbn.bias),
            "gamma_c": d(layer.weight), "beta_c": d(layer.bias)}


GRADIENT_NAMES = [("pbn.weight", "gamma_b"), ("pbn.bias", "beta_b"),
                  ("weight", "gamma_c"), ("bias", "beta_c")]


def float32_floor(equations, x, params, grad):
    """The relative error of each gradient when the spec's equations themselves run in float32,
    against the same equations in float64: how far float32 can get on these inputs."""
    def run(dtype):
        xs = x.detach().to(dtype).requires_grad_(True)
        ps = {k: v.detach().to(dtype).requires_grad_(True) for k, v in params.items()}
        equations(xs, ps).backward(grad.to(dtype))
        return {"x": xs.grad, **{k: v.grad for k, v in ps.items()}}
    low, high = run(torch.float32), run(torch.float64)
    return {k: rel_err(low[k], high[k]) for k in high}


def check_grads(layer, x, y, equations, params):
    """Backward through the layer against the spec's equations (a function of x and the params
    that returns the float64 output) at the same upstream gradient."""
    ref_x = x.detach().double().requires_grad_(True)
    ref_y = equations(ref_x, params)
    grad = torch.randn_like(y)
    y.backward(grad)
    ref_y.backward(grad.double())
    tol = {k: TOL[x.dtype] for k in ["x", *params]}
    if x.dtype == torch.float32:
        if x[0].numel() // layer.num_groups < 4:
            return
        floor = float32_floor(equations, x, params, grad)
        tol = {k: max(t, 10 * floor[k]) for k, t in tol.items()}
    assert rel_err(x.grad, ref_x.grad) < tol["x"]
    named = dict(layer.named_parameters())
    for ours, theirs in GRADIENT_NAMES:
        assert rel_err(named[ours].grad, params[theirs].grad) < tol[theirs], theirs


@DTYPES
@pytest.mark.parametrize("n,c,h,w,g", SHAPES)
@pytest.mark.parametrize("affine", ["group", "channel"])
def test_batch_mode_training(fresh_seed, impl, dtype, n, c, h, w, g, affine):
    if n * h * w == 1:
        pytest.skip("batch statistics need more than one value per channel")
    layer = random_bcn(c, g, "batch", affine, impl=impl).to(dtype).train()
    x = random_input(n, c, h, w).to(dtype).requires_grad_(True)
    rm, rv = layer.pbn.running_mean.double().clone(), layer.pbn.running_var.double().clone()
    y = layer(x)

    params = reference_params(layer)

    def equations(x, p):
        mean, var, _ = ref.batch_stats(x)
        return ref.channel_part(ref.batch_part(x, mean, var, p["gamma_b"], p["beta_b"]),
                                g, p["gamma_c"], p["beta_c"])

    assert rel_err(y, equations(x.detach().double(), params)) < TOL[dtype]
    mean, var, count = ref.batch_stats(x.detach().double())
    # BatchNorm's usual running averages (momentum 0.1, unbiased variance)
    assert rel_err(layer.pbn.running_mean, 0.9 * rm + 0.1 * mean.detach()) < TOL[dtype]
    unbiased = var * count / (count - 1)
    assert rel_err(layer.pbn.running_var, 0.9 * rv + 0.1 * unbiased) < TOL[dtype]
    check_grads(layer, x, y, equations, params)


@DTYPES
@pytest.mark.parametrize("n,c,h,w,g", SHAPES + [(1, 64, 1, 1, 32)])
@pytest.mark.parametrize("affine", ["group", "channel"])
def test_estimate_mode_training(fresh_seed, impl, dtype, n, c, h, w, g, affine):
    layer = random_bcn(c, g, "estimate", affine, impl=impl).to(dtype).train()
    rate = float(torch.rand(())) * 0.5
    bcn.set_estimate_rate(layer, rate)
    x = random_input(n, c, h, w).to(dtype).requires_grad_(True)
    mu_hat, var_hat = layer.pbn.running_mean.double().clone(), layer.pbn.running_var.double().clone()
    y = layer(x)

    params = reference_params(layer)
    mu_new, var_new = ref.algorithm1_update(x.detach().double(), mu_hat, var_hat, rate)
    assert rel_err(layer.pbn.running_mean, mu_new) < TOL[dtype]
    assert rel_err(layer.pbn.running_var, var_new) < TOL[dtype]

    def equations(x, p):  # the new estimates are constants of the step (no gradient through them)
        return ref.channel_part(ref.batch_part(x, mu_new.to(x.dtype), var_new.to(x.dtype),
                                               p["gamma_b"], p["beta_b"]), g, p["gamma_c"], p["beta_c"])

    assert rel_err(y, equations(x.detach().double(), params)) < TOL[dtype]
    check_grads(layer, x, y, equations, params)


@DTYPES
@pytest.mark.parametrize("mode", bcn.MODES)
@pytest.mark.parametrize("n,c,h,w,g", SHAPES + [(1, 64, 1, 1, 32)])
def test_eval_uses_stored_statistics(fresh_seed, impl, dtype, mode, n, c, h, w, g):
    layer = random_bcn(c, g, mode, impl=impl).to(dtype).eval()
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    x = random_input(n, c, h, w).to(dtype).requires_grad_(True)
    y = layer(x)
    params = reference_params(layer)
    mean, var = layer.pbn.running_mean.double(), layer.pbn.running_var.double()

    def equations(x, p):
        return ref.channel_part(ref.batch_part(x, mean.to(x.dtype), var.to(x.dtype), p["gamma_b"],
                                               p["beta_b"]), g, p["gamma_c"], p["beta_c"])

    assert rel_err(y, equations(x.detach().double(), params)) < TOL[dtype]
    check_grads(layer, x, y, equations, params)
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed in eval"


@pytest.mark.parametrize("mode", bcn.MODES)
def test_gradcheck(fresh_seed, impl, mode):
    layer = random_bcn(16, 4, mode, impl=impl).double().train()
    bcn.set_estimate_rate(layer, 0.0)  # estimates stay fixed across gradcheck's evaluations
    x = random_input(2, 16, 3, 3).double().requires_grad_(True)
    params = [layer.weight, layer.bias, layer.pbn.weight, layer.pbn.bias]
    # Triton's interpreter runs each of gradcheck's ~700 evaluations at Python speed: there,
    # its fast mode (the Jacobian against random directions, same tolerances)
    fast = impl == "triton"
    assert torch.autograd.gradcheck(lambda x, *p: layer(x), (x, *params), fast_mode=fast)


def test_algorithm1_recurrence_over_iterations(fresh_seed):
    layer = bcn.BatchChannelNorm2d(32, 8, mode="estimate").double().train()
    mu_hat, var_hat = torch.zeros(32, dtype=torch.float64), torch.ones(32, dtype=torch.float64)
    for _ in range(6):
        rate = float(torch.rand(()))
        x = random_input(1, 32, 4, 4).double()
        bcn.set_estimate_rate(layer, rate)
        layer(x)
        n = x.shape[2] * x.shape[3]
        m = x.sum((0, 2, 3)) / n
        v = ((x - mu_hat.view(1, -1, 1, 1)) ** 2).sum((0, 2, 3)) / n  # around the OLD estimate
        mu_hat, var_hat = mu_hat + rate * (m - mu_hat), var_hat + rate * (v - var_hat)
        assert torch.allclose(layer.pbn.running_mean, mu_hat, rtol=1e-12, atol=1e-12)
        assert torch.allclose(layer.pbn.running_var, var_hat, rtol=1e-12, atol=1e-12)
    assert int(layer.pbn.num_batches_tracked) == 6


@pytest.mark.parametrize("mode", bcn.MODES)
def test_state_dict_round_trip_is_bit_exact(fresh_seed, impl, mode):
    layer = random_bcn(64, 32, mode, impl=impl).train()
    bcn.set_estimate_rate(layer, 0.3)
    for _ in range(3):
        layer(random_input(2, 64, 4, 4))
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    expected = {f"pbn.{k}" for k in ("weight", "bias", "running_mean", "running_var",
                                     "num_batches_tracked")} | {"weight", "bias"}
    assert set(loaded) == expected
    assert loaded["weight"].shape == (1, 32, 1)
    restored = bcn.BatchChannelNorm2d(64, 32, mode=mode, impl=impl)
    restored.load_state_dict(loaded)
    for k, v in layer.state_dict().items():
        assert torch.equal(restored.state_dict()[k], v), k
    x = random_input(2, 64, 4, 4)
    assert torch.equal(restored.eval()(x), layer.eval()(x))


def test_conversions_keep_eval_outputs(fresh_seed):
    model = torch.nn.Sequential(random_bcn(64, 32, "batch"), torch.nn.ReLU(), random_bcn(64, 32, "batch"))
    model.eval()
    x = random_input(2, 64, 5, 5)
    expected = model(x)
    bcn.convert_to_estimate_mode(model)
    assert all(m.mode == "estimate" for m in model if isinstance(m, bcn.BatchChannelNorm2d))
    assert torch.equal(model(x), expected)
    frozen = bcn.freeze_batch_channel_norm(model)
    assert not any(isinstance(m, bcn.BatchChannelNorm2d) for m in frozen.modules())
    assert not list(frozen.parameters())
    assert rel_err(frozen(x), expected) < 1e-5  # reference ops vs the C++ kernels: float32 rounding
    frozen.train()(x)  # a frozen layer never updates, in train mode neither
    assert rel_err(frozen(x), expected) < 1e-5  # reference ops vs the C++ kernels: float32 rounding


def test_frozen_loads_a_bcn_state_dict(fresh_seed):
    layer = random_bcn(64, 32, "batch")
    frozen = bcn.FrozenBatchChannelNorm2d(64, 32)
    frozen.load_state_dict(layer.state_dict())  # num_batches_tracked is accepted and dropped
    x = random_input(2, 64, 3, 3)
    assert rel_err(frozen(x), layer.eval()(x)) < 1e-5


def test_frozen_layer_against_the_equations_with_and_without_gradient(fresh_seed):
    """No gradient needed: the inference kernel; an input that requires grad: the reference
    ops, differentiable. Both equal the spec's equations with the stored statistics."""
    layer = random_bcn(64, 32, "batch")
    frozen = bcn.FrozenBatchChannelNorm2d.from_bcn(layer)
    x = random_input(2, 64, 5, 7)
    p = {k: v.detach().double() for k, v in layer.named_parameters()}
    expected = ref.channel_part(
        ref.batch_part(x.double(), layer.pbn.running_mean.double(), layer.pbn.running_var.double(),
                       p["pbn.weight"], p["pbn.bias"]), 32, p["weight"], p["bias"])
    assert rel_err(frozen(x), expected) < 1e-6
    xg = x.clone().requires_grad_(True)
    y = frozen(xg)
    assert rel_err(y, expected) < 1e-6
    y.sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match="does not divide"):
        bcn.BatchChannelNorm2d(48, 32)
    with pytest.raises(ValueError, match="unknown BCN mode"):
        bcn.BatchChannelNorm2d(64, 32, mode="micro")
    with pytest.raises(ValueError, match="unknown BCN affine"):
        bcn.BatchChannelNorm2d(64, 32, affine="pixel")
    with pytest.raises(ValueError, match="sync_batch"):
        bcn.BatchChannelNorm2d(64, 32, mode="estimate", sync_batch=True)
    with pytest.raises(ValueError, match=r"expects \(N, 64, H, W\)"):
        bcn.BatchChannelNorm2d(64, 32)(torch.randn(2, 32, 4, 4))


def test_batch_mode_one_value_per_channel_points_to_estimate_mode():
    with pytest.raises(ValueError, match="mode='estimate'"):
        bcn.BatchChannelNorm2d(64, 32).train()(torch.randn(1, 64, 1, 1))
    layer = bcn.BatchChannelNorm2d(64, 32, mode="estimate").train()
    bcn.set_estimate_rate(layer, 0.1)
    assert torch.isfinite(layer(torch.randn(1, 64, 1, 1))).all()


@pytest.mark.parametrize("mode", bcn.MODES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_batch_leaves_running_state_and_is_counted(fresh_seed, impl, mode, bad):
    layer = random_bcn(64, 32, mode, impl=impl).train()
    bcn.set_estimate_rate(layer, 0.2)
    layer(random_input(2, 64, 4, 4))
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    x = random_input(2, 64, 4, 4)
    x[1, 5, 2, 2] = bad
    y = layer(x)
    assert not torch.isfinite(y).all(), "a non-finite input must give a visibly non-finite output"
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} was updated by a non-finite batch"
    assert int(layer.skipped_updates) == 1
    layer(random_input(2, 64, 4, 4))
    assert int(layer.pbn.num_batches_tracked) == int(before["pbn.num_batches_tracked"]) + 1


@pytest.mark.reference_by_design
@pytest.mark.parametrize("mode", bcn.MODES)
def test_an_empty_batch_gives_an_empty_output_and_changes_nothing(fresh_seed, impl, mode):
    """Detection heads run on no boxes at all (N = 0): no statistics, no state change, and the
    parameters get zero gradients, as GroupNorm's do."""
    shape = (0, 64, 14, 14)
    layer = random_bcn(64, 32, mode, impl=impl)
    bcn.set_estimate_rate(layer, 0.2)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    for training in (True, False):
        layer.train(training)
        layer.zero_grad()
        x = torch.randn(shape, requires_grad=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no degrees-of-freedom or NaN-statistics warnings
            y = layer(x)
        assert y.shape == shape
        y.sum().backward()
        assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in layer.parameters())
        for k, v in layer.state_dict().items():
            assert torch.equal(v, before[k]), f"{k} changed on an empty input"
        assert int(layer.skipped_updates) == 0
        with torch.no_grad():
            assert layer.eval()(x).shape == shape
    frozen = bcn.FrozenBatchChannelNorm2d.from_bcn(layer)
    with torch.no_grad():
        assert frozen(torch.randn(shape)).shape == shape


def test_unset_rate_warns_and_set_rate_silences():
    layer = bcn.BatchChannelNorm2d(64, 32, mode="estimate").train()
    with pytest.warns(bcn.EstimateRateNotSetWarning, match="set_estimate_rate"):
        layer(torch.randn(1, 64, 4, 4))
    assert not torch.equal(layer.pbn.running_mean, torch.zeros(64)), "fallback rate must update"
    assert bcn.set_estimate_rate(torch.nn.Sequential(layer, layer), 0.01) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(torch.randn(1, 64, 4, 4))


@pytest.mark.parametrize("mode", bcn.MODES)
def test_bfloat16_autocast_keeps_statistics_in_float32(fresh_seed, impl, mode):
    layer = random_bcn(64, 32, mode, impl=impl).train()
    twin = random_bcn(64, 32, mode, impl=impl).train()
    twin.load_state_dict(layer.state_dict())
    bcn.set_estimate_rate(layer, 0.3), bcn.set_estimate_rate(twin, 0.3)
    x = random_input(2, 64, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x.bfloat16())
    assert y.dtype == torch.bfloat16
    assert layer.pbn.running_mean.dtype == torch.float32
    expected = twin(x.bfloat16().float())  # the same bf16 input, in float32 throughout
    assert rel_err(layer.pbn.running_mean, twin.pbn.running_mean) < 1e-6
    assert rel_err(y.float(), expected) < 1e-2  # only the output's bf16 rounding


def assert_equal_up_to_bfloat16_rounding(a, b):
    """Both paths compute in float32 and round to bfloat16 at the end. Two float32 results that
    differ by reduction order (1e-5 of the tensor's scale) round to bf16 values one ulp apart, or
    many ulps apart where the value itself is near zero, so each element may differ by one bf16
    ulp of itself plus 1e-5 of the largest element. A near-tie flips only rarely: at most 0.1% of
    the elements (measured: up to 4 of 32768 over 150 seeds)."""
    a, b = a.detach().double(), b.detach().double()
    magnitude = torch.maximum(a.abs(), b.abs())
    one_ulp = torch.exp2(torch.floor(torch.log2(magnitude.clamp_min(1e-30))) - 7)  # 8-bit mantissa
    scale = float(magnitude.max())
    assert bool(((a - b).abs() <= one_ulp + 1e-5 * scale).all())
    assert float((a != b).double().mean()) <= 1e-3


@pytest.mark.parametrize("mode", bcn.MODES)
def test_both_implementations_agree_under_bfloat16_autocast(fresh_seed, mode):
    fast = random_bcn(64, 32, mode, impl="cpu").train()
    slow = random_bcn(64, 32, mode, impl="reference").train()
    slow.load_state_dict(fast.state_dict())
    bcn.set_estimate_rate(fast, 0.05), bcn.set_estimate_rate(slow, 0.05)
    x = random_input(2, 64, 16, 16).bfloat16()
    grad = torch.randn(2, 64, 16, 16).bfloat16()
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ys = [fast(xs[0]), slow(xs[1])]
    for y in ys:
        y.backward(grad)
    assert_equal_up_to_bfloat16_rounding(ys[0], ys[1])
    assert_equal_up_to_bfloat16_rounding(xs[0].grad, xs[1].grad)
    # The parameter gradients stay float32. pbn.bias's cancels within each group (GroupNorm ignores
    # a per-group shift), so its relative error is larger than the 1e-5 of the other float32
    # checks: measured up to 2e-5 over 150 seeds.
    for (name, a), b in zip(fast.named_parameters(), slow.parameters()):
        assert rel_err(a.grad, b.grad) < 1e-4, name
    assert rel_err(fast.pbn.running_mean, slow.pbn.running_mean) < 1e-5
    assert rel_err(fast.pbn.running_var, slow.pbn.running_var) < 1e-5


@pytest.mark.parametrize("mode", bcn.MODES)
def test_channels_last_and_non_contiguous_inputs(fresh_seed, mode):
    layer = random_bcn(64, 32, mode).eval()
    x = random_input(2, 64, 6, 5)
    expected = layer(x)
    # equal up to float32 reduction order (the 1e-5 budget of every float32 check)
    assert rel_err(layer(x.to(memory_format=torch.channels_last)), expected) < 1e-5
    wide = random_input(2, 64, 6, 10)
    assert rel_err(layer(wide[..., ::2]), layer(wide[..., ::2].contiguous())) < 1e-5


@pytest.mark.parametrize("mode", bcn.MODES)
@pytest.mark.parametrize("affine", bcn.AFFINES)
def test_cpu_kernels_have_the_reference_numerics(fresh_seed, mode, affine):
    fast = random_bcn(256, 32, mode, affine, impl="cpu")
    slow = random_bcn(256, 32, mode, affine, impl="reference")
    slow.load_state_dict(fast.state_dict())
    for layer in (fast, slow):
        bcn.set_estimate_rate(layer, 0.05)
    for training in (True, True, False):
        x = random_input(2, 256, 12, 9)
        xs = [x.clone().requires_grad_(True) for _ in range(2)]
        fast.train(training), slow.train(training)
        ys = [fast(xs[0]), slow(xs[1])]
        assert rel_err(ys[0], ys[1]) < 1e-5
        grad = torch.randn_like(ys[0])
        ys[0].backward(grad), ys[1].backward(grad)
        assert rel_err(xs[0].grad, xs[1].grad) < 1e-5
        for (name, a), b in zip(fast.named_parameters(), slow.parameters()):
            assert rel_err(a.grad, b.grad) < 1e-5, name
            a.grad = b.grad = None
        for (name, a), b in zip(fast.state_dict().items(), slow.state_dict().values()):
            assert (torch.equal(a, b) if name.endswith("num_batches_tracked") else rel_err(a, b) < 1e-6), name


def test_served_implementations_counts_what_ran():
    """The public way to ask which implementation ran (the suite's impl tests use it)."""
    layer = bcn.BatchChannelNorm2d(64, 32, impl="cpu")
    with bcn.kernels.served_implementations() as served:
        layer(torch.randn(2, 64, 5, 5))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(torch.randn(2, 64, 5, 5).to(torch.bfloat16))  # C++ under CPU autocast
        frozen = bcn.FrozenBatchChannelNorm2d.from_bcn(layer)
        with torch.no_grad():
            frozen(torch.randn(2, 64, 5, 5))
        frozen(torch.randn(2, 64, 5, 5, requires_grad=True))  # a gradient: the training kernel
        frozen(torch.randn(0, 64, 5, 5))  # an empty batch: the reference
    assert served == {"cpu": 4, "reference": 1}
    layer(torch.randn(2, 64, 5, 5))
    assert served == {"cpu": 4, "reference": 1}   # closed: no more counting


def test_two_values_per_channel_backward_is_as_accurate_as_the_composition(impl, fresh_seed):
    """Batch mode over two values per channel (N = 2, 1 x 1 maps: DeepLabV3's image pooling with
    2 images per GPU): the gradient through the batch statistics nearly cancels. In float32, dx
    is no further from the float64 truth than the composition's, and the running state moves
    as the composition's does."""
    shape, groups = (2, 64, 1, 1), 32
    f64 = dict(dtype=torch.float64)
    x32 = (torch.randn(shape, **f64) * 2 + 1).float()
    grad32 = torch.randn(shape, **f64).float()
    values = [torch.rand(64, **f64) + 0.5, torch.randn(64, **f64), torch.rand(1, groups, 1, **f64) + 0.5,
              torch.randn(1, groups, 1, **f64)]

    def run(layer_impl, dtype):
        layer = bcn.BatchChannelNorm2d(64, groups, mode="batch", impl=layer_impl).to(dtype).train()
        with torch.no_grad():
            for p, v in zip((layer.pbn.weight, layer.pbn.bias, layer.weight, layer.bias), values):
                p.copy_(v.float())   # the float32 values, exactly, in every run
        x = x32.to(dtype).clone().requires_grad_()
        layer(x).backward(grad32.to(dtype))
        return x.grad.double(), layer.pbn.running_mean.double(), layer.pbn.running_var.double()

    truth = run("reference", torch.float64)
    composition = run("reference", torch.float32)
    ours = run(impl, torch.float32)
    error = lambda got: float((got[0] - truth[0]).norm() / truth[0].norm())  # noqa: E731
    assert error(ours) <= max(error(composition), 1e-6), (error(ours), error(composition))
    for got, want in zip(ours[1:], truth[1:]):
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-7)
