"""Training-time rescaling as the authors' DeepLabV3 script does it (the paper's Sec. 4.3 setup).

Their ``utils.preprocess`` scales each image by s = 2^u, u uniform in [log2 0.5, log2 2], of
its own size, with PIL's antialiasing filter (labels: nearest). mmseg's RandomResize instead
scales to a fixed target ((2048, 512) in its VOC configs) times a uniform ratio, with cv2's
bilinear filter: other scales, another distribution, aliasing on downscales.
"""
import math
import random

from mmengine.registry import TRANSFORMS
from mmseg.datasets.transforms import Resize


@TRANSFORMS.register_module(force=True)
class RandomRescale(Resize):
    """Rescale image and labels by a log-uniform factor in ``ratio_range`` of their own size."""

    def __init__(self, ratio_range=(0.5, 2.0), backend: str = "pillow", interpolation: str = "lanczos"):
        low, high = ratio_range
        if not 0 < low <= high:
            raise ValueError(f"RandomRescale: ratio_range={ratio_range!r} must be 0 < low <= high")
        super().__init__(scale_factor=1.0, backend=backend, interpolation=interpolation)
        self.ratio_range = (float(low), float(high))

    def transform(self, results: dict) -> dict:
        low, high = (math.log2(r) for r in self.ratio_range)
        factor = 2.0 ** random.uniform(low, high)
        self.scale_factor = (factor, factor)
        return super().transform(results)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ratio_range={self.ratio_range}, backend={self.backend}, interpolation={self.interpolation})"
