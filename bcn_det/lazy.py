"""The LazyConfig entry point behind tools/train_net.py (a ``.py`` --config-file): detectron2's
tools/lazyconfig_train_net.py, plus what the YAML path has -- the estimate-rate, StatDiff and
exact-resume hooks, the published-checkpoint reader, GPU-count scaling, the checks of bcn_det.

Keys it reads beyond detectron2's common ``train`` dict (configs/detectron2/common/
rcnn_fpn_bcn_ws.py declares them with their defaults):
    train.reference_world_size   the GPU count the schedule is written for; 0: no scaling
    train.statdiff_period        StatDiff / dead-channel records every N iterations; 0: off
"""
import functools
import inspect
import logging
import os

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_setup, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.modeling.backbone import FPN, ResNet
from detectron2.utils import comm
from detectron2.utils.registry import locate
from omegaconf import DictConfig, ListConfig

from bcn.utils.allocator import keep_freed_memory

from .checkpoint import BCNCheckpointer
from .compat import has_fast_coco_eval
from .datasets import check_datasets
from .hooks import BaseLRHook, EstimateRateHook, ExactResumeHook, StatDiffHook
from .modeling import BCNFactory, BCNResNet

logger = logging.getLogger("bcn_det")

NORM_ARGUMENTS = ("norm", "conv_norm")


def _target(node):
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if isinstance(target, str):
        try:
            return locate(target)
        except Exception:
            return None
    return target


def _walk(node, path):
    if isinstance(node, DictConfig):
        yield path, node
        for key in node.keys():
            yield from _walk(node.get(key), f"{path}.{key}")
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            yield from _walk(item, f"{path}[{i}]")


def check_lazy_model(model_cfg, path: str = "model") -> None:
    """Fail before building, with the fix, where a LazyConfig model would build something
    other than what it says: BCN named as a string (detectron2's get_norm knows no "BCN"), a
    ``ws`` argument on a detectron2 class that has none, or BCN layers in detectron2's own
    ResNet with frozen stages (its freeze turns the BatchNorm inside BCN into FrozenBN)."""
    for where, node in _walk(model_cfg, path):
        for arg in NORM_ARGUMENTS:
            value = node.get(arg)
            if value == "BCN":
                raise ValueError(
                    f"{where}.{arg}='BCN': in a LazyConfig BCN is a norm factory, "
                    f"{where}.{arg} = L(bcn_det.BCNFactory)(num_groups=32, mode='estimate') "
                    "(detectron2's get_norm knows no 'BCN' string)")
            if isinstance(value, str) and value not in detectron2_norm_names():
                raise ValueError(
                    f"{where}.{arg}={value!r} is not a norm detectron2 knows: choose one of "
                    f"{sorted(detectron2_norm_names())}, or BCN: L(bcn_det.BCNFactory)(num_groups=32, "
                    "mode='estimate')")
        target = _target(node)
        if not isinstance(target, type):
            continue
        if "ws" in node and node.get("ws") is not None and not _takes_ws(target):
            ours = {ResNet: "bcn_det.BCNResNet", FPN: "bcn_det.BCNFPN"}.get(
                next((base for base in (ResNet, FPN) if issubclass(target, base)), None),
                "bcn_det.BCNConvFCHead / bcn_det.BCNMaskRCNNConvUpsampleHead")
            raise ValueError(f"{where}: {target.__name__} takes no 'ws'; WS needs {where}."
                             f"_target_ = {ours}")
        if issubclass(target, ResNet) and not issubclass(target, BCNResNet) \
                and (node.get("freeze_at") or 0) > 0 and _has_bcn(node):
            raise ValueError(
                f"{where}: detectron2's ResNet with BCN layers and freeze_at="
                f"{node.get('freeze_at')} would freeze them as BatchNorm; set {where}._target_ "
                "= bcn_det.BCNResNet (same arguments)")


@functools.lru_cache(maxsize=None)
def detectron2_norm_names():
    """The strings this detectron2's get_norm accepts (a dict inside the function, which
    differs between versions: asked, not copied)."""
    from detectron2.layers import get_norm

    names = {""}
    for name in ("BN", "SyncBN", "FrozenBN", "GN", "nnSyncBN", "naiveSyncBN", "naiveSyncBN_N", "LN"):
        try:
            get_norm(name, 32)
            names.add(name)
        except Exception:
            pass
    return frozenset(names)


def warn_if_backbone_lacks_bcn(model) -> None:
    """BCN configured somewhere (FPN, heads) but not in the backbone's ResNet is almost always a
    config that set only some norms (e.g. model.backbone.norm, which is the FPN's): say so."""
    from bcn import BatchChannelNorm2d, FrozenBatchChannelNorm2d

    bcn_types = (BatchChannelNorm2d, FrozenBatchChannelNorm2d)
    bottom_up = getattr(getattr(model, "backbone", None), "bottom_up", None)
    if bottom_up is None or not any(isinstance(m, bcn_types) for m in model.modules()):
        return
    if any(isinstance(m, bcn_types) for m in bottom_up.modules()):
        return
    kinds = sorted({type(m).__name__ for m in bottom_up.modules()
                    if "norm" in type(m).__name__.lower() or type(m).__name__.endswith("BN")})
    logger.warning(
        f"BCN is configured, but the backbone's {type(bottom_up).__name__} has no BCN layer "
        f"(its norms: {', '.join(kinds) or 'none'}): set model.backbone.bottom_up.stem.norm and "
        ".stages.norm to L(bcn_det.BCNFactory)(...), as configs/detectron2/common/rcnn_fpn_bcn_ws.py does")


