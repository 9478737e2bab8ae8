"""What tools/train_seg.py and tools/test_seg.py share: arguments, config checks, and the
process group (NCCL on GPUs, gloo on CPU, which mmengine does not set up by itself)."""
import argparse
import difflib
import os
import os.path as osp
import re
from datetime import timedelta

import torch
import torch.distributed as dist
from mmengine.config import Config, DictAction

from bcn.utils.allocator import keep_freed_memory
from bcn.pretrained import CheckpointError
from bcn.utils.runs import prepare_run_dir

from .registry import BCN_TYPES, CONV_TYPES


def parse_args(test: bool):
    parser = argparse.ArgumentParser(
        description=("Test" if test else "Train") + " an MMSegmentation model with BCN / WS. "
        "Several processes: torchrun --nproc_per_node N ... --launcher pytorch (GPUs with NCCL, "
        "CPU processes with gloo); multi-node through torchrun's rendezvous.")
    parser.add_argument("config", help="config file")
    if test:
        parser.add_argument("checkpoint", help="checkpoint file")
    parser.add_argument("--work-dir", help="where to save logs and checkpoints")
    if not test:
        parser.add_argument("--resume", action="store_true", help="resume from the last checkpoint of work-dir")
        parser.add_argument("--overwrite", action="store_true",
                            help="start a new run in a work-dir that holds one, overwriting it")
        parser.add_argument("--amp", action="store_true",
                            help="mixed precision (mmengine's AmpOptimWrapper, dynamic loss scale)")
    parser.add_argument("--partial-weights", action="store_true",
                        help="load a checkpoint even where it does not fit the model (missing or "
                        "mis-shaped tensors are skipped, as mmengine does); else that is an error")
    parser.add_argument("--data-root", help="dataset root (else $VOC_ROOT, else the config's)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config keys")
    parser.add_argument("--show-traceback", action="store_true",
                        help="show the traceback of a configuration, dataset or checkpoint error "
                        "(by default one line says what is wrong and what to do)")
    parser.add_argument("--launcher", choices=["none", "pytorch"], default="none")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    return parser.parse_args()


def init_distributed(launcher: str) -> None:
    """Create the process group from torchrun's environment before mmengine's Runner does:
    mmengine 0.10.7 calls torch.cuda.set_device unconditionally, which fails on a CPU host.
    A group that exists already is left to mmengine."""
    if launcher == "none" or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("nccl", timeout=timedelta(minutes=30))
    else:
        dist.init_process_group("gloo", timeout=timedelta(minutes=30))


def load_config(args) -> Config:
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    check_config(cfg, args.config)
    if getattr(args, "amp", False):  # as mmseg's tools/train.py --amp
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.setdefault("loss_scale", "dynamic")
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get("work_dir") or osp.join(
        "work_dirs", osp.splitext(osp.basename(args.config))[0])
    data_root = args.data_root or os.environ.get("VOC_ROOT")
    if data_root:  # real VOC entries only: the toy set keeps its own generated folder
        for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
            if cfg.get(loader):
                for leaf in _leaf_datasets(cfg[loader]["dataset"]):
                    if leaf.get("type") != "ToyVOCDataset":
                        leaf["data_root"] = data_root
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        if cfg.get(loader) and cfg[loader].get("num_workers", 0) == 0:
            cfg[loader]["persistent_workers"] = False  # invalid without workers
        if cfg.get(loader):
            _check_data_root(cfg[loader]["dataset"], loader)
    if args.launcher != "none" and not torch.cuda.is_available():
        cfg.env_cfg.setdefault("dist_cfg", {})["backend"] = "gloo"
        wrapper = cfg.get("model_wrapper_cfg") or dict(type="MMDistributedDataParallel")
        wrapper.update(device_ids=None)  # DDP takes no device ids for CPU modules
        wrapper.setdefault("broadcast_buffers", False)
        cfg.model_wrapper_cfg = wrapper
    return cfg


def _leaf_datasets(dataset):
    """The dataset configs that read files, through ConcatDataset / RepeatDataset wrappers."""
    if "datasets" in dataset:
        for d in dataset["datasets"]:
            yield from _leaf_datasets(d)
    elif "dataset" in dataset:
        yield from _leaf_datasets(dataset["dataset"])
    else:
        yield dataset


def _check_data_root(dataset, loader):
    """A missing dataset, an empty split or a missing image or label file fails here, naming
    the path and the fix, before any work (mmseg would fail later: "need at least one array to
    concatenate", or in the middle of training)."""
    for leaf in _leaf_datasets(dataset):
        root = leaf.get("data_root")
        if leaf.get("type") == "ToyVOCDataset" or not root:  # toy: generated on first use
            continue
        if not osp.isdir(root):
            raise SystemExit(f"{loader}: data_root {root} does not exist: pass --data-root, set "
                             "VOC_ROOT, or fix the config's data_root")
        _check_split(leaf, root, loader)


def _check_split(leaf, root, loader):
    """The split file of a VOC-layout dataset lists at least one sample, and each has its image
    and label file."""
    ann_file = leaf.get("ann_file")
    if not ann_file:
        return
    path = osp.join(root, ann_file)
    if not osp.isfile(path):
        raise SystemExit(f"{loader}: split file {path} does not exist (ann_file under data_root)")
    with open(path) as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise SystemExit(f"{loader}: split file {path} is empty: it must list the samples to use")
    prefix = leaf.get("data_prefix") or {}
    suffixes = {"img_path": leaf.get("img_suffix", ".jpg"), "seg_map_path": leaf.get("seg_map_suffix", ".png")}
    for key, suffix in suffixes.items():
        folder = osp.join(root, prefix.get(key, ""))
        missing = [n for n in names if not osp.isfile(osp.join(folder, n + suffix))]
        if missing:
            raise SystemExit(f"{loader}: {len(missing)} of the {len(names)} samples of {path} have no "
                             f"{'image' if key == 'img_path' else 'label'} file in {folder} (e.g. "
                             f"{missing[0] + suffix})")


