"""The built-in toy instance-segmentation dataset, in COCO format, registered automatically.

``bcn_toy_coco_train`` / ``bcn_toy_coco_val`` are generated on first use under
``$DETECTRON2_DATASETS/bcn_toy_coco`` (or cfg.DATASETS.TOY_ROOT): PNG images, polygon masks
and COCO JSON, loaded through detectron2's own load_coco_json and evaluated with COCOEvaluator.
"""
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from bcn.utils.runs import generate_once
from bcn.utils.toy_scenes import CLASSES, DISPLAY_COLORS, random_scene

SPLITS = {"train": (96, 0), "val": (24, 1)}  # images, seed
IMAGE_SIZE = 128


def default_root() -> Path:
    return Path(os.environ.get("DETECTRON2_DATASETS", "datasets")) / "bcn_toy_coco"


def polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2)


def write_split(root: Path, split: str, num_images: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    (root / split).mkdir(parents=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        pixels, objects = random_scene(rng, IMAGE_SIZE)
        name = f"{image_id:05d}.png"
        Image.fromarray(pixels).save(root / split / name)
        images.append({"id": image_id, "file_name": name, "width": IMAGE_SIZE, "height": IMAGE_SIZE})
        for cls, poly in objects:
            x0, y0 = poly.min(0)
            x1, y1 = poly.max(0)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": cls + 1,
                "segmentation": [poly.round(2).reshape(-1).tolist()], "area": polygon_area(poly),
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "iscrowd": 0})
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)]
    (root / "annotations").mkdir(exist_ok=True)
    with open(root / "annotations" / f"instances_{split}.json", "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)


def ensure_toy_coco(root=None) -> Path:
    """Generate the dataset once (atomically: concurrent processes may race here)."""
    def write(staging):
        for split, (num_images, seed) in SPLITS.items():
            write_split(staging, split, num_images, seed)
    return generate_once(root or default_root(), "annotations/instances_val.json", write)


def register_toy_coco(root=None) -> None:
    """Register the toy splits in detectron2's catalogs (idempotent)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import load_coco_json

    root = Path(root or default_root())
    for split in SPLITS:
        name = f"bcn_toy_coco_{split}"
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        json_file, image_root = root / "annotations" / f"instances_{split}.json", root / split

        def load(json_file=json_file, image_root=image_root, name=name):
            ensure_toy_coco(root)
            return load_coco_json(str(json_file), str(image_root), name)

        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(json_file=str(json_file), image_root=str(image_root),
                                      evaluator_type="coco", thing_classes=list(CLASSES),
                                      thing_colors=[list(c) for c in DISPLAY_COLORS])
