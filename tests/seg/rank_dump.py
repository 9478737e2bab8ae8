"""Imported by a config (custom_imports) in test_training.py: each rank saves its own model
state at the end of training, so the test can compare ranks."""
import torch
import torch.distributed as dist
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module(force=True)
class DumpRankStateHook(Hook):
    def after_train(self, runner):
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        rank = dist.get_rank() if dist.is_initialized() else 0
        torch.save(model.state_dict(), f"{runner.work_dir}/rank{rank}.pth")


@HOOKS.register_module(force=True)
class KillRankHook(Hook):
    """Fault injection: rank ``rank`` is SIGKILLed before iteration ``at``."""

    def __init__(self, rank=1, at=2):
        self.rank, self.at = rank, at

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        import os
        import signal

        rank = dist.get_rank() if dist.is_initialized() else 0
        if rank == self.rank and runner.iter == self.at:
            os.kill(os.getpid(), signal.SIGKILL)
