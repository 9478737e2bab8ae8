#!/usr/bin/env python
"""Whole-model cost of BCN+WS against GN at toy sizes: Mask R-CNN (ResNet-18-FPN and
ResNet-50-FPN, 128 px, 2 images) and DeepLabV3 (ResNet-50, 96 px, 4 images). Training
iteration (forward + backward) of GN, GN+WS and BCN+WS; inference of GN, BCN+WS unfolded and
BCN+WS folded (plain convolutions + GroupNorm, bcn_det/bcn_seg.fold_bcn); for Mask R-CNN
R18 also the StatDiff hook's overhead (tracker active on one iteration in N).

    python tools/benchmark_model.py [--repeats 9] [--runs 5] [--models mask_rcnn_r18,mask_rcnn_r50,deeplabv3_r50] [--size 512]
    python tools/benchmark_model.py --device cuda --models mask_rcnn_r50,deeplabv3_r101 --size 800

--size runs the same toy models on larger images (Mask R-CNN: the toy images resized to that
many pixels; DeepLabV3: that crop size), where the per-weight costs (WS) and per-layer costs
weigh less next to the activations.

A training iteration is what a trainer runs per batch (detectron2's SimpleTrainer, mmengine's
train_step): zero the gradients (set to None), forward, backward, an SGD step (momentum 0.9,
weight decay 1e-4); the forward + backward part is also reported on its own. Data loading is
not timed.

Variants run interleaved in a shuffled order within each repeat; ratios are medians over
repeats of per-repeat ratios, so machine noise hits all variants alike. What it does not even
out is the process itself: on these machines one run's ratio moves by up to ~0.1 from the
next's. --runs N runs N fresh processes one after the other and reports each ratio's median
and range over them.
"""
import argparse
import copy
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import bcn
from bcn.utils.allocator import keep_freed_memory

import timing  # tools/timing.py

DET_CONFIG = "configs/detectron2/toy/mask_rcnn_R18_FPN_{}_toy.yaml"
SEG_CONFIG = "configs/mmseg/toy/deeplabv3_r18_{}_toy.py"
DET_R50 = ["MODEL.RESNETS.DEPTH", "50", "MODEL.RESNETS.RES2_OUT_CHANNELS", "256"]
SEG_R50 = {"model.backbone.depth": 50, "model.decode_head.in_channels": 2048,
           "model.auxiliary_head.in_channels": 1024}


def interleaved(candidates, repeats):
    """{name: [seconds per repeat]} of plain callables (tools/timing.py)."""
    return timing.interleaved({name: timing.timed(fn) for name, fn in candidates.items()}, repeats)


LR = 0.001  # small enough that the toy models stay finite over a benchmark's iterations


def training_candidates(models, loss_of, extra=None):
    """{name: one training iteration} for each model, and {name: [forward + backward times]}
    filled as they run. extra: {name: (model, loss)}: more candidates on those models, with
    their own loss function; each model has one optimizer, whichever candidate steps it."""
    phases, optimizers = {}, {}

    def iteration(name, model, loss_fn):
        if model not in optimizers:
            optimizers[model] = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
        optimizer = optimizers[model]
        phases[name] = []

        def run():
            model.train()
            bcn.set_estimate_rate(model, LR)  # BCN's estimate rate follows the learning rate
            optimizer.zero_grad(set_to_none=True)
            timing.synchronize()
            start = time.perf_counter()
            loss = loss_fn(model)
            loss.backward()
            timing.synchronize()
            phases[name].append(time.perf_counter() - start)
            if not torch.isfinite(loss):
                raise RuntimeError(f"{name}: the loss is not finite; the timings would not be representative")
            optimizer.step()
        return run

    candidates = {name: iteration(name, model, loss_of) for name, model in models.items()}
    for name, (model, loss_fn) in (extra or {}).items():
        candidates[name] = iteration(name, model, loss_fn)
    return candidates, phases


def training_rows(times, phases, base="GN"):
    """Whole iterations, then their forward + backward part (the warm-up's entry dropped)."""
    phases = {name: values[1:] for name, values in phases.items()}
    return rows("training iteration", times, base) + rows("forward + backward", phases, base)


