# DeepLabV3 R-101, BCN+WS, large-batch mode: 4 GPUs x 4 images, the batch part synchronized
# across GPUs (as the published segmentation models). Paper (Table 5): 78.10 mIoU.
_base_ = ['../_base_/deeplabv3_r101_os16.py', '../_base_/voc12aug_513.py',
          '../_base_/schedule_poly_30k.py']
norm_cfg = dict(type='BCN', num_groups=32, mode='batch', sync_batch=True, requires_grad=True)
conv_cfg = dict(type='WSConv2d')
model = dict(
    backbone=dict(norm_cfg=norm_cfg, conv_cfg=conv_cfg,
                  init_cfg=dict(type='BCNPretrained', checkpoint='pretrained/rn101-bcn-ws.pth.tar')),
    decode_head=dict(norm_cfg=norm_cfg, conv_cfg=conv_cfg))
