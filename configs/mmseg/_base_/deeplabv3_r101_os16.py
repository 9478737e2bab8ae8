# DeepLabV3 R-101 as the paper trains it on VOC (the paper's Sec. 4.3; every setting's source:
# configs/README.md). The norm and conv layers (norm_cfg, conv_cfg) are set by each config.
custom_imports = dict(imports=['bcn_seg'], allow_failed_imports=False)
# Normalize, then pad to 513 with 0 (the mean image) and label 255, in training and test:
# the authors' script pads the normalized tensor the same way.
data_preprocessor = dict(
    type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True, pad_val=0, seg_pad_val=255, size=(513, 513), test_cfg=dict(size=(513, 513)))
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    # torchvision-style ResNet (7x7 stem, stride on the 3x3), the published checkpoints' layout.
    # Output stride 16: stage 4 undecimated, every block dilated 2 (multi-grid (1, 1, 1) times
    # the stage rate; the authors' script has 1, 2, 2: add multi_grid=(1, 2, 2) for that).
    backbone=dict(
        type='ResNet', depth=101, num_stages=4, out_indices=(0, 1, 2, 3),
        strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2), multi_grid=None, contract_dilation=False,
        deep_stem=False, style='pytorch', frozen_stages=-1, norm_eval=False),
    # ASPP 1x1 + rates 6/12/18 + image pooling, 256 channels, fused by a 1x1 conv, no dropout,
    # bilinear upsampling with align_corners=True, cross-entropy averaged over the labelled
    # pixels (torch's, ignore_index 255), no auxiliary head: the authors' script.
    decode_head=dict(
        type='DeepLabV3Head', bottleneck_kernel_size=1, in_channels=2048, in_index=3,
        channels=256, dilations=(1, 6, 12, 18), dropout_ratio=0.0, num_classes=21,
        align_corners=True,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0,
                         avg_non_ignore=True)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
