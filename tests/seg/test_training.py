"""Training, testing, resume and torchrun runs of the real MMSegmentation on the toy VOC set."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bcn

pytestmark = pytest.mark.slow


def cli_options(options):
    return ["--cfg-options"] + [f"{k}={v}" for k, v in options.items() if "data_root" not in k]


def run_tool(tool, *args, nproc=1):
    # the repository root on the path, for a config's custom_imports of test modules
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 "--nproc_per_node", str(nproc)] if nproc > 1 else [sys.executable])
    extra = ["--launcher", "pytorch"] if nproc > 1 else []
    subprocess.run(launcher + [f"tools/{tool}", *args, *extra], check=True, env=env, timeout=300)


def metrics(work_dir: Path, name: str):
    """The metrics mmengine logged: validation scalars, or a test run's final json."""
    if name == "val":
        lines = sorted(work_dir.glob("*/vis_data/scalars.json"))[-1].read_text().splitlines()
        return [json.loads(l) for l in lines if "mIoU" in l][-1]
    runs = sorted(p for p in work_dir.glob("*/*.json") if p.stem == p.parent.name)
    return json.loads(runs[-1].read_text())


def test_train_then_test_reproduces_miou(toy_options, toy_voc, tmp_path):
    toy_voc = str(toy_voc)
    from tests.seg.helpers import TOY_CONFIG

    work = Path(toy_options["work_dir"])
    run_tool("train_seg.py", TOY_CONFIG, "--data-root", toy_voc, *cli_options(toy_options))
    val = metrics(work, "val")
    assert 0.0 <= val["mIoU"] <= 100.0
    assert list(work.glob("*/vis_data/events.out.tfevents.*"))   # TensorBoard, as detectron2 runs
    test_work = tmp_path / "test"
    run_tool("test_seg.py", TOY_CONFIG, str(work / "iter_4.pth"), "--work-dir", str(test_work),
             "--data-root", toy_voc)
    assert metrics(test_work, "test")["mIoU"] == val["mIoU"]


def test_resume_restores_bcn_estimates_and_iteration(toy_options):
    from mmengine.runner import Runner

    from tests.seg.helpers import TOY_CONFIG, load_config

    toy_options["train_cfg.val_interval"] = 100  # no validation in this test
    runner = Runner.from_cfg(load_config(TOY_CONFIG, **toy_options))
    runner.train()
    trained = {k: v.clone() for k, v in runner.model.state_dict().items() if "pbn.running" in k}
    assert trained
    resumed = Runner.from_cfg(load_config(TOY_CONFIG, **toy_options, resume=True))
    resumed.load_or_resume()  # mmengine's own resume, torch.load(weights_only=True) + allow-list
    assert resumed.iter == 4
    state = resumed.model.state_dict()
    for key, value in trained.items():
        assert torch.equal(state[key], value), key
    layers = bcn.estimate_layers(runner.model)
    assert layers and all(m.rate_is_set for m in layers)


def test_torchrun_two_cpu_processes(toy_options, toy_voc, tmp_path):
    from tests.seg.helpers import derived_config

    work = Path(toy_options["work_dir"])
    config = derived_config(
        tmp_path, custom_imports=dict(imports=["bcn_seg", "tests.seg.rank_dump"]),
        custom_hooks=[dict(type="EstimateRateHook"), dict(type="DumpRankStateHook"),
                      dict(type="StatDiffHook", interval=2)])
    options = dict(toy_options, **{"train_cfg.val_interval": 100, "train_dataloader.batch_size": 2})
    run_tool("train_seg.py", config, "--data-root", str(toy_voc), *cli_options(options), nproc=2)
    ranks = [torch.load(work / f"rank{r}.pth", weights_only=True) for r in (0, 1)]
    for key in ranks[0]:
        if "running" not in key and "num_batches" not in key:
            assert torch.equal(ranks[0][key], ranks[1][key]), f"{key} differs across ranks"
    estimates = [k for k in ranks[0] if k.endswith("pbn.running_mean")]
    differing = [k for k in estimates if not torch.equal(ranks[0][k], ranks[1][k])]
    assert len(differing) > len(estimates) // 2, "BCN estimates must stay per rank (unsynchronized)"
    # StatDiff through mmengine's visualizer into vis_data/scalars.json
    lines = [json.loads(l) for l in sorted(work.glob("*/vis_data/scalars.json"))[-1].read_text().splitlines()]
    logged = [r for r in lines if "statdiff/mean" in r]
    assert [r["step"] for r in logged] == [2, 4]
    assert sum(k.startswith("statdiff/backbone.layer") for k in logged[-1]) > 10


