"""Whether a checkpoint's weights fit a model, said before the numbers are wrong.

detectron2 and mmengine load what fits and skip the rest with warnings: a checkpoint of another
model (GN+WS weights in a BCN+WS model, a detectron2 file in an MMSegmentation model) then
evaluates to a number instead of failing. Both adapters call ``require_fit`` after reading a
file, with what the load is for:

    "complete"  evaluation and resume: every model tensor comes from the checkpoint, each with
                its shape (unexpected extra tensors are tolerated: a classifier, say);
    "init"      initialization for training (ImageNet backbones, fine-tuning): missing tensors
                are expected (the new parts start from their initialization), but every tensor
                both sides name must have the model's shape, and something must match;
    "partial"   the user asked for a partial load (the launchers' --partial-weights): anything.
"""
import pickletools
import zipfile
from dataclasses import dataclass, field
from typing import List, Mapping

from ..pretrained import CheckpointError

PURPOSES = ("complete", "init", "partial")


class CheckpointMismatchError(CheckpointError):
    """A checkpoint that does not fit the model it is loaded into."""


@dataclass
class Fit:
    matched: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    mismatched: List[str] = field(default_factory=list)     # "name: checkpoint (a, b) vs model (c, d)"
    unexpected: List[str] = field(default_factory=list)
    total: int = 0


def compare(source: Mapping, target: Mapping) -> Fit:
    """How the tensors of ``source`` (the checkpoint's model weights) fill ``target`` (the
    model's state dict). BatchNorm's num_batches_tracked is never required: frozen layers and
    older files have none."""
    fit = Fit(total=len(target))
    for name, want in target.items():
        have = source.get(name)
        if have is None:
            if not name.endswith("num_batches_tracked"):
                fit.missing.append(name)
        elif tuple(getattr(have, "shape", ())) != tuple(want.shape):
            fit.mismatched.append(f"{name}: checkpoint {tuple(have.shape)} vs model {tuple(want.shape)}")
        else:
            fit.matched.append(name)
    fit.unexpected = [name for name in source if name not in target]
    return fit


def require_fit(fit: Fit, purpose: str, path: str, kind: str, how_to_force: str) -> None:
    """Raise CheckpointMismatchError (one line) unless ``fit`` is good enough for ``purpose``.
    ``kind``: the format recognised; ``how_to_force``: the explicit way to load it anyway."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose {purpose!r}: choose one of {PURPOSES}")
    if purpose == "partial":
        return
    bad = bool(fit.mismatched) or not fit.matched or (purpose == "complete" and fit.missing)
    if not bad:
        return
    parts = [f"{len(fit.matched)} of {fit.total} model tensors match"]
    for count, title, names in ((len(fit.missing), "missing", fit.missing),
                                (len(fit.mismatched), "mis-shaped", fit.mismatched),
                                (len(fit.unexpected), "unexpected", fit.unexpected)):
        if count:
            parts.append(f"{count} {title} (e.g. {'; '.join(names[:3])})")
    raise CheckpointMismatchError(
        f"{path}: this {kind} does not fit the model ({', '.join(parts)}); it is probably the "
        f"checkpoint of another config. To load what fits anyway, on purpose: {how_to_force}")


def model_weights(obj):
    """(the format recognised, the model's weights) of a loaded checkpoint: detectron2's
    ({"model": ...}), mmengine's ({"state_dict": ...}, without a DDP "module." prefix), or a
    plain state dict. (bcn.pretrained reads the published
    BCN+WS layout.)"""
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        return "detectron2 checkpoint", obj["model"]
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        state = obj["state_dict"]   # mmengine's layout (its meta and message hub are optional)
        return "MMSegmentation / mmengine checkpoint", {
            (k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    return "plain state dict", obj


def pickled_globals(path: str) -> List[str]:
    """The classes and functions a torch zip checkpoint would import to unpickle, read from its
    pickle without running it (to say what a file is when weights_only refuses it)."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
            data = archive.read(name)
    except (zipfile.BadZipFile, OSError, StopIteration):
        return []
    found, strings = [], []
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                found.append(arg.replace(" ", "."))
            elif opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
                strings.append(arg)
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # a damaged pickle: what was found so far
        pass
    return found


def describe_unreadable(path: str) -> str:
    """What a checkpoint that weights_only refuses probably is, from the globals it pickles."""
    names = pickled_globals(path)
    if any(n.startswith("mmengine.") for n in names):
        return "an MMSegmentation / mmengine checkpoint (it pickles mmengine's logging state)"
    if any(n.startswith(("detectron2.", "fvcore.")) for n in names):
        return "a detectron2 checkpoint holding detectron2 objects"
    others = sorted({n for n in names if not n.startswith(("torch.", "collections."))})
    return ("a checkpoint holding arbitrary Python objects"
            + (f" ({', '.join(others[:3])})" if others else ""))
