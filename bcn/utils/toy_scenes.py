"""Synthetic scenes for the built-in toy datasets: a few coloured shapes on a noisy background.

Framework-free (numpy, Pillow); bcn_det writes them as COCO instances, bcn_seg as VOC masks.
Deterministic for a given seed.
"""
import math
from typing import List, Tuple

import numpy as np

CLASSES = ("square", "triangle", "disk")
_COLORS = np.array([(215, 70, 60), (70, 190, 80), (70, 100, 225)], dtype=np.float64)
# how drawn predictions show each class: one colour per class, unlike the shapes' own colours,
# so that an overlay stays visible on its object
DISPLAY_COLORS = [(255, 210, 0), (0, 230, 255), (255, 60, 230)]
_CORNERS = {"square": 4, "triangle": 3, "disk": 20}


def shape_polygon(kind: str, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """(K, 2) float polygon of a regular shape centred at (cx, cy)."""
    k = _CORNERS[kind]
    t = angle + np.arange(k) * 2 * math.pi / k
    return np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], axis=1)


def random_scene(rng: np.random.Generator, size: int = 128, max_objects: int = 3
                 ) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
    """An (size, size, 3) uint8 image and its objects as (class index, polygon), no overlaps."""
    from PIL import Image, ImageDraw

    base = rng.uniform(90, 160)
    image = base + rng.normal(0, 12, (size, size, 3))
    image = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    objects, discs = [], []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):
            radius = rng.uniform(0.1, 0.22) * size
            cx, cy = rng.uniform(radius + 2, size - radius - 2, 2)
            if all(math.hypot(cx - x, cy - y) > radius + r + 2 for x, y, r in discs):
                break
        else:
            continue
        cls = int(rng.integers(len(CLASSES)))
        polygon = shape_polygon(CLASSES[cls], cx, cy, radius, rng.uniform(0, 2 * math.pi))
        color = tuple(int(c) for c in np.clip(_COLORS[cls] + rng.normal(0, 15, 3), 0, 255))
        draw.polygon([tuple(p) for p in polygon], fill=color)
        objects.append((cls, polygon))
        discs.append((cx, cy, radius))
    return np.asarray(image), objects


def label_image(objects, size: int) -> np.ndarray:
    """(size, size) uint8 semantic labels: 0 background, class index + 1 inside each shape."""
    from PIL import Image, ImageDraw

    labels = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(labels)
    for cls, polygon in objects:
        draw.polygon([tuple(p) for p in polygon], fill=cls + 1)
    return np.asarray(labels)
