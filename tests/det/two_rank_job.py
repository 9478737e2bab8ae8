"""Run by test_training.py: train the toy model in N CPU processes (gloo) through bcn_det's
launcher, then save each rank's model state, so the test can compare ranks."""
import os
import signal
import sys

import torch
from detectron2.engine import HookBase
from detectron2.utils import comm

import bcn_det
from bcn_det.engine import Trainer
from tests.det.helpers import load_cfg, TOY_CONFIG


class DieHook(HookBase):
    """Fault injection: rank ``rank`` is SIGKILLed before iteration ``at``, as a crashed
    machine would be."""

    def __init__(self, rank, at):
        self.rank, self.at = rank, at

    def before_step(self):
        if comm.get_rank() == self.rank and self.trainer.iter == self.at:
            os.kill(os.getpid(), signal.SIGKILL)


def main(out_dir, opts):
    bcn_det.register_toy_coco(opts[opts.index("DATASETS.TOY_ROOT") + 1])
    cfg = load_cfg(TOY_CONFIG, "OUTPUT_DIR", out_dir, *opts)
    cfg.freeze()
    from detectron2.utils.env import seed_all_rng

    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + comm.get_rank())  # as default_setup does
    trainer = Trainer(cfg)
    if os.environ.get("BCN_TEST_KILL_AT"):  # "rank:iteration"
        rank, at = map(int, os.environ["BCN_TEST_KILL_AT"].split(":"))
        trainer.register_hooks([DieHook(rank, at)])
    trainer.resume_or_load(resume=True)  # continues a run in out_dir if there is one
    trainer.train()
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    torch.save(model.state_dict(), f"{out_dir}/rank{comm.get_rank()}.pth")


if __name__ == "__main__":
    # out_dir processes_per_machine machines machine_rank dist_url [KEY VALUE ...]
    out_dir, nprocs, machines, machine_rank, dist_url, *opts = sys.argv[1:]
    bcn_det.launch(main, int(nprocs), num_machines=int(machines), machine_rank=int(machine_rank),
                   dist_url=dist_url, args=(out_dir, opts))
