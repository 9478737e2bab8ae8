"""A checkpoint that does not fit the model fails, in one line, in both frameworks -- instead of
detectron2's and mmengine's skip-with-a-warning that evaluates another model's weights."""
import os
import subprocess
import sys

import pytest
import torch

from bcn.utils.checkpoint_fit import CheckpointMismatchError, compare, model_weights, require_fit
from bcn.pretrained import CheckpointError


def model_state():
    return {"a.weight": torch.zeros(4, 3), "a.bias": torch.zeros(4), "b.weight": torch.zeros(2, 4),
            "bn.num_batches_tracked": torch.zeros((), dtype=torch.long)}


def test_purposes():
    state = model_state()
    backbone_only = {"a.weight": torch.ones(4, 3), "a.bias": torch.ones(4), "fc.weight": torch.ones(9)}
    fit = compare(backbone_only, state)
    assert (len(fit.matched), fit.missing, fit.unexpected) == (2, ["b.weight"], ["fc.weight"])
    require_fit(fit, "init", "f.pth", "plain state dict", "FLAG")          # a backbone: fine
    with pytest.raises(CheckpointMismatchError) as error:
        require_fit(fit, "complete", "f.pth", "plain state dict", "FLAG")  # evaluation: not
    message = str(error.value)
    assert "\n" not in message and "2 of 4 model tensors match" in message and "1 missing (e.g. b.weight)" in message
    assert message.endswith("FLAG") and "plain state dict" in message
    other = dict(state, **{"b.weight": torch.zeros(3, 4)})
    for purpose in ("init", "complete"):
        with pytest.raises(CheckpointMismatchError, match=r"1 mis-shaped \(e.g. b.weight: checkpoint \(3, 4\) vs model \(2, 4\)\)"):
            require_fit(compare(other, state), purpose, "f.pth", "x", "FLAG")
    require_fit(compare(other, state), "partial", "f.pth", "x", "FLAG")
    with pytest.raises(CheckpointMismatchError, match="0 of 4"):
        require_fit(compare({"zzz": torch.zeros(1)}, state), "init", "f.pth", "x", "FLAG")
    # complete without num_batches_tracked (frozen layers, older files) is complete
    require_fit(compare({k: v for k, v in state.items() if "num_batches" not in k}, state),
                "complete", "f.pth", "x", "FLAG")


def test_formats_are_recognised():
    state = model_state()
    assert model_weights({"model": state, "iteration": 3})[0] == "detectron2 checkpoint"
    kind, weights = model_weights({"state_dict": {"module." + k: v for k, v in state.items()}, "meta": {}})
    assert kind.startswith("MMSegmentation") and set(weights) == set(state)
    assert model_weights(state)[0] == "plain state dict"


class NotAllowed:
    """An object a checkpoint pickles beside its tensors (as mmengine's logging state)."""


# --- detectron2 ---------------------------------------------------------------------------

@pytest.fixture
def det_models(toy_root, tmp_path):
    pytest.importorskip("detectron2")
    from bcn_det.engine import Trainer
    from tests.det.helpers import TOY_CONFIG, load_cfg

    cfg = load_cfg(TOY_CONFIG, "DATASETS.TOY_ROOT", str(toy_root), "OUTPUT_DIR", str(tmp_path / "out"))
    bcn_model = Trainer.build_model(cfg)
    other = cfg.clone()
    other.MODEL.BCN.AFFINE = "channel"   # step 2's affine per channel: (C,) instead of (1, G, 1)
    return bcn_model, Trainer.build_model(other)


@pytest.mark.slow
def test_detectron2_refuses_another_configs_checkpoint_for_evaluation(det_models, tmp_path):
    from bcn_det.checkpoint import BCNCheckpointer

    bcn_model, other = det_models
    path = tmp_path / "model_final.pth"
    torch.save({"model": bcn_model.state_dict(), "iteration": 9}, path)
    with pytest.raises(CheckpointMismatchError) as error:
        BCNCheckpointer(other, evaluation=True).resume_or_load(str(path), resume=False)
    message = str(error.value)
    assert "detectron2 checkpoint" in message and "mis-shaped" in message
    assert "MODEL.WEIGHTS_PARTIAL True" in message and "\n" not in message
    # asked for on purpose: loaded as detectron2 does (what fits)
    BCNCheckpointer(other, evaluation=True, partial=True).resume_or_load(str(path), resume=False)
    # the right model loads it, completely
    BCNCheckpointer(bcn_model, evaluation=True).resume_or_load(str(path), resume=False)
    # as training's initialization, a backbone-only file (missing heads) is fine
    backbone = {k: v for k, v in bcn_model.state_dict().items() if k.startswith("backbone.bottom_up.")}
    torch.save({"model": backbone}, tmp_path / "backbone.pth")
    BCNCheckpointer(bcn_model).resume_or_load(str(tmp_path / "backbone.pth"), resume=False)
    with pytest.raises(CheckpointMismatchError, match="missing"):
        BCNCheckpointer(bcn_model, evaluation=True).resume_or_load(str(tmp_path / "backbone.pth"), resume=False)


@pytest.mark.slow
def test_detectron2_names_an_mmengine_checkpoint_without_advising_to_unsafe_loading(det_models, tmp_path):
    from bcn_det.checkpoint import BCNCheckpointer

    path = tmp_path / "iter_4.pth"
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(1)}, "meta": {}, "x": NotAllowed()}, path)
    with pytest.raises(CheckpointError) as error:
        BCNCheckpointer(det_models[0], evaluation=True).resume_or_load(str(path), resume=False)
    message = str(error.value)
    assert "cannot be loaded safely" in message and "arbitrary Python objects" in message
    assert "safe_globals" not in message and "weights_only=False" not in message


@pytest.mark.slow
def test_train_net_eval_only_fails_in_one_line(det_models, toy_root, tmp_path):
    from tests.det.helpers import TOY_CONFIG

    path = tmp_path / "other.pth"
    torch.save({"model": det_models[1].state_dict()}, path)   # the per-channel-affine model's
    result = subprocess.run(
        [sys.executable, "tools/train_net.py", "--config-file", TOY_CONFIG, "--eval-only",
         "MODEL.WEIGHTS", str(path), "OUTPUT_DIR", str(tmp_path / "out"), "DATASETS.TOY_ROOT", str(toy_root)],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "mis-shaped" in last and "Traceback" not in result.stderr, result.stderr[-2000:]


# --- MMSegmentation -----------------------------------------------------------------------

@pytest.mark.slow
def test_test_seg_refuses_a_detectron2_checkpoint_in_one_line(toy_voc, tmp_path):
    pytest.importorskip("mmseg")
    from tests.seg.helpers import TOY_CONFIG

    path = tmp_path / "model_final.pth"
    torch.save({"model": {"backbone.bottom_up.stem.conv1.weight": torch.zeros(8, 3, 3, 3)},
                "iteration": 299}, path)
    result = subprocess.run(
        [sys.executable, "tools/test_seg.py", TOY_CONFIG, str(path), "--work-dir", str(tmp_path / "w"),
         "--data-root", str(toy_voc)],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "detectron2 checkpoint" in last and "0 of" in last, result.stderr[-2000:]
    assert "--partial-weights" in last and "Traceback" not in result.stderr
