import pytest

pytest.importorskip("mmseg")
import bcn_seg  # noqa: E402,F401  (compat first)
from mmengine.config import Config  # noqa: E402

TOY_CONFIG = "configs/mmseg/toy/deeplabv3_r18_bcn_ws_toy.py"


def load_config(path, **options):
    cfg = Config.fromfile(path)
    if options:
        cfg.merge_from_dict(options)
    return cfg


def build_model(cfg, init=True):
    """Build cfg.model in mmseg's scope; init=False skips init_weights (pretrained files)."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope("mmseg")
    model = MODELS.build(cfg.model)
    if init:
        model.init_weights()
    return model


@pytest.fixture
def toy_options(toy_voc, tmp_path):
    """Config overrides: the toy set in a temporary place, a few iterations."""
    return {
        "train_dataloader.dataset.data_root": str(toy_voc),
        "val_dataloader.dataset.data_root": str(toy_voc),
        "test_dataloader.dataset.data_root": str(toy_voc),
        "train_cfg.max_iters": 4, "train_cfg.val_interval": 4,
        "default_hooks.checkpoint.interval": 2,
        "work_dir": str(tmp_path / "work"),
    }


def derived_config(directory, base=TOY_CONFIG, **overrides) -> str:
    """A config file inheriting ``base`` with top-level overrides: how a user writes one."""
    import os

    lines = [f"_base_ = [{os.path.abspath(base)!r}]"] + [f"{k} = {v!r}" for k, v in overrides.items()]
    path = directory / "derived_config.py"
    path.write_text("\n".join(lines) + "\n")
    return str(path)
