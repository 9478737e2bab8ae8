"""Published BCN+WS checkpoints in detectron2: canonical names -> detectron2's, and a
DetectionCheckpointer that reads the original files given as MODEL.WEIGHTS."""
import re
from collections import OrderedDict

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling.backbone.resnet import ResNet

from bcn.pretrained import CheckpointError, canonicalize, check_readable, match_state_dict

from .compat import forget_failed_load

_RENAMES = [  # canonical (torchvision) -> detectron2 ResNet
    (r"^conv1\.", "stem.conv1."),
    (r"^bn1\.", "stem.conv1.norm."),
    (r"^layer(\d)\.(\d+)\.downsample\.0\.", lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut."),
    (r"^layer(\d)\.(\d+)\.downsample\.1\.", lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut.norm."),
    (r"^layer(\d)\.(\d+)\.conv(\d)\.", lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}."),
    (r"^layer(\d)\.(\d+)\.bn(\d)\.", lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm."),
]


def canonical_to_detectron2(state):
    out = OrderedDict()
    for key, value in state.items():
        for pattern, repl in _RENAMES:
            new, n = re.subn(pattern, repl, key)
            if n:
                out[new] = value
                break
        else:
            raise CheckpointError(f"no detectron2 name for checkpoint key {key!r}")
    return out


def find_resnet(model: torch.nn.Module):
    for name, module in model.named_modules():
        if isinstance(module, ResNet):
            return (name + ".") if name else "", module
    raise CheckpointError("the model has no detectron2 ResNet to load a BCN+WS backbone into")


class BCNCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that also reads the published BCN+WS files (any variant) as
    MODEL.WEIGHTS: they fill the model's ResNet exactly -- a missing, extra or mis-shaped
    backbone tensor is an error naming it -- and everything else (FPN, heads) starts from its
    initialization. An estimate-mode model's estimates start from the BatchNorm statistics."""

    def load(self, path, *args, **kwargs):
        try:
            return super().load(path, *args, **kwargs)
        finally:
            forget_failed_load(self)

    def _load_file(self, filename):
        if filename.endswith((".pth", ".tar")):
            check_readable(filename)
            try:
                obj = torch.load(filename, map_location="cpu", weights_only=True)
            except Exception:
                return super()._load_file(filename)  # detectron2's own loading reports it
            notes = []
            try:
                state = canonicalize(obj, notes)
            except CheckpointError:  # a native checkpoint: what detectron2 does, without re-reading
                return obj if isinstance(obj, dict) and "model" in obj else {"model": obj}
            prefix, resnet = find_resnet(self.model)
            mapped = canonical_to_detectron2(state)
            match_state_dict(mapped, resnet.state_dict(), what=f"{filename} (BCN+WS ImageNet)")
            self.logger.info(f"Read a published BCN+WS backbone from {filename}"
                             + "".join(f"; {note}" for note in notes))
            model = {prefix + k: v for k, v in mapped.items()}
            return {"model": model, "__author__": "bcn_published", "matching_heuristics": False}
        return super()._load_file(filename)