def inference_times(models, fold_bcn, forward, repeats):
    """GN, BCN+WS and BCN+WS folded, in eval without grad; forward(model) runs one batch."""
    candidates = {"GN": models["GN"], "BCN+WS": models["BCN+WS"],
                  "BCN+WS folded": fold_bcn(copy.deepcopy(models["BCN+WS"]).eval())}

    def infer(model):
        def run():
            model.eval()
            with torch.no_grad():
                forward(model)
        return run

    return interleaved({name: infer(m) for name, m in candidates.items()}, repeats)


def ratio(times, name, base):
    return statistics.median(a / b for a, b in zip(times[name], times[base]))


def rows(kind, times, base):
    """Table rows as data: [measurement, median ms, ratio, unit]."""
    return [[f"{kind}, {name}", statistics.median(times[name]) * 1e3, ratio(times, name, base), f"x {base}"]
            for name in times]


def table(title, rows_):
    """A model's markdown table; a ratio may be a list of per-run ratios (median and range)."""
    def value(v, unit):
        if not isinstance(v, list):
            return f"{v:+.2f}{unit}" if unit.startswith("%") else f"{v:.3f}{unit}"
        if unit.startswith("%"):
            return f"{statistics.median(v):+.2f}{unit} ({min(v):+.2f} to {max(v):+.2f})"
        return f"{statistics.median(v):.3f}{unit} ({min(v):.3f}-{max(v):.3f})"

    return [f"### {title}", "", "| measurement | median time | ratio |", "|---|---|---|",
            *(f"| {name} | {'' if ms is None else f'{ms:.0f} ms'} | {value(r, unit)} |"
              for name, ms, r, unit in rows_), ""]


def with_compiled_backbones(models, compile_backbones):
    """With --compile: copies of the GN and BCN+WS models whose backbone is torch.compile'd
    (BCN's kernels run as bcn.kernels.ops operators there), as more candidates."""
    if compile_backbones:
        for name in ("GN", "BCN+WS"):
            twin = copy.deepcopy(models[name])
            twin.backbone = torch.compile(twin.backbone)
            models[f"{name}, backbone compiled"] = twin
    return models


def mask_rcnn(depth, repeats, statdiff_period, size=None, device="cpu", compile_backbones=False):
    import bcn_det  # first: its compat module lets detectron2 0.6 import with a newer Pillow
    from bcn_det.config import load_config
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    # Equal work in the heads of every model. Inference: every detection kept up to
    # DETECTIONS_PER_IMAGE (untrained models differ in how many boxes pass a score threshold).
    # Training: a proposal counts as foreground from IoU 0.1 (0.5 in training proper) and an
    # image's ROI sample takes 8 foreground boxes (16 in the toy config), so every sample is
    # full, as a trained RPN's are. As configured, the untrained models had 4-11 foreground ROIs
    # per iteration, drawn anew each iteration and differing between models, and each is ~3 ms
    # of mask-head work in R50's iteration: +-3%, more than the costs measured here. (With 16
    # at IoU 0.1, one iteration in ~200 still came up one short.)
    opts = ["MODEL.DEVICE", device, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
            "MODEL.ROI_HEADS.IOU_THRESHOLDS", "[0.1]", "MODEL.ROI_HEADS.POSITIVE_FRACTION", "0.125"
            ] + (DET_R50 if depth == 50 else [])
    if size:
        opts += ["INPUT.MIN_SIZE_TRAIN", f"({size},)", "INPUT.MAX_SIZE_TRAIN", str(size),
                 "INPUT.MIN_SIZE_TEST", str(size), "INPUT.MAX_SIZE_TEST", str(size)]
    models = {}
    for name, variant in (("GN", "gn"), ("GN+WS", "gn_ws"), ("BCN+WS", "bcn_ws")):
        cfg = load_config(DET_CONFIG.format(variant), opts)
        torch.manual_seed(0)
        models[name] = build_model(cfg)
    from detectron2.data import build_detection_train_loader

    bcn_det.register_toy_coco(bcn_det.ensure_toy_coco(cfg.DATASETS.TOY_ROOT or None))
    batch = next(iter(build_detection_train_loader(cfg)))
    tracker = bcn.ChannelStatsTracker(models["BCN+WS"]) if statdiff_period else None
    with_compiled_backbones(models, compile_backbones)
    head_rois = HeadRois(models)

    def loss_of(model, record=False):
        if tracker is not None:
            tracker.active = record
        return sum(model(batch).values())

    extra = {}
    if tracker is not None:
        extra["BCN+WS, StatDiff recorded"] = (models["BCN+WS"], lambda model: loss_of(model, record=True))
    candidates, phases = training_candidates(models, loss_of, extra)
    with EventStorage():  # detectron2's losses log into one
        train = interleaved(candidates, repeats)
    if tracker is not None:
        tracker.remove()
    rois = head_rois.summary()
    images = [{"image": d["image"]} for d in batch]
    with torch.no_grad():
        counts = {name: [len(out["instances"]) for out in model.eval()(images)] for name, model in models.items()}
    if len({tuple(c) for c in counts.values()}) != 1:
        raise RuntimeError(f"the models detect different numbers of boxes {counts}: inference times would not compare")
    infer_times = inference_times(models, bcn_det.fold_bcn, lambda model: model(images), repeats)
    title = f"Mask R-CNN R{depth}-FPN, {len(batch)} images of {batch[0]['image'].shape[-1]} px; {rois}"
    lines = training_rows({k: v for k, v in train.items() if "StatDiff" not in k},
                          {k: v for k, v in phases.items() if "StatDiff" not in k})
    if tracker is not None:
        recorded = ratio(train, "BCN+WS, StatDiff recorded", "BCN+WS")
        lines.append(["training iteration, BCN+WS, StatDiff recorded",
                      statistics.median(train["BCN+WS, StatDiff recorded"]) * 1e3, recorded, "x BCN+WS"])
        lines.append([f"StatDiff hook, amortized at period {statdiff_period}", None,
                      (recorded - 1) / statdiff_period * 100, "% of an iteration"])
    return title, lines + rows("inference", infer_times, "GN")


