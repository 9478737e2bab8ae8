import pytest

pytest.importorskip("detectron2")

import bcn_det  # noqa: E402
from bcn_det.config import load_config  # noqa: E402

TOY_CONFIG = "configs/detectron2/toy/mask_rcnn_R18_FPN_bcn_ws_toy.yaml"


def load_cfg(path, *opts):
    return load_config(path, opts)


@pytest.fixture
def toy_cfg(toy_root, tmp_path):
    """The toy config, shrunk to a few fast iterations in a temporary output directory."""
    return load_cfg(TOY_CONFIG, "DATASETS.TOY_ROOT", str(toy_root), "OUTPUT_DIR", str(tmp_path / "out"),
                    "SOLVER.MAX_ITER", "4", "SOLVER.WARMUP_ITERS", "2", "SOLVER.STEPS", "(3,)",
                    "SOLVER.CHECKPOINT_PERIOD", "2", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
                    "SEED", "1")
