"""BCN's Triton kernels against the float64 reference, on CPU tensors in Triton's interpreter
(TRITON_INTERPRET=1, set by tests/conftest.py): what test_norm's impl=triton runs does not
cover -- half precision, channels_last, ROI batches, planes longer than a tile, several steps
of running state -- and the dispatch table and the first-use check with an injected failure."""
import warnings

import pytest
import torch

import bcn
from bcn.kernels import KernelUnavailableWarning, Step1, dispatch, status
from tests.helpers import rel_err
from tests.core import reference as ref
from tests.core.helpers import random_bcn, random_input

pytest.importorskip("triton")


def truncate_bf16(t):
    """float32 -> bfloat16 as Triton's interpreter converts (it truncates; GPUs round)."""
    return (t.float().contiguous().view(torch.int32) & ~0xFFFF).view(torch.float32)


def reference_layer(layer, x, grad, rate=None):
    """The spec's equations on the layer's parameters and state (float64): output, gradients
    of x and the four parameters, and the new running state."""
    p = {k: v.detach().double().requires_grad_() for k, v in dict(layer.named_parameters()).items()}
    xr = x.detach().double().requires_grad_()
    g = layer.num_groups
    rm, rv = layer.pbn.running_mean.double(), layer.pbn.running_var.double()
    if not layer.training:
        mean, var, new = rm, rv, (rm, rv)
        x1 = ref.batch_part(xr, mean, var, p["pbn.weight"], p["pbn.bias"])
    elif layer.mode == "batch":
        mean, var, count = ref.batch_stats(xr)
        x1 = ref.batch_part(xr, mean, var, p["pbn.weight"], p["pbn.bias"])
        mean, var = mean.detach(), var.detach()
        new = (0.9 * rm + 0.1 * mean, 0.9 * rv + 0.1 * var * count / (count - 1))
    else:
        new = ref.algorithm1_update(xr.detach(), rm, rv, rate)
        x1 = ref.batch_part(xr, *new, p["pbn.weight"], p["pbn.bias"])
    y = ref.channel_part(x1, g, p["weight"].reshape(-1), p["bias"].reshape(-1))
    grads = torch.autograd.grad(y, [xr] + [p[k] for k in ("pbn.weight", "pbn.bias", "weight", "bias")], grad.double())
    return y.detach(), grads, new


def run_layer(layer, x, grad):
    x = x.detach().clone().requires_grad_()
    y = layer(x)
    y.backward(grad)
    params = dict(layer.named_parameters())
    return y.detach(), [x.grad] + [params[k].grad for k in ("pbn.weight", "pbn.bias", "weight", "bias")]


