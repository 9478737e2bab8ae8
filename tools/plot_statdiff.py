#!/usr/bin/env python
"""Plot StatDiff (Eq. 8) and dead channels over training, like the paper's Fig. 3.

    python tools/plot_statdiff.py --run GN=output/toy_gn --run GN+WS=output/toy_gn_ws \
        --run BCN+WS=output/toy_bcn_ws --out docs/statdiff_toy.png

Each run is a detectron2 output dir (metrics.json, from DIAGNOSTICS.STATDIFF_PERIOD) or an
mmengine work dir (*/vis_data/scalars.json, from StatDiffHook), or such a file. Panels: the
model-average StatDiff per run with the spread over layers (25-75th percentile) against the
iteration; the per-layer StatDiff at the end of training against layer depth; the fraction of
dead channels (model average) against the iteration.
"""
import argparse
import json
from pathlib import Path

import numpy as np


def find_logs(path: Path):
    """The run's logs, oldest first: detectron2's metrics.json, or every mmengine timestamp
    folder's vis_data/scalars.json (a resumed run writes a new folder)."""
    if path.is_file():
        return [path]
    for pattern in ("metrics.json", "*/vis_data/scalars.json", "vis_data/scalars.json"):
        found = sorted(path.glob(pattern))
        if found:
            return found
    raise SystemExit(f"{path}: no metrics.json or vis_data/scalars.json with StatDiff scalars")


def read_run(path: Path):
    """{step: {layer: statdiff}}, {step: mean dead fraction}, layer order (a later log's
    record of a step replaces an earlier one's: a resume repeats the steps after its
    checkpoint)."""
    statdiff, dead, layers = {}, {}, []
    lines = [line for log in find_logs(path) for line in log.read_text().splitlines() if line.strip()]
    for line in lines:
        record = json.loads(line)
        step = record.get("iteration", record.get("step"))
        values = {k[len("statdiff/"):]: v for k, v in record.items()
                  if k.startswith("statdiff/") and k != "statdiff/mean"}
        if values:
            statdiff[step] = values
            layers += [name for name in values if name not in layers]
        if "dead/mean" in record:
            dead[step] = record["dead/mean"]
    if not statdiff:
        raise SystemExit(f"{path}: no StatDiff scalars in {', '.join(map(str, find_logs(path)))}")
    return statdiff, dead, layers


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=PATH")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--title", default="StatDiff over training")
    args = parser.parse_args(argv)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_time, ax_layer, ax_dead) = plt.subplots(1, 3, figsize=(16, 4.5))
    for spec in args.run:
        label, _, path = spec.partition("=")
        statdiff, dead, layers = read_run(Path(path))
        steps = sorted(statdiff)
        matrix = np.array([[statdiff[s].get(name, np.nan) for name in layers] for s in steps])
        mean = np.nanmean(matrix, axis=1)
        low, high = np.nanpercentile(matrix, 25, axis=1), np.nanpercentile(matrix, 75, axis=1)
        (line,) = ax_time.plot(steps, mean, label=label)
        ax_time.fill_between(steps, low, high, alpha=0.2, color=line.get_color())
        ax_layer.plot(range(len(layers)), matrix[-1], ".-", label=label, color=line.get_color())
        if dead:
            dead_steps = sorted(dead)
            ax_dead.plot(dead_steps, [dead[s] for s in dead_steps], label=label, color=line.get_color())
    ax_time.set(xlabel="iteration", ylabel="StatDiff (mean over layers; band: 25-75%)", title=args.title)
    ax_layer.set(xlabel="normalized layer (input to output)", ylabel="StatDiff at the end",
                 title="per layer, end of training")
    ax_dead.set(xlabel="iteration", ylabel="fraction of dead channels (mean over layers)",
                title="channels almost never positive")
    for ax in (ax_time, ax_layer, ax_dead):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
