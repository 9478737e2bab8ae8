"""Training, evaluation, resume and multi-process runs of the real detectron2 on the toy set."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import bcn
from bcn_det.engine import Trainer

pytestmark = pytest.mark.slow


def bcn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if ".norm." in k and "pbn.running" in k}


def test_toy_training_then_coco_evaluation(toy_cfg):
    toy_cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # an untrained model must still predict
    toy_cfg.DIAGNOSTICS.STATDIFF_PERIOD = 2
    trainer = Trainer(toy_cfg)
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    for task in ("bbox", "segm"):
        ap = results[task]["AP"]
        assert isinstance(ap, float) and 0.0 <= ap <= 100.0, (task, ap)
    # the hook set every estimate layer's rate to the last iteration's lr (after the step at 3)
    layers = bcn.estimate_layers(trainer.model)
    assert layers and all(float(m.rate) == pytest.approx(0.002) for m in layers)
    assert all(m.rate_is_set for m in layers)
    # StatDiff of every normalized layer went through EventStorage into metrics.json
    records = [json.loads(l) for l in open(os.path.join(toy_cfg.OUTPUT_DIR, "metrics.json"))]
    # BASE_LR as configured (times the schedule) beside detectron2's lr, the largest group's
    # (biases at BIAS_LR_FACTOR times it)
    last = [r for r in records if "base_lr" in r][-1]
    assert last["base_lr"] == pytest.approx(0.002)
    assert last["lr"] == pytest.approx(0.002 * toy_cfg.SOLVER.BIAS_LR_FACTOR)
    logged = [r for r in records if "statdiff/mean" in r]
    assert logged and logged[-1]["iteration"] == 3
    layers_logged = [k for k in logged[-1] if k.startswith("statdiff/backbone.bottom_up.res")]
    assert len(layers_logged) > 10 and all(math.isfinite(logged[-1][k]) for k in layers_logged)


def test_resume_restores_bcn_estimates_and_iteration(toy_cfg):
    toy_cfg.DATASETS.TEST = ()
    trainer = Trainer(toy_cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    trained = bcn_state(trainer.model)
    assert trained and not all(torch.equal(v, torch.zeros_like(v)) for k, v in trained.items()
                               if k.endswith("running_mean"))
    resumed = Trainer(toy_cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == toy_cfg.SOLVER.MAX_ITER
    for key, value in bcn_state(resumed.model).items():
        assert torch.equal(value, trained[key]), key
    assert resumed.scheduler.last_epoch == trainer.scheduler.last_epoch


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("layout", ["1 machine x 2 processes", "2 machines x 1 process"])
def test_two_cpu_processes_share_parameters_but_not_estimates(toy_root, tmp_path, layout):
    out = tmp_path / "ddp"
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    opts = ["DATASETS.TOY_ROOT", str(toy_root), "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "3",
            "SOLVER.IMS_PER_BATCH", "2", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "SEED", "3"]
    job = [sys.executable, "-m", "tests.det.two_rank_job", str(out)]
    if layout.startswith("1 machine"):
        subprocess.run(job + ["2", "1", "0", "auto"] + opts, check=True, env=env, timeout=600)
    else:  # the multi-node path: two launches joined by the tcp:// rendezvous, as on two hosts
        url = f"tcp://127.0.0.1:{free_port()}"
        procs = [subprocess.Popen(job + ["1", "2", str(rank), url] + opts, env=env) for rank in (0, 1)]
        assert [p.wait(timeout=600) for p in procs] == [0, 0]
    ranks = [torch.load(out / f"rank{r}.pth", weights_only=True) for r in (0, 1)]
    params = [k for k in ranks[0] if "running" not in k and "num_batches" not in k]
    for key in params:
        assert torch.equal(ranks[0][key], ranks[1][key]), f"{key} differs across ranks"
    estimates = [k for k in ranks[0] if k.endswith("pbn.running_mean")]
    assert estimates
    differing = [k for k in estimates if not torch.equal(ranks[0][k], ranks[1][k])]
    assert len(differing) > len(estimates) // 2, "BCN estimates must stay per rank (unsynchronized)"


def test_a_dead_rank_ends_the_job_instead_of_hanging(toy_root, tmp_path):
    import time

    env = dict(os.environ, OMP_NUM_THREADS="1", BCN_TEST_KILL_AT="1:2")
    opts = ["DATASETS.TOY_ROOT", str(toy_root), "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "50",
            "SOLVER.IMS_PER_BATCH", "2", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32"]
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "tests.det.two_rank_job", str(tmp_path), "2", "1", "0",
                             "auto"] + opts, env=env, timeout=300, capture_output=True, text=True)
    assert result.returncode != 0, "the job must fail when a rank dies"
    assert time.monotonic() - start < 240
    assert "SIGKILL" in result.stderr or "Signal 9" in result.stderr or "signal" in result.stderr.lower()


def test_killed_and_resumed_run_ends_bit_exact(toy_root, tmp_path):
    """SIGKILL at iteration 5 (last checkpoint after iteration 3), resume with a fresh process:
    parameters, BCN estimates, optimizer, schedule and iteration equal an uninterrupted run."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    opts = ["DATASETS.TOY_ROOT", str(toy_root), "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "8",
            "SOLVER.CHECKPOINT_PERIOD", "3", "SOLVER.WARMUP_ITERS", "2", "SOLVER.STEPS", "(4, 6)",
            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "SEED", "7", "DIAGNOSTICS.STATDIFF_PERIOD", "2"]

    def job(out, extra_env=None):
        return subprocess.run([sys.executable, "-m", "tests.det.two_rank_job", str(out), "1", "1", "0",
                               "auto"] + opts, env=dict(env, **(extra_env or {})), timeout=600)

    assert job(tmp_path / "straight").returncode == 0
    assert job(tmp_path / "killed", {"BCN_TEST_KILL_AT": "0:5"}).returncode == -9
    assert (tmp_path / "killed" / "last_checkpoint").read_text() == "model_0000002.pth"
    assert job(tmp_path / "killed").returncode == 0
    a, b = (torch.load(tmp_path / d / "model_final.pth", weights_only=False) for d in ("straight", "killed"))
    assert a["iteration"] == b["iteration"] == 7
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["trainer"]["hooks"]["LRScheduler"] == b["trainer"]["hooks"]["LRScheduler"]
    momentum = [s["momentum_buffer"] for t in (a, b) for s in t["trainer"]["_trainer"]["optimizer"]["state"].values()]
    half = len(momentum) // 2
    assert half > 0 and all(torch.equal(x, y) for x, y in zip(momentum[:half], momentum[half:]))
    # the diagnostics too: the tracker's averages are in the checkpoint, and the last StatDiff
    # record (iteration 7, after the resume) equals the uninterrupted run's
    tracked = [t["trainer"]["hooks"]["StatDiffHook"] for t in (a, b)]
    assert tracked[0]["counts"] == tracked[1]["counts"] and tracked[0]["stats"]
    assert all(torch.equal(x, tracked[1]["stats"][k]) for k, x in tracked[0]["stats"].items())
    last = [[json.loads(l) for l in open(tmp_path / d / "metrics.json") if "statdiff/mean" in l][-1]
            for d in ("straight", "killed")]
    assert last[0]["iteration"] == last[1]["iteration"] == 7
    assert {k: v for k, v in last[0].items() if k.startswith(("statdiff/", "dead/"))} == \
        {k: v for k, v in last[1].items() if k.startswith(("statdiff/", "dead/"))}


def test_a_compiled_backbone_trains_in_the_trainer(toy_cfg):
    """torch.compile of the ResNet-FPN backbone (detectron2's whole model does not compile:
    its polygon masks deep-copy numpy arrays inside the loss): one graph, no breaks, and BCN's
    estimates move through the operators. The aot_eager backend, as in the mmseg test."""
    import torch

    from bcn_det.engine import Trainer

    import bcn

    trainer = Trainer(toy_cfg)
    backbone = trainer.model.backbone
    images = torch.randn(1, 3, 64, 64)
    bcn.set_estimate_rate(backbone, 0.01)  # as EstimateRateHook does before every iteration
    backbone(images)  # in eager mode, the kernels are found ready
    explanation = torch._dynamo.explain(backbone)(images)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    before = backbone.bottom_up.stem.conv1.norm.pbn.running_mean.clone()
    trainer.model.backbone = torch.compile(backbone, backend="aot_eager")
    trainer.train()
    assert not torch.equal(before, backbone.bottom_up.stem.conv1.norm.pbn.running_mean)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
