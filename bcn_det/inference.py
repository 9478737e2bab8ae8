"""A trained model and its test set from a YAML or a LazyConfig (``.py``) file alike, for the
tools that evaluate, draw or analyze one (tools/demo.py, tools/analyze_model.py)."""
from dataclasses import dataclass
from typing import Callable, List

import torch

from .checkpoint import BCNCheckpointer
from .toy import register_toy_coco


@dataclass
class LoadedModel:
    model: torch.nn.Module          # eval mode, weights loaded
    test_dataset: str               # the config's first test dataset ("" if none)
    test_loader: Callable           # () -> detectron2's test loader of that dataset
    predict: Callable               # BGR uint8 image (H, W, 3) -> detectron2 Instances


def is_lazy_config(path: str) -> bool:
    return path.endswith(".py")


def load_model(config_file: str, opts: List[str], weights: str = None,
               score_threshold: float = None) -> LoadedModel:
    """The model of ``config_file`` (``opts``: ``KEY VALUE`` pairs for YAML, ``key=value`` for a
    LazyConfig) with ``weights`` (else the config's MODEL.WEIGHTS / train.init_checkpoint),
    loaded as for evaluation: the checkpoint must fit the model (bcn_det.checkpoint)."""
    if is_lazy_config(config_file):
        return _load_lazy(config_file, opts, weights, score_threshold)
    return _load_yaml(config_file, opts, weights, score_threshold)


def _device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def _load_yaml(config_file, opts, weights, score_threshold):
    from detectron2.data import build_detection_test_loader
    from detectron2.engine import DefaultPredictor

    from .config import load_config

    if opts and any("=" in o for o in opts[::2]):
        raise SystemExit(f"{config_file} is a YAML config: overrides are KEY VALUE pairs, not key=value")
    cfg = load_config(config_file, opts)
    cfg.MODEL.DEVICE = _device() if cfg.MODEL.DEVICE.startswith("cuda") else cfg.MODEL.DEVICE
    weights = weights or cfg.MODEL.WEIGHTS
    cfg.MODEL.WEIGHTS = ""  # loaded below by BCNCheckpointer, not by DefaultPredictor's own
    if score_threshold is not None:
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = score_threshold
    cfg.freeze()
    register_toy_coco(cfg.DATASETS.TOY_ROOT or None)
    predictor = DefaultPredictor(cfg)
    BCNCheckpointer(predictor.model, evaluation=True, partial=cfg.MODEL.WEIGHTS_PARTIAL).load(weights)
    name = cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else ""
    return LoadedModel(predictor.model, name, lambda: build_detection_test_loader(cfg, name),
                       lambda image: predictor(image)["instances"])


def _load_lazy(config_file, opts, weights, score_threshold):
    import detectron2.data.transforms as T
    from detectron2.config import LazyConfig, instantiate

    from .lazy import check_lazy_model

    if opts and any("=" not in o for o in opts):
        raise SystemExit(f"{config_file} is a LazyConfig: overrides are key=value (e.g. "
                         "train.init_checkpoint=model_final.pth), not KEY VALUE pairs")
    cfg = LazyConfig.apply_overrides(LazyConfig.load(config_file), list(opts))
    check_lazy_model(cfg.model)
    register_toy_coco(None)
    predictor_cfg = cfg.model.roi_heads.get("box_predictor") if "roi_heads" in cfg.model else None
    if score_threshold is not None and predictor_cfg is not None and "test_score_thresh" in predictor_cfg:
        predictor_cfg.test_score_thresh = score_threshold
    model = instantiate(cfg.model).to(cfg.train.get("device", "cuda") if torch.cuda.is_available() else "cpu")
    BCNCheckpointer(model, evaluation=True, lazy=True, partial=cfg.train.get("partial_weights", False)).load(
        weights or cfg.train.init_checkpoint)
    model.eval()
    test = cfg.dataloader.get("test")
    names = test.dataset.names if test is not None else ""
    name = names if isinstance(names, str) else (names[0] if names else "")
    augment = T.AugmentationList(instantiate(test.mapper.augmentations)) if test is not None else T.AugmentationList([])
    input_format = getattr(model, "input_format", "BGR")

    def predict(image):
        height, width = image.shape[:2]
        if input_format == "RGB":
            image = image[:, :, ::-1]
        resized = T.AugInput(image)
        augment(resized)
        tensor = torch.as_tensor(resized.image.astype("float32").transpose(2, 0, 1))
        with torch.no_grad():
            return model([{"image": tensor, "height": height, "width": width}])[0]["instances"]

    return LoadedModel(model, name, lambda: instantiate(test), predict)
