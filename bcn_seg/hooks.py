"""mmengine hooks of bcn_seg."""
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

import bcn


@HOOKS.register_module(force=True)
class EstimateRateHook(Hook):
    """Before every training iteration, set the estimate rate of every estimate-mode BCN layer
    to the current learning rate (the paper's Algorithm 1, Sec. 3.2), following warm-up and the poly decay.

    In a config: ``custom_hooks = [dict(type='EstimateRateHook')]``.

    Every ``check_interval`` iterations it also reports batches whose non-finite statistics BCN
    refused: a warning the first time, the total as ``train/bcn_skipped_updates``.
    """

    priority = "HIGH"

    def __init__(self, check_interval: int = 20):
        self.check_interval = check_interval
        self.reporter = bcn.SkippedUpdateReporter()
        self.follow = None

    def before_train(self, runner):
        self.follow = bcn.EstimateRateFollower(runner.model, runner.optim_wrapper)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if (runner.iter + 1) % self.check_interval == 0:
            message, total = self.reporter.check(runner.model)
            if message:
                runner.logger.warning(message)
            if total is not None:
                runner.message_hub.update_scalar("train/bcn_skipped_updates", total)

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.follow()


@HOOKS.register_module(force=True)
class StatDiffHook(Hook):
    """Every ``interval`` iterations, record StatDiff (Eq. 8) and the dead-channel fraction of
    every normalization layer during that iteration, through mmengine's visualizer (its
    backends: vis_data/scalars.json, tensorboard): ``statdiff/<layer>``, ``dead/<layer>`` and
    ``*/mean``. In a config: ``custom_hooks = [dict(type='StatDiffHook', interval=20)]``."""

    priority = "LOW"

    def __init__(self, interval: int = 20, momentum: float = 0.1, dead_threshold: float = 0.01):
        self.interval, self.momentum, self.dead_threshold = interval, momentum, dead_threshold
        self.tracker = None
        self._pending = None

    def before_train(self, runner):
        self.tracker = bcn.ChannelStatsTracker(runner.model, self.momentum, self.dead_threshold)
        if self._pending is not None:  # resumed: the averages continue where they were saved
            self.tracker.load_state_dict(self._pending)
            self._pending = None

    def before_save_checkpoint(self, runner, checkpoint):
        if self.tracker is not None:
            checkpoint["bcn_statdiff"] = self.tracker.state_dict()

    def after_load_checkpoint(self, runner, checkpoint):
        self._pending = checkpoint.get("bcn_statdiff")

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.tracker.active = (runner.iter + 1) % self.interval == 0

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if self.tracker.active:
            runner.visualizer.add_scalars(self.tracker.summary(), step=runner.iter + 1)
            self.tracker.active = False

    def after_train(self, runner):
        self.tracker.remove()


@HOOKS.register_module(force=True)
class ExactResumeHook(Hook):
    """Makes a resumed run continue exactly as an uninterrupted one. On resume mmengine replays
    the data loader past the batches already trained on, which brings the data pipeline's
    generators (python, numpy) to their exact state; the model's (torch: dropout, sampling)
    are saved in checkpoints and restored at the first iteration after resume. (That
    iteration's batch is fetched before any hook runs, so restoring python/numpy there would
    rewind the pipeline by one batch.) Bit-exact on CPU with a fixed ``randomness.seed``.
    In a config: ``custom_hooks = [..., dict(type='ExactResumeHook')]``."""

    priority = "VERY_HIGH"

    def __init__(self):
        self._pending = None

    def before_save_checkpoint(self, runner, checkpoint):
        from bcn.utils.reproducibility import capture_rng_state

        checkpoint["bcn_rng_state"] = capture_rng_state()

    def after_load_checkpoint(self, runner, checkpoint):
        self._pending = checkpoint.get("bcn_rng_state")

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if self._pending is not None:
            from bcn.utils.reproducibility import restore_rng_state

            restore_rng_state(self._pending, generators=("torch", "cuda"))
            self._pending = None
