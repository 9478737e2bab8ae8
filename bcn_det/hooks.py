"""Training hooks for detectron2."""
import logging

from detectron2.engine import HookBase

import bcn


class EstimateRateHook(HookBase):
    """Before every iteration, set the estimate rate of every estimate-mode BCN layer to the
    current learning rate (the paper's Algorithm 1, Sec. 3.2), so it follows warm-up and steps.

    tools/train_net.py adds it. In a trainer of your own:
    ``trainer.register_hooks([bcn_det.EstimateRateHook()])``.

    Every ``check_period`` iterations it also reports batches whose non-finite statistics BCN
    refused: a warning the first time, the total as ``bcn/skipped_updates`` in EventStorage.
    """

    def __init__(self, check_period: int = 20):
        self.check_period = check_period
        self.reporter = bcn.SkippedUpdateReporter()
        self.follow = None

    def before_train(self):
        self.follow = bcn.EstimateRateFollower(self.trainer.model, self.trainer.optimizer)

    def after_step(self):
        if (self.trainer.iter + 1) % self.check_period == 0:
            message, total = self.reporter.check(self.trainer.model)
            if message:
                logging.getLogger("bcn_det").warning(message)
            if total is not None:
                self.trainer.storage.put_scalar("bcn/skipped_updates", total, smoothing_hint=False)

    def before_step(self):
        self.follow()


class BaseLRHook(HookBase):
    """Logs ``base_lr`` every iteration (metrics.json, TensorBoard): the lr of the weights, i.e.
    SOLVER.BASE_LR times the schedule. detectron2's own ``lr`` is the largest group's -- with
    the paper configs' bias lr factor of 2, twice BASE_LR."""

    def before_train(self):
        model = getattr(self.trainer.model, "module", self.trainer.model)
        self.group = bcn.base_lr_group(model, self.trainer.optimizer)

    def after_step(self):
        lr = self.trainer.optimizer.param_groups[self.group]["lr"]
        self.trainer.storage.put_scalar("base_lr", lr, smoothing_hint=False)


class StatDiffHook(HookBase):
    """Every ``period`` iterations, record StatDiff (Eq. 8) and the dead-channel fraction of
    every normalization layer during that iteration, into detectron2's EventStorage (so
    metrics.json and tensorboard): ``statdiff/<layer>``, ``dead/<layer>`` and ``*/mean``.
    tools/train_net.py adds it when DIAGNOSTICS.STATDIFF_PERIOD > 0; plot with
    tools/plot_statdiff.py."""

    def __init__(self, period: int = 20, momentum: float = 0.1, dead_threshold: float = 0.01):
        self.period, self.momentum, self.dead_threshold = period, momentum, dead_threshold
        self.tracker = None
        self._pending = None

    def before_train(self):
        from detectron2.layers import FrozenBatchNorm2d

        self.tracker = bcn.ChannelStatsTracker(self.trainer.model, self.momentum, self.dead_threshold,
                                               extra_types=(FrozenBatchNorm2d,))
        if self._pending is not None:  # resumed: the averages continue where they were saved
            self.tracker.load_state_dict(self._pending)
            self._pending = None

    # in detectron2's checkpoints with the trainer's state (TrainerBase.state_dict saves the
    # hooks that have one; a resume loads them before training starts)
    def state_dict(self):
        return self.tracker.state_dict() if self.tracker is not None else {"stats": {}, "counts": {}}

    def load_state_dict(self, state):
        self._pending = state

    def before_step(self):
        self.tracker.active = (self.trainer.iter + 1) % self.period == 0

    def after_step(self):
        if self.tracker.active:
            self.trainer.storage.put_scalars(**self.tracker.summary(), smoothing_hint=False)
            self.tracker.active = False

    def after_train(self):
        self.tracker.remove()


class ExactResumeHook(HookBase):
    """Makes a resumed run continue exactly as an uninterrupted one would: checkpoints carry
    the RNG states (python, numpy, torch), and on resume the data loader is advanced past the
    batches already trained on (detectron2 restarts it from the beginning) before those states
    are restored. Bit-exact on CPU with a fixed SEED and a fixed thread count."""

    def __init__(self):
        self._pending = None

    def state_dict(self):
        from bcn.utils.reproducibility import capture_rng_state

        return {"rng": capture_rng_state()}

    def load_state_dict(self, state_dict):
        self._pending = state_dict.get("rng")

    def before_step(self):
        if self._pending is None:
            return
        from bcn.utils.reproducibility import restore_rng_state

        from .compat import data_loader_iterator

        iterator = data_loader_iterator(self.trainer)
        for _ in range(self.trainer.start_iter):
            next(iterator)
        restore_rng_state(self._pending)
        self._pending = None
