"""Fault tests: bad batches, bad runs directories, missing datasets (marker: fault)."""
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import bcn

pytestmark = pytest.mark.fault


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(bcn.WSConv2d(3, 32, 3, padding=1, bias=False),
                         bcn.BatchChannelNorm2d(32, 8, mode="estimate"), nn.ReLU(),
                         bcn.WSConv2d(32, 32, 3, padding=1, bias=False),
                         bcn.BatchChannelNorm2d(32, 8, mode="estimate"), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 2))


def train(batches):
    """A training loop that, like AMP's GradScaler, skips the step of a non-finite loss."""
    model = small_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for x, y in batches:
        bcn.set_estimate_rate(model, 0.05)
        loss = nn.functional.cross_entropy(model(x), y)
        if torch.isfinite(loss):
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_poisoned_batch_mid_training_changes_nothing_but_the_counter(bad):
    torch.manual_seed(1)
    batches = [(torch.randn(2, 3, 8, 8), torch.randint(0, 2, (2,))) for _ in range(6)]
    poisoned = batches[2][0].clone()
    poisoned[1, 0, 3, 3] = bad
    clean = train(batches)
    hit = train(batches[:3] + [(poisoned, batches[2][1])] + batches[3:])
    for (key, a), b in zip(clean.state_dict().items(), hit.state_dict().values()):
        assert torch.equal(a, b), key
    assert bcn.skipped_updates(hit) == 2  # both BCN layers refused the one batch
    message, total = bcn.SkippedUpdateReporter().check(hit)
    assert total == 2 and "NaN/inf" in message


def run(*args, env=None):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, **(env or {})))


def test_train_net_refuses_to_overwrite_a_run_and_names_missing_datasets(tmp_path):
    config = "configs/detectron2/toy/mask_rcnn_R18_FPN_bcn_ws_toy.yaml"
    out = tmp_path / "run"
    out.mkdir()
    (out / "last_checkpoint").write_text("model_0000099.pth")
    result = run("tools/train_net.py", "--config-file", config, "OUTPUT_DIR", str(out))
    assert result.returncode != 0
    assert "already holds a training run (last checkpoint model_0000099.pth)" in result.stderr
    assert "--resume" in result.stderr and "--overwrite" in result.stderr
    assert (out / "last_checkpoint").read_text() == "model_0000099.pth"
    result = run("tools/train_net.py", "--config-file", config, "OUTPUT_DIR", str(tmp_path / "new"),
                 "DATASETS.TRAIN", "('coco_2017_train',)", env={"DETECTRON2_DATASETS": str(tmp_path / "none")})
    assert result.returncode != 0
    assert "dataset 'coco_2017_train': json_file" in result.stderr and "DETECTRON2_DATASETS" in result.stderr


def old_run(folder):
    folder.mkdir()
    files = {"last_checkpoint": "model_0000099.pth", "config.yaml": "lr: 0.02\n", "log.txt": "old log\n",
             "metrics.json": '{"iteration": 19}\n'}
    for name, text in files.items():
        (folder / name).write_text(text)
    return files


@pytest.mark.parametrize("config", ["configs/detectron2/toy/mask_rcnn_R18_FPN_bcn_ws_toy.yaml",
                                    "configs/detectron2/toy/mask_rcnn_R18_FPN_bcn_ws_toy.py"])
def test_a_refused_run_leaves_the_old_one_untouched_and_overwrite_moves_it_aside(tmp_path, config, toy_root):
    out = tmp_path / "run"
    files = old_run(out)
    lazy = config.endswith(".py")
    output = [f"train.output_dir={out}", "optimizer.lr=0.5"] if lazy else ["OUTPUT_DIR", str(out), "SOLVER.BASE_LR", "0.5"]
    result = run("tools/train_net.py", "--config-file", config, *output)
    assert result.returncode != 0 and "already holds a training run" in result.stderr
    assert {p.name: p.read_text() for p in out.iterdir()} == files   # nothing written before the refusal
    # --overwrite for a run that cannot start (a missing dataset): nothing moves
    missing = ["dataloader.train.dataset.names=coco_2017_train"] if lazy else ["DATASETS.TRAIN", "('coco_2017_train',)"]
    result = run("tools/train_net.py", "--config-file", config, "--overwrite", *output, *missing,
                 env={"DETECTRON2_DATASETS": str(tmp_path / "none")})
    assert result.returncode != 0 and "coco_2017_train" in result.stderr
    assert not list(tmp_path.glob("run.replaced-*")) and {p.name: p.read_text() for p in out.iterdir()} == files
    # --overwrite for one that can: the old run moves to a dated sibling, whole, and the new one
    # starts in an empty folder (one iteration, no evaluation)
    short = (["train.max_iter=1", "dataloader.evaluator=null"] if lazy else
             ["SOLVER.MAX_ITER", "1", "DATASETS.TEST", "()", "DATASETS.TOY_ROOT", str(toy_root)])
    result = run("tools/train_net.py", "--config-file", config, "--overwrite", *output, *short,
                 env={"DETECTRON2_DATASETS": str(toy_root.parent)})
    assert result.returncode == 0, result.stderr[-2000:]
    moved = list(tmp_path.glob("run.replaced-*"))
    assert len(moved) == 1 and {p.name: p.read_text() for p in moved[0].iterdir()} == files
    assert f"moved the previous run in {out} to {moved[0]}" in result.stderr
    assert '"iteration": 19' not in (out / "metrics.json").read_text()   # the new run's records only
    assert "lr: 0.02" not in (out / "config.yaml").read_text()


