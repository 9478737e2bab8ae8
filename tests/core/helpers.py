"""Random BCN layers and inputs for the core tests."""
import torch

import bcn


def random_input(n, c, h, w):
    scale = torch.rand(1, c, 1, 1) * 3 + 0.2
    shift = torch.randn(1, c, 1, 1) * 2
    return torch.randn(n, c, h, w) * scale + shift


def random_bcn(c, g, mode, affine="group", impl="reference"):
    layer = bcn.BatchChannelNorm2d(c, g, mode=mode, affine=affine, impl=impl)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) * 0.5 + (1.0 if p.shape == layer.weight.shape else 0.0))
        layer.pbn.running_mean.copy_(torch.randn(c))
        layer.pbn.running_var.copy_(torch.rand(c) + 0.5)
    return layer