def _takes_ws(target) -> bool:
    try:
        return "ws" in inspect.signature(target.__init__).parameters
    except (TypeError, ValueError):
        return False


def _has_bcn(node) -> bool:
    return any(_target(n) is BCNFactory for _, n in _walk(node, ""))


def scale_to_world_size(cfg, world_size: int) -> None:
    """DefaultTrainer.auto_scale_workers for a LazyConfig: a schedule written for
    ``train.reference_world_size`` GPUs keeps the images per GPU on ``world_size`` GPUs --
    total batch and learning rate scale with the GPU count, iterations and periods inversely.
    The lr_multiplier is a fraction of train.max_iter, so its steps and warm-up follow."""
    reference = cfg.train.get("reference_world_size", 0)
    if not reference or reference == world_size:
        return
    scale = world_size / reference
    batch = cfg.dataloader.train.total_batch_size * scale
    if batch != int(batch):
        raise ValueError(f"train.reference_world_size={reference}: the batch of "
                         f"{cfg.dataloader.train.total_batch_size} does not scale to "
                         f"{world_size} processes; set train.reference_world_size=0 to keep it")
    cfg.dataloader.train.total_batch_size = int(batch)
    cfg.optimizer.lr = cfg.optimizer.lr * scale
    cfg.train.max_iter = int(round(cfg.train.max_iter / scale))
    cfg.train.checkpointer.period = int(round(cfg.train.checkpointer.period / scale))
    cfg.train.eval_period = int(round(cfg.train.eval_period / scale))
    cfg.train.reference_world_size = world_size
    logger.info(f"Scaled the schedule from {reference} to {world_size} processes: total batch "
                f"{cfg.dataloader.train.total_batch_size}, lr {cfg.optimizer.lr}, max_iter "
                f"{cfg.train.max_iter}")


def setup(args):
    cfg = load(args)
    if cfg.train.device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("CUDA is not available: training on the CPU (train.device=cpu)")
        cfg.train.device = "cpu"
    evaluator = cfg.dataloader.get("evaluator")
    if isinstance(evaluator, DictConfig) and "use_fast_impl" not in evaluator \
            and "COCOEvaluator" in str(evaluator.get("_target_")):
        evaluator.use_fast_impl = has_fast_coco_eval()  # why: bcn_det.compat
    if isinstance(evaluator, DictConfig) and evaluator.get("output_dir") is None \
            and "COCOEvaluator" in str(evaluator.get("_target_")):
        # the predictions and results JSON under inference/, as the YAML trainer writes them
        evaluator.output_dir = os.path.join(cfg.train.output_dir, "inference")
    scale_to_world_size(cfg, comm.get_world_size())
    check_lazy_model(cfg.model)
    default_setup(cfg, args)
    return cfg


def dataset_names(cfg):
    names = []
    for part in ("train", "test"):
        loader = cfg.dataloader.get(part)
        value = loader.dataset.names if loader is not None and "dataset" in loader else ()
        names += [value] if isinstance(value, str) else list(value)
    return names


def do_test(cfg, model):
    if cfg.dataloader.get("evaluator") is None:  # none, or removed: dataloader.evaluator=null
        return {}
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test),
                                   instantiate(cfg.dataloader.evaluator))
    if comm.is_main_process():
        print_csv_format(results)
    return results


def do_train(args, cfg):
    from detectron2.engine import defaults  # create_ddp_model looked up now: see compat.allow_cpu_ddp

    model = instantiate(cfg.model)
    logger.info("Model:\n{}".format(model))
    warn_if_backbone_lacks_bcn(model)
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = defaults.create_ddp_model(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader, optimizer)
    checkpointer = BCNCheckpointer(model, cfg.train.output_dir, lazy=True,
                                   partial=cfg.train.get("partial_weights", False), trainer=trainer)
    results = {}

    def test_and_keep():
        results.clear()
        results.update(do_test(cfg, model))
        return results

    statdiff = cfg.train.get("statdiff_period", 0)
    trainer.register_hooks([
        hooks.IterationTimer(),
        ExactResumeHook(),
        EstimateRateHook(),
        BaseLRHook(),
        StatDiffHook(statdiff) if statdiff > 0 else None,
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
        if comm.is_main_process() else None,
        hooks.EvalHook(cfg.train.eval_period, test_and_keep),
        hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter),
                             period=cfg.train.log_period) if comm.is_main_process() else None,
    ])
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    # the checkpoint holds the iteration that just finished
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return dict(results) or None


def main(args):
    cfg = setup(args)
    if cfg.train.device == "cpu":
        keep_freed_memory()  # why: bcn/utils/allocator.py
    check_datasets(dataset_names(cfg))
    if args.eval_only:
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
        BCNCheckpointer(model, save_dir=cfg.train.output_dir, evaluation=True, lazy=True,
                        partial=cfg.train.get("partial_weights", False)).resume_or_load(
            cfg.train.init_checkpoint, resume=args.resume)
        return do_test(cfg, model)
    return do_train(args, cfg)


def load(args):
    """The LazyConfig of the launcher's arguments, its overrides applied."""
    return LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)


def is_lazy_config(path: str) -> bool:
    return os.path.splitext(path)[1] == ".py"
