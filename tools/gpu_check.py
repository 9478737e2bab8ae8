#!/usr/bin/env python
"""BCN on a CUDA GPU: the one command to run there. Nothing to configure; about 5 minutes on
one GPU; writes one Markdown report.

    python tools/gpu_check.py [--out output/gpu_check.md] [--skip jobs,models]

1. accuracy: the Triton kernels, compiled for this GPU, against the float64 reference
   (bcn.triton_norm.compare_with_reference) on the test suite's cases, in float32, float16 and
   bfloat16, NCHW and channels_last; and the first-use check of each dtype;
2. layers: tools/benchmark_norm.py's GPU tables (BCN against GroupNorm, BatchNorm2d, the
   composition and a copy of the map; fp32 and fp16 / bf16 autocast; training and eval);
3. jobs: both toy main jobs on CUDA with mixed precision, their AP / mIoU next to the CPU
   runs', and one start through each framework's multi-GPU launcher (world size 1);
4. models: training-iteration ratios BCN+WS / GN+WS / GN (tools/benchmark_model.py): Mask
   R-CNN R50-FPN at 800 px, DeepLabV3 R101 at 513 px crops;
5. compile: torch.library.opcheck on the Triton operators (bcn.ops, triton_ops); a compiled
   BCN+WS network against eager over three sizes in both modes (graph breaks, recompilations
   next to GroupNorm's, the largest relative differences of outputs, gradients and running
   state); one layer's training step compiled and eager, BCN and GroupNorm.

A section that fails is reported with its error and the rest still run. Without CUDA it says
so in one line and exits with status 2.
"""
import argparse
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CASES = [  # (shape, groups, modes, channels_last, per-channel affine): the test suite's cases
    ((2, 64, 5, 7), 32, ("batch", "estimate", "fixed"), False, False),
    ((2, 64, 5, 7), 32, ("batch",), True, False),
    ((1, 64, 8, 8), 32, ("estimate", "fixed"), False, False),
    ((1, 64, 1, 1), 32, ("estimate",), False, False),
    ((64, 32, 7, 7), 8, ("batch", "estimate"), False, False),
    ((2, 8, 48, 48), 4, ("batch", "estimate"), True, False),
    ((2, 16, 5, 7), 4, ("batch",), False, True),
    ((2, 256, 100, 168), 32, ("batch", "estimate"), False, False),
]
CPU_RANGE = {"detectron2 toy Mask R-CNN (bbox / segm AP)": "68-79 / 75-81",
             "mmseg toy DeepLabV3 (mIoU)": "75.7"}


def accuracy():
    from bcn import dispatch, triton_norm

    device = torch.device("cuda")
    lines = ["| dtype | first-use check | cases | worst error / its tolerance (what, case) | result |",
             "|---|---|---|---|---|"]
    for dtype in DTYPES:
        ready = dispatch.triton_ready(device, dtype)
        worst, where, count = 0.0, "", 0
        for shape, groups, modes, channels_last, per_channel in CASES:
            # 1x1 maps: a group of 2 values has gradients that cancel to ~1e-3 of their terms
            tolerance = triton_norm.TOLERANCE[dtype] * (20 if shape[2:] == (1, 1) else 1)
            for mode in modes:
                errors = triton_norm.compare_with_reference(device, dtype, shape, groups, mode,
                                                            channels_last, per_channel)
                count += 1
                for name, error in errors.items():
                    if not error / tolerance <= worst:
                        worst = error / tolerance if error == error else float("inf")
                        where = f"{error:.1e} / {tolerance:.0e}: {name}, {mode} {'x'.join(map(str, shape))}" + (
                            " channels_last" if channels_last else "")
        lines.append(f"| {str(dtype).split('.')[-1]} | {'passed' if ready else 'FAILED'} | {count} | "
                     f"{worst:.2f} ({where}) | {'ok' if ready and worst <= 1 else 'FAILED'} |")
    return lines


def layers():
    import benchmark_norm

    lines = []
    for dtype in DTYPES:
        lines += benchmark_norm.tables("cuda", dtype, benchmark_norm.GPU_SHAPES, repeats=7)
    return lines


def run(cmd, timeout):
    start = time.time()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return result, time.time() - start


