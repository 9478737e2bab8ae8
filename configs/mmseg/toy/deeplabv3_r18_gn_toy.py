# The toy job with GN in every place BCN+WS is: a baseline for the StatDiff comparison.
_base_ = ['./deeplabv3_r18_bcn_ws_toy.py']
norm_cfg = dict(_delete_=True, type='GN', num_groups=32, requires_grad=True)
conv_cfg = None
model = dict(
    backbone=dict(norm_cfg=norm_cfg, conv_cfg=conv_cfg),
    decode_head=dict(norm_cfg=norm_cfg, conv_cfg=conv_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg, conv_cfg=conv_cfg))
work_dir = 'work_dirs/toy_deeplabv3_gn'
