# Baseline of Table 5: DeepLabV3 R-101 with BN (synchronized). Paper: 76.49 mIoU.
_base_ = ['./deeplabv3_r101_bcn_ws_4xb4-30k_voc12aug-513x513.py']
norm_cfg = dict(_delete_=True, type='SyncBN', requires_grad=True)
conv_cfg = None
model = dict(
    backbone=dict(norm_cfg=norm_cfg, conv_cfg=conv_cfg, init_cfg=dict(_delete_=True, type='Pretrained', checkpoint='torchvision://resnet101')),
    decode_head=dict(norm_cfg=norm_cfg, conv_cfg=conv_cfg))
