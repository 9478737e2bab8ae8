"""Training hooks for detectron2."""
from detectron2.engine import HookBase

import bcn


class EstimateRateHook(HookBase):
    """Before every iteration, set the estimate rate of every estimate-mode BCN layer to the
    current learning rate (BCN_SPEC §1b), so it follows warm-up and steps.

    tools/train_net.py adds it. In a trainer of your own:
    ``trainer.register_hooks([bcn_det.EstimateRateHook()])``.
    """

    def before_step(self):
        model = self.trainer.model
        bcn.set_estimate_rate(model, bcn.bcn_learning_rate(model, self.trainer.optimizer))
