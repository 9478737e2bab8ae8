#!/usr/bin/env python
"""Train or evaluate a detectron2 model with BCN / WS.

    python tools/train_net.py --config-file configs/detectron2/toy/mask_rcnn_R18_FPN_bcn_ws_toy.yaml
    python tools/train_net.py --config-file CFG --num-gpus 4                  # one machine
    python tools/train_net.py --config-file CFG --num-gpus 4 --num-machines 2 \
        --machine-rank 0 --dist-url tcp://HOST:PORT                         # multi-node
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS model_final.pth

Without CUDA, --num-gpus N starts N CPU processes joined by gloo.
"""
from bcn_det.cli import run

if __name__ == "__main__":
    run()