@pytest.mark.parametrize("mode", bcn.MODES)
@pytest.mark.parametrize("shape,groups", [
    ((2, 8, 48, 48), 4),     # planes of 2304 values: longer than one tile (2048)
    ((64, 32, 7, 7), 8),     # an ROI batch: many samples, small planes
    ((1, 64, 1, 1), 32),     # batch 1, 1x1 maps (estimate mode only)
    ((2, 64, 5, 7), 32),     # C=64, G=32: the stem's 2 channels per group
])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_training_and_eval_against_the_reference(fresh_seed, triton_family, mode, shape, groups,
                                                 channels_last):
    if mode == "batch" and shape[0] * shape[2] * shape[3] == 1:
        pytest.skip("batch statistics need more than one value per channel")
    layer = random_bcn(shape[1], groups, mode, impl="triton").train()
    rate = 0.05 + float(torch.rand(())) * 0.4
    bcn.set_estimate_rate(layer, rate)
    x = random_input(*shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(shape)
    want_y, want_grads, want_state = reference_layer(layer, x, grad, rate)
    y, grads = run_layer(layer, x, grad)
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last or shape[2:] == (1, 1)
    # 1x1 maps: a group's gradient cancels to ~1e-3 of its terms (2 values per group); the
    # kernels' dx error reaches 2.4e-4 for 1 seed in 300, where the float32 composition's is 1.8e-3
    tol = 1e-5 if shape[2:] != (1, 1) else 5e-4
    assert rel_err(y, want_y) < 1e-5
    for name, got, want in zip(("x", "gamma_b", "beta_b", "gamma", "beta"), grads, want_grads):
        assert rel_err(got, want.view_as(got)) < tol, name
    assert rel_err(layer.pbn.running_mean, want_state[0]) < 1e-6
    assert rel_err(layer.pbn.running_var, want_state[1]) < 1e-6
    assert int(layer.pbn.num_batches_tracked) == 1
    layer.eval()
    want_y, want_grads, _ = reference_layer(layer, x, grad)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    y, grads = run_layer(layer, x, grad)
    assert rel_err(y, want_y) < 1e-5 and rel_err(grads[0], want_grads[0]) < tol
    assert all(torch.equal(v, before[k]) for k, v in layer.state_dict().items())


@pytest.fixture
def launched(monkeypatch):
    """The names of the Triton kernels launched, in order (after the first-use checks, which
    launch kernels of their own)."""
    from bcn.kernels import triton_kernels

    for dtype in (torch.float32, torch.float64, torch.float16):
        assert dispatch.triton_ready(torch.device("cpu"), dtype)
    names, real = [], triton_kernels._launcher

    def recording(traceable):
        launch = real(traceable)
        return lambda kernel: names.append(kernel.__name__) or launch(kernel)

    monkeypatch.setattr(triton_kernels, "_launcher", recording)
    return names


@pytest.mark.parametrize("mode", bcn.MODES)
@pytest.mark.parametrize("shape,groups,affine", [
    ((4, 256, 1, 1), 32, "group"),   # DeepLabV3's image pooling, 4 images a GPU
    ((2, 64, 1, 1), 32, "group"),    # two values per channel, two channels per group
    ((5, 96, 1, 1), 32, "channel"),  # padded samples and groups (3 channels per group)
    ((1, 64, 1, 1), 32, "group"),    # batch 1 (estimate mode only)
])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-9), (torch.float16, 2e-3)],
                         ids=["f32", "f64", "f16"])
def test_whole_1x1_layers_in_one_program_against_the_reference(fresh_seed, launched, mode, shape,
                                                               groups, affine, dtype, tol):
    """1x1 maps small enough for one program: one kernel a direction (the backward takes batch
    statistics anew from x), against the float64 reference in training and eval; float16
    maps against the reference of their rounded values."""
    if mode == "batch" and shape[0] == 1:
        pytest.skip("batch statistics need more than one value per channel")
    layer = random_bcn(shape[1], groups, mode, affine, impl="triton").train()
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    layer.to(wide)
    rate = 0.05 + float(torch.rand(())) * 0.4
    bcn.set_estimate_rate(layer, rate)
    x, grad = random_input(*shape).to(dtype), torch.randn(shape).to(dtype)
    for training in (True, False):
        layer.train(training).zero_grad()
        want_y, want_grads, want_state = reference_layer(layer, x, grad, rate)
        launched.clear()
        y, grads = run_layer(layer, x, grad)
        assert launched == ["_whole_layer_forward", "_whole_layer_backward"]
        assert y.dtype == dtype and grads[0].dtype == dtype
        assert rel_err(y, want_y.to(dtype)) < tol and rel_err(grads[0], want_grads[0].to(dtype)) < tol
        for name, got, want in zip(("gamma_b", "beta_b", "gamma", "beta"), grads[1:], want_grads[1:]):
            assert got.dtype == wide and rel_err(got, want.view_as(got)) < min(tol, 1e-5), name
        if training:
            assert rel_err(layer.pbn.running_mean, want_state[0]) < min(tol, 1e-6)
            assert rel_err(layer.pbn.running_var, want_state[1]) < min(tol, 1e-6)
            assert int(layer.pbn.num_batches_tracked) == 1 and int(layer.skipped_updates) == 0


@pytest.mark.parametrize("mode", bcn.MODES)
def test_a_whole_1x1_layer_skips_a_non_finite_update(fresh_seed, launched, mode):
    layer = random_bcn(256, 32, mode, impl="triton").train()
    bcn.set_estimate_rate(layer, 0.2)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    x = random_input(4, 256, 1, 1)
    x[2, 7] = float("nan")
    assert not torch.isfinite(layer(x)).all()
    assert launched == ["_whole_layer_forward"]
    for k, v in layer.state_dict().items():
        if k != "skipped_updates":
            assert torch.equal(v, before[k]), k
    assert int(layer.skipped_updates) == 1
    layer(random_input(4, 256, 1, 1))
    assert int(layer.pbn.num_batches_tracked) == 1 and int(layer.skipped_updates) == 1


