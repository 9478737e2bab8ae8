#!/usr/bin/env python
"""BCN on a CUDA GPU: the one command to run there. One Markdown report, rewritten after every
section, so an interrupted run keeps what it measured.

    python tools/gpu_check.py [--out output/gpu_check] [--budget 540] [--kit DIR] [--sections ...]
    python tools/gpu_check.py --rehearse       # every section's code on the CPU, tiny, ~3 minutes

Sections, most valuable first, each in its own process with its own time budget (a CUDA fault
or a hang in one cannot sink the others), the whole run within --budget seconds:

1. environment: GPU, driver, versions, which implementation each dtype selects and why;
2. accuracy: the Triton kernels against the float64 reference, every dtype, layout, step-1
   mode and affine of the suite, the first-use check (also under no_grad); one row per case;
3. layers: BCN against nn.GroupNorm, nn.BatchNorm2d, the composition and a copy (training and
   eval, fp32 and fp16 / bf16 autocast, detection maps, ROI batches, one image per GPU), with
   the implementation that actually ran and the performance targets met or not;
4. compile: torch.compile with the Triton operators in the graph (opcheck, compiled vs eager,
   one layer's step compiled);
5. models: training-iteration ratios BCN+WS / GN+WS / GN (Mask R-CNN R50-FPN, DeepLabV3 R101);
6. jobs: both toy main jobs on CUDA with mixed precision, one NCCL start of each launcher.

Nodes without network: ``python tools/gpu_kit.py DIR`` (where a package index is reachable)
collects what sections 5-6 need beyond torch / torchvision / triton; ``--kit DIR`` installs it
into a temporary directory first (pip --no-index). Without CUDA (and without --rehearse) it
says so in one line and exits with status 2.
"""
import argparse
import json
import os
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
CASES = [  # (shape, groups, step-1 kinds, channels_last, per-channel affine): the suite's cases
    ((2, 64, 5, 7), 32, ("batch", "estimate", "fixed"), False, False),
    ((2, 64, 5, 7), 32, ("batch", "estimate", "fixed"), True, False),
    ((2, 64, 24, 40), 32, ("batch", "estimate", "fixed"), False, False),  # passes over planes
    ((1, 64, 8, 8), 32, ("estimate", "fixed"), False, False),
    ((1, 64, 1, 1), 32, ("estimate",), False, False),                     # a whole layer a program
    ((4, 256, 1, 1), 32, ("batch", "estimate", "fixed"), False, False),
    ((64, 32, 7, 7), 8, ("batch", "estimate"), False, False),
    ((64, 32, 7, 7), 8, ("batch",), True, False),
    ((2, 8, 48, 48), 4, ("batch", "estimate"), True, False),
    ((2, 16, 5, 7), 4, ("batch", "estimate", "fixed"), False, True),
    ((2, 16, 5, 7), 4, ("batch",), True, True),
    ((2, 256, 100, 168), 32, ("batch", "estimate"), False, False),
]
REHEARSAL_CASES = [CASES[0], CASES[1], CASES[5], CASES[8]]
# (name, seconds on one H100, seconds in the CPU rehearsal)
SECTIONS = [("environment", 20, 30), ("accuracy", 70, 40), ("layers", 150, 30), ("compile", 80, 60),
            ("models", 90, 50), ("jobs", 120, 90)]
TITLES = {"environment": "Environment", "accuracy": "Accuracy: the kernels against the float64 reference",
          "layers": "Layers: BCN against GroupNorm, BatchNorm2d, the composition and a copy",
          "compile": "torch.compile with the Triton operators", "models": "Models: training iterations",
          "jobs": "Toy main jobs with mixed precision; the launchers"}
CPU_RANGE = {"detectron2 toy Mask R-CNN (bbox / segm AP)": "74-79 / 78-81",
             "mmseg toy DeepLabV3 (mIoU)": "75.4-77.0"}
