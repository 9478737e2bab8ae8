"""The training entry point behind tools/train_net.py for YAML configs: detectron2's
DefaultTrainer with the estimate-rate hook, a COCO evaluator that works with or without
detectron2's C++ ops, and the config checks of bcn_det. LazyConfigs: bcn_det.lazy."""
import functools
import logging
import os
import weakref

import torch
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup
from detectron2.evaluation import COCOEvaluator

from bcn.allocator import keep_freed_memory
from bcn.pretrained import CheckpointError
from bcn.runs import prepare_run_dir

from .checkpoint import BCNCheckpointer
from .compat import OptimizerStateInCheckpoints, has_fast_coco_eval, launch
from .config import load_config
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


def check_datasets(names) -> None:
    """A dataset whose files are missing fails here, naming them and the fix, before any work."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    for name in names:
        if name not in DatasetCatalog.list():
            raise SystemExit(f"dataset {name!r} is not registered (known: e.g. coco_2017_train, "
                             "coco_2017_val, bcn_toy_coco_train)")
        if name.startswith("bcn_toy_"):
            continue  # generated on first use
        meta = MetadataCatalog.get(name)
        for key in ("json_file", "image_root"):
            path = meta.get(key, None)
            if path and "://" not in path and not os.path.exists(path):
                raise SystemExit(
                    f"dataset {name!r}: {key} {path} does not exist. detectron2 reads its builtin "
                    "datasets under $DETECTRON2_DATASETS (now "
                    f"{os.environ.get('DETECTRON2_DATASETS', 'datasets')}), e.g. coco/annotations "
                    "and coco/val2017 there")


def main(args):
    cfg = setup(args)
    if cfg.MODEL.DEVICE == "cpu":
        keep_freed_memory()  # why: bcn/allocator.py
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


def argument_parser():
    parser = default_argument_parser()
    parser.description = ("Train / evaluate detectron2 models with BCN and WS. --num-gpus is the "
                          "number of processes per machine: GPUs (NCCL) or, without CUDA, CPU "
                          "processes (gloo).")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run in an OUTPUT_DIR that holds one (the old run is "
                        "moved to a dated sibling folder)")
    parser.add_argument("--show-traceback", action="store_true",
                        help="show the traceback of a configuration or checkpoint error (by "
                        "default one line says what is wrong and what to do)")
    return parser


# A user's mistakes, said in one line: before launch (bad keys are KeyErrors there), and while
# building and loading (a group count that does not divide a layer, a checkpoint that does not fit)
USER_ERRORS = (CheckpointError, ValueError, KeyError)
RUN_ERRORS = (CheckpointError, ValueError)


def _user_errors_in_one_line(entry, args):
    """A user's mistake (a checkpoint that does not fit, a bad config value) ends the run with
    its message, not a traceback: the message names what is wrong and what to do."""
    try:
        return entry(args)
    except RUN_ERRORS as error:
        if args.show_traceback:
            raise
        raise SystemExit(one_line(error)) from None


def one_line(error) -> str:
    message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return f"error: {message} (--show-traceback shows where)"


def check_before_launch(args, lazy_config: bool) -> None:
    """What can be checked from the config alone, checked before any process starts or writes:
    options after the overrides, the config's keys and norms, the datasets' files, and the
    output folder (refused, or moved aside with --overwrite)."""
    from . import lazy

    stray = [o for o in args.opts if o.startswith("--")]
    if stray:
        raise ValueError(f"{' '.join(stray)} came after the config overrides, where it would be read "
                         "as one: put options before the KEY VALUE (or key=value) overrides")
    if lazy_config:
        cfg = lazy.load(args)
        lazy.check_lazy_model(cfg.model)
        register_toy_coco(None)
        names, (output_dir, setting) = lazy.dataset_names(cfg), (cfg.train.output_dir, "train.output_dir")
    else:
        try:
            cfg = load_config(args.config_file, args.opts)
        except AssertionError as error:  # yacs' "Non-existent key"
            raise KeyError(f"{args.config_file}: {error} (bcn_det adds the keys of "
                           "bcn_det.add_bcn_config)") from None
        check_bcn_config(cfg)
        register_toy_coco(cfg.DATASETS.TOY_ROOT or None)
        names = list(cfg.DATASETS.TEST) + ([] if args.eval_only else list(cfg.DATASETS.TRAIN))
        output_dir, setting = cfg.OUTPUT_DIR, "OUTPUT_DIR"
    check_datasets(names)
    if not args.eval_only:  # before any process of the job writes into the folder
        prepare_run_dir(output_dir, setting, resume=args.resume, overwrite=args.overwrite,
                        move=args.machine_rank == 0)


def run(argv=None):
    """tools/train_net.py: a YAML config through this module, a LazyConfig (.py) through
    bcn_det.lazy; the same options for both."""
    from . import lazy

    args = argument_parser().parse_args(argv)
    lazy_config = lazy.is_lazy_config(args.config_file)
    entry = lazy.main if lazy_config else main
    try:
        check_before_launch(args, lazy_config)
    except USER_ERRORS as error:
        if args.show_traceback:
            raise
        raise SystemExit(one_line(error)) from None
    return launch(functools.partial(_user_errors_in_one_line, entry), args.num_gpus, num_machines=args.num_machines,
                  machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
