"""What the detectron2 tests share: the toy config and loading configs with bcn_det's keys."""
from bcn_det.config import load_config

TOY_CONFIG = "configs/detectron2/toy/mask_rcnn_R18_FPN_bcn_ws_toy.yaml"


def load_cfg(path, *opts):
    return load_config(path, opts)