# The performance goal: each layer row says whether it meets it.
DETECTION_MAPS = ((2, 256, 200, 336), (2, 256, 100, 168), (1, 256, 200, 336), (1, 64, 400, 672), (1, 2048, 25, 42))
ROI_BATCHES = ((512, 256, 7, 7), (128, 256, 14, 14))
LAYER_SHAPES = DETECTION_MAPS + ROI_BATCHES
REHEARSAL_SHAPES = ((2, 64, 12, 16), (16, 32, 7, 7))


class Section:
    """What a section process writes: Markdown lines appended to a file as they are made (a
    timed-out section keeps its finished rows)."""

    def __init__(self, path, device, rehearse):
        self.path, self.device, self.rehearse = Path(path), device, rehearse

    def emit(self, *lines):
        with open(self.path, "a") as f:
            f.write("\n".join(lines) + "\n")
        print("\n".join(lines), flush=True)

    def row(self, *cells):
        self.emit("| " + " | ".join(str(c) for c in cells) + " |")


def _error(exc):
    text = f"{type(exc).__name__}: {str(exc).strip()}"
    return text.splitlines()[0][:240].replace("|", "/") if text.strip() else type(exc).__name__


def served_by(fn):
    """The implementations that served BCN calls while ``fn`` ran ("triton", "cpu", ...)."""
    from bcn import kernels

    with kernels.served_implementations() as served:
        fn()
    return "/".join(sorted(served)) or "none"


# --- 1. environment ---------------------------------------------------------------------------

def environment(s):
    import platform
    import warnings

    import bcn
    from bcn.kernels import dispatch

    s.emit("| what | value |", "|---|---|")
    if s.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        s.row("GPU", f"{props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability "
                     f"{props.major}.{props.minor}, {props.multi_processor_count} SMs")
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=20).stdout.strip()
        except Exception as exc:
            driver = f"nvidia-smi: {_error(exc)}"
        s.row("driver", driver or "unknown")
    else:
        s.row("device", f"CPU rehearsal ({os.cpu_count()} cores), Triton in its interpreter")
    import triton

    s.row("versions", f"Python {platform.python_version()}, torch {torch.__version__} (CUDA "
                      f"{torch.version.cuda}), triton {triton.__version__}")
    for name in ("detectron2", "mmengine", "mmseg", "mmcv", "pycocotools", "cv2"):
        try:
            module = __import__(name)
            s.row(name, getattr(module, "__version__", "importable"))
        except Exception as exc:
            s.row(name, f"absent ({_error(exc)})")
    impl = "triton" if s.rehearse else "auto"
    for dtype in DTYPES:
        layer = bcn.BatchChannelNorm2d(64, 32, impl=impl).to(s.device)
        x = torch.randn(2, 64, 6, 6, device=s.device, dtype=dtype)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                ran = served_by(lambda: layer(x))
            except Exception as exc:
                ran = f"FAILED: {_error(exc)}"
        why = "; ".join(str(w.message)[:200] for w in caught if "BCN" in str(w.message)) or (
            "the Triton kernels passed their first-use check" if ran == "triton" else "see dispatch table")
        s.row(f"{str(dtype)[6:]} maps run", f"{ran} ({why})")


# --- 2. accuracy ------------------------------------------------------------------------------

def accuracy(s):
    from bcn.kernels import dispatch, triton_autograd

    device = torch.device(s.device)
    s.emit("| dtype | case | mode | worst error / tolerance (what) | result |", "|---|---|---|---|---|")
    for dtype in (DTYPES[:1] if s.rehearse else DTYPES):
        try:
            with torch.no_grad():  # the first use of an evaluation run
                ready = dispatch.triton_ready(device, dtype)
            s.row(str(dtype)[6:], "first-use check (under no_grad)", "all", "", "ok" if ready else "FAILED")
        except Exception as exc:
            s.row(str(dtype)[6:], "first-use check", "all", _error(exc), "FAILED")
        s.row(str(dtype)[6:], "synchronized batch part (sync_batch=True)", "batch", "-",
              "Triton kernels, sums all-gathered between the passes: checked in CI with two gloo "
              "processes on CPU tensors (tests/core/test_sync_batch.py), not on this GPU")
        for shape, groups, modes, channels_last, per_channel in (REHEARSAL_CASES if s.rehearse else CASES):
            case = "x".join(map(str, shape)) + (" channels_last" if channels_last else "") + (
                " per-channel affine" if per_channel else "")
            # 1x1 maps: a group of 2 values has gradients that cancel to ~1e-3 of their terms
            tolerance = triton_autograd.TOLERANCE[dtype] * (20 if shape[2:] == (1, 1) else 1)
            for mode in modes:
                try:
                    errors = triton_autograd.compare_with_reference(device, dtype, shape, groups, mode,
                                                                    channels_last, per_channel)
                    what, error = max(errors.items(), key=lambda kv: kv[1] if kv[1] == kv[1] else float("inf"))
                    ok = all(e <= tolerance for e in errors.values())
                    s.row(str(dtype)[6:], case, mode, f"{error:.1e} / {tolerance:.0e} ({what})", "ok" if ok else "FAILED")
                except Exception as exc:
                    s.row(str(dtype)[6:], case, mode, _error(exc), "FAILED")


