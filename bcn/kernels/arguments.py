"""What a BCN call hands to the kernels, by name: one name per thing in every implementation
(C++, the operators, Triton, Python), and one order -- the fields' order below.

    x, groups, Params, RunningState, Step1, eps

Params and RunningState are the layer's tensors, not copies. Step 1 (the paper's Sec. 3.1,
Eq. 16 and Algorithm 1) takes its statistics in one of three ways, ``Step1.kind``:

    "batch"     the batch's statistics, differentiated through (Eq. 16); the running averages
                move at BatchNorm's momentum
    "estimate"  the running estimates, moved towards the batch at ``rate`` first (Algorithm 1);
                constants to autograd
    "fixed"     the running state as it is (eval, a batch part a framework put in eval, a frozen
                layer); constants to autograd
"""
from typing import Any, NamedTuple, Optional

from torch import Tensor

STEP1_KINDS = ("batch", "estimate", "fixed")
STEP1_CODES = {kind: code for code, kind in enumerate(STEP1_KINDS)}  # the kernels' integer codes


class Params(NamedTuple):
    """The affine parameters: step 1's per channel (C,), step 2's per group (1, G, 1) -- the
    published layout -- or per channel (C,)."""
    bn_weight: Tensor
    bn_bias: Tensor
    gn_weight: Tensor
    gn_bias: Tensor


class RunningState(NamedTuple):
    """Step 1's running state, updated in place by a call with ``Step1.update``: the statistics
    and the two int64 one-element counters."""
    running_mean: Tensor
    running_var: Tensor
    num_batches_tracked: Tensor
    skipped_updates: Tensor


class Step1(NamedTuple):
    """What step 1 does in this call."""
    kind: str                      # one of STEP1_KINDS
    update: bool                   # move the running state ("batch", "estimate" in training)
    eps: float                     # step 1's epsilon
    momentum: Optional[float] = None   # "batch": BatchNorm's momentum (None: cumulative average)
    rate: Optional[Tensor] = None      # "estimate": the estimate rate, a one-element tensor
    synchronized: bool = False     # "batch": statistics taken over every process's batch
    process_group: Any = None      # ... of this torch.distributed group (None: all processes)

    @property
    def code(self) -> int:
        return STEP1_CODES[self.kind]
