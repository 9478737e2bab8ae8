"""A reference model in the published layout itself (the authors' released checkpoints): torchvision's ResNet /
ResNeXt with BCN + WS, random weights and statistics, saved in each published variant."""
import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

import bcn

# "estbn": the authors' README layer (BCNorm with an EstBN batch part named bn), which saves its
# update rate as a buffer estbn_moving_speed in every layer.
VARIANTS = ("pbn", "bn", "estbn", "module", "wrapped")


def reference_model(resnext: bool, layer4_dilations=None) -> nn.Module:
    """layer4_dilations: None (stride 2, as on ImageNet) or the 3x3 dilation of each stage-4
    block, stride 1 (torchvision's dilated ResNet builds (1, 2, 2); the rates are then set)."""
    kwargs = dict(groups=32, width_per_group=4) if resnext else {}
    if layer4_dilations is not None:
        kwargs["replace_stride_with_dilation"] = [False, False, True]
    model = ResNet(Bottleneck, [3, 4, 6, 3], norm_layer=lambda c: bcn.BatchChannelNorm2d(c, 32), **kwargs)
    for block, rate in zip(model.layer4, layer4_dilations or ()):
        block.conv2.dilation = block.conv2.padding = (rate, rate)
    for m in model.modules():
        if type(m) is nn.Conv2d:  # WS on every conv (each is followed by BCN); fc stays plain
            m.__class__ = bcn.WSConv2d
            m.ws_eps, m.ws_form = 1e-5, "eps_in_sqrt"
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.dim() > 1 else 0.2) + (1.0 if name.endswith("weight") and p.dim() in (1, 3) else 0.0))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn_like(b) * 0.2)
            elif name.endswith("running_var"):
                b.copy_(torch.rand_like(b) + 0.5)
            elif name.endswith("num_batches_tracked"):
                b.fill_(1000)
    return model.eval()


def stage_outputs(model, x):
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    outs = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        x = layer(x)
        outs.append(x)
    return outs


def save_variant(model, variant: str, path) -> None:
    state = model.state_dict()
    if variant in ("bn", "estbn"):
        state = {k.replace(".pbn.", ".bn."): v for k, v in state.items()}
    if variant == "estbn":
        for key in [k for k in state if k.endswith(".bn.running_mean")]:
            state[key.replace("running_mean", "estbn_moving_speed")] = torch.zeros(1)
    if variant in ("module", "wrapped"):
        state = {"module." + k: v for k, v in state.items()}
    if variant == "wrapped":
        state = {"state_dict": state, "epoch": 90, "best_acc": torch.tensor(76.91),
                 "optimizer": {"state": {}, "param_groups": [{"lr": 0.0, "params": [0, 1]}]}}
    torch.save(state, path)
