"""Whole-model conversions of BCN layers: batch -> estimate mode, freezing, BatchNorm -> BCN."""
from torch import nn

from .norm import BatchChannelNorm2d, EstimateBatchNorm2d, FrozenBatchChannelNorm2d


def convert_to_estimate_mode(model: nn.Module) -> nn.Module:
    """Switch every batch-mode BCN to estimate mode, in place. The estimates start from the
    BatchNorm running statistics (Algorithm 1's estimates, fine-tuning from a large-batch checkpoint),
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
