"""Workarounds for detectron2's quirks, each with its reason and the versions it is for.

All of them concern detectron2 0.6 (the last release, and the PyPI republish
pb1-detectron2==0.6) and are still present in its main branch as of 2024. Delete each when
upstream fixes it.
"""
import datetime
import functools

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def has_fast_coco_eval() -> bool:
    """Whether detectron2 was built with its C++ ops (COCOeval_opt). The build of
    scripts/build_detectron2.py has none: COCOEvaluator must then use pycocotools
    (``use_fast_impl=False``), otherwise it fails at the end of evaluation."""
    from detectron2 import _C

    return not getattr(_C, "IS_CPU_STAND_IN", False) and hasattr(_C, "COCOevalAccumulate")


def launch(main_func, num_processes, num_machines=1, machine_rank=0, dist_url=None, args=(),
           timeout=datetime.timedelta(minutes=30)):
    """detectron2.engine.launch, also for CPU processes.

    detectron2's launch (0.6 .. main) asserts CUDA and hard-codes NCCL. With CUDA this calls
    it unchanged; without, it starts ``num_processes`` processes per machine joined by a gloo
    process group through the same torch.distributed rendezvous (``dist_url``, multi-node too).
    """
    from detectron2.engine import launch as d2_launch
    from detectron2.engine.launch import _find_free_port

    if torch.cuda.is_available():
        return d2_launch(main_func, num_processes, num_machines, machine_rank, dist_url,
                         args=args, timeout=timeout)
    world_size = num_processes * num_machines
    if world_size == 1:
        return main_func(*args)
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("dist_url=auto only works on one machine; give tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    mp.start_processes(_cpu_worker, nprocs=num_processes, start_method="spawn", daemon=False,
                       args=(main_func, world_size, num_processes, machine_rank, dist_url, args,
                             timeout))


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