# --- 3. layers --------------------------------------------------------------------------------

def layer_target(shape, training, dtype, ratio, speedup, bandwidth):
    """Whether a BCN row meets the performance goal, and which part of it it does not."""
    missed = []
    limit = (1.3 if shape in ROI_BATCHES else 1.0) if training else 1.0
    if ratio > limit:
        missed.append(f"{ratio:.2f}x GroupNorm > {limit}x")
    if training:
        want = 2.0 if dtype == torch.float32 else 3.0
        if speedup < want:
            missed.append(f"{speedup:.1f}x the composition < {want:.0f}x")
    if shape in DETECTION_MAPS[:2] and bandwidth is not None and bandwidth < 0.7:
        missed.append(f"{bandwidth:.0%} of the copy's bandwidth < 70%")
    return "met" if not missed else "not met: " + "; ".join(missed)


def layers(s):
    import benchmark_norm

    shapes = REHEARSAL_SHAPES if s.rehearse else LAYER_SHAPES
    repeats = 2 if s.rehearse else 7
    s.emit("| dtype | pass | shape | BCN ran | BCN batch / estimate (x GroupNorm) | BatchNorm2d | composition | "
           "composition / BCN | bandwidth / copy's | target |", "|---|---|---|---|---|---|---|---|---|---|")
    for dtype in (DTYPES[:1] if s.rehearse else DTYPES):
        for training in (True, False):
            for shape in shapes:
                name = "training fwd+bwd" if training else "eval fwd"
                try:
                    layer = benchmark_norm.candidates(shape[1], s.device)[benchmark_norm.KERNELS[0]]
                    x = torch.randn(shape, device=s.device, dtype=dtype, requires_grad=training)
                    autocast = torch.autocast(s.device, dtype=dtype, enabled=dtype != torch.float32)

                    def call():
                        with autocast:
                            y = layer.train(training)(x)
                            if training:
                                y.float().sum().backward()
                    ran = served_by(call)
                    result, speedups, bandwidth = benchmark_norm.bench(shape, training, dtype, s.device, repeats)
                    batch, estimate = (result[k][1] for k in benchmark_norm.KERNELS)
                    worst_bw = min(bandwidth) if s.device == "cuda" else None
                    s.row(str(dtype)[6:], name, "x".join(map(str, shape)), ran, f"{batch:.2f}x / {estimate:.2f}x",
                          f"{result['BatchNorm2d'][1]:.2f}x", f"{result['BCN composition (reference)'][1]:.2f}x",
                          " / ".join(f"{v:.2f}x" for v in speedups),
                          " / ".join(f"{v:.0%}" for v in bandwidth) if worst_bw is not None else "-",
                          layer_target(shape, training, dtype, max(batch, estimate), min(speedups), worst_bw)
                          if ran == "triton" else f"not measured: BCN ran {ran}")
                except Exception as exc:
                    s.row(str(dtype)[6:], name, "x".join(map(str, shape)), "-", _error(exc), "", "", "", "", "FAILED")


# --- 4. compile -------------------------------------------------------------------------------

