"""Training and evaluation from a YAML config: detectron2's DefaultTrainer with the
estimate-rate hook, a COCO evaluator that works with or without detectron2's C++ ops, and the
config checks of bcn_det. LazyConfigs: bcn_det.lazy; the command line for both: bcn_det.cli."""
import logging
import os
import weakref

import torch
from detectron2.engine import DefaultTrainer, default_setup
from detectron2.evaluation import COCOEvaluator

from bcn.utils.allocator import keep_freed_memory

from .checkpoint import BCNCheckpointer
from .compat import OptimizerStateInCheckpoints, has_fast_coco_eval
from .config import load_config
from .datasets import check_datasets
from .hooks import BaseLRHook, EstimateRateHook, ExactResumeHook, StatDiffHook
from .modeling import check_bcn_config
from .toy import register_toy_coco

logger = logging.getLogger("bcn_det")


class Trainer(OptimizerStateInCheckpoints, DefaultTrainer):
    @classmethod
    def build_model(cls, cfg):
        check_bcn_config(cfg)
        return super().build_model(cfg)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        return COCOEvaluator(dataset_name, output_dir=output_folder,
                             use_fast_impl=has_fast_coco_eval())

    def build_hooks(self):
        # DefaultTrainer.__init__ made a DetectionCheckpointer just before calling this; ours
        # also reads the published BCN+WS files, and the checkpoint hook must save through it.
        self.checkpointer = BCNCheckpointer(self.checkpointer.model, self.cfg.OUTPUT_DIR,
                                            partial=self.cfg.MODEL.WEIGHTS_PARTIAL,
                                            trainer=weakref.proxy(self))
        hooks = [ExactResumeHook(), EstimateRateHook(), BaseLRHook()] + super().build_hooks()
        if self.cfg.DIAGNOSTICS.STATDIFF_PERIOD > 0:
            hooks.insert(3, StatDiffHook(self.cfg.DIAGNOSTICS.STATDIFF_PERIOD))
        return hooks

    def train(self):
        """Train, and return the evaluation results of the end of training (detectron2 0.6
        returns them only when TEST.EXPECTED_RESULTS is set)."""
        super().train()
        return getattr(self, "_last_eval_results", None)


def setup(args):
    cfg = load_config(args.config_file, args.opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("CUDA is not available: training on the CPU (MODEL.DEVICE cpu)")
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    register_toy_coco(cfg.DATASETS.TOY_ROOT or None)
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if cfg.MODEL.DEVICE == "cpu":
        keep_freed_memory()  # why: bcn/utils/allocator.py
    check_datasets(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
    if args.eval_only:
        model = Trainer.build_model(cfg)
        BCNCheckpointer(model, save_dir=cfg.OUTPUT_DIR, evaluation=True,
                        partial=cfg.MODEL.WEIGHTS_PARTIAL).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()
