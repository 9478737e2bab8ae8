"""sync_batch=True through the kernels: two gloo processes, each with its own part of the
batch, against the float64 reference of BatchNorm over the whole batch followed by group
normalization -- the output, every gradient (the input's over the whole batch, the
parameters' this process's own, as SyncBatchNorm gives them) and the running statistics."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import bcn
from tests.core import reference as ref
from tests.core.conftest import force_family
from tests.helpers import rel_err

WORLD = 2
SHAPES = {0: (3, 64, 6, 5), 1: (2, 64, 6, 5)}  # unequal batches, as a last batch can be
GROUPS = 32


def data(rank):
    generator = torch.Generator().manual_seed(100 + rank)
    shape = SHAPES[rank]
    x = torch.randn(shape, generator=generator, dtype=torch.float64) * 2 + 1
    dy = torch.randn(shape, generator=generator, dtype=torch.float64)
    return x, dy


def layer_parameters(c):
    generator = torch.Generator().manual_seed(7)
    return {"pbn.weight": torch.rand(c, generator=generator) + 0.5,
            "pbn.bias": torch.randn(c, generator=generator),
            "weight": torch.rand(1, GROUPS, 1, generator=generator) + 0.5,
            "bias": torch.randn(1, GROUPS, 1, generator=generator),
            "pbn.running_mean": torch.randn(c, generator=generator) * 0.1,
            "pbn.running_var": torch.rand(c, generator=generator) + 0.5}


def reference(rank, dtype):
    """The whole batch in float64 (inputs rounded to ``dtype`` first): this process's output
    and input gradient, its own parameter gradients, and the new running statistics."""
    parts = [data(r) for r in range(WORLD)]
    xs = [x.to(dtype).double().requires_grad_() for x, _ in parts]
    dys = [dy.to(dtype).double() for _, dy in parts]
    c = xs[0].shape[1]
    p = {k: v.double() for k, v in layer_parameters(c).items()}
    params = [p[k].clone().requires_grad_() for k in ("pbn.weight", "pbn.bias", "weight", "bias")]
    whole = torch.cat(xs)
    mean, var, count = ref.batch_stats(whole)
    x1 = ref.batch_part(whole, mean, var, params[0], params[1])
    y = ref.channel_part(x1, GROUPS, params[2].reshape(-1), params[3].reshape(-1))
    ys = y.split([x.shape[0] for x in xs])
    dx = torch.autograd.grad(y, xs, torch.cat(dys), retain_graph=True)[rank]
    own = torch.autograd.grad(ys[rank], params, dys[rank])
    momentum = 0.1
    new_mean = (1 - momentum) * p["pbn.running_mean"] + momentum * mean.detach()
    new_var = (1 - momentum) * p["pbn.running_var"] + momentum * var.detach() * count / (count - 1)
    return ys[rank].detach(), dx, own, (new_mean, new_var)


def worker(rank, init_file, impl, dtype, family, errors):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        if family:
            force_family(setattr, family)
        x, dy = data(rank)
        layer = bcn.BatchChannelNorm2d(64, GROUPS, sync_batch=True, impl=impl).train()
        layer.load_state_dict(layer_parameters(64), strict=False)
        wide = torch.float64 if dtype == torch.float64 else torch.float32
        layer.to(wide)
        x = x.to(dtype).requires_grad_()
        with bcn.kernels.served_implementations() as served:
            y = layer(x)
            y.backward(dy.to(dtype))
        assert served[impl] == 1, dict(served)
        want_y, want_dx, want_params, want_state = reference(rank, dtype)
        got = {"output": (y, want_y), "input gradient": (x.grad, want_dx),
               "running mean": (layer.pbn.running_mean, want_state[0]),
               "running var": (layer.pbn.running_var, want_state[1])}
        for name, want in zip(("pbn.weight", "pbn.bias", "weight", "bias"), want_params):
            got[f"{name} gradient"] = (dict(layer.named_parameters())[name].grad, want)
        tolerance = 1e-9 if dtype == torch.float64 else 1e-5
        errors[rank] = {name: rel_err(a.double(), b.reshape(a.shape)) for name, (a, b) in got.items()}
        errors[rank] = {k: v for k, v in errors[rank].items() if not v < tolerance}
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kernels", ["cpu", "triton:group_blocks", "triton:plane_passes"])
def test_synchronized_batch_statistics_in_the_kernels(tmp_path, kernels, dtype):
    """(each process asserts that the kernels served its call: the suite's served-implementation
    check sees only this process) Both families of the Triton kernels (tests/core/conftest.py)."""
    impl, _, family = kernels.partition(":")
    errors = mp.Manager().dict()
    mp.spawn(worker, args=(str(tmp_path / "init"), impl, dtype, family, errors), nprocs=WORLD)
    assert dict(errors) == {0: {}, 1: {}}
