"""mmengine hooks of bcn_seg."""
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

import bcn


@HOOKS.register_module(force=True)
class EstimateRateHook(Hook):
    """Before every training iteration, set the estimate rate of every estimate-mode BCN layer
    to the current learning rate (BCN_SPEC §1b), following warm-up and the poly decay.

    In a config: ``custom_hooks = [dict(type='EstimateRateHook')]``.
    """

    priority = "HIGH"

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        model = runner.model
        bcn.set_estimate_rate(model, bcn.bcn_learning_rate(model, runner.optim_wrapper))
