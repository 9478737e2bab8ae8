"""Batch-Channel Normalization (the paper's Sec. 3: Eqs. 13-16, Algorithm 1) as modules.

Class design, and why: every framework in scope recognizes normalization layers by
``isinstance`` -- detectron2's WEIGHT_DECAY_NORM and mmengine's norm_decay_mult against
nn.GroupNorm / _BatchNorm, mmseg's init against 'GroupNorm' / '_BatchNorm', mmseg's
norm_eval and torch's SyncBatchNorm conversion against _BatchNorm. So BCN's two steps are
made of exactly those types: ``BatchChannelNorm2d`` is an nn.GroupNorm (its step 2, with a
per-group affine) that owns its step 1 as ``pbn``, an nn.BatchNorm2d. Each framework then
treats both parts as it treats GN and BN, with no BCN-specific code in any adapter, and the
state-dict names are the published ones (``weight``, ``bias``, ``pbn.*``).
"""
import warnings

import torch
from torch import nn
from torch.nn import functional as F

from . import functional as BF
from . import kernels
from .kernels import Params, RunningState, Step1

MODES = ("batch", "estimate")
AFFINES = ("group", "channel")


class EstimateRateNotSetWarning(UserWarning):
    pass


def _warn_rate_not_set(layer) -> None:
    warnings.warn(
        "BCN in estimate mode is training but its estimate rate was never set, so it falls back "
        f"to momentum={layer.momentum}. The paper sets the rate to the learning rate every "
        "iteration: call bcn.set_estimate_rate(model, lr) before each step, or use the framework "
        "hook (bcn_det.EstimateRateHook, bcn_seg.EstimateRateHook).",
        EstimateRateNotSetWarning, stacklevel=4)


