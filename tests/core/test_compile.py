"""torch.compile and torch.export with BCN's kernels as operators (bcn.kernels.ops): the operators pass
torch.library.opcheck, a compiled BCN+WS network keeps them in one graph and matches eager
mode (outputs, every gradient, running state) over changing input sizes, it recompiles no more
often than the same network with GroupNorm, and an eval model exports and runs."""
import copy

import pytest
import torch
from torch import nn

import bcn
from bcn.kernels import ops
from tests.core.helpers import random_input
from tests.helpers import rel_err

SIZES = [(12, 14), (10, 9), (16, 16)]


def network(mode, impl="auto", norm="bcn"):
    def norm_layer(c, g):
        return bcn.BatchChannelNorm2d(c, g, mode=mode, impl=impl) if norm == "bcn" else nn.GroupNorm(g, c)
    conv = bcn.WSConv2d if norm == "bcn" else nn.Conv2d
    return nn.Sequential(conv(3, 16, 3, padding=1, bias=False), norm_layer(16, 4), nn.ReLU(),
                         conv(16, 32, 3, padding=1, bias=False), norm_layer(32, 8))


def test_the_operators_pass_opcheck(fresh_seed):
    x = random_input(2, 8, 5, 6)
    c, g = 8, 4
    params = [torch.rand(c) + 0.5, torch.randn(c), torch.rand(1, g, 1) + 0.5, torch.randn(1, g, 1)]
    params = [p.requires_grad_() for p in params]
    state = [torch.randn(c) * 0.1, torch.rand(c) + 0.5, torch.zeros((), dtype=torch.long),
             torch.zeros((), dtype=torch.long)]
    rate = torch.tensor(0.2, dtype=torch.float64)
    for step1 in (0, 1, 2):  # batch, estimate, fixed
        update = step1 != 2
        out = [o.detach() for o in ops.cpu_train_forward(x, g, *params, *state, step1, update, rate, 1e-5)]
        torch.library.opcheck(ops.cpu_train_forward, (x.clone().requires_grad_(), g, *params, *state, step1, update, rate, 1e-5))
        grad = torch.randn_like(x)
        torch.library.opcheck(ops.cpu_train_backward, (grad, x, g, *(p.detach() for p in params[:3]),
                                                       *out[1:5], step1, 1e-5))
    torch.library.opcheck(ops.cpu_inference, (x, g, *(p.detach() for p in params), state[0], state[1], 1e-5))
    weight = torch.randn(6, 4, 3, 3, requires_grad=True)
    torch.library.opcheck(ops.standardize_weight_forward, (weight, 1e-5))
    z, row_mean, row_scale = ops.standardize_weight_forward(weight.detach(), 1e-5)
    torch.library.opcheck(ops.standardize_weight_backward, (torch.randn_like(z), weight.detach(), row_mean, row_scale))
    # The Triton operators, here in Triton's interpreter (custom_ops with their own fakes; on a
    # GPU they are triton_ops: tools/gpu_check.py opchecks them there)
    # (1x1 maps: the whole-layer kernels, which save less)
    scalars = torch.tensor([1e-5, 0.1, 1e-5], dtype=torch.float64)
    for x in (x, random_input(2, 8, 1, 1)):
        for step1 in (0, 1, 2):  # batch, estimate, fixed
            args = (x.clone().requires_grad_(), g, *params, *state, step1, step1 != 2, rate.float().reshape(1), scalars)
            torch.library.opcheck(ops.triton_forward, args)
            _, saved, _ = ops.split([o.detach() for o in ops.triton_forward(*args)], ops.TRITON_SAVED)
            torch.library.opcheck(ops.triton_backward, (torch.randn_like(x), g, *(p.detach() for p in params[:3]),
                                                        scalars, [x] + saved, step1))


