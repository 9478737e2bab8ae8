#!/usr/bin/env bash
# Produces docs/statdiff_toy.png: the toy Mask R-CNN (ResNet-18-FPN, 300 iterations, CPU)
# with GN, GN+WS and BCN+WS in every normalized place, StatDiff recorded every 20 iterations.
set -euo pipefail
cd "$(dirname "$0")/.."
for norm in gn gn_ws bcn_ws; do
    .venv/bin/python tools/train_net.py --config-file configs/detectron2/toy/mask_rcnn_R18_FPN_${norm}_toy.yaml \
        DIAGNOSTICS.STATDIFF_PERIOD 20 OUTPUT_DIR output/statdiff_${norm}
done
.venv/bin/python tools/plot_statdiff.py --run GN=output/statdiff_gn --run GN+WS=output/statdiff_gn_ws \
    --run BCN+WS=output/statdiff_bcn_ws --title "toy Mask R-CNN R18-FPN" --out docs/statdiff_toy.png