def test_train_seg_refuses_to_overwrite_a_run_and_names_a_missing_data_root(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "last_checkpoint").write_text(str(work / "iter_100.pth"))
    result = run("tools/train_seg.py", "configs/mmseg/toy/deeplabv3_r18_bcn_ws_toy.py", "--work-dir", str(work))
    assert result.returncode != 0 and "already holds a training run" in result.stderr
    assert [p.name for p in work.iterdir()] == ["last_checkpoint"]
    result = run("tools/train_seg.py", "configs/mmseg/voc/deeplabv3_r101_bcn_ws_4xb4-30k_voc12aug-513x513.py",
                 "--work-dir", str(work), "--overwrite", "--data-root", str(tmp_path / "VOC2012"))
    # a run that cannot start (its data root is missing) moves nothing
    assert result.returncode != 0 and not list(tmp_path.glob("work.replaced-*"))
    assert [p.name for p in work.iterdir()] == ["last_checkpoint"]


def test_overwrite_moves_each_old_run_to_its_own_sibling(tmp_path):
    from bcn.utils.runs import prepare_run_dir

    out = tmp_path / "run"
    files = old_run(out)
    assert prepare_run_dir(str(out), "X", resume=True, overwrite=True) is None and (out / "log.txt").exists()
    with pytest.raises(SystemExit, match="already holds a training run"):
        prepare_run_dir(str(out), "X", resume=False, overwrite=False)
    assert prepare_run_dir(str(out), "X", resume=False, overwrite=True, move=False) is None
    first = prepare_run_dir(str(out), "X", resume=False, overwrite=True)
    assert {p.name: p.read_text() for p in first.iterdir()} == files and not out.exists()
    old_run(out)
    second = prepare_run_dir(str(out), "X", resume=False, overwrite=True)
    assert second != first and second.parent == tmp_path and second.name.startswith("run.replaced-")
    result = run("tools/train_seg.py", "configs/mmseg/voc/deeplabv3_r101_bcn_ws_4xb4-30k_voc12aug-513x513.py",
                 "--work-dir", str(tmp_path / "voc"), "--data-root", str(tmp_path / "VOC2012"))
    assert result.returncode != 0
    assert f"data_root {tmp_path / 'VOC2012'} does not exist: pass --data-root, set VOC_ROOT" in result.stderr


def test_truncated_training_checkpoints_fail_naming_the_file(tmp_path):
    from bcn.pretrained import CheckpointError
    from tests.published_model import reference_model

    good = tmp_path / "good.pth"
    torch.save({"model": reference_model(False).state_dict()}, good)
    truncated = tmp_path / "model_0000099.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    # detectron2: --resume / MODEL.WEIGHTS through the project's checkpointer
    from bcn_det.checkpoint import BCNCheckpointer

    with pytest.raises(CheckpointError, match=r"model_0000099.pth: not a readable torch checkpoint.*truncated"):
        BCNCheckpointer(nn.Linear(1, 1)).load(str(truncated))
    # MMSegmentation: --resume reads last_checkpoint; test_seg reads the checkpoint given
    work = tmp_path / "work"
    work.mkdir()
    (work / "last_checkpoint").write_text(str(truncated))
    result = run("tools/train_seg.py", "configs/mmseg/toy/deeplabv3_r18_bcn_ws_toy.py", "--work-dir",
                 str(work), "--resume")
    assert result.returncode != 0 and "model_0000099.pth: not a readable torch checkpoint" in result.stderr
    result = run("tools/test_seg.py", "configs/mmseg/toy/deeplabv3_r18_bcn_ws_toy.py", str(truncated))
    assert result.returncode != 0 and "truncated" in result.stderr