def test_a_dead_rank_ends_the_torchrun_job_instead_of_hanging(toy_options, toy_voc, tmp_path):
    import time

    from tests.seg.helpers import derived_config

    config = derived_config(
        tmp_path, custom_imports=dict(imports=["bcn_seg", "tests.seg.rank_dump"]),
        custom_hooks=[dict(type="EstimateRateHook"), dict(type="KillRankHook", rank=1, at=2)])
    options = dict(toy_options, **{"train_cfg.max_iters": 50, "train_cfg.val_interval": 100,
                                   "train_dataloader.batch_size": 2})
    start = time.monotonic()
    with pytest.raises(subprocess.CalledProcessError):
        run_tool("train_seg.py", config, "--data-root", str(toy_voc), *cli_options(options), nproc=2)
    assert time.monotonic() - start < 240


def test_killed_and_resumed_run_ends_bit_exact(toy_voc, tmp_path):
    """SIGKILL before iteration 5 (last checkpoint at 3), resume with --resume in a fresh
    process: parameters, BCN estimates, optimizer, schedule and iteration equal an
    uninterrupted run's."""
    from tests.seg.helpers import derived_config

    hooks = [dict(type="EstimateRateHook"), dict(type="ExactResumeHook"), dict(type="StatDiffHook", interval=2)]
    options = {"train_cfg.max_iters": 8, "train_cfg.val_interval": 100,
               "default_hooks.checkpoint.interval": 3, "train_dataloader.batch_size": 2}
    runs = {}
    for name, kill in (("straight", False), ("killed", True)):
        directory = tmp_path / name
        directory.mkdir()
        config = derived_config(directory, custom_imports=dict(imports=["bcn_seg", "tests.seg.rank_dump"]),
                                custom_hooks=hooks + ([dict(type="KillRankHook", rank=0, at=5)] if kill else []))
        args = ["train_seg.py", config, "--data-root", str(toy_voc), "--work-dir", str(directory / "work"),
                *cli_options(options)]
        if kill:
            with pytest.raises(subprocess.CalledProcessError) as died:
                run_tool(*args)
            assert died.value.returncode == -9
            resume_config = derived_config(directory, custom_imports=dict(imports=["bcn_seg"]), custom_hooks=hooks)
            run_tool("train_seg.py", resume_config, "--resume", "--data-root", str(toy_voc),
                     "--work-dir", str(directory / "work"), *cli_options(options))
        else:
            run_tool(*args)
        runs[name] = torch.load(directory / "work" / "iter_8.pth", weights_only=False)
    a, b = runs["straight"], runs["killed"]
    assert a["meta"]["iter"] == b["meta"]["iter"] == 8
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for s1, s2 in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(s1["momentum_buffer"], s2["momentum_buffer"])
    assert a["param_schedulers"] == b["param_schedulers"]
    # the diagnostics too: the tracker's averages, and StatDiff at step 8 (after the resume,
    # logged in the resumed run's own timestamp folder)
    assert a["bcn_statdiff"]["counts"] == b["bcn_statdiff"]["counts"] and a["bcn_statdiff"]["stats"]
    assert all(torch.equal(x, b["bcn_statdiff"]["stats"][k]) for k, x in a["bcn_statdiff"]["stats"].items())
    final = []
    for name in ("straight", "killed"):
        logs = sorted((tmp_path / name / "work").glob("*/vis_data/scalars.json"))
        records = [json.loads(l) for log in logs for l in log.read_text().splitlines() if "statdiff/mean" in l]
        final.append({k: v for k, v in records[-1].items() if k.startswith(("statdiff/", "dead/", "step"))})
    assert final[0]["step"] == 8 and final[0] == final[1]


def test_the_toy_model_trains_compiled(toy_options):
    """mmengine's compile: BCN's kernels run as operators in the compiled graphs, and the
    estimates still move (the operators return the new running state). The aot_eager backend:
    dynamo and AOTAutograd, which are what meet BCN's operators (their fake implementations,
    autograd formulas, returned state); inductor's code for them is tested on a small network
    in tests/core/test_compile.py (a cold inductor build of this model takes minutes here)."""
    from mmengine.runner import Runner

    from tests.seg.helpers import TOY_CONFIG, load_config

    # a visualizer of its own: mmseg's runtime names it 'visualizer', and mmengine hands an
    # earlier in-process run's instance (writing into that run's, now deleted, work dir) back
    toy_options.update({"train_cfg.max_iters": 2, "train_cfg.val_interval": 100, "compile": {"backend": "aot_eager"},
                        "visualizer.name": "compiled_run_visualizer"})
    runner = Runner.from_cfg(load_config(TOY_CONFIG, **toy_options))
    before = {k: v.clone() for k, v in runner.model.state_dict().items() if "pbn.running_mean" in k}
    runner.train()
    after = runner.model.state_dict()
    assert all(not torch.equal(value, after[key]) for key, value in before.items())
    assert all(torch.isfinite(p).all() for p in runner.model.parameters())
