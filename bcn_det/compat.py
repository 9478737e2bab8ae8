"""Workarounds for detectron2's quirks, each with its reason and the versions it is for.

Checked against detectron2 0.6 (the last release; the PyPI republish pb1-detectron2==0.6) and
its main branch at 02b5c4e (2026-06-06), which still reports version 0.6: where main has the
facility, it is detected and used. Delete each when the oldest supported detectron2 has it.

- ``launch``: 0.6 asserts CUDA and hard-codes NCCL; main runs CPU processes over gloo. Both
  drop main_func's result in a single process (run() returns the evaluation results).
- ``allow_cpu_ddp``: create_ddp_model passes device_ids for CPU modules (0.6 and main).
- ``OptimizerStateInCheckpoints``: 0.6's DefaultTrainer saves no optimizer state (main does).
- ``data_loader_iterator``: 0.6 and main name SimpleTrainer's iterator differently.
- ``forget_failed_load``: main's DetectionCheckpointer.load stays "inside a load" after one
  fails, and the next load on it fails with a bare AssertionError (0.6 has no such state).
- ``has_fast_coco_eval``: 0.6's COCOEvaluator fails without the C++ COCOeval_opt (main falls
  back to pycocotools itself).
- ``pillow_linear``: 0.6 names ``Image.LINEAR`` at import (a default argument), which Pillow 10
  removed (the same filter as ``Image.BILINEAR``); main does not. Lets 0.6 import where the
  environment has a newer Pillow (an offline GPU node's, beside its torchvision).
"""
import datetime
import functools

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def pillow_linear() -> None:
    from PIL import Image

    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR


pillow_linear()  # before anything of detectron2 is imported (bcn_det imports this module first)


def has_fast_coco_eval() -> bool:
    """Whether detectron2 was built with its C++ ops (COCOeval_opt). The build of
    scripts/build_detectron2.py has none: detectron2 0.6's COCOEvaluator must then be told to
    use pycocotools (``use_fast_impl=False``), or it fails at the end of evaluation; main falls
    back by itself, and the flag changes nothing there."""
    from detectron2 import _C

    return not getattr(_C, "IS_CPU_STAND_IN", False) and hasattr(_C, "COCOevalAccumulate")


def launch(main_func, num_processes, num_machines=1, machine_rank=0, dist_url=None, args=(),
           timeout=datetime.timedelta(minutes=30)):
    """detectron2.engine.launch, also for CPU processes.

    detectron2 0.6's launch asserts CUDA and hard-codes NCCL. One process: main_func runs here
    and its result is returned. With CUDA, or with a detectron2 whose launch runs CPU processes
    itself (main), this calls detectron2's launch unchanged; otherwise it starts
    ``num_processes`` processes per machine joined by a gloo process group through the same
    torch.distributed rendezvous (``dist_url``, multi-node too).
    """
    from detectron2.engine import launch as d2_launch
    from detectron2.engine.launch import _find_free_port

    world_size = num_processes * num_machines
    if world_size == 1:  # as detectron2 does it, but returning main_func's result (it drops it)
        return main_func(*args)
    if torch.cuda.is_available():
        return d2_launch(main_func, num_processes, num_machines, machine_rank, dist_url,
                         args=args, timeout=timeout)
    if _upstream_launch_runs_cpu():
        return d2_launch(_with_cpu_ddp, num_processes, num_machines, machine_rank, dist_url,
                         args=(main_func, *args), timeout=timeout)
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("dist_url=auto only works on one machine; give tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    mp.start_processes(_cpu_worker, nprocs=num_processes, start_method="spawn", daemon=False,
                       args=(main_func, world_size, num_processes, machine_rank, dist_url, args,
                             timeout))


def _with_cpu_ddp(main_func, *args):
    """main_func in a process of detectron2's own CPU launch, with CPU DDP allowed there."""
    allow_cpu_ddp()
    return main_func(*args)


def _upstream_launch_runs_cpu() -> bool:
    """Whether detectron2's own launch starts CPU processes (gloo): main's does."""
    import importlib
    import inspect

    module = importlib.import_module("detectron2.engine.launch")  # (the package exports a function of that name)
    return "GLOO" in inspect.getsource(module._distributed_worker).upper()


def _cpu_worker(local_rank, main_func, world_size, num_processes, machine_rank, dist_url, args,
                timeout):
    from detectron2.utils import comm

    rank = machine_rank * num_processes + local_rank
    dist.init_process_group("gloo", init_method=dist_url, world_size=world_size, rank=rank,
                            timeout=timeout)
    try:
        # comm.get_local_rank() needs the per-machine group that detectron2's own worker sets.
        for machine in range(world_size // num_processes):
            group = dist.new_group(list(range(machine * num_processes, (machine + 1) * num_processes)))
            if machine == machine_rank:
                comm._LOCAL_PROCESS_GROUP = group
        allow_cpu_ddp()
        comm.synchronize()
        main_func(*args)
    finally:
        dist.destroy_process_group()


def forget_failed_load(checkpointer) -> None:
    """After a failed DetectionCheckpointer.load (main sets ``_parsed_url_during_load`` with no
    try/finally), the checkpointer would believe it is still inside that load."""
    if getattr(checkpointer, "_parsed_url_during_load", None) is not None:
        checkpointer._parsed_url_during_load = None


def allow_cpu_ddp() -> None:
    """detectron2's create_ddp_model always passes device_ids=[local_rank], which DDP refuses
    for a module on the CPU. Wrap it (where DefaultTrainer looks it up) to drop device_ids for
    CPU modules; GPU modules are wrapped exactly as before."""
    from detectron2.engine import defaults

    original = defaults.create_ddp_model
    if getattr(original, "_bcn_cpu_ok", False):
        return

    @functools.wraps(original)
    def create_ddp_model(model, **kwargs):
        from detectron2.utils import comm

        if comm.get_world_size() == 1 or next(model.parameters()).is_cuda:
            return original(model, **kwargs)
        kwargs.pop("fp16_compression", None)
        return torch.nn.parallel.DistributedDataParallel(model, **kwargs)

    create_ddp_model._bcn_cpu_ok = True
    defaults.create_ddp_model = create_ddp_model


def data_loader_iterator(trainer):
    """The iterator a SimpleTrainer draws its batches from (``_data_loader_iter`` in 0.6,
    created in __init__; later versions make it ``_data_loader_iter_obj``, created lazily)."""
    inner = getattr(trainer, "_trainer", trainer)
    if hasattr(inner, "_data_loader_iter_obj"):
        if inner._data_loader_iter_obj is None:
            inner._data_loader_iter_obj = iter(inner.data_loader)
        return inner._data_loader_iter_obj
    return inner._data_loader_iter


class OptimizerStateInCheckpoints:
    """Mixin for DefaultTrainer subclasses. detectron2 0.6's DefaultTrainer checkpoints only
    the iteration and hook states -- no optimizer state -- so a resumed run restarts SGD
    momentum from zero. Later detectron2 saves ``_trainer`` (SimpleTrainer's state, with the
    optimizer); this adds the same where DefaultTrainer lacks it, and does nothing otherwise."""

    def _upstream_saves_optimizer(self):
        from detectron2.engine import DefaultTrainer
        from detectron2.engine.train_loop import TrainerBase

        return DefaultTrainer.state_dict is not TrainerBase.state_dict

    def state_dict(self):
        ret = super().state_dict()
        if not self._upstream_saves_optimizer():
            ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if not self._upstream_saves_optimizer() and "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