@pytest.mark.parametrize("mode", bcn.MODES)
def test_running_state_over_several_steps_equals_the_reference_path(fresh_seed, triton_family, mode):
    fast = random_bcn(32, 8, mode, impl="triton").train()
    slow = random_bcn(32, 8, mode, impl="reference").train()
    slow.load_state_dict(fast.state_dict())
    for step in range(4):
        rate = 0.1 * (step + 1)
        bcn.set_estimate_rate(fast, rate)
        bcn.set_estimate_rate(slow, rate)
        x = random_input(3, 32, 6, 5)
        fast(x), slow(x)
    for key, value in slow.state_dict().items():
        assert rel_err(fast.state_dict()[key].double(), value.double()) < 1e-6, key


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 8e-3)], ids=["f16", "bf16"])
@pytest.mark.parametrize("mode", bcn.MODES)
def test_half_precision_maps_against_the_reference_of_their_rounded_values(fresh_seed, triton_family,
                                                                          dtype, tol, mode):
    """Half-precision maps with float32 parameters (what autocast gives a layer): the output and
    dx in the map's dtype, statistics and parameter gradients at float32 precision."""
    layer = random_bcn(64, 32, mode, impl="triton").train()
    bcn.set_estimate_rate(layer, 0.3)
    x = random_input(2, 64, 9, 11).to(dtype)
    grad = torch.randn(x.shape).to(dtype)
    want_y, want_grads, want_state = reference_layer(layer, x, grad, 0.3)
    y, grads = run_layer(layer, x, grad)
    assert y.dtype == dtype and grads[0].dtype == dtype
    if dtype == torch.bfloat16:
        want_y, want_dx = truncate_bf16(want_y), truncate_bf16(want_grads[0])
    else:
        want_y, want_dx = want_y.to(dtype), want_grads[0].to(dtype)
    assert rel_err(y, want_y) < tol and rel_err(grads[0], want_dx) < tol
    for got, want in zip(grads[1:], want_grads[1:]):  # float32 parameters: their own precision
        assert got.dtype == torch.float32 and rel_err(got, want.view_as(got)) < 1e-5
    assert rel_err(layer.pbn.running_mean, want_state[0]) < 1e-6


