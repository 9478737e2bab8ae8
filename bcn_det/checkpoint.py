"""Published BCN+WS checkpoints in detectron2: canonical names -> detectron2's, and a
DetectionCheckpointer that reads the original files given as MODEL.WEIGHTS."""
import re
from collections import OrderedDict

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling.backbone.resnet import ResNet

from bcn.utils.checkpoint_fit import Fit, describe_unreadable, model_weights, require_fit
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
    initialization. An estimate-mode model's estimates start from the BatchNorm statistics.

    Any other checkpoint must fit the model (bcn.utils.checkpoint_fit): completely for evaluation
    (``evaluation=True``) and resume, and without mis-shaped tensors as training's
    initialization -- where detectron2 would skip what does not fit with warnings and go on.
    ``partial=True`` (MODEL.WEIGHTS_PARTIAL, train.partial_weights) loads what fits, as
    detectron2 does."""

    def __init__(self, model, save_dir="", *, evaluation=False, partial=False, lazy=False,
                 **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self.evaluation, self.partial, self.lazy = evaluation, partial, lazy
        self._purpose = "complete" if evaluation else "init"

    def resume_or_load(self, path, *, resume=True):
        resuming = resume and self.has_checkpoint()
        self._purpose = "partial" if self.partial else (
            "complete" if resuming or self.evaluation else "init")
        return super().resume_or_load(path, resume=resume)

    def load(self, path, *args, **kwargs):
        try:
            return super().load(path, *args, **kwargs)
        finally:
            forget_failed_load(self)

    def _load_model(self, checkpoint):
        kind = checkpoint.pop("__bcn_kind__", "detectron2 checkpoint")
        incompatible = super()._load_model(checkpoint)
        if checkpoint.get("__author__") == "bcn_published":
            return incompatible  # matched exactly already (match_state_dict)
        model = self.model.state_dict()
        missing = [k for k in incompatible.missing_keys if not k.endswith("num_batches_tracked")]
        shapes = [f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in incompatible.incorrect_shapes]
        wrong = set(missing) | {k for k, _, _ in incompatible.incorrect_shapes}
        fit = Fit(matched=[k for k in model if k not in wrong], missing=missing, mismatched=shapes,
                  unexpected=list(incompatible.unexpected_keys), total=len(model))
        force = "train.partial_weights=True" if self.lazy else "MODEL.WEIGHTS_PARTIAL True"
        require_fit(fit, self._purpose, self._loading, kind, force)
        return incompatible

    def _load_file(self, filename):
        self._loading = filename
        if filename.endswith((".pth", ".tar")):
            check_readable(filename)
            try:
                obj = torch.load(filename, map_location="cpu", weights_only=True)
            except Exception as error:
                raise CheckpointError(
                    f"{filename}: cannot be loaded safely (weights only): it is "
                    f"{describe_unreadable(filename)}, not a detectron2 checkpoint or a published "
                    f"BCN+WS file ({type(error).__name__}). Use a checkpoint of this config's "
                    "runs, or convert the weights to a plain state dict") from None
            notes = []
            try:
                state = canonicalize(obj, notes)
            except CheckpointError:  # a native checkpoint: what detectron2 does, without re-reading
                kind, state = model_weights(obj)
                return dict(obj if kind.startswith("detectron2") else {}, model=state, __bcn_kind__=kind)
            prefix, resnet = find_resnet(self.model)
            mapped = canonical_to_detectron2(state)
            match_state_dict(mapped, resnet.state_dict(), what=f"{filename} (BCN+WS ImageNet)")
            self.logger.info(f"Read a published BCN+WS backbone from {filename}"
                             + "".join(f"; {note}" for note in notes))
            model = {prefix + k: v for k, v in mapped.items()}
            return {"model": model, "__author__": "bcn_published", "matching_heuristics": False}
        return super()._load_file(filename)

