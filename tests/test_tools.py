"""The diagnostics tools on real logs and checkpoints of both frameworks."""
import json
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow


def run(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)


def test_plot_statdiff_reads_both_frameworks_logs(tmp_path):
    det = tmp_path / "det"
    det.mkdir()
    lines = [{"iteration": i, "total_loss": 1.0} for i in range(5)]
    lines += [{"iteration": i, "statdiff/a": 0.1 * i, "statdiff/b": 0.2, "statdiff/mean": 0.1,
               "dead/mean": 0.01} for i in (19, 39)]
    (det / "metrics.json").write_text("\n".join(json.dumps(l) for l in lines))
    seg = tmp_path / "seg" / "20261123_000000" / "vis_data"
    seg.mkdir(parents=True)
    (seg / "scalars.json").write_text("\n".join(json.dumps({"step": s, "statdiff/x": 0.3, "dead/mean": 0.0})
                                                for s in (20, 40)))
    out = tmp_path / "fig.png"
    result = run("tools/plot_statdiff.py", "--run", f"det={det}", "--run", f"seg={tmp_path / 'seg'}", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.json").write_text(json.dumps({"iteration": 1, "loss": 1.0}))
    result = run("tools/plot_statdiff.py", "--run", f"x={tmp_path / 'empty'}", "--out", str(out))
    assert result.returncode != 0 and "no StatDiff scalars" in result.stderr


def test_analyze_model_reports_every_normalized_layer(toy_root, toy_voc, tmp_path):
    from detectron2.modeling import build_model

    from bcn_det.config import load_config
    from tests.seg.helpers import TOY_CONFIG as SEG_TOY, build_model as build_seg, load_config as load_seg

    det_config = "configs/detectron2/toy/mask_rcnn_R18_FPN_bcn_ws_toy.yaml"
    det_weights = tmp_path / "det.pth"
    torch.save({"model": build_model(load_config(det_config, ["MODEL.DEVICE", "cpu"])).state_dict()}, det_weights)
    result = run("tools/analyze_model.py", "det", "--config-file", det_config, "--weights", str(det_weights),
                 "--images", "2", "--json", str(tmp_path / "det.json"), "DATASETS.TOY_ROOT", str(toy_root))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "det.json").read_text())
    assert len(report["layers"]) > 30 and 0 <= report["dead_mean"] <= 1
    assert "backbone.bottom_up.res2.0.conv1.norm" in report["layers"]

    seg_weights = tmp_path / "seg.pth"
    torch.save({"state_dict": build_seg(load_seg(SEG_TOY)).state_dict()}, seg_weights)
    config = tmp_path / "seg_config.py"
    config.write_text(f"_base_ = ['{__import__('os').path.abspath(SEG_TOY)}']\n"
                      f"test_dataloader = dict(dataset=dict(data_root={str(toy_voc)!r}))\n")
    result = run("tools/analyze_model.py", "seg", str(config), str(seg_weights), "--images", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "backbone.layer1.0.bn1" in result.stdout and result.stdout.strip().splitlines()[-1].startswith("mean")


def test_gpu_check_says_in_one_line_that_it_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: tools/gpu_check.py would run for minutes")
    result = run("tools/gpu_check.py")
    assert result.returncode == 2
    assert result.stdout.strip().count("\n") == 0 and "no CUDA device here" in result.stdout


def test_benchmark_norm_writes_its_table(tmp_path):
    out = tmp_path / "norm.md"
    result = run("tools/benchmark_norm.py", "--repeats", "1", "--shapes", "2x64x6x10", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    table = out.read_text()
    for name in ("GroupNorm", "BCN composition (reference)", "BCN batch (kernels)", "BCN estimate (kernels)", "copy"):
        assert name in table
    assert "training" in table and "eval" in table and "2x64x6x10" in table


def test_benchmark_ws_writes_its_table(tmp_path):
    out = tmp_path / "ws.md"
    result = run("tools/benchmark_ws.py", "--arch", "resnet18", "--repeats", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    table = out.read_text()
    assert "resnet18: 20 conv weights" in table
    for row in ("forward, kernel", "forward, reference (layer_norm)", "backward, kernel", "backward yardstick: add"):
        assert f"| {row} |" in table, row


def test_benchmark_model_writes_its_table(tmp_path):
    out = tmp_path / "model.md"
    result = run("tools/benchmark_model.py", "--repeats", "1", "--models", "mask_rcnn_r18,deeplabv3_r50",
                 "--size", "64", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    table = out.read_text()
    assert "Mask R-CNN R18-FPN, 2 images of 64 px; training" in table and "DeepLabV3 R50" in table
    assert "mask ROIs per iteration" in table  # the heads' work, equal or not
    assert "4 images of 64 px" in table
    for row in ("training iteration, BCN+WS", "training iteration, GN+WS", "forward + backward, BCN+WS",
                "inference, BCN+WS folded"):
        assert table.count(f"| {row} |") == 2, row


def test_benchmark_model_reports_ratios_over_fresh_processes(tmp_path):
    out = tmp_path / "model.md"
    result = run("tools/benchmark_model.py", "--repeats", "1", "--runs", "2", "--models", "mask_rcnn_r18",
                 "--size", "64", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    table = out.read_text()
    assert "2 runs" in table and "median (range) over runs" in table
    row = next(line for line in table.splitlines() if line.startswith("| training iteration, BCN+WS |"))
    low, high = (float(v) for v in row.rsplit("(", 1)[1].rstrip(" |)").split("-"))
    median = float(row.split("|")[3].split("x")[0])
    assert low <= median <= high
    assert "StatDiff hook, amortized at period 20 |  | " in table


def test_demo_draws_both_frameworks_predictions(toy_root, toy_voc, tmp_path):
    """tools/demo.py on the toy sets with untrained weights: it runs end to end and writes one
    PNG per image, the input beside the prediction at --scale times its size."""
    from PIL import Image
    from detectron2.modeling import build_model

    from bcn_det.config import load_config
    from tests.seg.helpers import TOY_CONFIG as SEG_TOY, build_model as build_seg, load_config as load_seg

    det_config = "configs/detectron2/toy/mask_rcnn_R18_FPN_bcn_ws_toy.yaml"
    det_weights = tmp_path / "det.pth"
    torch.save({"model": build_model(load_config(det_config, ["MODEL.DEVICE", "cpu"])).state_dict()}, det_weights)
    images = sorted((toy_root / "val").glob("*.png"))[:2]
    result = run("tools/demo.py", "det", "--config-file", det_config, "--input", *map(str, images),
                 "--output", str(tmp_path / "det"), "--confidence-threshold", "0.0", "--scale", "3",
                 "--opts", "MODEL.WEIGHTS", str(det_weights), "DATASETS.TOY_ROOT", str(toy_root))
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "det").glob("*.png")) == [p.name for p in images]
    width, height = Image.open(tmp_path / "det" / images[0].name).size
    assert height >= 3 * 128 and width > 2 * 3 * 128   # input | gap | prediction, at 3x (+ label margins)
    seg_weights = tmp_path / "seg.pth"
    torch.save({"state_dict": build_seg(load_seg(SEG_TOY)).state_dict(), "meta": {}}, seg_weights)
    result = run("tools/demo.py", "seg", SEG_TOY, str(seg_weights), "--input",
                 str(toy_voc / "JPEGImages" / "val_000[01].jpg"), "--output", str(tmp_path / "seg"), "--scale", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "seg").glob("*.png")) == ["val_0000.png", "val_0001.png"]
    width, height = Image.open(tmp_path / "seg" / "val_0000.png").size
    assert height == 2 * 128 and width > 2 * 2 * 128
    assert "background" not in result.stdout
    result = run("tools/demo.py", "seg", SEG_TOY, str(seg_weights), "--input", str(tmp_path / "missing.jpg"),
                 "--output", str(tmp_path / "x"))
    assert result.returncode != 0 and "no such image" in result.stderr


def test_plot_statdiff_reads_every_timestamp_folder_of_a_resumed_run(tmp_path):
    """mmengine writes a resumed run into a new timestamp folder: both are read, a repeated
    step taking the later record."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("plot_statdiff", "tools/plot_statdiff.py")
    plot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot)
    for offset, (stamp, steps) in enumerate((("20261207_000000", (2, 4)), ("20261207_010000", (4, 6)))):
        folder = tmp_path / stamp / "vis_data"
        folder.mkdir(parents=True)
        (folder / "scalars.json").write_text("\n".join(
            json.dumps({"step": s, "statdiff/x": s / 10 + offset, "dead/mean": 0.0}) for s in steps))
    statdiff, dead, layers = plot.read_run(tmp_path)
    assert sorted(statdiff) == [2, 4, 6] and statdiff[4]["x"] == 1.4 and layers == ["x"]
