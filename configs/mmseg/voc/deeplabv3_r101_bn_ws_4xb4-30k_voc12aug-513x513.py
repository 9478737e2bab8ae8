# Baseline of Table 5: DeepLabV3 R-101 with BN+WS (synchronized). Paper: 77.15 mIoU.
_base_ = ['./deeplabv3_r101_bcn_ws_4xb4-30k_voc12aug-513x513.py']
# BN momentum as the BN baseline of DeepLabv3.pytorch (the authors' script's base): 0.05 in the
# backbone, 0.0003 in the head.
norm_cfg = dict(_delete_=True, type='SyncBN', momentum=0.05, requires_grad=True)
head_norm_cfg = dict(_delete_=True, type='SyncBN', momentum=0.0003, requires_grad=True)
conv_cfg = dict(type='WSConv2d')
model = dict(
    backbone=dict(norm_cfg=norm_cfg, conv_cfg=conv_cfg, init_cfg=dict(_delete_=True, type='Pretrained', checkpoint='pretrained/rn101_bn_ws_mmseg.pth')),
    decode_head=dict(norm_cfg=head_norm_cfg, conv_cfg=conv_cfg))
