"""The estimate rate (Algorithm 1's r): set on a model, and made to follow the learning rate."""
from torch import nn

from .norm import BatchChannelNorm2d, EstimateBatchNorm2d


def estimate_layers(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, EstimateBatchNorm2d)]


def set_estimate_rate(model: nn.Module, rate: float) -> int:
    """Set the update rate r of every estimate-mode BCN layer (the paper: r = current lr).
    Returns how many layers were set."""
    layers = estimate_layers(model)
    for layer in layers:
        layer.set_rate(rate)
    return len(layers)


def bcn_param_group(model: nn.Module, optimizer) -> int:
    """Index of the optimizer parameter group of BCN's scale parameters (its weights: biases
    may train at another rate, e.g. a bias lr factor of 2); else of any BCN parameter; 0 if
    BCN trains nothing."""
    layers = [m for m in model.modules() if isinstance(m, BatchChannelNorm2d)]
    for ids in ({id(p) for m in layers for p in (m.weight, m.pbn.weight)},
                {id(p) for m in layers for p in m.parameters()}):
        for index, group in enumerate(optimizer.param_groups):
            if any(id(p) in ids for p in group["params"]):
                return index
    return 0


def base_lr_group(model: nn.Module, optimizer) -> int:
    """Index of the group of the model's first weight matrix or kernel (a conv's): its lr is the
    configured base lr times the schedule, whatever factors biases or norms get."""
    ids = {id(m.weight) for m in model.modules()
           if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and isinstance(m.weight, nn.Parameter)}
    for index, group in enumerate(optimizer.param_groups):
        if any(id(p) in ids for p in group["params"]):
            return index
    return 0


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