def jobs():
    lines = ["| job | result | time | CPU runs |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        result, seconds = run([sys.executable, "tools/train_net.py", "--config-file",
                               "configs/detectron2/toy/mask_rcnn_R18_FPN_bcn_ws_toy.yaml", "--num-gpus", "1",
                               "MODEL.DEVICE", "cuda", "SOLVER.AMP.ENABLED", "True", "OUTPUT_DIR", f"{tmp}/det"], 900)
        aps = re.findall(r"copypaste: (\d+\.\d+),", result.stdout + result.stderr)
        name = "detectron2 toy Mask R-CNN (bbox / segm AP)"
        value = " / ".join(f"{float(a):.1f}" for a in aps[:2]) if result.returncode == 0 and aps else \
            f"FAILED (rc {result.returncode}): {(result.stderr or result.stdout)[-300:]!r}"
        lines.append(f"| {name}, CUDA, AMP, launch --num-gpus 1 | {value} | {seconds:.0f} s | {CPU_RANGE[name]} |")
        result, seconds = run([sys.executable, "tools/train_seg.py", "configs/mmseg/toy/deeplabv3_r18_bcn_ws_toy.py",
                               "--amp", "--work-dir", f"{tmp}/seg"], 900)
        miou = re.findall(r"mIoU: (\d+\.\d+)", result.stdout + result.stderr)
        name = "mmseg toy DeepLabV3 (mIoU)"
        value = miou[-1] if result.returncode == 0 and miou else \
            f"FAILED (rc {result.returncode}): {(result.stderr or result.stdout)[-300:]!r}"
        lines.append(f"| {name}, CUDA, AmpOptimWrapper fp16 | {value} | {seconds:.0f} s | {CPU_RANGE[name]} |")
        result, seconds = run(["torchrun", "--nproc_per_node", "1", "tools/train_seg.py",
                               "configs/mmseg/toy/deeplabv3_r18_bcn_ws_toy.py", "--launcher", "pytorch",
                               "--work-dir", f"{tmp}/seg_dist", "--cfg-options", "train_cfg.max_iters=20",
                               "train_cfg.val_interval=20"], 600)
        value = "ok" if result.returncode == 0 else f"FAILED (rc {result.returncode}): {result.stderr[-300:]!r}"
        lines.append(f"| mmseg through torchrun (NCCL, world size 1), 20 iterations | {value} | {seconds:.0f} s | |")
    return lines


def models():
    import benchmark_model

    lines = []
    for title, rows in (benchmark_model.mask_rcnn(50, 5, 0, size=800, device="cuda"),
                        benchmark_model.deeplabv3(101, 5, size=513, device="cuda")):
        lines += benchmark_model.table(title, rows)
    return lines


def _opcheck_triton_operators(device):
    from bcn import ops

    n, c, g = 2, 16, 8
    x = torch.randn(n, c, 6, 7, device=device)
    params = [torch.rand(c, device=device) + 0.5, torch.randn(c, device=device),
              torch.rand(1, g, 1, device=device) + 0.5, torch.randn(1, g, 1, device=device)]
    state = [torch.zeros(c, device=device), torch.ones(c, device=device),
             torch.zeros((), dtype=torch.long, device=device), torch.zeros((), dtype=torch.long, device=device)]
    rate = torch.tensor([0.01], device=device)
    scalars = torch.tensor([1e-5, 0.1, 1e-5], dtype=torch.float64, device=device)
    for mode in (0, 1):  # batch, estimate
        args = (x.clone().requires_grad_(), *(p.clone().requires_grad_() for p in params), g, mode,
                True, *state, rate, scalars)
        torch.library.opcheck(ops.triton_forward, args)
        saved = [x] + [o.detach() for o in ops.triton_forward(*args)[1:10]]
        torch.library.opcheck(ops.triton_backward, (torch.randn_like(x), saved, params[2], g, mode))
    return ["opcheck of bcn::triton_forward and bcn::triton_backward, batch and estimate mode: passed"]


def _network(norm, mode, device):
    from torch import nn

    import bcn

    def layer(channels, groups):
        return bcn.BatchChannelNorm2d(channels, groups, mode=mode) if norm == "BCN+WS" else nn.GroupNorm(groups, channels)
    conv = bcn.WSConv2d if norm == "BCN+WS" else nn.Conv2d
    net = nn.Sequential(conv(3, 16, 3, padding=1, bias=False), layer(16, 4), nn.ReLU(),
                        conv(16, 32, 3, padding=1, bias=False), layer(32, 8)).to(device)
    bcn.set_estimate_rate(net, 0.01)
    return net