def _opcheck_triton_operators(device):
    for plane in ((1, 1), (6, 7), (40, 40)):  # a whole layer; whole groups; passes over planes
        _opcheck_triton_operators_at(device, plane)
    return ["opcheck of bcn::triton_forward and bcn::triton_backward, the three kernel families, "
            "every kind of step 1: passed"]


def _opcheck_triton_operators_at(device, plane):
    from bcn.kernels import ops

    n, c, g = 2, 16, 8
    x = torch.randn(n, c, *plane, device=device)
    params = [torch.rand(c, device=device) + 0.5, torch.randn(c, device=device),
              torch.rand(1, g, 1, device=device) + 0.5, torch.randn(1, g, 1, device=device)]
    state = [torch.zeros(c, device=device), torch.ones(c, device=device),
             torch.zeros((), dtype=torch.long, device=device), torch.zeros((), dtype=torch.long, device=device)]
    rate = torch.tensor([0.01], device=device)
    scalars = torch.tensor([1e-5, 0.1, 1e-5], dtype=torch.float64, device=device)
    for step1 in (0, 1, 2):  # batch, estimate, fixed
        args = (x.clone().requires_grad_(), g, *(p.clone().requires_grad_() for p in params), *state,
                step1, step1 != 2, rate, scalars)
        torch.library.opcheck(ops.triton_forward, args)
        _, saved, _ = ops.split([o.detach() for o in ops.triton_forward(*args)], ops.TRITON_SAVED)
        torch.library.opcheck(ops.triton_backward, (torch.randn_like(x), g, *params[:3], scalars, [x] + saved,
                                                     step1))


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


def _compiled_against_eager(device, backend="inductor"):
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
            model = torch.compile(net, backend=backend)
            for size in sizes:
                model(torch.randn(2, 3, *size, device=device)).sum().backward()
            graphs[norm] = counters["stats"]["unique_graphs"]
        torch._dynamo.reset()
        eager, same = _network("BCN+WS", mode, device), _network("BCN+WS", mode, device)
        breaks = torch._dynamo.explain(same)(torch.randn(2, 3, 12, 14, device=device)).graph_break_count
        same.load_state_dict(eager.state_dict())
        compiled = torch.compile(same, backend=backend)
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


def _layer_step_ratios(device, shape=(2, 256, 100, 168), repeats=15, backend="inductor"):
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
        for how, fn in (("eager", layer), ("compiled", torch.compile(layer, backend=backend))):
            candidates[f"{how} {name}"] = timed(lambda fn=fn: fn(x).backward(grad))
    times = interleaved(candidates, repeats)
    lines = [f"One layer's training step at {'x'.join(map(str, shape))} (estimate mode), medians of "
             f"per-repeat ratios to eager GroupNorm ({repeats} repeats, interleaved):", "",
             "| candidate | ratio | median ms |", "|---|---|---|"]
    for name, t in times.items():
        ratio = statistics.median(a / b for a, b in zip(t, times["eager GroupNorm"]))
        lines.append(f"| {name} | {ratio:.2f}x | {statistics.median(t) * 1e3:.2f} |")
    return lines


def compile_section(s):
    backend = "aot_eager" if s.rehearse else "inductor"  # (inductor's CPU builds take minutes)
    for part, fn in (("opcheck", lambda: _opcheck_triton_operators(s.device)),
                     ("compiled vs eager", lambda: _compiled_against_eager(s.device, backend)),
                     ("one layer's step", lambda: _layer_step_ratios(
                         s.device, shape=(2, 32, 10, 12) if s.rehearse else (2, 256, 100, 168),
                         repeats=2 if s.rehearse else 15, backend=backend))):
        try:
            s.emit(*fn(), "")
        except Exception as exc:
            s.emit(f"{part}: FAILED: {_error(exc)}", "")


# --- 5. models --------------------------------------------------------------------------------

