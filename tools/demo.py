#!/usr/bin/env python
"""Draw a BCN model's predictions on images, as detectron2's and MMSegmentation's demos do.

    python tools/demo.py det --config-file CFG --input img.jpg [more.jpg | a folder] --output out/ \\
        [--confidence-threshold 0.5] [--opts MODEL.WEIGHTS model_final.pth ...]
    python tools/demo.py seg CONFIG CHECKPOINT --input img.jpg [more.jpg | a folder] --output out/

det: a YAML or LazyConfig (.py) config (--opts: KEY VALUE pairs for YAML, key=value for a
LazyConfig), the config's input format and test size, BCN's checkpointer (which also reads the
published BCN+WS files) and detectron2's Visualizer. seg:
mmseg's inference_model with its SegLocalVisualizer. One PNG per image under --output (a
folder; with a single input, a file name ending in .png works too).
"""
import argparse
import glob
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def input_files(inputs):
    files = []
    for item in inputs:
        if os.path.isdir(item):
            files += sorted(p for p in glob.glob(os.path.join(item, "*")) if p.lower().endswith(IMAGE_SUFFIXES))
        else:
            files += sorted(glob.glob(os.path.expanduser(item))) or [item]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing or not files:
        raise SystemExit(f"demo.py: no such image(s): {missing or inputs}")
    return files


def output_path(output, image_file, count):
    if output.lower().endswith(".png") and count == 1:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        return output
    Path(output).mkdir(parents=True, exist_ok=True)
    return os.path.join(output, Path(image_file).stem + ".png")


def detectron2_demo(args):
    from detectron2.data import MetadataCatalog
    from detectron2.data.detection_utils import read_image
    from detectron2.utils.visualizer import ColorMode, Visualizer

    from bcn_det.inference import load_model

    loaded = load_model(args.config_file, args.opts, score_threshold=args.confidence_threshold)
    metadata = MetadataCatalog.get(loaded.test_dataset or "__unused")
    files = input_files(args.input)
    for path in files:
        image = read_image(path, format="BGR")
        instances = loaded.predict(image).to("cpu")
        drawn = Visualizer(image[:, :, ::-1], metadata, instance_mode=ColorMode.IMAGE)
        drawn = drawn.draw_instance_predictions(instances)
        out = output_path(args.output, path, len(files))
        drawn.save(out)
        print(f"{path}: {len(instances)} instances -> {out}")


def mmseg_demo(args):
    import torch

    import bcn_seg  # noqa: F401  (registrations, compat)
    from mmseg.apis import inference_model, init_model
    from mmseg.visualization import SegLocalVisualizer
    from mmengine.registry import init_default_scope
    import mmcv

    from bcn_seg.checkpoint import check_checkpoint_fits

    init_default_scope("mmseg")
    model = init_model(args.config, None, device="cuda:0" if torch.cuda.is_available() else "cpu")
    check_checkpoint_fits(model, args.checkpoint, "complete")
    model = init_model(args.config, args.checkpoint, device="cuda:0" if torch.cuda.is_available() else "cpu")
    if "test_pipeline" not in model.cfg:  # configs that keep it only in their test loader
        model.cfg.test_pipeline = model.cfg.test_dataloader.dataset.pipeline
    visualizer = SegLocalVisualizer(vis_backends=[dict(type="LocalVisBackend")], save_dir=None, alpha=0.6)
    visualizer.dataset_meta = model.dataset_meta
    files = input_files(args.input)
    for path in files:
        result = inference_model(model, path)
        image = mmcv.imread(path, channel_order="rgb")
        visualizer.add_datasample("prediction", image, result, draw_gt=False, show=False)
        out = output_path(args.output, path, len(files))
        mmcv.imwrite(visualizer.get_image()[:, :, ::-1], out)
        classes = np.unique(result.pred_sem_seg.data.cpu().numpy())
        print(f"{path}: classes {classes.tolist()} -> {out}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="framework", required=True)
    det = sub.add_parser("det", help="a detectron2 model")
    det.add_argument("--config-file", required=True)
    det.add_argument("--input", nargs="+", required=True, help="images, globs or folders")
    det.add_argument("--output", required=True, help="a folder (or one .png for one input)")
    det.add_argument("--confidence-threshold", type=float, default=0.5)
    det.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                     help="config overrides: KEY VALUE pairs (YAML) or key=value (LazyConfig)")
    seg = sub.add_parser("seg", help="an MMSegmentation model")
    seg.add_argument("config")
    seg.add_argument("checkpoint")
    seg.add_argument("--input", nargs="+", required=True, help="images, globs or folders")
    seg.add_argument("--output", required=True, help="a folder (or one .png for one input)")
    args = parser.parse_args(argv)
    (detectron2_demo if args.framework == "det" else mmseg_demo)(args)


if __name__ == "__main__":
    main()
