#!/usr/bin/env python
"""Train an MMSegmentation model with BCN / WS (mmengine's Runner).

    python tools/train_seg.py configs/mmseg/toy/deeplabv3_r18_bcn_ws_toy.py
    torchrun --nproc_per_node 4 tools/train_seg.py CFG --launcher pytorch     # GPUs: NCCL, CPU: gloo
    torchrun --nnodes 2 --node_rank R --master_addr HOST --nproc_per_node 4 tools/train_seg.py CFG --launcher pytorch
"""
from bcn_seg.engine import run

if __name__ == "__main__":
    run(test=False)
