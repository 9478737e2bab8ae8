#!/usr/bin/env python
"""BCN against nn.GroupNorm, nn.BatchNorm2d, the plain composition and a copy of the map, at
Mask R-CNN R50-FPN shapes: training (forward + backward) and eval (forward), as ratios to
GroupNorm, how many times faster the layer on its kernels is than the composition, and (on a
GPU) the memory bandwidth it reaches as a fraction of the copy's.

    python tools/benchmark_norm.py [--repeats 15] [--out output/benchmark_norm.md]

Candidates run interleaved in a shuffled order within each repeat, and each ratio is the
median over repeats of the per-repeat ratio, so machine noise hits all candidates alike. A
timing covers at least MIN_TIMING_S of back-to-back calls (the same count for every candidate
of a shape): one call of a small map's layer takes 10-80 us, and timed alone such calls gave
ratios that moved by up to 0.5 between runs.
float32 on the CPU; on a GPU also float16 and bfloat16 autocast (the map in that dtype, as a
network's conv gives it), timed with CUDA events, and the detection heads' ROI batches.
Bandwidth: BCN moves the map 3 times in eval (read, read, write) and 8 in training (+ read x
and dy twice, write dx), a copy 2 times.

glibc's malloc is set as the training launchers set it on CPU (bcn/utils/allocator.py: no mmap per
large block); --malloc-defaults measures with glibc's own settings, under which every output of
a detection-sized map (34-69 MB) is mapped afresh and page-faulted in on every call, by every
candidate: that cost, larger than the normalization itself, then dominates every ratio.
"""
import argparse
import functools
import math
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import bcn
from bcn.utils.allocator import keep_freed_memory

from timing import interleaved  # tools/timing.py

SHAPES = [(1, 256, 200, 336), (2, 256, 100, 168), (4, 512, 32, 32), (1, 2048, 25, 42)]
GPU_SHAPES = [(2, 256, 200, 336), (2, 256, 100, 168), (1, 2048, 25, 42), (512, 256, 7, 7), (128, 256, 14, 14)]
MIN_TIMING_S = 2e-3
KERNELS = ("BCN batch (kernels)", "BCN estimate (kernels)")
PASSES = {True: 8, False: 3}  # over the map, BCN's kernels: training, eval (a copy: 2)


class Copy(nn.Module):
    """A device-to-device copy of the map: the memory-speed yardstick."""

    def forward(self, x):
        return x.clone()


def candidates(channels, device):
    def bcn_layer(mode, impl):
        layer = bcn.BatchChannelNorm2d(channels, 32, mode=mode, impl=impl)
        bcn.set_estimate_rate(layer, 0.01)
        return layer
    layers = {
        "GroupNorm": nn.GroupNorm(32, channels),
        "BatchNorm2d": nn.BatchNorm2d(channels),
        "BCN composition (reference)": bcn_layer("batch", "reference"),
        KERNELS[0]: bcn_layer("batch", "auto"),
        KERNELS[1]: bcn_layer("estimate", "auto"),
        "copy": Copy(),
    }
    return {name: layer.to(device) for name, layer in layers.items()}


def time_per_call(layer, x, grad, training, dtype, device, calls=1):
    """Seconds per call, over `calls` calls back to back (CUDA events on a GPU). Training:
    forward + backward, the input's gradient dropped after each call (the parameters'
    accumulate, as in every candidate); a copy is timed forward only."""
    layer.train(training)
    training = training and not isinstance(layer, Copy)
    autocast = torch.autocast(device, dtype=dtype) if dtype != torch.float32 else torch.autocast(device, enabled=False)
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    else:
        start = time.perf_counter()
    with autocast:
        for _ in range(calls):
            if training:
                layer(x).backward(grad)
                x.grad = None
            else:
                with torch.no_grad():
                    layer(x)
    if device == "cuda":
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / calls
    return (time.perf_counter() - start) / calls


