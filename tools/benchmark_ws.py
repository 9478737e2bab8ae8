#!/usr/bin/env python
"""Weight standardization over every conv weight of a ResNet: BCN's kernel (bcn.conv.standardize_weight
on the CPU) against the reference path (bcn.functional.standardize_weight, through F.layer_norm),
forward and backward, with a copy of the same bytes as the memory-speed yardstick.

    python tools/benchmark_ws.py [--arch resnet50] [--repeats 21] [--out output/benchmark_ws.md]

Forward reads each weight and writes its standardized copy (yardstick: clone); backward reads
the gradient and the weight and writes the weight's gradient (yardstick: an add of two
weight-sized tensors). Candidates run interleaved in a shuffled order within each repeat;
times are medians, ratios medians of per-repeat ratios.
"""
import argparse
import statistics
import time
from pathlib import Path

import torch
import torchvision

import bcn
from bcn.utils.allocator import keep_freed_memory
from bcn.functional import standardize_weight

from timing import interleaved, timed  # tools/timing.py


def conv_weights(arch):
    model = getattr(torchvision.models, arch)()
    return [p.detach().clone() for p in model.parameters() if p.dim() == 4]


def forward_and_backward(standardize, weights, grads):
    """(forward only, backward only) callables over all weights: backward replays a graph kept
    from one forward, so each is timed alone."""
    def forward():
        with torch.no_grad():
            for w in weights:
                standardize(w)

    leaves = [w.clone().requires_grad_(True) for w in weights]

    def backward():
        for w in leaves:
            w.grad = None  # the gradient is stored, not added to a previous one
        outputs = [standardize(w) for w in leaves]  # graph built outside the timed region
        start = time.perf_counter()
        torch.autograd.backward(outputs, grads)
        return time.perf_counter() - start

    return forward, backward


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet50", help="a torchvision ResNet: resnet18, resnet50, ...")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--out", default="output/benchmark_ws.md")
    args = parser.parse_args(argv)
    keep_freed_memory()  # as the training launchers run on CPU
    weights = conv_weights(args.arch)
    grads = [torch.randn_like(w) for w in weights]
    kernel_fwd, kernel_bwd = forward_and_backward(bcn.conv.standardize_weight, weights, grads)
    ref_fwd, ref_bwd = forward_and_backward(standardize_weight, weights, grads)

    candidates = {
        "forward, kernel": timed(kernel_fwd), "forward, reference (layer_norm)": timed(ref_fwd),
        "forward yardstick: clone": timed(lambda: [w.clone() for w in weights]),
        "backward, kernel": kernel_bwd, "backward, reference (layer_norm)": ref_bwd,
        "backward yardstick: add": timed(lambda: [torch.add(w, g) for w, g in zip(weights, grads)]),
    }
    times = interleaved(candidates, args.repeats)

    def ratio(name, base):
        return statistics.median(a / b for a, b in zip(times[name], times[base]))

    count = sum(w.numel() for w in weights)
    lines = [f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} repeats; "
             f"{args.arch}: {len(weights)} conv weights, {count / 1e6:.1f}M values", "",
             "| measurement | median time | ratio |", "|---|---|---|"]
    for name in candidates:
        base = "forward yardstick: clone" if name.startswith("forward") else "backward yardstick: add"
        lines.append(f"| {name} | {statistics.median(times[name]) * 1e3:.2f} ms | {ratio(name, base):.2f}x yardstick |")
    print("\n".join(lines), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
