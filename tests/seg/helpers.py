"""What the MMSegmentation tests share: the toy config, loading configs, building models."""
import os

import bcn_seg  # noqa: F401  (registrations and compat first)
from mmengine.config import Config

TOY_CONFIG = "configs/mmseg/toy/deeplabv3_r18_bcn_ws_toy.py"


def load_config(path, **options):
    cfg = Config.fromfile(path)
    if options:
        cfg.merge_from_dict(options)
    return cfg


def build_model(cfg, init=True):
    """cfg.model built in mmseg's scope; init=False skips init_weights (pretrained files)."""
    return bcn_seg.build_model(cfg.model, init)


def derived_config(directory, base=TOY_CONFIG, **overrides) -> str:
    """A config file inheriting ``base`` with top-level overrides: how a user writes one."""
    lines = [f"_base_ = [{os.path.abspath(base)!r}]"] + [f"{k} = {v!r}" for k, v in overrides.items()]
    path = directory / "derived_config.py"
    path.write_text("\n".join(lines) + "\n")
    return str(path)
