"""add_bcn_config: every config key the BCN project adds to detectron2, with its default."""
from detectron2.config import CfgNode as CN


def add_bcn_config(cfg: CN) -> CN:
    """Declare BCN's and WS's keys on a detectron2 config (idempotent)."""
    if "BCN" in cfg.MODEL:
        return cfg
    cfg.MODEL.BCN = CN()
    # Groups of the channel part (the paper's Eq. 15); 32 in every published model.
    cfg.MODEL.BCN.NUM_GROUPS = 32
    # "estimate": micro-batch training (Algorithm 1), estimates per GPU at a rate equal to the
    # learning rate; "batch": BatchNorm statistics for step 1 (large batches per GPU).
    cfg.MODEL.BCN.MODE = "estimate"
    # "group": one affine pair per group (the published layout); "channel": one per channel.
    cfg.MODEL.BCN.AFFINE = "group"
    cfg.MODEL.BCN.EPS = 1e-5
    # BatchNorm momentum of batch mode; in estimate mode only the fallback rate used (with a
    # warning) when no hook sets the rate.
    cfg.MODEL.BCN.MOMENTUM = 0.1
    # "auto": each device's kernels where they apply (C++ on the CPU, Triton on CUDA), the
    # reference path elsewhere; "cpu", "triton" or "reference" to force one (bcn.kernels.dispatch).
    cfg.MODEL.BCN.IMPL = "auto"

    # Weight Standardization for the convolutions followed by a norm layer, per module.
    cfg.MODEL.RESNETS.WS = False
    cfg.MODEL.FPN.WS = False
    cfg.MODEL.ROI_BOX_HEAD.WS = False
    cfg.MODEL.ROI_MASK_HEAD.WS = False
    cfg.MODEL.WS = CN()
    cfg.MODEL.WS.EPS = 1e-5
    # "eps_in_sqrt": unbiased var, eps inside the root (published ImageNet models);
    # "eps_on_std": std + eps (the authors' segmentation script).
    cfg.MODEL.WS.FORM = "eps_in_sqrt"

    # StatDiff / dead-channel diagnostics (bcn_det.StatDiffHook) every N iterations; 0: off.
    cfg.DIAGNOSTICS = CN()
    cfg.DIAGNOSTICS.STATDIFF_PERIOD = 0

    # Load MODEL.WEIGHTS even where it does not fit the model (tensors missing or mis-shaped
    # are skipped, as detectron2 does); by default such a checkpoint is an error (bcn_det.checkpoint).
    cfg.MODEL.WEIGHTS_PARTIAL = False

    # The toy dataset's location (bcn_det.toy); empty: $DETECTRON2_DATASETS/bcn_toy_coco.
    cfg.DATASETS.TOY_ROOT = ""
    return cfg


def load_config(path: str, opts=()) -> CN:
    """detectron2's config with bcn_det's keys, ``path`` merged, then ``KEY VALUE`` opts."""
    from detectron2.config import get_cfg

    cfg = add_bcn_config(get_cfg())
    cfg.merge_from_file(path)
    cfg.merge_from_list(list(opts))
    return cfg
