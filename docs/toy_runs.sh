#!/usr/bin/env bash
# The README's toy ranges: both main jobs, RUNS times each (default 4) -- detectron2 with a new
# random seed per run (its default), MMSegmentation with randomness.seed 0..RUNS-1 -- and the
# final bbox / segm AP and mIoU of every run. Usage: bash docs/toy_runs.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-4}
for i in $(seq 0 $((runs - 1))); do
    .venv/bin/python tools/train_net.py --overwrite --config-file configs/detectron2/toy/mask_rcnn_R18_FPN_bcn_ws_toy.yaml \
        OUTPUT_DIR output/toy_runs/det_$i > output/toy_runs_det_$i.log 2>&1
    .venv/bin/python tools/train_seg.py configs/mmseg/toy/deeplabv3_r18_bcn_ws_toy.py --overwrite \
        --work-dir work_dirs/toy_runs/seg_$i --cfg-options randomness.seed=$i > output/toy_runs_seg_$i.log 2>&1
    echo "run $i: detectron2 $(grep -A3 'Evaluation results for bbox' output/toy_runs_det_$i.log | tail -1) (bbox AP first)," \
         "segm $(grep -A3 'Evaluation results for segm' output/toy_runs_det_$i.log | tail -1);" \
         "mmseg $(grep -o 'mIoU: [0-9.]*' output/toy_runs_seg_$i.log | tail -1)"
done
