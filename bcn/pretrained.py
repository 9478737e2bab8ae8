"""The published BCN+WS ImageNet checkpoints (released with the authors' code), read into one canonical form.

Canonical form: the torchvision-style names of the published files, the batch part called
``pbn``, no ``module.`` prefix, no classifier (fc.*). It is also exactly the state dict of
MMSegmentation's ResNet/ResNeXt built with BCN; bcn_det renames it to detectron2's names.
Files are read with ``weights_only=True``: tensors and plain containers only.
"""
import hashlib
import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional

import torch

# The files (rn50_bcn_ws.pth, rn101_bcn_ws.pth, rx50_bcn_ws.pth, rn101-bcn-ws.pth.tar) come with
# the authors' code, github.com/joe-siyuan-qiao/Batch-Channel-Normalization (the paper's link).
# No sha256 sums are published: pass yours to read_published(sha256=...) to pin.
_BATCH_PART = re.compile(r"^((?:layer\d+\.\d+\.)?(?:bn\d|downsample\.1))\.bn\.")
_ESTIMATE_RATE = "estbn_moving_speed"
_EXPECTED = ("a torchvision-style ResNet/ResNeXt state dict with BCN: conv1.weight, "
             "bn1.weight of shape (1, G, 1), bn1.pbn.{weight,bias,running_mean,running_var}, "
             "layer1..4 (optionally under 'state_dict', keys optionally prefixed 'module.', the "
             "batch part optionally named 'bn')")


class CheckpointError(ValueError):
    pass


def read_published(path: str, sha256: Optional[str] = None,
                   notes: Optional[List[str]] = None) -> "OrderedDict[str, torch.Tensor]":
    """Load a published BCN+WS checkpoint (any of its variants) in canonical form; what was
    left out is appended to ``notes`` (see canonicalize)."""
    if sha256 is not None:
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        if digest != sha256.lower():
            raise CheckpointError(f"{path}: sha256 {digest} does not match the expected {sha256}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupted, or holding arbitrary objects
        raise CheckpointError(f"{path}: cannot be read as a weights-only torch checkpoint "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
    try:
        return canonicalize(obj, notes)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


def check_readable(path: str) -> None:
    """Fail clearly on a truncated or corrupted checkpoint, before a framework trips over it."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({e}); it may be truncated "
                              "(an interrupted save?) or corrupted -- resume from an earlier one "
                              "(edit last_checkpoint) or re-download it") from None
    if bad is not None:
        raise CheckpointError(f"{path}: corrupted (bad CRC in {bad}); resume from an earlier "
                              "checkpoint (edit last_checkpoint) or re-download it")


def canonicalize(obj, notes: Optional[List[str]] = None) -> "OrderedDict[str, torch.Tensor]":
    """Any published variant -> canonical names (see module doc). Raises CheckpointError.

    Dropped, and said in ``notes`` when given: the ImageNet classifier, and the
    ``estbn_moving_speed`` buffer that the authors' README layer (``EstBN``) saves in every
    layer -- its update rate, not a weight: here the rate follows the learning rate."""
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"unknown layout: expected {_EXPECTED}")
    state, dropped = OrderedDict(), {"fc": 0, "rate": 0}
    for key, value in obj.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if key.startswith("fc."):
            dropped["fc"] += 1
        elif key.endswith("." + _ESTIMATE_RATE):
            dropped["rate"] += 1
        else:
            state[_BATCH_PART.sub(r"\1.pbn.", key)] = value
    stem = state.get("bn1.weight")
    if ("conv1.weight" not in state or stem is None or stem.dim() != 3 or stem.shape[0] != 1
            or "bn1.pbn.running_mean" not in state or not any(k.startswith("layer1.") for k in state)):
        sample = ", ".join(list(state)[:6])
        raise CheckpointError(f"unknown layout: expected {_EXPECTED}; got keys like {sample}")
    if notes is not None:
        if dropped["fc"]:
            notes.append(f"left out the ImageNet classifier (fc.*, {dropped['fc']} tensors)")
        if dropped["rate"]:
            notes.append(f"left out {dropped['rate']} '{_ESTIMATE_RATE}' buffers (the authors' EstBN "
                         "update rate, not a weight; BCN's estimate rate follows the learning rate)")
    return state


def resnet_spec(state: Mapping[str, torch.Tensor]) -> Dict[str, int]:
    """Architecture of a canonical state dict: depth, ResNeXt groups and width, BCN groups."""
    blocks = [len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5)]
    depth = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}.get(tuple(blocks))
    if depth is None:
        raise CheckpointError(f"blocks per stage {blocks} are not those of ResNet-50/101/152")
    width = state["layer1.0.conv2.weight"].shape[0]
    groups = width // state["layer1.0.conv2.weight"].shape[1]
    return {"depth": depth, "groups": groups, "width_per_group": width // groups,
            "bcn_groups": state["bn1.weight"].shape[1]}


def match_state_dict(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                     what: str = "checkpoint") -> None:
    """Raise CheckpointError unless ``source`` fills ``target`` exactly: every key present on
    both sides, every shape equal. num_batches_tracked may be absent from the target (frozen
    layers count nothing)."""
    source_keys = {k for k in source if not (k.endswith("num_batches_tracked") and k not in target)}
    missing = sorted(set(target) - source_keys)
    unexpected = sorted(source_keys - set(target))
    mismatched = [f"{k}: checkpoint {tuple(source[k].shape)} vs model {tuple(target[k].shape)}"
                  for k in sorted(source_keys & set(target)) if source[k].shape != target[k].shape]
    problems = []
    for title, items in (("missing from the checkpoint", missing),
                         ("unexpected in the checkpoint", unexpected),
                         ("shape mismatches", mismatched)):
        if items:
            shown = "\n    ".join(items[:20]) + (f"\n    ... and {len(items) - 20} more" if len(items) > 20 else "")
            problems.append(f"  {len(items)} {title}:\n    {shown}")
    if problems:
        raise CheckpointError(f"{what} does not match the model:\n" + "\n".join(problems))