class HeadRois:
    """The ROIs each model's box and mask heads take per training iteration: the heads' work,
    which must be the same in every model for their times to compare."""

    def __init__(self, models):
        self.seen = {name: {"box": set(), "mask": set()} for name in models}
        self.hooks = [head.register_forward_hook(
                          lambda module, inputs, output, counts=self.seen[name][kind]:
                          counts.add(inputs[0].shape[0]) if module.training else None)
                      for name, model in models.items()
                      for kind, head in (("box", model.roi_heads.box_head), ("mask", model.roi_heads.mask_head))]

    def summary(self):
        """What the heads took, for the table's title; the hooks are removed."""
        for hook in self.hooks:
            hook.remove()
        span = lambda counts: str(min(counts)) if len(counts) == 1 else f"{min(counts)}-{max(counts)}"
        took = {name: f"{span(c['box'])} box and {span(c['mask'])} mask ROIs" for name, c in self.seen.items()}
        fixed = all(len(counts) == 1 for c in self.seen.values() for counts in c.values())
        if fixed and len(set(took.values())) == 1:
            return f"training: {next(iter(took.values()))} per iteration in every model"
        return "training, UNEQUAL work in the heads: " + ", ".join(f"{n} {t}" for n, t in took.items()) + " per iteration"


def deeplabv3(depth, repeats, size=None, device="cpu", compile_backbones=False):
    import bcn_seg
    from mmengine.config import Config
    from mmengine.logging import MMLogger
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    MMLogger.get_instance("mmengine", log_level="WARNING")  # not every layer's init, please
    models = {}
    for name, variant in (("GN", "gn"), ("GN+WS", "gn_ws"), ("BCN+WS", "bcn_ws")):
        cfg = Config.fromfile(SEG_CONFIG.format(variant))
        if depth in (50, 101):
            cfg.merge_from_dict(dict(SEG_R50, **{"model.backbone.depth": depth}))
        torch.manual_seed(0)
        models[name] = bcn_seg.build_model(cfg.model).to(device)
    with_compiled_backbones(models, compile_backbones)
    size, count = size or 96, 4
    torch.manual_seed(0)
    x = torch.randn(count, 3, size, size, device=device)
    samples = []
    for _ in range(count):
        labels = torch.randint(0, 4, (1, size, size), device=device)
        sample = SegDataSample(gt_sem_seg=PixelData(data=labels))
        sample.set_metainfo(dict(img_shape=(size, size), pad_shape=(size, size), ori_shape=(size, size)))
        samples.append(sample)

    def loss_of(model):
        return sum(v for k, v in model.loss(x, samples).items() if "loss" in k)

    candidates, phases = training_candidates(models, loss_of)
    train = interleaved(candidates, repeats)
    infer_times = inference_times(models, bcn_seg.fold_bcn, lambda model: model._forward(x), repeats)
    # the stem (a stride-2 conv, a stride-2 max pool) and then each stage's stride
    output_stride = 4 * math.prod(cfg.model.backbone.strides)
    title = f"DeepLabV3 R{depth} (output stride {output_stride}, auxiliary head), {count} images of {size} px"
    return title, training_rows(train, phases) + rows("inference", infer_times, "GN")