def _check_checkpoint(path: str) -> None:
    from bcn.pretrained import CheckpointError, check_readable

    if "://" in path:
        return
    if not osp.exists(path):
        raise SystemExit(f"checkpoint {path} does not exist")
    try:
        check_readable(path)
    except CheckpointError as e:
        raise SystemExit(str(e)) from None


def _check_weights(runner, cfg, args, test: bool) -> None:
    """The checkpoint mmengine is about to load fits the model (bcn_seg.checkpoint): completely
    to test or resume, without mis-shaped tensors as load_from for training."""
    from .checkpoint import check_checkpoint_fits

    partial = args.partial_weights
    if test:
        check_checkpoint_fits(runner.model, args.checkpoint, "partial" if partial else "complete")
        return
    last = osp.join(cfg.work_dir, "last_checkpoint")
    if cfg.resume and osp.exists(last):
        with open(last) as f:
            check_checkpoint_fits(runner.model, f.read().strip(), "partial" if partial else "complete")
    elif cfg.get("load_from"):
        check_checkpoint_fits(runner.model, cfg.load_from, "partial" if partial else "init")


def check_work_dir(cfg, args) -> None:
    """Before mmengine writes into work_dir: refuse a run there, or with --overwrite move it
    aside (rank 0, the others wait for it)."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    prepare_run_dir(cfg.work_dir, "--work-dir", resume=args.resume, overwrite=args.overwrite,
                    move=rank == 0)
    if dist.is_initialized():
        dist.barrier()


def check_config(cfg: Config, path: str = "config") -> None:
    """Every norm_cfg / conv_cfg type is registered, and a config using ours imports bcn_seg
    itself (so it also works with mmseg's own tools)."""
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    imports = (cfg.get("custom_imports") or {}).get("imports", [])
    for where, spec in _layer_cfgs(cfg._cfg_dict.to_dict()):
        kind = spec.get("type")
        if not isinstance(kind, str):
            continue
        if kind in BCN_TYPES + CONV_TYPES and "bcn_seg" not in imports:
            raise ValueError(f"{path}: {where} is {kind!r}, registered by bcn_seg, but the config does "
                             "not import it: add custom_imports = dict(imports=['bcn_seg'], "
                             "allow_failed_imports=False)")
        with MODELS.switch_scope_and_registry("mmseg") as registry:
            if registry.get(kind) is None:
                known = list(registry.module_dict) + list(registry.parent.module_dict)
                hint = difflib.get_close_matches(kind, known, n=3)
                raise ValueError(f"{path}: {where} type {kind!r} is not registered"
                                 + (f"; did you mean {hint}?" if hint else ""))
        if kind in BCN_TYPES:
            _check_bcn_cfg(spec, f"{path}: {where}")


def _check_bcn_cfg(spec, where):
    """A BCN norm_cfg's arguments, checked on a layer built with them (the channel count is the
    layer's own, unknown here: one channel per group)."""
    from bcn import BatchChannelNorm2d

    kwargs = {k: v for k, v in spec.items() if k not in ("type", "requires_grad")}
    groups = kwargs.get("num_groups", 32)
    try:
        BatchChannelNorm2d(groups if isinstance(groups, int) and groups > 0 else 1, **kwargs)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where} = {spec}: {error}") from None


def bcn_cfg_locations(cfg, num_groups=None):
    """Where the config's BCN norm_cfgs are (those with ``num_groups`` if given)."""
    return [where for where, spec in _layer_cfgs(cfg._cfg_dict.to_dict())
            if spec.get("type") in BCN_TYPES and (num_groups is None or spec.get("num_groups", 32) == num_groups)]


def _layer_cfgs(node, where=""):
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{where}.{key}" if where else key
            if key in ("norm_cfg", "conv_cfg") and isinstance(value, dict):
                yield here, value
            else:
                yield from _layer_cfgs(value, here)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _layer_cfgs(value, f"{where}[{i}]")


def run(test: bool) -> None:
    import bcn_seg  # noqa: F401  registrations and compat, before anything of mmseg
    from mmengine.runner import Runner

    args = parse_args(test)
    if not torch.cuda.is_available():
        keep_freed_memory()  # why: bcn/utils/allocator.py
    init_distributed(args.launcher)
    cfg = None
    try:
        cfg = load_config(args)
        if test:
            cfg.load_from = args.checkpoint
            _check_checkpoint(args.checkpoint)
        else:
            check_work_dir(cfg, args)
            cfg.resume = args.resume
            last = osp.join(cfg.work_dir, "last_checkpoint")
            if args.resume and osp.exists(last):
                with open(last) as f:
                    _check_checkpoint(f.read().strip())
        runner = Runner.from_cfg(cfg)
        _check_weights(runner, cfg, args, test)
        runner.test() if test else runner.train()
    except (CheckpointError, ValueError) as error:  # one line: the message says what to do
        if args.show_traceback:
            raise
        raise SystemExit(f"error: {_located(error, cfg)} (--show-traceback shows where)") from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _located(error, cfg) -> str:
    """A BCN group-count error raised while building names no config entry (the layer knows
    its channels, not its place in the config): add the norm_cfgs it can come from."""
    message = str(error)
    found = re.search(r"BCN: num_groups=(\d+) does not divide", message)
    if found and cfg is not None:
        places = bcn_cfg_locations(cfg, int(found.group(1)))
        if places:
            message += f" (in {', '.join(places[:4])}{' ...' if len(places) > 4 else ''})"
    return message
