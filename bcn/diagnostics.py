"""The elimination-singularity diagnostic StatDiff (the paper's Eq. 8, Sec. 2.2)."""
import torch
from torch import Tensor


def statdiff(channel_mean: Tensor, channel_std: Tensor, num_groups: int) -> Tensor:
    """StatDiff of each group: sqrt(mean_c(mu_c^2) - mean_c(mu_c)^2) / mean_c(sigma_c).

    channel_mean, channel_std: (C,) running mean and standard deviation of each channel of a
    convolution's output (before normalization). Returns a (G,) tensor; 0 means every channel
    of the group has the same statistics.
    """
    channels = channel_mean.numel()
    if channel_std.numel() != channels:
        raise ValueError(f"statdiff: {channels} means but {channel_std.numel()} standard deviations")
    if num_groups <= 0 or channels % num_groups != 0:
        raise ValueError(f"statdiff: num_groups={num_groups} does not divide {channels} channels")
    mu = channel_mean.reshape(num_groups, -1).double()
    sigma = channel_std.reshape(num_groups, -1).double()
    spread = (mu.pow(2).mean(1) - mu.mean(1).pow(2)).clamp_min(0).sqrt()
    return (spread / sigma.mean(1)).to(channel_mean.dtype)


def _normalization_types():
    from .norm import FrozenBatchChannelNorm2d

    return (torch.nn.GroupNorm, torch.nn.modules.batchnorm._BatchNorm, FrozenBatchChannelNorm2d)


class ChannelStatsTracker:
    """Per-layer diagnostics of normalization layers: StatDiff and dead channels.

    Forward hooks on every normalization layer (BCN, GN, BN and ``extra_types``; BCN's inner
    batch part is part of its BCN, not a layer of its own) record, while ``active``, running
    averages (rate ``momentum``; None: the plain average of every recorded forward) of each
    channel's mean and mean square of the layer's INPUT --
    the convolution output, as Eq. 8 wants -- and of how often its OUTPUT is positive, i.e.
    survives the ReLU that follows. Inactive, a hook returns at once, so a framework hook turns
    it on every N iterations only.

    report() gives, per layer, StatDiff averaged over the layer's groups (its own num_groups;
    ``default_groups`` for layers without groups, e.g. BN) and the fraction of channels positive
    less than ``dead_threshold`` of the time.
    """

    def __init__(self, model: torch.nn.Module, momentum=0.1, dead_threshold: float = 0.01,
                 default_groups: int = 32, extra_types: tuple = ()):
        types = _normalization_types() + tuple(extra_types)
        inner = {id(m.pbn) for m in model.modules() if hasattr(m, "pbn")}
        self.layers = {_clean(name): m for name, m in model.named_modules()
                       if isinstance(m, types) and id(m) not in inner}
        self.momentum, self.dead_threshold, self.default_groups = momentum, dead_threshold, default_groups
        self.active = False
        self._stats, self._counts = {}, {}
        self._handles = [m.register_forward_hook(self._make_hook(name)) for name, m in self.layers.items()]

    def _make_hook(self, name):
        def hook(module, inputs, output):
            if self.active and torch.is_tensor(output) and output.dim() == 4:
                self._record(name, inputs[0], output)
        return hook

    @torch.no_grad()
    def _record(self, name, x, y):
        x = x.detach().float()
        dims = (0, 2, 3)
        now = torch.stack([x.mean(dims), (x * x).mean(dims), (y.detach() > 0).float().mean(dims)])
        old = self._stats.get(name)
        self._counts[name] = self._counts.get(name, 0) + 1
        rate = self.momentum if self.momentum is not None else 1.0 / self._counts[name]
        self._stats[name] = now if old is None else old + rate * (now - old)

    def _groups(self, name, channels):
        groups = getattr(self.layers[name], "num_groups", None) or self.default_groups
        return groups if channels % groups == 0 else 1

    def report(self):
        """{layer: {"statdiff": float, "dead": float}} for every layer seen while active."""
        out = {}
        for name, (mean, square, positive) in self._stats.items():
            std = (square - mean * mean).clamp_min(0).sqrt()
            value = statdiff(mean, std, self._groups(name, mean.numel()))
            out[name] = {"statdiff": float(value.nan_to_num(0.0).mean()),
                         "dead": float((positive < self.dead_threshold).float().mean())}
        return out

    def summary(self):
        """Flat scalars: statdiff/<layer>, dead/<layer>, and their model averages."""
        report = self.report()
        scalars = {}
        for key in ("statdiff", "dead"):
            values = {name: r[key] for name, r in report.items()}
            scalars.update({f"{key}/{name}": v for name, v in values.items()})
            if values:
                scalars[f"{key}/mean"] = sum(values.values()) / len(values)
        return scalars

    def state_dict(self):
        """The running averages and their counts: saved in checkpoints by the framework hooks,
        so that a resumed run's StatDiff series equals an uninterrupted one's."""
        return {"stats": {name: t.clone() for name, t in self._stats.items()},
                "counts": dict(self._counts)}

    def load_state_dict(self, state) -> None:
        self._stats = {name: t.clone() for name, t in state["stats"].items() if name in self.layers}
        self._counts = {name: int(n) for name, n in state["counts"].items() if name in self.layers}

    def remove(self):
        for handle in self._handles:
            handle.remove()


def _clean(name: str) -> str:
    return name[len("module."):] if name.startswith("module.") else name