class EstimateBatchNorm2d(nn.BatchNorm2d):
    """BCN step 1 for micro-batch training (Algorithm 1).

    ``running_mean`` / ``running_var`` are the estimates mu_hat / var_hat (initialized to 0
    and 1, BatchNorm's own initial values), so a large-batch checkpoint's running statistics
    are the starting estimates without any renaming. In training each forward updates them
    without gradient at rate ``rate`` (variance taken around the OLD mean estimate) and then
    normalizes with the UPDATED estimates; in eval they are used as they are.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, **kwargs):
        super().__init__(num_features, eps=eps, momentum=momentum, **kwargs)
        if not (self.affine and self.track_running_stats) or momentum is None:
            raise ValueError("EstimateBatchNorm2d needs affine=True, track_running_stats=True "
                             "and a numeric momentum (the fallback rate)")
        # Buffers, not Python floats: a changing float would be a new constant to torch.compile
        # every iteration. Non-persistent, so the published state dicts load unchanged.
        self.register_buffer("rate", torch.tensor(float(momentum)), persistent=False)
        self.rate_is_set = False

    def set_rate(self, rate: float) -> None:
        self.rate.fill_(float(rate))
        self.rate_is_set = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            if not self.rate_is_set:
                _warn_rate_not_set(self)
            with torch.no_grad():
                mean, var = BF.estimate_moments(x, self.running_mean)
                new_mean, new_var = BF.update_estimates(
                    self.running_mean, self.running_var, mean, var, self.rate
                )
                self.running_mean.copy_(new_mean)
                self.running_var.copy_(new_var)
                self.num_batches_tracked.add_(1)
        # Clones: the buffers change in place at the next forward, possibly before backward.
        return BF.batch_part(x, self.running_mean.clone(), self.running_var.clone(),
                                    self.weight, self.bias, self.eps)


class BatchChannelNorm2d(nn.GroupNorm):
    """BCN(x) = group-normalize(batch-part(x)) for x of shape (N, C, H, W).

    Args:
        num_channels: C.
        num_groups: G, must divide C (32 in every published model).
        mode: "batch" -- step 1 is BatchNorm with batch statistics (Eq. 16); or "estimate" --
            step 1 uses running estimates updated at a rate set every iteration (Algorithm 1),
            for micro-batches down to one image.
        affine: "group" -- one (gamma, beta) per group, shape (1, G, 1), the published layout;
            or "channel" -- one per channel, shape (C,).
        sync_batch: in batch mode, synchronize step 1's statistics across processes
            (nn.SyncBatchNorm), as the published segmentation models were trained.
        impl: "auto" (default) -- each device's kernels where they apply: both steps in
            two passes over the map, forward and backward, GroupNorm's memory traffic (the C++
            kernels on the CPU, Triton on CUDA); "cpu", "triton" or "reference" (pbn's forward,
            then F.group_norm) to force one. Same numerics (tests); bcn.kernels.dispatch has
            the table of what runs where.
    """

    _abbr_ = "bn"  # mmcv layer names (bn1, bn2, ...) then equal torchvision's and the checkpoints'

    def __init__(self, num_channels: int, num_groups: int = 32, eps: float = 1e-5,
                 momentum: float = 0.1, mode: str = "batch", affine: str = "group",
                 sync_batch: bool = False, impl: str = "auto"):
        check_bcn_args(num_channels, num_groups, mode, affine)
        self.impl = kernels.requested(impl)
        if sync_batch and mode != "batch":
            raise ValueError("BCN: sync_batch=True needs mode='batch'; estimate mode keeps its "
                             "estimates per process, as in the paper")
        super().__init__(num_groups, num_channels, eps=eps, affine=True)
        if affine == "group":
            self.weight = nn.Parameter(torch.ones(1, num_groups, 1))
            self.bias = nn.Parameter(torch.zeros(1, num_groups, 1))
        batch_part = {"batch": nn.SyncBatchNorm if sync_batch else nn.BatchNorm2d,
                      "estimate": EstimateBatchNorm2d}[mode]
        self.pbn = batch_part(num_channels, eps=eps, momentum=momentum)
        # Batches whose statistics were not finite, and so did not update pbn's running state.
        self.register_buffer("skipped_updates", torch.zeros((), dtype=torch.long), persistent=False)

    @property
    def mode(self) -> str:
        return "estimate" if isinstance(self.pbn, EstimateBatchNorm2d) else "batch"

    def extra_repr(self) -> str:
        affine = "group" if self.weight.numel() == self.num_groups else "channel"
        return f"{self.num_channels}, num_groups={self.num_groups}, eps={self.eps}, affine={affine}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # pbn read once and passed on, tensors read from the modules' dicts: nn.Module's attribute
        # lookup costs ~0.5 us each, which a small map's call notices next to its kernels.
        pbn = self.pbn
        if x.dim() != 4 or x.shape[1] != self.num_channels:
            raise ValueError(f"BCN expects (N, {self.num_channels}, H, W) input, got {tuple(x.shape)}")
        if x.numel() == self.num_channels and pbn.training and self.mode == "batch":
            raise ValueError(
                "BCN in batch mode cannot train on one value per channel (batch of 1 with a 1x1 "
                "map): batch statistics need more than one value. Use mode='estimate' for "
                "micro-batch training (bcn.convert_to_estimate_mode(model) or the config's BCN "
                "mode).")
        if x.shape[0] == 0 and not (isinstance(pbn, nn.SyncBatchNorm) and pbn.training):
            # (a synchronized batch part must still join its collective: SyncBatchNorm does)
            return self._no_values(x)
        params = Params(pbn._parameters["weight"], pbn._parameters["bias"],
                        self._parameters["weight"], self._parameters["bias"])
        buffers = pbn._buffers
        state = RunningState(buffers["running_mean"], buffers["running_var"],
                             buffers["num_batches_tracked"], self._buffers["skipped_updates"])
        return kernels.batch_channel_norm(x, self.num_groups, params, state, self._step1(pbn),
                                          self.eps, self.impl, self._reference)

    def _step1(self, pbn: nn.Module) -> Step1:
        """What step 1 does: "fixed" statistics in eval (or when a framework's norm_eval put
        only the batch part in eval), else the layer's mode."""
        if not pbn.training:
            return Step1("fixed", False, pbn.eps)
        if type(pbn) is EstimateBatchNorm2d:
            if not pbn.rate_is_set:
                _warn_rate_not_set(pbn)
            return Step1("estimate", True, pbn.eps, rate=pbn._buffers["rate"])
        synchronized = isinstance(pbn, nn.SyncBatchNorm)
        return Step1("batch", True, pbn.eps, momentum=pbn.momentum, synchronized=synchronized,
                     process_group=pbn.process_group if synchronized else None)

    def _no_values(self, x: torch.Tensor) -> torch.Tensor:
        """An empty batch (a detection head given no boxes: N = 0) has no statistics: the running
        state stays as it was, no batch is counted, and the output is empty. The parameters stay
        in the graph with zero gradients, as GroupNorm's do, so DDP sees them used."""
        pbn = self.pbn
        y = F.batch_norm(x, pbn.running_mean, pbn.running_var, pbn.weight, pbn.bias, False, 0.0, pbn.eps)
        return BF.channel_part(y, self.num_groups, self.weight, self.bias, self.eps)

    def _reference(self, x: torch.Tensor) -> torch.Tensor:
        """The composition: pbn's own forward, then F.group_norm and the affine."""
        return BF.channel_part(self._batch_part(x), self.num_groups, self.weight, self.bias, self.eps)

    def _batch_part(self, x: torch.Tensor) -> torch.Tensor:
        """Step 1, with its running state protected: a batch with NaN/inf statistics leaves
        running_mean, running_var and the batch count as they were (torch.where, so no host
        synchronization) and is counted in ``skipped_updates``; its output is still non-finite.

        pbn updates copies of its buffers, which are then committed: autograd may keep the
        tensors pbn used (BatchNorm saves them for backward), so the buffers themselves must
        not be written in place while that graph is alive.
        """
        if not self.pbn.training:  # eval, or a framework's norm_eval put only the BN part in eval
            return self.pbn(x)
        buffers = self.pbn._buffers
        kept = {name: buffers[name] for name in _RUNNING_STATE}
        for name, tensor in kept.items():
            buffers[name] = tensor.clone()
        try:
            y = self.pbn(x)
            with torch.no_grad():
                finite = (torch.isfinite(buffers["running_mean"]).all()
                          & torch.isfinite(buffers["running_var"]).all())
                for name, tensor in kept.items():
                    tensor.copy_(torch.where(finite, buffers[name], tensor))
                self.skipped_updates.add_((~finite).long())
        finally:
            buffers.update(kept)
        return y


