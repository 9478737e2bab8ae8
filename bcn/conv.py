"""Weight-Standardized convolution (the paper's Eq. 9, Sec. 2.3)."""
from torch import nn

from .functional import WS_FORMS
from .kernels import standardize_weight  # Eq. 9; every WS convolution standardizes through it

__all__ = ["WSConv2d", "standardize_weight"]


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
