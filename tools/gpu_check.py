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
   R-CNN R50-FPN at 800 px, DeepLabV3 R101 at 513 px crops.

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


SECTIONS = {"accuracy": ("Accuracy: the kernels on this GPU against the float64 reference", accuracy),
            "layers": ("Layers: tools/benchmark_norm.py's GPU tables", layers),
            "jobs": ("Toy main jobs on CUDA with mixed precision; the launchers", jobs),
            "models": ("Models: training iterations, BCN+WS / GN+WS / GN", models)}


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