def models(s):
    import benchmark_model

    runs = (("Mask R-CNN", lambda: benchmark_model.mask_rcnn(18 if s.rehearse else 50, 2 if s.rehearse else 5, 0,
                                                             size=64 if s.rehearse else 800, device=s.device)),
            ("DeepLabV3", lambda: benchmark_model.deeplabv3(18 if s.rehearse else 101, 2 if s.rehearse else 5,
                                                            size=48 if s.rehearse else 513, device=s.device)))
    for name, run in runs:  # one failure (a missing framework) does not lose the other
        try:
            title, rows = run()
            s.emit(*benchmark_model.table(title, rows), "")
        except Exception as exc:
            s.emit(f"{name}: FAILED: {_error(exc)}", "")


# --- 6. jobs ----------------------------------------------------------------------------------

def _tool(args, timeout, env=None):
    start = time.time()
    try:
        result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                                timeout=timeout, env=dict(os.environ, **(env or {})))
        return result.returncode, result.stdout + result.stderr, time.time() - start
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return "timeout", out, time.time() - start


def jobs(s):
    cuda = s.device == "cuda"
    budget = float(os.environ.get("BCN_SECTION_BUDGET", "120"))
    s.emit("| job | result | time | CPU runs |", "|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        det_opts = (["MODEL.DEVICE", "cuda", "SOLVER.AMP.ENABLED", "True"] if cuda else
                    ["SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "(1,)"])
        env = {"DETECTRON2_DATASETS": f"{tmp}/data", "BCN_TOY_VOC": f"{tmp}/data/bcn_toy_voc"}
        rc, out, seconds = _tool(["tools/train_net.py", "--config-file", "configs/detectron2/toy/mask_rcnn_R18_FPN_bcn_ws_toy.yaml",
                                  "--num-gpus", "1", "OUTPUT_DIR", f"{tmp}/det", *det_opts], budget * 0.45, env)
        aps = re.findall(r"copypaste: (\d+\.\d+),", out)
        name = "detectron2 toy Mask R-CNN (bbox / segm AP)"
        value = " / ".join(f"{float(a):.1f}" for a in aps[:2]) if rc == 0 and aps else f"FAILED ({rc}): {out[-240:]!r}"
        s.row(f"{name}, {'CUDA, AMP' if cuda else 'CPU, 2 iterations'}, launch --num-gpus 1", value, f"{seconds:.0f} s", CPU_RANGE[name])
        seg_opts = ["--amp"] if cuda else ["--cfg-options", "train_cfg.max_iters=2", "train_cfg.val_interval=2"]
        rc, out, seconds = _tool(["tools/train_seg.py", "configs/mmseg/toy/deeplabv3_r18_bcn_ws_toy.py",
                                  "--work-dir", f"{tmp}/seg", *seg_opts], budget * 0.35, env)
        miou = re.findall(r"mIoU: (\d+\.\d+)", out)
        name = "mmseg toy DeepLabV3 (mIoU)"
        value = miou[-1] if rc == 0 and miou else f"FAILED ({rc}): {out[-240:]!r}"
        s.row(f"{name}, {'CUDA, AmpOptimWrapper fp16' if cuda else 'CPU, 2 iterations'}", value, f"{seconds:.0f} s", CPU_RANGE[name])
        rc, out, seconds = _tool(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                                  "tools/train_seg.py", "configs/mmseg/toy/deeplabv3_r18_bcn_ws_toy.py",
                                  "--launcher", "pytorch", "--work-dir", f"{tmp}/seg_dist", "--cfg-options",
                                  "train_cfg.max_iters=2", "train_cfg.val_interval=2"], budget * 0.2, env)
        s.row(f"mmseg through torchrun ({'NCCL' if cuda else 'gloo'}, world size 1), 2 iterations",
              "ok" if rc == 0 else f"FAILED ({rc}): {out[-240:]!r}", f"{seconds:.0f} s", "")


RUNNERS = {"environment": environment, "accuracy": accuracy, "layers": layers, "compile": compile_section,
           "models": models, "jobs": jobs}


# --- the orchestrator -------------------------------------------------------------------------

def install_kit(kit: Path, target: Path) -> str:
    """pip-install the wheels of a tools/gpu_kit.py directory into ``target`` without any
    index; returns a line for the report."""
    manifest = json.loads((kit / "manifest.json").read_text())
    wheels = [str(kit / w["file"]) for w in manifest["wheels"]]
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet",
                    "--disable-pip-version-check", "--target", str(target), *wheels], check=True)
    return f"kit {kit}: {len(wheels)} wheels ({manifest['total_mib']:.1f} MiB) installed into {target}"


