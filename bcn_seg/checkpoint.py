"""Published BCN+WS checkpoints in MMSegmentation.

The canonical names (bcn.pretrained) are already mmseg's ResNet/ResNeXt names with BCN, so no
renaming is needed. ``BCNPretrained`` reads an original file directly as a backbone's init_cfg:

    backbone=dict(..., init_cfg=dict(type='BCNPretrained', checkpoint='pretrained/rn101-bcn-ws.pth.tar'))

It fills the backbone exactly or fails naming every missing, extra or mis-shaped tensor
(mmengine's 'Pretrained' would only warn). tools/convert_pretrained.py writes a plain mmseg
file instead, for 'Pretrained'.
"""
from mmengine.logging import print_log
from mmengine.model.weight_init import BaseInit, update_init_info
from mmengine.registry import WEIGHT_INITIALIZERS

import torch

from bcn.utils.checkpoint_fit import compare, describe_unreadable, model_weights, require_fit
from bcn.pretrained import CheckpointError, canonicalize, match_state_dict, read_published


@WEIGHT_INITIALIZERS.register_module(name="BCNPretrained", force=True)
class BCNPretrainedInit(BaseInit):
    def __init__(self, checkpoint: str, sha256: str = None, **kwargs):
        super().__init__(**kwargs)
        self.checkpoint, self.sha256 = checkpoint, sha256

    def __call__(self, module):
        notes = []
        state = read_published(self.checkpoint, self.sha256, notes)
        match_state_dict(state, module.state_dict(), what=f"{self.checkpoint} (BCN+WS ImageNet)")
        module.load_state_dict(state, strict=False)  # num_batches_tracked of frozen layers aside
        print_log(f"loaded the published BCN+WS backbone {self.checkpoint}"
                  + "".join(f"; {note}" for note in notes), logger="current")
        if hasattr(module, "_params_init_info"):
            update_init_info(module, init_info=self._get_init_info())

    def _get_init_info(self):
        return f"{self.__class__.__name__}: load from {self.checkpoint}"


def check_checkpoint_fits(model, path: str, purpose: str) -> None:
    """Raise bcn.utils.checkpoint_fit.CheckpointMismatchError unless the checkpoint at ``path`` fits
    ``model`` for ``purpose`` ("complete": test and resume; "init": load_from for training;
    "partial": anything) -- mmengine loads with strict=False and only warns."""
    if "://" in path:
        return
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"{path}: cannot be loaded safely (weights only): it is {describe_unreadable(path)}, "
            f"not an MMSegmentation checkpoint ({type(error).__name__})") from None
    try:
        kind, state = "published BCN+WS ImageNet file (a backbone)", canonicalize(obj)
    except CheckpointError:
        kind, state = model_weights(obj)
    model = getattr(model, "module", model)
    require_fit(compare(state, model.state_dict()), purpose, path, kind,
                "add --partial-weights to tools/train_seg.py / tools/test_seg.py")