MODELS = {
    "mask_rcnn_r18": lambda args: mask_rcnn(18, args.repeats, args.statdiff_period, args.size, args.device, args.compile),
    "mask_rcnn_r50": lambda args: mask_rcnn(50, args.repeats, 0, args.size, args.device, args.compile),
    "deeplabv3_r50": lambda args: deeplabv3(50, args.repeats, args.size, args.device, args.compile),
    "deeplabv3_r101": lambda args: deeplabv3(101, args.repeats, args.size, args.device, args.compile),
}
DEFAULT_MODELS = "mask_rcnn_r18,mask_rcnn_r50,deeplabv3_r50"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--runs", type=int, default=1,
                        help="fresh processes, one after the other; ratios reported as the median "
                             "(range) over runs -- one process can land anywhere in that range")
    parser.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--compile", action="store_true",
                        help="also the GN and BCN+WS models with a torch.compile'd backbone")
    parser.add_argument("--statdiff-period", type=int, default=20)
    parser.add_argument("--size", type=int, default=None,
                        help="image size in px (default: the toy sizes, 128 for Mask R-CNN, 96 for DeepLabV3)")
    parser.add_argument("--out", default="output/benchmark_model.md")
    parser.add_argument("--malloc-defaults", action="store_true",
                        help="leave glibc's malloc as it is (by default it keeps freed memory, "
                             "as the training launchers set it on CPU: bcn/utils/allocator.py)")
    parser.add_argument("--json", help=argparse.SUPPRESS)  # one run's rows, for --runs
    args = parser.parse_args(argv)
    unknown = set(args.models.split(",")) - set(MODELS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {', '.join(MODELS)}")
    if args.runs > 1:
        header, tables = runs_in_fresh_processes(args)
    else:
        kept = not args.malloc_defaults and keep_freed_memory()
        header = (f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} repeats, "
                  f"malloc {'keeps freed memory' if kept else 'defaults'}; time: median; ratio: median "
                  f"of per-repeat ratios")
        tables = []
        for name in args.models.split(","):
            tables.append(MODELS[name](args))
            print("\n".join(table(*tables[-1])), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"header": header, "tables": tables}))
    lines = [header, ""] + [line for title, rows_ in tables for line in table(title, rows_)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    if args.runs > 1:
        print("\n".join(lines))
    print(f"saved {args.out}")


def runs_in_fresh_processes(args):
    """Each run in its own process (a process's allocations, and with them its timings, differ
    from the next one's); per row the times' median and every run's ratio."""
    child = ["--repeats", str(args.repeats), "--models", args.models, "--statdiff-period",
             str(args.statdiff_period), "--device", args.device, *(["--size", str(args.size)] if args.size else []),
             *(["--compile"] if args.compile else []),
             *(["--malloc-defaults"] if args.malloc_defaults else [])]
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for run in range(args.runs):
            out = Path(scratch) / f"run{run}.json"
            subprocess.run([sys.executable, __file__, *child, "--out", str(out.with_suffix(".md")),
                            "--json", str(out)], check=True)
            results.append(json.loads(out.read_text()))
    tables = []
    for t, (title, first_rows) in enumerate(results[0]["tables"]):
        titles = list(dict.fromkeys(result["tables"][t][0] for result in results))
        if len(titles) > 1:  # the heads' work differed in some run: every run's account
            title = titles[0].split("; ")[0] + "; runs differ: " + " / ".join(t_.split("; ", 1)[-1] for t_ in titles)
        merged = []
        for i, (name, _, _, unit) in enumerate(first_rows):
            per_run = [result["tables"][t][1][i] for result in results]
            times = [row[1] for row in per_run if row[1] is not None]
            merged.append([name, statistics.median(times) if times else None, [row[2] for row in per_run], unit])
        tables.append([title, merged])
    header = results[0]["header"].replace("; time: median;", f", {args.runs} runs; time: median over runs;") + \
        ", then median (range) over runs"
    return header, tables


if __name__ == "__main__":
    main()