_RUNNING_STATE = ("running_mean", "running_var", "num_batches_tracked")


class FrozenBatchPart2d(nn.Module):
    """BCN step 1 frozen: a fixed per-channel affine map from stored statistics (no state
    changes, no trainable parameters). Same buffer names as nn.BatchNorm2d, so BatchNorm /
    EstimateBatchNorm2d state dicts load into it."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)  # a frozen layer counts nothing
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return BF.batch_part(x, self.running_mean, self.running_var,
                                    self.weight, self.bias, self.eps)


class FrozenBatchChannelNorm2d(nn.Module):
    """BCN for frozen backbone stages: step 1 from stored statistics, then the group
    normalization with a frozen affine. Nothing trains, nothing updates; the state-dict names
    are BatchChannelNorm2d's, so checkpoints load into frozen and trainable stages alike."""

    _abbr_ = "bn"

    def __init__(self, num_channels: int, num_groups: int = 32, eps: float = 1e-5,
                 affine: str = "group", impl: str = "auto"):
        super().__init__()
        check_bcn_args(num_channels, num_groups, "batch", affine)
        self.num_channels, self.num_groups, self.eps = num_channels, num_groups, eps
        self.impl = kernels.requested(impl)
        shape = (1, num_groups, 1) if affine == "group" else (num_channels,)
        self.register_buffer("weight", torch.ones(shape))
        self.register_buffer("bias", torch.zeros(shape))
        self.pbn = FrozenBatchPart2d(num_channels, eps)
        # the kernels' batch-counter arguments; step 1 is fixed, so nothing ever writes it
        self.register_buffer("unused_counter", torch.zeros((), dtype=torch.long), persistent=False)

    @classmethod
    def from_bcn(cls, bcn: BatchChannelNorm2d) -> "FrozenBatchChannelNorm2d":
        affine = "group" if bcn.weight.numel() == bcn.num_groups else "channel"
        frozen = cls(bcn.num_channels, bcn.num_groups, bcn.eps, affine, bcn.impl)
        frozen.load_state_dict(bcn.state_dict())
        return frozen.to(bcn.weight.device)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, num_groups={self.num_groups}, eps={self.eps}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pbn = self.pbn
        params = Params(pbn.weight, pbn.bias, self.weight, self.bias)
        counter = self._buffers["unused_counter"]
        state = RunningState(pbn.running_mean, pbn.running_var, counter, counter)
        return kernels.batch_channel_norm(x, self.num_groups, params, state,
                                          Step1("fixed", False, pbn.eps), self.eps, self.impl,
                                          self._reference)

    def _reference(self, x: torch.Tensor) -> torch.Tensor:
        return BF.channel_part(self.pbn(x), self.num_groups, self.weight, self.bias, self.eps)


def check_bcn_args(num_channels: int, num_groups: int, mode: str, affine: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown BCN mode {mode!r}; choose one of {MODES} ('batch' for large "
                         "batches, 'estimate' for micro-batches)")
    if affine not in AFFINES:
        raise ValueError(f"unknown BCN affine {affine!r}; choose one of {AFFINES}")
    if num_groups <= 0 or num_channels % num_groups != 0:
        raise ValueError(
            f"BCN: num_groups={num_groups} does not divide num_channels={num_channels}; choose "
            f"a group count that divides every normalized layer's channels (32 for ResNets)")
