"""Whole-model operations on BCN layers: the estimate rate, mode conversion, freezing."""
from torch import nn

from .norm import BatchChannelNorm2d, EstimateBatchNorm2d, FrozenBatchChannelNorm2d


def estimate_layers(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, EstimateBatchNorm2d)]


def set_estimate_rate(model: nn.Module, rate: float) -> int:
    """Set the update rate r of every estimate-mode BCN layer (the paper: r = current lr).
    Returns how many layers were set."""
    layers = estimate_layers(model)
    for layer in layers:
        layer.set_rate(rate)
    return len(layers)


def convert_to_estimate_mode(model: nn.Module) -> nn.Module:
    """Switch every batch-mode BCN to estimate mode, in place. The estimates start from the
    BatchNorm running statistics (BCN_SPEC §1b, fine-tuning from a large-batch checkpoint),
    so eval outputs are unchanged."""
    for bcn in [m for m in model.modules() if isinstance(m, BatchChannelNorm2d)]:
        if bcn.mode == "estimate":
            continue
        old = bcn.pbn
        new = EstimateBatchNorm2d(bcn.num_channels, eps=old.eps, momentum=old.momentum or 0.1)
        new.load_state_dict(old.state_dict())
        bcn.pbn = new.to(old.weight.device).train(old.training)
    return model


def replace_modules(module: nn.Module, replacement) -> nn.Module:
    """Replace, in place, every submodule for which ``replacement(m)`` returns a module (None:
    keep it and look inside). Returns the replacement of ``module`` itself if it has one."""
    new = replacement(module)
    if new is not None:
        return new
    for name, child in module.named_children():
        new = replace_modules(child, replacement)
        if new is not child:
            setattr(module, name, new)
    return module


def freeze_batch_channel_norm(module: nn.Module) -> nn.Module:
    """Replace every BatchChannelNorm2d in ``module`` by its frozen variant (in place for
    children; returns the new module if ``module`` itself is one)."""
    return replace_modules(module, lambda m: FrozenBatchChannelNorm2d.from_bcn(m)
                           if isinstance(m, BatchChannelNorm2d) else None)


def replace_batchnorm(module: nn.Module, make_norm) -> nn.Module:
    """Replace every plain nn.BatchNorm2d in ``module`` by ``make_norm(num_features)``, in place
    (returns the replacement if ``module`` itself is one). Lets a framework build a model's
    structure with its own builders and a BatchNorm placeholder, then take BCN."""
    return replace_modules(module, lambda m: make_norm(m.num_features).to(m.weight.device)
                           if type(m) is nn.BatchNorm2d else None)


def bcn_param_group(model: nn.Module, optimizer) -> int:
    """Index of the first optimizer parameter group holding a BCN parameter (groups may differ,
    e.g. with a bias lr factor); 0 if BCN trains nothing."""
    ids = {id(p) for m in model.modules() if isinstance(m, BatchChannelNorm2d)
           for p in m.parameters()}
    for index, group in enumerate(optimizer.param_groups):
        if any(id(p) in ids for p in group["params"]):
            return index
    return 0


def bcn_learning_rate(model: nn.Module, optimizer) -> float:
    """The current learning rate of BCN's trainable parameters: the paper's estimate rate."""
    return optimizer.param_groups[bcn_param_group(model, optimizer)]["lr"]


class EstimateRateFollower:
    """What the frameworks' EstimateRateHook call every iteration: set every estimate layer's
    rate to the current learning rate of BCN's parameter group. The layers and the group are
    looked up once, not at every iteration."""

    def __init__(self, model: nn.Module, optimizer):
        self.layers = estimate_layers(model)
        self.optimizer = optimizer
        self.group = bcn_param_group(model, optimizer)

    def __call__(self) -> None:
        rate = self.optimizer.param_groups[self.group]["lr"]
        for layer in self.layers:
            layer.set_rate(rate)


def skipped_updates(model: nn.Module) -> int:
    """Batches whose non-finite statistics BCN layers refused, summed over the model."""
    return int(sum(int(m.skipped_updates) for m in model.modules() if isinstance(m, BatchChannelNorm2d)))


class SkippedUpdateReporter:
    """Checks, when asked, whether BCN layers refused non-finite batches since the last check.
    Returns a warning the first time (frameworks log it once) and the new total each time."""

    def __init__(self):
        self.total, self.warned = 0, False

    def check(self, model: nn.Module):
        total = skipped_updates(model)
        if total == self.total:
            return None, None
        self.total = total
        if self.warned:
            return None, total
        self.warned = True
        return (f"BCN refused {total} layer update(s) with NaN/inf statistics: the running "
                "statistics/estimates were kept (skipped_updates counts them); the loss of those "
                "batches is non-finite too. Check the data and the learning rate."), total
