"""Weight-Standardized convolution (the paper's Eq. 9, Sec. 2.3)."""
import torch
from torch import nn

from . import cpu_kernels, cpu_norm, functional
from .functional import WS_FORMS


def standardize_weight(weight: torch.Tensor, eps: float = 1e-5, form: str = "eps_in_sqrt") -> torch.Tensor:
    """Eq. 9 on the CPU kernel where it applies (the published form, float32/float64, more than
    one weight per output channel), else bcn.functional.standardize_weight: same numerics
    (tests). Every WS convolution, in both adapters and in folding, standardizes through here."""
    if form == "eps_in_sqrt" and weight.numel() > weight.shape[0] and cpu_kernels.serves(weight):
        if torch.compiler.is_compiling():  # the same kernel as an operator a graph can keep
            from . import ops

            return ops.standardize_weight(weight, eps)
        return cpu_norm.standardize_weight(weight, eps)
    return functional.standardize_weight(weight, eps, form)


class WSConv2d(nn.Conv2d):
    """nn.Conv2d that convolves with the standardized weight; the parameter stays the raw W.

    ws_form="eps_in_sqrt" (default) matches the published ImageNet models; "eps_on_std" the
    authors' segmentation script. Grouped convolutions standardize each output channel over
    its own in_channels/groups slice.
    """

    def __init__(self, *args, ws_eps: float = 1e-5, ws_form: str = "eps_in_sqrt", **kwargs):
        if ws_form not in WS_FORMS:
            raise ValueError(f"unknown weight-standardization form {ws_form!r}; choose one of {WS_FORMS}")
        super().__init__(*args, **kwargs)
        self.ws_eps, self.ws_form = ws_eps, ws_form

    def _conv_forward(self, x, weight, bias):
        return super()._conv_forward(x, standardize_weight(weight, self.ws_eps, self.ws_form), bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", ws_eps={self.ws_eps}, ws_form={self.ws_form}"
