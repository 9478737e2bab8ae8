import pytest

pytest.importorskip("mmseg")


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
