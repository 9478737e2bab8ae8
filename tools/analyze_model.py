#!/usr/bin/env python
"""StatDiff (Eq. 8) and dead-channel report of a checkpoint, on a few images of its test set.

    python tools/analyze_model.py det --config-file CFG(.yaml|.py) --weights output/x/model_final.pth [--images 8]
    python tools/analyze_model.py seg CFG work_dirs/x/iter_300.pth [--images 8]

Prints one line per normalization layer (StatDiff averaged over its groups, fraction of dead
channels) and the model averages; --json writes them too.
"""
import argparse
import itertools
import json

import torch

import bcn


def analyze_detectron2(args):
    from detectron2.layers import FrozenBatchNorm2d

    from bcn_det.inference import load_model

    loaded = load_model(args.config_file, args.opts, weights=args.weights)
    tracker = bcn.ChannelStatsTracker(loaded.model, momentum=None, extra_types=(FrozenBatchNorm2d,))
    tracker.active = True
    with torch.no_grad():
        for inputs in itertools.islice(loaded.test_loader(), args.images):
            loaded.model(inputs)
    return tracker


def analyze_mmseg(args):
    import bcn_seg
    from bcn_seg.checkpoint import check_checkpoint_fits
    from mmengine.config import Config
    from mmengine.runner import Runner, load_checkpoint

    cfg = Config.fromfile(args.config)
    model = bcn_seg.build_model(cfg.model, init=False)
    check_checkpoint_fits(model, args.checkpoint, "complete")
    load_checkpoint(model, args.checkpoint, map_location="cpu")
    model.eval()
    tracker = bcn.ChannelStatsTracker(model, momentum=None)
    tracker.active = True
    loader = Runner.build_dataloader(cfg.test_dataloader)
    with torch.no_grad():
        for data in itertools.islice(loader, args.images):
            model.test_step(data)
    return tracker


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="framework", required=True)
    det = sub.add_parser("det", help="a detectron2 checkpoint")
    det.add_argument("--config-file", required=True)
    det.add_argument("--weights", required=True)
    det.add_argument("opts", nargs=argparse.REMAINDER,
                     help="config overrides: KEY VALUE pairs (YAML) or key=value (LazyConfig)")
    seg = sub.add_parser("seg", help="an MMSegmentation checkpoint")
    seg.add_argument("config")
    seg.add_argument("checkpoint")
    for p in (det, seg):
        p.add_argument("--images", type=int, default=8)
        p.add_argument("--json", help="also write the report here")
    args = parser.parse_args(argv)
    tracker = analyze_detectron2(args) if args.framework == "det" else analyze_mmseg(args)
    report = tracker.report()
    width = max(len(name) for name in report)
    print(f"{'layer':<{width}}  StatDiff   dead")
    for name, r in report.items():
        print(f"{name:<{width}}  {r['statdiff']:8.4f}  {r['dead']:5.3f}")
    summary = tracker.summary()
    print(f"{'mean':<{width}}  {summary['statdiff/mean']:8.4f}  {summary['dead/mean']:5.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"layers": report, "statdiff_mean": summary["statdiff/mean"],
                       "dead_mean": summary["dead/mean"]}, f, indent=1)


if __name__ == "__main__":
    main()
