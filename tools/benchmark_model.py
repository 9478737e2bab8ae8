#!/usr/bin/env python
"""Whole-model cost of BCN+WS against GN, on the toy Mask R-CNN (ResNet-18-FPN, 128 px):
training iteration (forward + backward), inference unfolded and folded (bcn_det.fold_bcn),
and the StatDiff hook's overhead (tracker active on one iteration in N).

    python tools/benchmark_model.py [--repeats 9] [--statdiff-period 20] [--out output/benchmark_model.md]

Models run interleaved in a shuffled order within each repeat; ratios are medians over repeats
of per-repeat ratios to the GN model, so machine noise hits all candidates alike.
"""
import argparse
import copy
import random
import statistics
import time
from pathlib import Path

import torch


def build(config, *opts):
    from detectron2.modeling import build_model

    from bcn_det.config import load_config

    cfg = load_config(config, ["MODEL.DEVICE", "cpu", *opts])
    torch.manual_seed(0)
    return cfg, build_model(cfg)


def toy_batch(cfg):
    from detectron2.data import build_detection_train_loader

    import bcn_det

    bcn_det.register_toy_coco(cfg.DATASETS.TOY_ROOT or None)
    return next(iter(build_detection_train_loader(cfg)))


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(candidates, repeats):
    for fn in candidates.values():
        fn()  # warm-up
    times = {name: [] for name in candidates}
    for _ in range(repeats):
        order = list(candidates)
        random.shuffle(order)
        for name in order:
            times[name].append(timed(candidates[name]))
    return times


def main(argv=None):
    import bcn
    import bcn_det

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--statdiff-period", type=int, default=20)
    parser.add_argument("--out", default="output/benchmark_model.md")
    args = parser.parse_args(argv)
    toy = "configs/detectron2/toy/mask_rcnn_R18_FPN_{}_toy.yaml"
    cfg, bcn_model = build(toy.format("bcn_ws"))
    _, gn_model = build(toy.format("gn"))
    batch = toy_batch(cfg)
    tracker = bcn.ChannelStatsTracker(bcn_model)

    def train_step(model, record=False):
        def step():
            model.train()
            tracker.active = record
            bcn.set_estimate_rate(model, 0.01)
            sum(model(batch).values()).backward()
            tracker.active = False
        return step

    from detectron2.utils.events import EventStorage

    with EventStorage():  # detectron2's losses log into one
        train = interleaved({"GN": train_step(gn_model), "BCN+WS": train_step(bcn_model),
                             "BCN+WS, StatDiff recorded": train_step(bcn_model, record=True)}, args.repeats)
    tracker.remove()
    folded = bcn_det.fold_bcn(copy.deepcopy(bcn_model).eval())
    images = [{"image": d["image"]} for d in batch]

    def infer(model):
        def run():
            model.eval()
            with torch.no_grad():
                model(images)
        return run

    infer_times = interleaved({"GN": infer(gn_model), "BCN+WS": infer(bcn_model),
                               "BCN+WS folded": infer(folded)}, args.repeats)

    def ratio(times, name, base="GN"):
        return statistics.median(a / b for a, b in zip(times[name], times[base]))

    recorded = ratio(train, "BCN+WS, StatDiff recorded", "BCN+WS")
    lines = [f"toy Mask R-CNN R18-FPN, batch {len(batch)}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads, {args.repeats} repeats", "",
             "| measurement | median time | ratio |", "|---|---|---|"]
    for name in train:
        base = "BCN+WS" if "StatDiff" in name else "GN"
        lines.append(f"| training iteration, {name} | {statistics.median(train[name]) * 1e3:.0f} ms | "
                     f"{ratio(train, name, base):.3f}x {base} |")
    for name in infer_times:
        lines.append(f"| inference, {name} | {statistics.median(infer_times[name]) * 1e3:.0f} ms | "
                     f"{ratio(infer_times, name):.3f}x GN |")
    lines.append(f"| StatDiff hook, amortized at period {args.statdiff_period} | | "
                 f"{(recorded - 1) / args.statdiff_period * 100:+.2f}% of an iteration |")
    text = "\n".join(lines)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
