"""BCN's C++ kernels (bcn/csrc/plane_ops.cpp) against float64 sums written out here, and the
layer's fallback to its reference path where the kernels cannot be built."""
import copy
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import bcn
from bcn import kernels
from tests.conftest import rel_err
from tests.core import reference as ref
from tests.core.test_norm import random_bcn, random_input

# planes smaller than a vector, exactly one block, and several blocks with a ragged tail
SHAPES = [(2, 3, 1, 5), (1, 4, 32, 64), (3, 5, 67, 61)]


@pytest.fixture(scope="module")
def ops():
    built = kernels.plane_ops()
    assert built is not None, ("BCN's CPU kernels did not build here; scripts/setup.sh installs "
                               "ninja and needs g++ (see the KernelUnavailableWarning)")
    return built


def planes64(t):
    return t.double().flatten(2)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_moments_and_gradient_sums(ops, fresh_seed, shape, dtype):
    # a large offset: variance taken as E[x^2] - E[x]^2 around zero would cancel badly
    x = (torch.randn(shape, dtype=torch.float64) * 0.5 + 1000.0).to(dtype)
    g = torch.randn(shape, dtype=dtype)
    mean, var = ops.plane_moments(x)
    x64 = planes64(x)
    m64 = x64.mean(-1)
    v64 = ((x64 - m64[..., None]) ** 2).mean(-1)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert rel_err(mean, m64) < tol
    assert rel_err(var, v64) < (1e-4 if dtype == torch.float32 else 1e-9)  # var/mean^2 ~ 2.5e-7
    centre = torch.randn(shape[:2], dtype=dtype) + 1000.0
    sum_g, sum_gx = ops.plane_grad_sums(g, x, centre)
    assert rel_err(sum_g, planes64(g).sum(-1)) < tol
    assert rel_err(sum_gx, (planes64(g) * (x64 - centre.double()[..., None])).sum(-1)) < tol * 10


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_elementwise_passes(ops, fresh_seed, dtype):
    x, g = torch.randn(3, 5, 67, 61, dtype=dtype), torch.randn(3, 5, 67, 61, dtype=dtype)
    a, b, c = (torch.randn(3, 5, dtype=dtype) for _ in range(3))
    per = lambda t: t.double()[..., None, None]
    tol = 1e-7 if dtype == torch.float32 else 1e-15
    assert rel_err(ops.plane_affine(x, a, b), per(a) * x.double() + per(b)) < tol
    assert rel_err(ops.plane_affine_backward(g, x, a, b, c),
                   per(a) * g.double() + per(b) * x.double() + per(c)) < tol


@pytest.mark.parametrize("shape,groups", [((2, 64, 67, 61), 32), ((1, 96, 5, 3), 4)])
@pytest.mark.parametrize("affine", bcn.AFFINES)
def test_inference_kernel_against_the_reference(ops, fresh_seed, shape, groups, affine):
    layer = random_bcn(shape[1], groups, "batch", affine).eval()
    x = random_input(*shape)
    with torch.no_grad():
        y = layer(x)
    p = {k: v.detach().double() for k, v in layer.named_parameters()}
    expected = ref.channel_part(
        ref.batch_part(x.double(), layer.pbn.running_mean.double(), layer.pbn.running_var.double(),
                       p["pbn.weight"], p["pbn.bias"]), groups, p["weight"], p["bias"])
    assert rel_err(y, expected) < 1e-6


def test_results_do_not_depend_on_the_thread_count(ops, fresh_seed):
    x, g = torch.randn(2, 64, 40, 50), torch.randn(2, 64, 40, 50)
    layer = random_bcn(64, 32, "batch")
    threads = torch.get_num_threads()
    outputs = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            fresh, xg = copy.deepcopy(layer).train(), x.clone().requires_grad_(True)
            y = fresh(xg)
            y.backward(g)
            with torch.no_grad():
                outputs.append((y, fresh.pbn.running_var, fresh.eval()(x), xg.grad))
    finally:
        torch.set_num_threads(threads)
    for other in outputs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(outputs[0], other))


def test_bad_inputs_are_named(ops):
    x = torch.randn(2, 4, 3, 3)
    with pytest.raises(RuntimeError, match="contiguous"):
        ops.plane_moments(x.transpose(2, 3))
    with pytest.raises(RuntimeError, match="float32 or float64"):
        ops.plane_moments(x.half())
    with pytest.raises(RuntimeError, match=r"\(N, C\)"):
        ops.plane_affine(x, torch.ones(5), torch.ones(2, 4))
    with pytest.raises(RuntimeError, match="groups do not divide"):
        ops.fixed_step1_forward(x, *(torch.ones(4),) * 4, 3, 1e-5)


FALLBACK = textwrap.dedent("""
    import warnings, torch, bcn
    from bcn import kernels
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fast = bcn.BatchChannelNorm2d(64, 32, impl="fused")
        slow = bcn.BatchChannelNorm2d(64, 32, impl="reference")
        x = torch.randn(2, 64, 6, 5)
        assert torch.equal(fast(x), slow(x)), "the fused impl did not fall back to the reference"
    assert kernels.plane_ops() is None
    print("|".join(str(w.message) for w in caught if issubclass(w.category, kernels.KernelUnavailableWarning)))
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
