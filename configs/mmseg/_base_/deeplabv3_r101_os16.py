# DeepLabV3, ResNet-101 torchvision-style (7x7 stem, stride on the 3x3), output stride 16,
# multi-grid (1, 1, 1), ASPP rates 6/12/18 with image pooling (BCN_SPEC §5). The norm and
# conv layers (norm_cfg, conv_cfg) are set by each config.
custom_imports = dict(imports=['bcn_seg'], allow_failed_imports=False)
data_preprocessor = dict(
    type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True, pad_val=0, seg_pad_val=255, size=(513, 513))
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='ResNet', depth=101, num_stages=4, out_indices=(0, 1, 2, 3),
        strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2), multi_grid=(1, 1, 1),
        deep_stem=False, style='pytorch', norm_eval=False),
    decode_head=dict(
        type='ASPPHead', in_channels=2048, in_index=3, channels=256, dilations=(1, 6, 12, 18),
        dropout_ratio=0.1, num_classes=21, align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
