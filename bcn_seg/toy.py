"""The built-in toy semantic-segmentation dataset in PASCAL VOC's folder layout.

JPEGImages/*.jpg, SegmentationClass/*.png (labels 0 background, 1..3 shapes) and
ImageSets/Segmentation/{train,val}.txt, generated once under ``$BCN_TOY_VOC`` (default
data/bcn_toy_voc). ``ToyVOCDataset`` is mmseg's BaseSegDataset with the toy's classes.
"""
import os
from pathlib import Path

import numpy as np
from mmengine.registry import DATASETS
from mmseg.datasets import BaseSegDataset
from PIL import Image

from bcn.utils.runs import generate_once
from bcn.utils.toy_scenes import CLASSES, DISPLAY_COLORS, label_image, random_scene

SPLITS = {"train": (64, 10), "val": (16, 11)}  # images, seed
IMAGE_SIZE = 128


def default_root() -> Path:
    return Path(os.environ.get("BCN_TOY_VOC", "data/bcn_toy_voc"))


def ensure_toy_voc(root=None) -> Path:
    """Generate the dataset once (atomically: concurrent processes may race here)."""
    return generate_once(root or default_root(), "ImageSets/Segmentation/val.txt", _write_toy_voc)


def _write_toy_voc(staging: Path) -> None:
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (staging / sub).mkdir(parents=True)
    for split, (count, seed) in SPLITS.items():
        rng = np.random.default_rng(seed)
        names = [f"{split}_{i:04d}" for i in range(count)]
        for name in names:
            pixels, objects = random_scene(rng, IMAGE_SIZE)
            Image.fromarray(pixels).save(staging / "JPEGImages" / f"{name}.jpg", quality=95)
            Image.fromarray(label_image(objects, IMAGE_SIZE)).save(
                staging / "SegmentationClass" / f"{name}.png")
        (staging / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")


@DATASETS.register_module(force=True)
class ToyVOCDataset(BaseSegDataset):
    METAINFO = dict(classes=("background",) + CLASSES,
                    palette=[[0, 0, 0]] + [list(c) for c in DISPLAY_COLORS])

    def __init__(self, **kwargs):
        ensure_toy_voc(kwargs.get("data_root"))
        super().__init__(img_suffix=".jpg", seg_map_suffix=".png", **kwargs)
