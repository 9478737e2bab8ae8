# DeepLabV3 R-101, BCN+WS, micro-batch (estimate) mode: 1 image per GPU, no synchronization,
# estimates per GPU updated at the learning rate. 16 GPUs give the paper's total batch 16;
# with fewer, add --cfg-options auto_scale_lr.enable=True to scale the lr linearly.
_base_ = ['./deeplabv3_r101_bcn_ws_4xb4-30k_voc12aug-513x513.py']
norm_cfg = dict(_delete_=True, type='BCN', num_groups=32, mode='estimate', requires_grad=True)
model = dict(backbone=dict(norm_cfg=norm_cfg), decode_head=dict(norm_cfg=norm_cfg))
train_dataloader = dict(batch_size=1)