def bench(shape, training, dtype, device, repeats):
    """({name: (median seconds, median ratio to GroupNorm)}, [composition / kernels per mode],
    [bandwidth as a fraction of the copy's per mode])."""
    layers = candidates(shape[1], device)
    x = torch.randn(shape, device=device, dtype=dtype if device == "cuda" else torch.float32)
    x.requires_grad_(training)
    grad = torch.randn_like(x)
    for layer in layers.values():  # warm-up
        time_per_call(layer, x, grad, training, dtype, device)
    # timed after the warm-up: a layer's first call (allocations, cold caches) is no estimate
    fastest = min(time_per_call(layer, x, grad, training, dtype, device) for layer in layers.values())
    calls = max(1, math.ceil(MIN_TIMING_S / fastest))
    times = interleaved({name: functools.partial(time_per_call, layer, x, grad, training, dtype, device, calls)
                         for name, layer in layers.items()}, repeats, warm_up=False)
    ratios = {name: statistics.median(t / g for t, g in zip(times[name], times["GroupNorm"])) for name in layers}
    composition = times["BCN composition (reference)"]
    speedups = [statistics.median(c / f for c, f in zip(composition, times[name])) for name in KERNELS]
    bandwidth = [statistics.median(PASSES[training] / 2 * c / f for c, f in zip(times["copy"], times[name]))
                 for name in KERNELS]
    return {name: (statistics.median(times[name]), ratios[name]) for name in layers}, speedups, bandwidth


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--shapes", default=None, help="e.g. 2x256x100x168,4x512x32x32")
    parser.add_argument("--out", default="output/benchmark_norm.md")
    parser.add_argument("--malloc-defaults", action="store_true",
                        help="leave glibc's malloc as it is (by default: bcn/utils/allocator.py)")
    parser.add_argument("--gpu-only", action="store_true", help="only the GPU tables")
    args = parser.parse_args(argv)
    kept = not args.malloc_defaults and keep_freed_memory()
    custom = args.shapes and [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    settings = [("cpu", torch.float32)] if not args.gpu_only else []
    if torch.cuda.is_available():
        settings += [("cuda", torch.float32), ("cuda", torch.float16), ("cuda", torch.bfloat16)]
    lines = header(args.repeats, kept)
    for device, dtype in settings:
        lines += tables(device, dtype, custom or (GPU_SHAPES if device == "cuda" else SHAPES), args.repeats)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"saved {args.out}")


def header(repeats, kept):
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return [f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {device}, {repeats} repeats, "
            f"malloc {'keeps freed memory' if kept else 'defaults'}; "
            f"time: median ms per call, each timing >= {MIN_TIMING_S * 1e3:g} ms of calls back to back; "
            "ratio: median of per-repeat ratios to GroupNorm", ""]


def tables(device, dtype, shapes, repeats):
    """Markdown tables of one device and dtype, training and eval, printed as they are made."""
    lines = []
    for training in (True, False):
        title = f"{device} {str(dtype).split('.')[-1]} {'training (fwd+bwd)' if training else 'eval (fwd)'}"
        names, rows = None, []
        for shape in shapes:
            result, speedups, bandwidth = bench(shape, training, dtype, device, repeats)
            names = list(result) + ["composition / kernels, batch / estimate"]
            extra = " / ".join(f"{s:.2f}x" for s in speedups)
            if device == "cuda":
                names.append("bandwidth / copy's, batch / estimate")
                extra += " | " + " / ".join(f"{b:.0%}" for b in bandwidth)
            rows.append("| " + "x".join(map(str, shape)) + " | " + " | ".join(
                f"{milliseconds(t)} ({r:.2f}x)" for t, r in result.values()) + " | " + extra + " |")
        lines += [f"### {title}", "", "| shape | " + " | ".join(names) + " |",
                  "|---" * (len(names) + 1) + "|", *rows, ""]
        print("\n".join(lines[-len(rows) - 4:]), flush=True)
    return lines


def milliseconds(seconds):
    """Three significant digits down to the microsecond: a small map's layer takes 0.01-0.5 ms."""
    ms = seconds * 1e3
    return f"{ms:.1f} ms" if ms >= 10 else f"{ms:.2f} ms" if ms >= 1 else f"{ms:.3f} ms"


if __name__ == "__main__":
    main()
