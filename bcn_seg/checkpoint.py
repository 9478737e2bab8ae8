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

from bcn.pretrained import match_state_dict, read_published


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
