import pytest

pytest.importorskip("detectron2")

from tests.det.helpers import TOY_CONFIG, load_cfg  # noqa: E402


@pytest.fixture
def toy_cfg(toy_root, tmp_path):
    """The toy config, shrunk to a few fast iterations in a temporary output directory."""
    return load_cfg(TOY_CONFIG, "DATASETS.TOY_ROOT", str(toy_root), "OUTPUT_DIR", str(tmp_path / "out"),
                    "SOLVER.MAX_ITER", "4", "SOLVER.WARMUP_ITERS", "2", "SOLVER.STEPS", "(3,)",
                    "SOLVER.CHECKPOINT_PERIOD", "2", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
                    "SEED", "1")
