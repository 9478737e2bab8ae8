# The README's main job for MMSegmentation: BCN+WS DeepLabV3 (ResNet-18, estimate mode, with
# the auxiliary FCN head) trained from scratch on the built-in toy VOC set on the CPU.
_base_ = ['mmseg::_base_/default_runtime.py']
custom_imports = dict(imports=['bcn_seg'], allow_failed_imports=False)
norm_cfg = dict(type='BCN', num_groups=32, mode='estimate', requires_grad=True)
conv_cfg = dict(type='WSConv2d')
crop_size = (96, 96)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0,
                           seg_pad_val=255, size=crop_size),
    backbone=dict(type='ResNet', depth=18, num_stages=4, out_indices=(0, 1, 2, 3),
                  strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2), deep_stem=False,
                  style='pytorch', norm_cfg=norm_cfg, conv_cfg=conv_cfg, norm_eval=False),
    decode_head=dict(type='ASPPHead', in_channels=512, in_index=3, channels=64,
                     dilations=(1, 6, 12, 18), dropout_ratio=0.1, num_classes=4,
                     norm_cfg=norm_cfg, conv_cfg=conv_cfg, align_corners=False,
                     loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0)),
    auxiliary_head=dict(type='FCNHead', in_channels=256, in_index=2, channels=32, num_convs=1,
                        concat_input=False, dropout_ratio=0.1, num_classes=4, norm_cfg=norm_cfg,
                        conv_cfg=conv_cfg, align_corners=False,
                        loss_decode=dict(type='CrossEntropyLoss', loss_weight=0.4)),
    train_cfg=dict(), test_cfg=dict(mode='whole'))
data_root = '{{$BCN_TOY_VOC:data/bcn_toy_voc}}'  # generated on first use (bcn_seg.toy)
_toy = dict(type='ToyVOCDataset', data_root=data_root,
            data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'))
train_dataloader = dict(
    batch_size=4, num_workers=0, sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(_toy, ann_file='ImageSets/Segmentation/train.txt', pipeline=[
        dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
        dict(type='RandomResize', scale=(128, 128), ratio_range=(0.75, 1.5), keep_ratio=True),
        dict(type='RandomCrop', crop_size=crop_size),
        dict(type='RandomFlip', prob=0.5), dict(type='PackSegInputs')]))
val_dataloader = dict(
    batch_size=1, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(_toy, ann_file='ImageSets/Segmentation/val.txt', pipeline=[
        dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'), dict(type='PackSegInputs')]))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.02, momentum=0.9,
                                                          weight_decay=1e-4))
param_scheduler = [dict(type='LinearLR', start_factor=0.1, begin=0, end=20, by_epoch=False),
                   dict(type='PolyLR', eta_min=0.0, power=0.9, begin=20, end=300, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=300, val_interval=300)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=25, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=100),
    visualization=dict(type='SegVisualizationHook', draw=False))
# scalars to vis_data/scalars.json and TensorBoard (tensorboard --logdir WORK_DIR), as detectron2
visualizer = dict(type='SegLocalVisualizer', name='visualizer',
                  vis_backends=[dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')])
custom_hooks = [dict(type='EstimateRateHook'), dict(type='ExactResumeHook'),
                dict(type='StatDiffHook', interval=20)]  # tools/plot_statdiff.py
model_wrapper_cfg = dict(type='MMDistributedDataParallel', broadcast_buffers=False)
randomness = dict(seed=0)
work_dir = 'work_dirs/toy_deeplabv3_bcn_ws'
