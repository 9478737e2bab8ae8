#!/usr/bin/env bash
# Produces docs/statdiff_toy.png and docs/statdiff_toy_seg.png: the toy Mask R-CNN
# (ResNet-18-FPN) and the toy DeepLabV3 (ResNet-18), 300 iterations each on the CPU, with GN,
# GN+WS and BCN+WS in every normalized place, StatDiff recorded every 20 iterations.
set -euo pipefail
cd "$(dirname "$0")/.."
for norm in gn gn_ws bcn_ws; do
    .venv/bin/python tools/train_net.py --overwrite --config-file configs/detectron2/toy/mask_rcnn_R18_FPN_${norm}_toy.yaml \
        DIAGNOSTICS.STATDIFF_PERIOD 20 OUTPUT_DIR output/statdiff_${norm}
done
.venv/bin/python tools/plot_statdiff.py --run GN=output/statdiff_gn --run GN+WS=output/statdiff_gn_ws \
    --run BCN+WS=output/statdiff_bcn_ws --title "toy Mask R-CNN R18-FPN" --out docs/statdiff_toy.png
# The same for the toy DeepLabV3 (ResNet-18, 300 iterations) -> docs/statdiff_toy_seg.png
for norm in gn gn_ws bcn_ws; do
    .venv/bin/python tools/train_seg.py configs/mmseg/toy/deeplabv3_r18_${norm}_toy.py \
        --work-dir work_dirs/statdiff_${norm} --overwrite
done
.venv/bin/python tools/plot_statdiff.py --run GN=work_dirs/statdiff_gn --run GN+WS=work_dirs/statdiff_gn_ws \
    --run BCN+WS=work_dirs/statdiff_bcn_ws --title "toy DeepLabV3 R18" --out docs/statdiff_toy_seg.png