def test_data_root_overrides_leave_the_toy_set_alone_and_the_toy_never_writes_elsewhere(tmp_path, monkeypatch):
    pytest.importorskip("mmseg")
    import argparse

    from bcn.utils.runs import generate_once
    from bcn_seg.engine import load_config

    real = tmp_path / "VOC2012"   # a (one-image) VOC folder, as the VOC config's split checks want
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (real / sub).mkdir(parents=True)
    for split in ("train", "val", "trainaug", "aug"):
        (real / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("2007_000032\n")
    for path in ("JPEGImages/2007_000032.jpg", "SegmentationClass/2007_000032.png", "SegmentationClassAug/2007_000032.png"):
        (real / path).write_bytes(b"")
    before = sorted(str(p.relative_to(real)) for p in real.rglob("*"))
    monkeypatch.setenv("BCN_TOY_VOC", str(tmp_path / "toy"))

    def config(path, data_root=None):
        args = argparse.Namespace(config=path, cfg_options=None, launcher="none", work_dir=str(tmp_path / "w"),
                                  data_root=data_root, amp=False)
        return load_config(args)

    toy = config("configs/mmseg/toy/deeplabv3_r18_bcn_ws_toy.py", str(real))
    assert {toy[l].dataset.data_root for l in ("train_dataloader", "val_dataloader")} == {str(tmp_path / "toy")}
    monkeypatch.setenv("VOC_ROOT", str(real))
    toy = config("configs/mmseg/toy/deeplabv3_r18_bcn_ws_toy.py")
    assert toy.val_dataloader.dataset.data_root == str(tmp_path / "toy")
    voc = config("configs/mmseg/voc/deeplabv3_r101_bcn_ws_4xb4-30k_voc12aug-513x513.py")
    assert voc.val_dataloader.dataset.data_root == str(real)
    # a folder that is not a generated toy set is never written into
    with pytest.raises(SystemExit, match="is not a generated toy dataset"):
        generate_once(real, "toy_done_marker", lambda staging: None)
    assert sorted(str(p.relative_to(real)) for p in real.rglob("*")) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    assert generate_once(empty, "done", lambda staging: (staging / "done").touch()) == empty


def one_error_line(result):
    """The last stderr line of a failed tool run, which must be its one-line error."""
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("overrides,expected", [
    (["MODEL.RESNETS.NORM", "BNC"], "MODEL.RESNETS.NORM='BNC' is not a known norm"),
    (["MODEL.BCN.NUM_GROUPS", "48"], "MODEL.BCN.NUM_GROUPS=48 does not divide MODEL.RESNETS.STEM_OUT_CHANNELS=64"),
    (["MODEL.FOO", "1"], "Non-existent key: MODEL.FOO"),
    (["MODEL.WEIGHTS", "x.pth", "--eval-only"], "--eval-only came after the config overrides"),
], ids=["norm", "groups", "key", "option-order"])
def test_train_net_config_errors_are_one_line_before_anything_starts(tmp_path, overrides, expected):
    out = tmp_path / "out"
    result = run("tools/train_net.py", "--config-file", "configs/detectron2/toy/mask_rcnn_R18_FPN_bcn_ws_toy.yaml",
                 "OUTPUT_DIR", str(out), *overrides)
    line = one_error_line(result)
    assert line.startswith("error: ") and expected in line and "--show-traceback" in line
    assert not out.exists()                       # nothing written, no environment dump before it
    assert "Environment info" not in result.stdout + result.stderr


def test_train_seg_config_and_dataset_errors_are_one_line_and_located(tmp_path):
    toy = "configs/mmseg/toy/deeplabv3_r18_bcn_ws_toy.py"
    line = one_error_line(run("tools/train_seg.py", toy, "--work-dir", str(tmp_path / "a"),
                              "--cfg-options", "model.backbone.norm_cfg.mode=micro"))
    assert line.startswith("error: ") and "model.backbone.norm_cfg" in line and "unknown BCN mode 'micro'" in line
    line = one_error_line(run("tools/train_seg.py", toy, "--work-dir", str(tmp_path / "b"), "--cfg-options",
                              "norm_cfg.num_groups=48", "model.backbone.norm_cfg.num_groups=48"))
    assert "num_groups=48 does not divide num_channels=64" in line and "model.backbone.norm_cfg" in line
    # a VOC folder whose split is empty, then one whose label file is missing
    voc = tmp_path / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    for split in ("train", "val", "trainaug"):
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("")
    config = "configs/mmseg/voc/deeplabv3_r101_bcn_ws_4xb4-30k_voc12aug-513x513.py"
    line = one_error_line(run("tools/train_seg.py", config, "--work-dir", str(tmp_path / "c"), "--data-root", str(voc)))
    assert "train_dataloader: split file" in line and "is empty" in line
    for split in ("train", "val", "trainaug"):
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("2007_000032\n")
    (voc / "JPEGImages" / "2007_000032.jpg").write_bytes(b"")
    (voc / "SegmentationClassAug" / "2007_000032.png").write_bytes(b"")
    line = one_error_line(run("tools/train_seg.py", config, "--work-dir", str(tmp_path / "c"), "--data-root", str(voc)))
    assert "1 of the 1 samples" in line and "no label file" in line and "2007_000032.png" in line