def run_section(name, budget, device, rehearse, folder, pythonpath):
    """Run one section in a fresh process within ``budget`` seconds: its Markdown lines."""
    out = folder / f"{name}.md"
    out.write_text("")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(pythonpath + [os.environ.get("PYTHONPATH", "")]),
               BCN_SECTION_BUDGET=str(budget))
    if rehearse:
        env["TRITON_INTERPRET"] = "1"
    start = time.time()
    cmd = [sys.executable, __file__, "--section", name, "--device", device, "--section-out", str(out)]
    try:
        result = subprocess.run(cmd + (["--rehearse"] if rehearse else []), env=env, timeout=budget,
                                capture_output=True, text=True)
        status = "" if result.returncode == 0 else (
            f"FAILED: the section's process exited with {result.returncode}: "
            + repr((result.stderr or result.stdout)[-600:]))
    except subprocess.TimeoutExpired:
        status = f"TIMED OUT after its budget of {budget:.0f} s (the rows above were finished)"
    lines = out.read_text().splitlines()
    return lines + ([status] if status else []) + ["", f"({time.time() - start:.0f} s of {budget:.0f} s)", ""]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="output/gpu_check", help="folder of the report (report.md)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole run (default: the sections' budgets, 530 on a GPU, "
                        "300 rehearsing)")
    parser.add_argument("--kit", help="a tools/gpu_kit.py folder to install first (no network needed)")
    parser.add_argument("--rehearse", action="store_true",
                        help="run every section's code on the CPU, tiny (Triton in its interpreter)")
    parser.add_argument("--sections", default=",".join(n for n, _, _ in SECTIONS))
    parser.add_argument("--section", help=argparse.SUPPRESS)
    parser.add_argument("--section-out", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.section:  # inside a section's process
        RUNNERS[args.section](Section(args.section_out, args.device, args.rehearse))
        return 0
    if not args.rehearse and not torch.cuda.is_available():
        print("tools/gpu_check.py: no CUDA device here (torch.cuda.is_available() is False); run it on a "
              "machine with an NVIDIA GPU (or --rehearse to try its code on the CPU).")
        return 2
    device = "cpu" if args.rehearse else "cuda"
    total = args.budget or sum(r if args.rehearse else g for n, g, r in SECTIONS if n in args.sections.split(","))
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    report = folder / "report.md"
    lines = ["# BCN GPU check" + (" (CPU rehearsal)" if args.rehearse else ""), "",
             f"{time.strftime('%Y-%m-%d %H:%M')}, budget {total:.0f} s", ""]
    deadline = time.time() + total
    pythonpath = [str(ROOT)]
    with tempfile.TemporaryDirectory() as kit_target:
        if args.kit:
            try:
                lines += [install_kit(Path(args.kit), Path(kit_target)), ""]
                pythonpath.append(kit_target)  # this checkout's bcn first, the frameworks from the kit
            except Exception as exc:
                lines += [f"kit: FAILED to install ({_error(exc)}); sections needing the frameworks will say so", ""]
        wanted = args.sections.split(",")
        plan = [(n, rehearse_s if args.rehearse else gpu_s) for n, gpu_s, rehearse_s in SECTIONS if n in wanted]
        for index, (name, budget) in enumerate(plan):
            later = sum(b for _, b in plan[index + 1:])
            left = deadline - time.time()
            # its own budget and what earlier sections left over; never past the whole run's end
            budget = max(1.0, min(left, max(budget, left - later)))
            lines += [f"## {TITLES[name]}", ""] + run_section(name, budget, device, args.rehearse, folder, pythonpath)
            report.write_text("\n".join(lines) + "\n")  # what is done so far survives a later crash
            print(f"gpu_check: {name} done ({report})", flush=True)
    print(f"saved {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