def test_autocast_keeps_the_map_in_its_dtype(fresh_seed):
    """Under autocast the map goes through in bfloat16 (no float32 copy), statistics float32."""
    layer = random_bcn(64, 32, "estimate", impl="triton").train()
    bcn.set_estimate_rate(layer, 0.1)
    x = random_input(2, 64, 6, 6).bfloat16()
    want, _, _ = reference_layer(layer, x, torch.zeros(x.shape), 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    assert rel_err(y, truncate_bf16(want)) < 8e-3


def test_the_frozen_variant_runs_the_kernels(fresh_seed, triton_family):
    layer = random_bcn(32, 8, "batch", impl="triton").eval()
    frozen = bcn.FrozenBatchChannelNorm2d.from_bcn(layer)
    x = random_input(2, 32, 5, 6)
    assert dispatch.implementation(frozen.impl, x, Step1("fixed", False, 1e-5), frozen.weight.dtype) == "triton"
    grad = torch.randn(x.shape)
    want, grads, _ = reference_layer(layer, x, grad)
    x.requires_grad_()
    y = frozen(x)
    y.backward(grad)
    assert rel_err(y, want) < 1e-5 and rel_err(x.grad, grads[0]) < 1e-5


def test_dispatch_follows_its_table():
    x = torch.randn(2, 8, 3, 3)
    bn = Step1("batch", True, 1e-5, momentum=0.1)
    assert dispatch.implementation("auto", x, bn, torch.float32) == "cpu"
    assert dispatch.implementation("cpu", x, bn, torch.float32) == "cpu"
    assert dispatch.implementation("triton", x, bn, torch.float32) == "triton"  # interpreter
    assert dispatch.implementation("reference", x, bn, torch.float32) == "reference"
    assert dispatch.implementation("auto", x.half(), bn, torch.float32) == "reference"
    assert dispatch.implementation("triton", x.half(), bn, torch.float32) == "triton"
    # synchronized batch statistics: the kernels gather them
    assert dispatch.implementation("triton", x, bn._replace(synchronized=True), torch.float32) == "triton"
    assert dispatch.implementation("auto", x, bn._replace(synchronized=True), torch.float32) == "cpu"
    assert dispatch.implementation("triton", x, bn._replace(momentum=None), torch.float32) == "reference"
    assert dispatch.implementation("triton", x[:0], bn, torch.float32) == "reference"
    # eval takes step 1 from the running state: neither synchronization nor momentum matters
    fixed = Step1("fixed", False, 1e-5, synchronized=True)
    assert dispatch.implementation("triton", x, fixed, torch.float32) == "triton"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert dispatch.implementation("auto", x.bfloat16(), bn, torch.float32) == "cpu"
    with pytest.raises(ValueError, match="unknown BCN impl 'cuda'"):
        bcn.BatchChannelNorm2d(8, 4, impl="cuda")


@pytest.fixture
def fresh_status(monkeypatch):
    """The first-use check runs anew (the status of each (device, dtype) is cached)."""
    monkeypatch.setattr(status, "triton_ok", {})


@pytest.mark.parametrize("failure", ["raises", "wrong"])
def test_a_failing_first_use_check_warns_once_and_the_reference_path_runs(fresh_seed, fresh_status, monkeypatch, failure):
    from bcn.kernels import triton_kernels

    real = triton_kernels.forward

    def broken(*args, **kwargs):
        if failure == "raises":
            raise RuntimeError("injected: no kernel image for this device")
        y, saved = real(*args, **kwargs)
        return y * 1.01, saved

    monkeypatch.setattr(triton_kernels, "forward", broken)
    layer = random_bcn(16, 4, "batch", impl="triton").train()
    twin = random_bcn(16, 4, "batch", impl="reference").train()
    twin.load_state_dict(layer.state_dict())
    x = random_input(2, 16, 4, 5)
    expected = "injected: no kernel image" if failure == "raises" else "relative error"
    with pytest.warns(KernelUnavailableWarning, match=f"failed its first-use check on cpu torch.float32.*{expected}"):
        y = layer(x)
    assert torch.equal(y, twin(x))
    for key, value in twin.state_dict().items():
        assert torch.equal(layer.state_dict()[key], value), key
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(x)  # once only
    assert dispatch.implementation("triton", x, layer._step1(layer.pbn), torch.float32) == "reference"


def test_a_kernel_failing_after_the_check_leaves_the_state_alone(fresh_seed, fresh_status, monkeypatch,
                                                                 triton_family):
    """A later failure (a tile variant that does not compile for a new shape) falls back
    without a double update: the running state is committed by the last kernel only."""
    from bcn.kernels import triton_kernels

    layer = random_bcn(16, 4, "estimate", impl="triton").train()
    twin = random_bcn(16, 4, "estimate", impl="reference").train()
    twin.load_state_dict(layer.state_dict())
    bcn.set_estimate_rate(layer, 0.2)
    bcn.set_estimate_rate(twin, 0.2)
    first = random_input(2, 16, 3, 3)
    layer(first), twin(first)  # the check passes, the state moves
    twin.load_state_dict(layer.state_dict())
    real_kernels = {name: getattr(triton_kernels, name) for name in ("_apply", "_group_block_normalize")}

    class FailingApply:
        def __getitem__(self, grid):
            raise RuntimeError("injected: apply does not compile")

    for name in real_kernels:  # the last pass over the map, in either family
        monkeypatch.setattr(triton_kernels, name, FailingApply())
    x = random_input(2, 16, 5, 5)
    with pytest.warns(KernelUnavailableWarning, match="failed forward on cpu torch.float32"):
        y = layer(x)
    assert rel_err(y, twin(x)) < 1e-6
    for key, value in twin.state_dict().items():
        assert rel_err(layer.state_dict()[key].double(), value.double()) < 1e-6, key
    for name, kernel in real_kernels.items():
        monkeypatch.setattr(triton_kernels, name, kernel)
