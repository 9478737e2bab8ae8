"""BCN's C++ kernels (bcn/kernels/csrc/cpu_kernels.cpp) against float64 sums written out here, and the
layer's fallback to its reference path where the kernels cannot be built."""
import copy
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import bcn
from bcn.kernels import cpu as cpu_kernels
from tests.helpers import rel_err
from tests.core import reference as ref
from tests.core.helpers import random_bcn, random_input
# planes smaller than a vector, exactly one block, and several blocks with a ragged tail
SHAPES = [(2, 4, 1, 5), (1, 4, 32, 64), (3, 8, 67, 61)]


@pytest.fixture(scope="module")
def ops():
    built = cpu_kernels.extension()
    assert built is not None, ("BCN's CPU kernels did not build here; scripts/setup.sh installs "
                               "ninja and needs g++ (see the KernelUnavailableWarning)")
    return built


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_statistics_of_a_far_offset_map(ops, fresh_seed, shape, dtype):
    # mean 1000, std 0.5: variance taken as E[x^2] - E[x]^2 around zero would cancel badly
    x = (torch.randn(shape, dtype=torch.float64) * 0.5 + 1000.0).to(dtype)
    ones, zeros = torch.ones(shape[1], dtype=dtype), torch.zeros(shape[1], dtype=dtype)
    counters = torch.zeros((), dtype=torch.long), torch.zeros((), dtype=torch.long)
    y, plane_mean, plane_var, mean, var = ops.train_forward(
        x, 2, ones, zeros, ones, zeros, zeros.clone(), ones.clone(), *counters, 0, False, 0.1, 1e-5)
    planes = x.double().flatten(2)
    m64 = planes.mean(-1)
    v64 = ((planes - m64[..., None]) ** 2).mean(-1)
    batch = x.double().transpose(0, 1).flatten(1)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert rel_err(plane_mean, m64) < tol and rel_err(mean, batch.mean(1)) < tol
    var_tol = 1e-4 if dtype == torch.float32 else 1e-9  # var / mean^2 ~ 2.5e-7
    assert rel_err(plane_var, v64) < var_tol and rel_err(var, batch.var(1, correction=0)) < var_tol
    # the output is taken around the channels' means: float precision, not ~1e-4 (x ~ 1000)
    step1 = (x.double() - batch.mean(1)[:, None, None]) / (batch.var(1, correction=0)[:, None, None] + 1e-5).sqrt()
    expected = torch.nn.functional.group_norm(step1, 2, eps=1e-5)
    assert rel_err(y, expected) < (1e-5 if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tracked,tol", [(False, 1e-3), (True, 1e-5)])
def test_inference_of_a_far_offset_map(ops, fresh_seed, shape, tracked, tol):
    # mean 1000, std 0.5: the groups' variance is 2.5e-7 of their mean square, which sums around
    # zero would lose entirely. Step 1's statistics tracked (mean 1000, var 0.25): the output is
    # taken around them and keeps float precision; stale (mean 0, var 1): the output's own
    # rounding, A x + B with A x ~ 2000, bounds the error at ~1e-4.
    x = (torch.randn(shape, dtype=torch.float64) * 0.5 + 1000.0).float()
    c, groups = shape[1], 2
    mean, var = (torch.full((c,), 1000.0), torch.full((c,), 0.25)) if tracked else (torch.zeros(c), torch.ones(c))
    ones, zeros = torch.ones(c), torch.zeros(c)
    y = ops.inference_forward(x, groups, ones, zeros, torch.ones(groups), torch.zeros(groups), mean, var, 1e-5)
    step1 = (x.double() - mean.double()[:, None, None]) / (var.double()[:, None, None] + 1e-5).sqrt()
    assert rel_err(y, torch.nn.functional.group_norm(step1, groups, eps=1e-5)) < tol


def test_inference_of_planes_smaller_than_a_vector(ops, fresh_seed):
    # 5x3 planes: every value is past the plane's last full vector, 480 of them per group. Each
    # group's first value is 10 std from its mean, so its sums (taken around that value) are
    # large; added up in one float chain, they came out with 1.4e-5 to 2e-5 relative error.
    n, c, groups = 2, 256, 8
    x = torch.randn(n, c, 5, 3) + 3.0
    x[:, :: c // groups, 0, 0] = -7.0
    ones, zeros = torch.ones(c), torch.zeros(c)
    y = ops.inference_forward(x, groups, ones, zeros, torch.ones(groups), torch.zeros(groups), zeros, ones, 1e-5)
    expected = torch.nn.functional.group_norm(x.double() / (1 + 1e-5) ** 0.5, groups, eps=1e-5)
    assert rel_err(y, expected) < 1e-6


# the last: an ROI batch, which the training kernels take in memory order
LARGE = [(3, 64, 67, 61, 32), (1, 128, 50, 41, 32), (2, 2048, 3, 5, 32), (96, 128, 9, 9, 16)]


def test_both_training_schedules_are_covered(ops):
    schedules = [ops.runs_in_memory_order(torch.empty(n, c, h, w), g) for n, c, h, w, g in LARGE]
    assert any(schedules) and not all(schedules)


@pytest.mark.parametrize("n,c,h,w,g", LARGE)
@pytest.mark.parametrize("mode", bcn.MODES)
@pytest.mark.parametrize("affine", bcn.AFFINES)
def test_large_maps_against_the_reference(ops, fresh_seed, n, c, h, w, g, mode, affine):
    """Many blocks per plane and many groups, forward and every gradient, in float32."""
    layer = random_bcn(c, g, mode, affine, impl="cpu").train()
    bcn.set_estimate_rate(layer, 0.3)
    x = random_input(n, c, h, w).requires_grad_(True)
    old = layer.pbn.running_mean.double().clone(), layer.pbn.running_var.double().clone()
    y = layer(x)
    assert "TrainingBatchChannelNorm" in y.grad_fn.name(), "the kernels did not serve the layer"
    xr = x.detach().double().requires_grad_(True)
    p = {k: v.detach().double().requires_grad_(True) for k, v in layer.named_parameters()}
    if mode == "batch":
        mean, var, _ = ref.batch_stats(xr)
    else:
        mean, var = (t.detach() for t in ref.algorithm1_update(xr, *old, 0.3))
    yr = ref.channel_part(ref.batch_part(xr, mean, var, p["pbn.weight"], p["pbn.bias"]), g,
                          p["weight"], p["bias"])
    assert rel_err(y, yr) < 1e-5
    grad = torch.randn_like(y)
    y.backward(grad)
    yr.backward(grad.double())
    assert rel_err(x.grad, xr.grad) < 1e-5
    for name, param in layer.named_parameters():
        assert rel_err(param.grad, p[name].grad) < 1e-5, name


@pytest.mark.parametrize("shape,groups", [((2, 64, 67, 61), 32), ((1, 96, 5, 3), 4)])
@pytest.mark.parametrize("affine", bcn.AFFINES)
def test_inference_kernel_against_the_reference(ops, fresh_seed, shape, groups, affine):
    layer = random_bcn(shape[1], groups, "batch", affine, impl="cpu").eval()
    x = random_input(*shape)
    with torch.no_grad():
        y = layer(x)
    p = {k: v.detach().double() for k, v in layer.named_parameters()}
    expected = ref.channel_part(
        ref.batch_part(x.double(), layer.pbn.running_mean.double(), layer.pbn.running_var.double(),
                       p["pbn.weight"], p["pbn.bias"]), groups, p["weight"], p["bias"])
    assert rel_err(y, expected) < 1e-6


@pytest.mark.parametrize("shape,memory_order", [((2, 64, 40, 50), False), ((256, 64, 9, 9), True)])
def test_results_do_not_depend_on_the_thread_count(ops, fresh_seed, shape, memory_order):
    x, g = torch.randn(shape), torch.randn(shape)
    assert ops.runs_in_memory_order(x, 32) == memory_order
    layer = random_bcn(64, 32, "batch", impl="cpu")
    weight, weight_grad = torch.randn(256, 64, 3, 3), torch.randn(256, 64, 3, 3)
    threads = torch.get_num_threads()
    outputs = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            fresh, xg = copy.deepcopy(layer).train(), x.clone().requires_grad_(True)
            y = fresh(xg)
            y.backward(g)
            w = weight.clone().requires_grad_(True)
            z = bcn.conv.standardize_weight(w)
            z.backward(weight_grad)
            with torch.no_grad():
                outputs.append((y, fresh.pbn.running_var, fresh.eval()(x), xg.grad, z, w.grad))
    finally:
        torch.set_num_threads(threads)
    for other in outputs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(outputs[0], other))


def test_bad_inputs_are_named(ops):
    x, ones = torch.randn(2, 4, 3, 3), torch.ones(4)
    counter = torch.zeros((), dtype=torch.long)
    with pytest.raises(RuntimeError, match="contiguous"):
        ops.inference_forward(x.transpose(2, 3), 2, *(ones,) * 6, 1e-5)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        ops.inference_forward(x.half(), 2, *(ones.half(),) * 6, 1e-5)
    with pytest.raises(RuntimeError, match=r"\(C,\)"):
        ops.train_forward(x, 2, torch.ones(5), ones, ones, ones, ones, ones, counter, counter, 0,
                          True, 0.1, 1e-5)
    with pytest.raises(RuntimeError, match="one value per group or per channel"):
        ops.inference_forward(x, 2, ones, ones, torch.ones(3), ones, ones, ones, 1e-5)
    with pytest.raises(RuntimeError, match="int64"):
        ops.train_forward(x, 2, *(ones,) * 4, ones, ones, counter.int(), counter, 0, True, 0.1, 1e-5)
    with pytest.raises(RuntimeError, match="step1 must be"):
        ops.train_forward(x, 2, *(ones,) * 4, ones, ones, counter, counter, 3, True, 0.1, 1e-5)
    with pytest.raises(RuntimeError, match="3 groups do not divide 4 channels"):
        ops.inference_forward(x, 3, *(ones,) * 6, 1e-5)
    with pytest.raises(RuntimeError, match="grad and x differ"):
        ops.train_backward(x[:1].contiguous(), x, 2, *(ones,) * 3, torch.ones(2, 4), torch.ones(2, 4),
                           ones, ones, 0, 1e-5)


# (out, in/groups, kh, kw): a stem, 1x1, a grouped conv's small rows, two values per row, and a
# row longer than one summation block
WEIGHTS = [(64, 3, 7, 7), (256, 64, 1, 1), (32, 4, 3, 3), (6, 2, 1, 1), (8, 512, 3, 3)]


@pytest.mark.parametrize("shape", WEIGHTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weight_standardization_kernel_against_the_equations(ops, fresh_seed, shape, dtype):
    # rows offset from zero by several of their own standard deviations
    w64 = torch.randn(shape, dtype=torch.float64) * 0.05 + torch.randn(shape[0], 1, 1, 1) * 0.2
    g64 = torch.randn(shape, dtype=torch.float64)
    w64.requires_grad_(True)
    expected = ref.standardize_weight(w64)
    expected.backward(g64)
    w = w64.detach().to(dtype).requires_grad_(True)
    z = bcn.conv.standardize_weight(w)
    assert "WeightStandardization" in z.grad_fn.name(), "the CPU kernel did not serve the weight"
    z.backward(g64.to(dtype))
    assert z.dtype == dtype and z.shape == w.shape
    if dtype == torch.float64:
        assert rel_err(z, expected) < 1e-12 and rel_err(w.grad, w64.grad) < 1e-10
        return
    # float32: at most 10x what the equations themselves lose evaluated in float32
    # (rows of two values lose digits to the input's own rounding: z's error reached 1.01e-6)
    w32 = w64.detach().float().requires_grad_(True)
    z32 = ref.standardize_weight(w32)
    z32.backward(g64.float())
    assert rel_err(z, expected) < max(1e-6, 10 * rel_err(z32, expected))
    assert rel_err(w.grad, w64.grad) < max(1e-5, 10 * rel_err(w32.grad, w64.grad))


def test_weight_standardization_kernel_takes_any_layout_and_refuses_double_backward(ops, fresh_seed):
    w = torch.randn(3, 3, 16, 32).permute(3, 2, 0, 1).requires_grad_(True)  # not contiguous
    z = bcn.conv.standardize_weight(w)
    assert torch.allclose(z, ref.standardize_weight(w.detach().double()).float(), atol=1e-5)
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad((z ** 2).sum(), w, create_graph=True)
    # outside the kernel's reach the equations run instead: the other form, float16
    assert "WeightStandardization" not in bcn.conv.standardize_weight(w, form="eps_on_std").grad_fn.name()
    with pytest.raises(RuntimeError, match="more than one value per output channel"):
        ops.standardize_weight(torch.randn(4, 1, 1, 1), 1e-5)
    with pytest.raises(RuntimeError, match="row statistics"):
        ops.standardize_weight_backward(torch.randn(4, 9), torch.randn(4, 9), torch.zeros(3, dtype=torch.float64),
                        torch.ones(4, dtype=torch.float64))


def test_cpu_kernels_refuse_double_backward_with_a_way_out(ops):
    layer = random_bcn(8, 4, "batch", impl="cpu").train()
    y = layer(torch.randn(2, 8, 3, 3, requires_grad=True))
    with pytest.raises(RuntimeError, match="impl='reference'"):
        torch.autograd.grad((y ** 2).sum(), layer.weight, create_graph=True)


def test_the_profiler_names_each_kernel(ops, fresh_seed):
    """A user profiling a model sees where BCN's and WS's time goes, not unattributed time."""
    model = torch.nn.Sequential(bcn.WSConv2d(8, 64, 3), random_bcn(64, 32, "estimate", impl="cpu"))
    bcn.set_estimate_rate(model, 0.01)
    x = torch.randn(2, 8, 5, 5)
    with torch.profiler.profile() as prof:
        model.train()
        model(x).sum().backward()
        model.eval()
        with torch.no_grad():
            model(x)
    names = {event.name for event in prof.events()}
    for kernel in ("train_forward", "train_backward", "inference_forward", "standardize_weight_forward", "standardize_weight_backward"):
        assert f"bcn::{kernel}" in names, kernel


def test_a_traced_model_records_the_reference_ops(ops, fresh_seed):
    """torch.jit.trace (and ONNX export through it) cannot see inside the extension: an
    unfolded BCN+WS model traces through the reference ops and the trace generalizes."""
    model = torch.nn.Sequential(bcn.WSConv2d(8, 64, 3, padding=1), random_bcn(64, 32, "batch", impl="cpu"))
    model.eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.randn(2, 8, 5, 5), check_trace=False)
        x = torch.randn(3, 8, 6, 4)
        assert rel_err(traced(x), model(x)) < 1e-6


FALLBACK = textwrap.dedent("""
    import warnings, torch, bcn
    from bcn.kernels import cpu as cpu_kernels
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fast = bcn.BatchChannelNorm2d(64, 32, impl="cpu")
        slow = bcn.BatchChannelNorm2d(64, 32, impl="reference")
        x = torch.randn(2, 64, 6, 5)
        assert torch.equal(fast(x), slow(x)), "the cpu impl did not fall back to the reference"
    assert cpu_kernels.extension() is None
    print("|".join(str(w.message) for w in caught if issubclass(w.category, cpu_kernels.KernelUnavailableWarning)))
""")


@pytest.mark.parametrize("how", ["switched off", "no compiler"])
def test_without_kernels_the_layer_runs_its_reference_path(tmp_path, how):
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"))
    if how == "switched off":
        env["BCN_KERNELS"] = "0"
    else:
        env["CXX"] = "/nonexistent/g++"  # torch's extension build takes its compiler from $CXX
    run = subprocess.run([sys.executable, "-c", FALLBACK], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    message = run.stdout.strip()
    if how == "switched off":
        assert message == ""
    else:
        assert "could not be built" in message and "reference path" in message, message


def test_a_build_for_one_cpu_is_never_loaded_on_another(ops):
    """-march=native builds are cached under a name that includes the CPU they target: the
    module loaded here is the one named for this CPU, and another CPU's name differs."""
    if sys.platform.startswith("linux"):
        assert "flags" in cpu_kernels.cpu_fingerprint() or "Features" in cpu_kernels.cpu_fingerprint()
    native = cpu_kernels.NATIVE_CFLAGS
    here = cpu_kernels.extension_name(native, cpu_kernels.cpu_fingerprint())
    assert ops.__name__ == here
    names = {here, cpu_kernels.extension_name(native, "cpu A"), cpu_kernels.extension_name(native, "cpu B"),
             cpu_kernels.extension_name(cpu_kernels.CFLAGS, "")}
    assert len(names) == 4


def test_build_name_is_unique_to_the_checkout_and_environment(monkeypatch, tmp_path):
    """Two checkouts or virtual environments sharing ~/.cache/torch_extensions never build
    under one name (torch would rebuild each over the other)."""

    here = cpu_kernels.extension_name(cpu_kernels.CFLAGS, "cpu")
    assert here == cpu_kernels.extension_name(cpu_kernels.CFLAGS, "cpu")
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "other-venv"))
    assert cpu_kernels.extension_name(cpu_kernels.CFLAGS, "cpu") != here
    monkeypatch.undo()
    copy = tmp_path / "checkout" / "cpu_kernels.cpp"
    copy.parent.mkdir()
    copy.write_bytes(cpu_kernels.SOURCE.read_bytes())
    monkeypatch.setattr(cpu_kernels, "SOURCE", copy)
    assert cpu_kernels.extension_name(cpu_kernels.CFLAGS, "cpu") != here


def test_a_build_or_a_wait_for_one_says_so(tmp_path, capsys):
    folder = tmp_path / "bcn_cpu_kernels_x"
    line = cpu_kernels.announce_build(str(folder), "bcn_cpu_kernels_x")
    assert line.startswith("BCN: building") and str(folder) in line and "TORCH_EXTENSIONS_DIR" in line
    folder.mkdir()
    (folder / "lock").touch()
    line = cpu_kernels.announce_build(str(folder), "bcn_cpu_kernels_x")
    assert line.startswith("BCN: waiting for another process") and str(folder) in line
    (folder / "lock").unlink()
    (folder / "bcn_cpu_kernels_x.so").touch()
    assert cpu_kernels.announce_build(str(folder), "bcn_cpu_kernels_x") is None
    assert capsys.readouterr().err.count("\n") == 2