@pytest.mark.parametrize("impl", ["auto", "triton"])
@pytest.mark.parametrize("mode", bcn.MODES)
def test_compiled_network_matches_eager_over_sizes(fresh_seed, mode, impl):
    eager = network(mode, impl).train()
    compiled_net = copy.deepcopy(eager)
    bcn.set_estimate_rate(eager, 0.1)
    bcn.set_estimate_rate(compiled_net, 0.1)
    copy.deepcopy(eager)(random_input(2, 3, 4, 4))  # in eager mode, the kernels are found ready
    explanation = torch._dynamo.explain(copy.deepcopy(compiled_net))(random_input(2, 3, *SIZES[0]))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(compiled_net)
    for size in SIZES:
        x = random_input(2, 3, *size).requires_grad_()
        xc = x.detach().clone().requires_grad_()
        ye, yc = eager(x), compiled(xc)
        grad = torch.randn_like(ye)
        ye.backward(grad)
        yc.backward(grad)
        assert rel_err(yc, ye) < 1e-6
        assert rel_err(xc.grad, x.grad) < 1e-5
        for (name, a), b in zip(eager.named_parameters(), compiled_net.parameters()):
            assert rel_err(b.grad, a.grad) < 1e-5, name
    for (name, a), b in zip(eager.named_buffers(), compiled_net.buffers()):
        assert rel_err(b.double(), a.double()) < 1e-6 if a.is_floating_point() else torch.equal(a, b), name


def test_a_first_call_that_is_compiled_gives_eager_results(fresh_seed, monkeypatch):
    """Kernels not yet probed when the first call is compiled: found out once, outside the
    graph; the results are eager mode's."""
    from bcn.kernels import status

    monkeypatch.setattr(status, "cpu_built", {})
    torch._dynamo.reset()
    eager = network("estimate").train()
    compiled_net = copy.deepcopy(eager)
    bcn.set_estimate_rate(eager, 0.1)
    bcn.set_estimate_rate(compiled_net, 0.1)
    x = random_input(2, 3, 10, 12)
    assert rel_err(torch.compile(compiled_net)(x), eager(x)) < 1e-6
    assert status.cpu_built == {"cpu": True}


def count_compilations(model, sizes):
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(model, backend=counter)
    for size in sizes:
        compiled(random_input(2, 3, *size)).sum().backward()
    return counter.frame_count


def test_no_more_recompilations_than_groupnorm(fresh_seed):
    sizes = SIZES + [(20, 7), (9, 31)]
    ours = network("estimate").train()
    bcn.set_estimate_rate(ours, 0.1)
    ours(random_input(2, 3, 8, 8))  # the kernels are built before the graph is recorded
    assert count_compilations(ours, sizes) <= count_compilations(network("estimate", norm="gn").train(), sizes)


@pytest.mark.parametrize("folded", [False, True], ids=["unfolded", "folded"])
def test_an_eval_model_exports_and_runs(fresh_seed, folded):
    model = network("batch").train()
    model(random_input(4, 3, 12, 12))  # running statistics
    model.eval()
    if folded:
        assert bcn.fold.fold_pairs([(model, "0", "1"), (model, "3", "4")]) == 2
    x = random_input(2, 3, 12, 14)
    with torch.no_grad():
        expected = model(x)
    program = torch.export.export(model, (x,))
    if not folded:
        assert any("bcn." in str(node.target) for node in program.graph.nodes), "the kernels are in the graph"
    assert rel_err(program.module()(x), expected) < 1e-6


@pytest.mark.parametrize("plane,kernels", [((1, 1), 2), ((5, 7), 7), ((40, 40), 11)],
                         ids=["whole_layer", "small_planes", "plane_passes"])
def test_with_compiled_triton_the_triton_operators_trace_into_kernel_launches(plane, kernels):
    """On a GPU the Triton operators are torch.library.triton_ops: under torch.compile their
    launches (through wrap_triton) become nodes of the graph -- a whole 1x1 layer: one kernel
    each way; small planes: four kernels forward, three backward; larger planes: six and five
    -- with dynamic sizes, and no opaque
    bcn call is left. Traced here without a GPU in a process where Triton compiles rather than
    interprets (tracing runs no kernel)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "tests.core.triton_op_graph", *map(str, plane)],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.split()
    assert lines[:2] == ["bcn::triton_forward", "bcn::triton_backward"]
    assert lines.count("triton_kernel_wrapper_functional") == kernels
    assert not any(line.startswith("bcn.") for line in lines)
