#!/usr/bin/env python
"""Draw a BCN model's predictions on images, as detectron2's and MMSegmentation's demos do.

    python tools/demo.py det --config-file CFG --input img.jpg [more.jpg | a folder] --output out/ \\
        [--confidence-threshold 0.5] [--opts MODEL.WEIGHTS model_final.pth ...]
    python tools/demo.py seg CONFIG CHECKPOINT --input img.jpg [more.jpg | a folder] --output out/

det: a YAML or LazyConfig (.py) config (--opts: KEY VALUE pairs for YAML, key=value for a
LazyConfig), the config's input format and test size, BCN's checkpointer (which also reads the
published BCN+WS files) and detectron2's Visualizer. seg:
mmseg's inference_model, each class blended over its pixels (background left as the image). Each
PNG shows the input beside the prediction, drawn at --scale times the image size (small
images: 3 or 4), one colour per class; one PNG per image under --output (a folder; with a
single input, a file name ending in .png works too).
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


def side_by_side(image, drawn):
    """The input (left) beside its prediction (right), with a thin white gap."""
    gap = np.full((image.shape[0], max(2, image.shape[1] // 100), 3), 255, dtype=np.uint8)
    return np.concatenate([image, gap, drawn], axis=1)


def detectron2_demo(args):
    import cv2
    from detectron2.data import MetadataCatalog
    from detectron2.data.detection_utils import read_image
    import torch
    from detectron2.structures import Instances
    from detectron2.utils.visualizer import ColorMode, Visualizer

    from bcn_det.inference import load_model

    loaded = load_model(args.config_file, args.opts, score_threshold=args.confidence_threshold)
    metadata = MetadataCatalog.get(loaded.test_dataset or "__unused")
    # one colour per class where the dataset has them (COCO, the toy set), else per instance
    mode = ColorMode.SEGMENTATION if metadata.get("thing_colors", None) else ColorMode.IMAGE
    files = input_files(args.input)
    for path in files:
        image = read_image(path, format="BGR")
        instances = loaded.predict(image).to("cpu")
        # a white margin right and below, where labels of boxes at the border stay readable
        height, width = image.shape[:2]
        rgb = np.full((height + height // 8, width + width // 3, 3), 255, dtype=np.uint8)
        rgb[:height, :width] = image[:, :, ::-1]
        shown_instances = Instances(rgb.shape[:2], **instances.get_fields())
        if instances.has("pred_masks"):
            masks = instances.pred_masks
            shown_instances.pred_masks = torch.nn.functional.pad(
                masks, (0, rgb.shape[1] - width, 0, rgb.shape[0] - height))
        drawn = Visualizer(rgb, metadata, scale=args.scale, instance_mode=mode)
        drawn = drawn.draw_instance_predictions(shown_instances).get_image()
        shown = cv2.resize(np.ascontiguousarray(rgb), drawn.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        out = output_path(args.output, path, len(files))
        cv2.imwrite(out, side_by_side(shown, drawn)[:, :, ::-1])
        print(f"{path}: {len(instances)} instances -> {out}")


def draw_classes(image, labels, classes, palette, alpha=0.55):
    """Each non-background class blended over its pixels in its palette colour, and named
    once at its pixels' centre, the label kept inside the image."""
    from PIL import Image, ImageDraw

    out = image.astype(np.float32)
    present = [c for c in np.unique(labels) if 0 < c < len(classes)]
    for c in present:
        where = labels == c
        out[where] = (1 - alpha) * out[where] + alpha * np.array(palette[c], dtype=np.float32)
    drawn = Image.fromarray(out.round().astype(np.uint8))
    pen = ImageDraw.Draw(drawn)
    height, width = labels.shape
    for c in present:
        ys, xs = np.nonzero(labels == c)
        text = classes[c]
        left, top, right, bottom = pen.textbbox((0, 0), text)
        w, h = right - left + 4, bottom - top + 4
        x = int(np.clip(xs.mean() - w / 2, 0, max(0, width - w)))
        y = int(np.clip(ys.mean() - h / 2, 0, max(0, height - h)))
        pen.rectangle([x, y, x + w, y + h], fill=(0, 0, 0))
        pen.text((x + 2, y + 2 - top), text, fill=tuple(palette[c]))
    return np.asarray(drawn)


def mmseg_demo(args):
    import torch

    import bcn_seg  # noqa: F401  (registrations, compat)
    from mmseg.apis import inference_model, init_model
    from mmengine.registry import init_default_scope
    import mmcv

    from bcn_seg.checkpoint import check_checkpoint_fits

    init_default_scope("mmseg")
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    model = init_model(args.config, None, device=device)
    check_checkpoint_fits(model, args.checkpoint, "complete")
    model = init_model(args.config, args.checkpoint, device=device)
    if "test_pipeline" not in model.cfg:  # configs that keep it only in their test loader
        model.cfg.test_pipeline = model.cfg.test_dataloader.dataset.pipeline
    meta = dict(model.dataset_meta or {})
    if not meta.get("palette") or not meta.get("classes"):  # a checkpoint without them: the config's dataset's
        from mmseg.registry import DATASETS

        meta = dict(DATASETS.get(model.cfg.test_dataloader.dataset.type).METAINFO, **{
            k: v for k, v in meta.items() if v})
    files = input_files(args.input)
    for path in files:
        labels = inference_model(model, path).pred_sem_seg.data.cpu().numpy()[0]
        image = mmcv.imread(path, channel_order="rgb")
        if args.scale != 1:
            image = mmcv.imrescale(image, args.scale, interpolation="bilinear")
            labels = mmcv.imresize(labels.astype(np.uint8), image.shape[1::-1], interpolation="nearest")
        drawn = draw_classes(image, labels, meta["classes"], meta["palette"])
        out = output_path(args.output, path, len(files))
        mmcv.imwrite(side_by_side(image, drawn)[:, :, ::-1], out)
        names = [meta["classes"][c] for c in np.unique(labels) if 0 < c < len(meta["classes"])]
        print(f"{path}: {', '.join(names) or 'background only'} -> {out}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="framework", required=True)
    det = sub.add_parser("det", help="a detectron2 model")
    det.add_argument("--config-file", required=True)
    det.add_argument("--input", nargs="+", required=True, help="images, globs or folders")
    det.add_argument("--output", required=True, help="a folder (or one .png for one input)")
    det.add_argument("--confidence-threshold", type=float, default=0.5)
    det.add_argument("--scale", type=float, default=1.0, help="draw at this many times the image size")
    det.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                     help="config overrides: KEY VALUE pairs (YAML) or key=value (LazyConfig)")
    seg = sub.add_parser("seg", help="an MMSegmentation model")
    seg.add_argument("config")
    seg.add_argument("checkpoint")
    seg.add_argument("--input", nargs="+", required=True, help="images, globs or folders")
    seg.add_argument("--output", required=True, help="a folder (or one .png for one input)")
    seg.add_argument("--scale", type=float, default=1.0, help="draw at this many times the image size")
    args = parser.parse_args(argv)
    (detectron2_demo if args.framework == "det" else mmseg_demo)(args)


if __name__ == "__main__":
    main()
