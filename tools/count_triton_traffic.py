#!/usr/bin/env python
"""Count the memory traffic of BCN's Triton kernels, as a GPU would move it, without a GPU: one
training step of a layer (forward and backward) runs in Triton's interpreter with every load and
store recorded -- bytes used and 32-byte sectors touched, per kernel and per tensor.

    python tools/count_triton_traffic.py [--shapes 512x256x7x7,...] [--dtypes float16,...]
                                         [--channels-last] [--per-channel-affine]

Prints, per case, all bytes loaded and stored against GroupNorm's ideal: its two passes each
way over the map (x read twice and y written once forward; x and dy read twice and dx written
once backward), plus the layer's own parameters read once, its running state read and written
once, its parameter gradients written once. Everything else -- per-plane and per-(sample,
group) values, per-channel statistics, rows of partial sums -- is the kernels' overhead.
Interpreted kernels are slow: maps of a few million values take minutes.
"""
import argparse
import contextlib
import os
import sys
from collections import defaultdict
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bcn.kernels import triton_kernels as tk  # noqa: E402

SHAPES = [(2, 256, 200, 336), (2, 256, 100, 168), (1, 64, 400, 672), (1, 2048, 25, 42),
          (512, 256, 7, 7), (128, 256, 14, 14), (4, 512, 65, 65), (4, 2048, 33, 33), (4, 256, 1, 1)]


class Traffic:
    """Every load and store the kernels make in the interpreter: (kernel, addresses, item size)."""

    def __init__(self):
        self.kernel, self.accesses = None, []

    def record(self, ptrs, mask, itemsize):
        addresses = ptrs.data[mask.data] if mask is not None else ptrs.data.ravel()
        self.accesses.append((self.kernel, addresses.astype(np.uint64), itemsize))

    def total(self):
        return sum(addresses.size * itemsize for _, addresses, itemsize in self.accesses)

    def by_tensor(self, tensors):
        """{(kernel, tensor name): [bytes used, 32-byte sectors touched]}, sectors counted per
        access (one tile of one program)."""
        ranges = {name: (t.data_ptr(), t.data_ptr() + t.numel() * t.element_size())
                  for name, t in tensors.items()}
        counts = defaultdict(lambda: [0, 0])
        for kernel, addresses, itemsize in self.accesses:
            for name, (lo, hi) in ranges.items():
                inside = addresses[(addresses >= lo) & (addresses < hi)]
                if inside.size:
                    counts[(kernel, name)][0] += inside.size * itemsize
                    counts[(kernel, name)][1] += np.unique(inside // 32).size
        return dict(counts)


@contextlib.contextmanager
def recording():
    """Yields a dict; while ``holder["t"]`` is a Traffic, every interpreted load and store of
    the kernels' launches is recorded into it under the launching kernel's name."""
    from triton.runtime import interpreter

    holder = {}
    builder = interpreter.InterpreterBuilder
    real_load, real_store, real_launcher = builder.create_masked_load, builder.create_masked_store, tk._launcher

    def load(self, ptrs, mask, *args, **kwargs):
        out = real_load(self, ptrs, mask, *args, **kwargs)
        if holder.get("t") is not None:
            holder["t"].record(ptrs, mask, out.data.itemsize)
        return out

    def store(self, ptrs, value, mask, *args, **kwargs):
        if holder.get("t") is not None:
            holder["t"].record(ptrs, mask, value.data.itemsize)
        return real_store(self, ptrs, value, mask, *args, **kwargs)

    def launcher(traceable):
        def named(kernel):
            class Launch:
                def __getitem__(self, grid):
                    def call(*args, **kwargs):
                        if holder.get("t") is not None:
                            holder["t"].kernel = kernel.__name__
                        return kernel[grid](*args, **kwargs)
                    return call
            return Launch()
        return named

    builder.create_masked_load, builder.create_masked_store, tk._launcher = load, store, launcher
    try:
        yield holder
    finally:
        builder.create_masked_load, builder.create_masked_store, tk._launcher = real_load, real_store, real_launcher


def layer_traffic(shape, dtype, channels_last=False, per_channel_affine=False, groups=32,
                  step1=tk.BATCH):
    """(forward Traffic, backward Traffic, tensors {name: tensor} of the map and the layer)
    for one training step of a layer on random data (parameters and state float32)."""
    x = torch.randn(shape).to(dtype)
    dy = torch.randn(shape).to(dtype)
    if channels_last:
        x, dy = (t.contiguous(memory_format=torch.channels_last) for t in (x, dy))
    c = shape[1]
    f32 = dict(dtype=torch.float32)
    affine = (c,) if per_channel_affine else (1, groups, 1)
    params = dict(bn_weight=torch.ones(c, **f32), bn_bias=torch.zeros(c, **f32),
                  gn_weight=torch.ones(*affine, **f32), gn_bias=torch.zeros(*affine, **f32))
    state = dict(running_mean=torch.zeros(c, **f32), running_var=torch.ones(c, **f32),
                 num_batches_tracked=torch.zeros((), dtype=torch.long),
                 skipped_updates=torch.zeros((), dtype=torch.long))
    scalars = torch.tensor([1e-5, 0.1, 1e-5], dtype=torch.float64)
    with recording() as holder:
        holder["t"] = forward = Traffic()
        y, saved = tk.forward(x, groups, *params.values(), *state.values(), step1, step1 != tk.FIXED,
                              torch.tensor(0.1), scalars)
        holder["t"] = backward = Traffic()
        dx, *grads = tk.backward(dy, groups, params["bn_weight"], params["bn_bias"], params["gn_weight"],
                                 scalars, saved, step1)
    tensors = dict(x=x, y=y, dy=dy, dx=dx, **params, **state)
    tensors.update({f"d_{name}": g for name, g in zip(params, grads)})
    return forward, backward, tensors


def groupnorm_ideal(tensors):
    """(forward, backward) bytes: GroupNorm's passes over the map, the layer's parameters read
    once, its running state read and written once, its parameter gradients written once."""
    size = lambda name: tensors[name].numel() * tensors[name].element_size()  # noqa: E731
    map_bytes = size("x")
    params = sum(size(n) for n in ("bn_weight", "bn_bias", "gn_weight", "gn_bias"))
    state = sum(size(n) for n in ("running_mean", "running_var", "num_batches_tracked", "skipped_updates"))
    grads = sum(size(f"d_{n}") for n in ("bn_weight", "bn_bias", "gn_weight", "gn_bias"))
    return 3 * map_bytes + params + 2 * state, 5 * map_bytes + size("gn_weight") + grads


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in SHAPES))
    parser.add_argument("--dtypes", default="float32,float16,bfloat16")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--per-channel-affine", action="store_true")
    args = parser.parse_args(argv)
    print("| shape | dtype | layout | forward / ideal | backward / ideal | kernels fwd + bwd |")
    print("|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        shape = tuple(int(v) for v in shape.split("x"))
        for dtype in args.dtypes.split(","):
            forward, backward, tensors = layer_traffic(shape, getattr(torch, dtype), args.channels_last,
                                                       args.per_channel_affine)
            ideal = groupnorm_ideal(tensors)
            launches = [len({k for k, _, _ in t.accesses}) for t in (forward, backward)]
            print(f"| {shape} | {dtype} | {'channels_last' if args.channels_last else 'NCHW'} | "
                  f"{forward.total() / ideal[0]:.3f} | {backward.total() / ideal[1]:.3f} | "
                  f"{launches[0]} + {launches[1]} |", flush=True)


if __name__ == "__main__":
    main()