def _compiled_against_eager(device):
    from torch._dynamo.utils import counters

    def rel(a, b):
        return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()

    lines = ["| mode | graph breaks | graphs over 5 sizes (GroupNorm's) | output | gradients | running state |",
             "|---|---|---|---|---|---|"]
    sizes = ((12, 14), (10, 9), (16, 16), (20, 24), (7, 30))
    for mode in ("batch", "estimate"):
        graphs = {}
        for norm in ("BCN+WS", "GN"):
            torch._dynamo.reset()
            counters.clear()
            net = _network(norm, mode, device)
            net(torch.randn(2, 3, 8, 8, device=device))  # in eager mode, the kernels are found ready
            model = torch.compile(net)
            for size in sizes:
                model(torch.randn(2, 3, *size, device=device)).sum().backward()
            graphs[norm] = counters["stats"]["unique_graphs"]
        torch._dynamo.reset()
        eager, same = _network("BCN+WS", mode, device), _network("BCN+WS", mode, device)
        breaks = torch._dynamo.explain(same)(torch.randn(2, 3, 12, 14, device=device)).graph_break_count
        same.load_state_dict(eager.state_dict())
        compiled = torch.compile(same)
        worst = dict(output=0.0, gradients=0.0, state=0.0)
        for size in sizes[:3]:
            x = torch.randn(2, 3, *size, device=device)
            eager.zero_grad(), same.zero_grad()
            ye, yc = eager(x), compiled(x)
            grad = torch.randn_like(ye)  # (a loss like sum(y^2) has gradients that cancel)
            ye.backward(grad), yc.backward(grad)
            worst["output"] = max(worst["output"], rel(yc, ye))
            for pe, pc in zip(eager.parameters(), same.parameters()):
                worst["gradients"] = max(worst["gradients"], rel(pc.grad, pe.grad))
            for be, bc in zip(eager.buffers(), same.buffers()):
                if be.is_floating_point():
                    worst["state"] = max(worst["state"], rel(bc, be))
        lines.append(f"| {mode} | {breaks} | {graphs['BCN+WS']} ({graphs['GN']}) | {worst['output']:.1e} | "
                     f"{worst['gradients']:.1e} | {worst['state']:.1e} |")
    return lines


def _layer_step_ratios(device, shape=(2, 256, 100, 168), repeats=15):
    import statistics

    from torch import nn

    import bcn
    from timing import interleaved, timed

    x = torch.randn(*shape, device=device, requires_grad=True)
    grad = torch.randn(*shape, device=device)
    bcn_layer = bcn.BatchChannelNorm2d(shape[1], 32, mode="estimate").to(device)
    bcn.set_estimate_rate(bcn_layer, 0.01)
    candidates = {}
    for name, layer in (("GroupNorm", nn.GroupNorm(32, shape[1]).to(device)), ("BCN", bcn_layer)):
        for how, fn in (("eager", layer), ("compiled", torch.compile(layer))):
            candidates[f"{how} {name}"] = timed(lambda fn=fn: fn(x).backward(grad))
    times = interleaved(candidates, repeats)
    lines = [f"One layer's training step at {'x'.join(map(str, shape))} (estimate mode), medians of "
             f"per-repeat ratios to eager GroupNorm ({repeats} repeats, interleaved):", "",
             "| candidate | ratio | median ms |", "|---|---|---|"]
    for name, t in times.items():
        ratio = statistics.median(a / b for a, b in zip(t, times["eager GroupNorm"]))
        lines.append(f"| {name} | {ratio:.2f}x | {statistics.median(t) * 1e3:.2f} |")
    return lines


def compile_check(device="cuda"):
    return (_opcheck_triton_operators(device) + [""] + _compiled_against_eager(device) + [""]
            + _layer_step_ratios(device))


SECTIONS = {"accuracy": ("Accuracy: the kernels on this GPU against the float64 reference", accuracy),
            "layers": ("Layers: tools/benchmark_norm.py's GPU tables", layers),
            "jobs": ("Toy main jobs on CUDA with mixed precision; the launchers", jobs),
            "models": ("Models: training iterations, BCN+WS / GN+WS / GN", models),
            "compile": ("torch.compile with the Triton operators", compile_check)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="output/gpu_check.md")
    parser.add_argument("--skip", default="", help=f"comma-separated sections to skip, of {', '.join(SECTIONS)}")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("tools/gpu_check.py: no CUDA device here (torch.cuda.is_available() is False); run it on a machine with an NVIDIA GPU.")
        return 2
    import triton

    props = torch.cuda.get_device_properties(0)
    lines = ["# BCN GPU check", "",
             f"{props.name} ({props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor}), "
             f"torch {torch.__version__}, CUDA {torch.version.cuda}, triton {triton.__version__}, "
             f"{time.strftime('%Y-%m-%d')}", ""]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for key, (title, section) in SECTIONS.items():
        if key in args.skip.split(","):
            continue
        start = time.time()
        lines += [f"## {title}", ""]
        try:
            lines += section()
        except Exception:
            lines += ["FAILED:", "", "```", traceback.format_exc()[-3000:], "```"]
        lines += ["", f"({time.time() - start:.0f} s)", ""]
        out.write_text("\n".join(lines) + "\n")  # what is done so far survives a later crash
        print("\n".join(lines[-12:]), flush=True)
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
