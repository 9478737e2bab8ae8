#!/usr/bin/env python
"""Evaluate an MMSegmentation checkpoint (mIoU with the config's IoUMetric).

    python tools/test_seg.py CFG work_dirs/x/iter_30000.pth [--launcher pytorch under torchrun]
"""
from bcn_seg.engine import run

if __name__ == "__main__":
    run(test=True)
