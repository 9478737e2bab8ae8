# PASCAL VOC 2012 + SBD augmented set (10,582 images) as the paper trains on it (the paper's Sec. 4.3;
# sources: configs/README.md): flip, log-uniform rescale 0.5-2.0 of the image's own size,
# random 513 crop (padding: the model's data_preprocessor); single-scale test, no flip.
_base_ = ['mmseg::_base_/datasets/pascal_voc12_aug.py']
data_root = 'data/VOCdevkit/VOC2012'  # or $VOC_ROOT / --data-root with tools/train_seg.py
crop_size = (513, 513)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomRescale', ratio_range=(0.5, 2.0)),
    dict(type='RandomCrop', crop_size=crop_size),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
_voc = dict(type='PascalVOCDataset', data_root=data_root, pipeline=train_pipeline)
train_dataloader = dict(
    batch_size=4, num_workers=4, persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(_delete_=True, type='ConcatDataset', datasets=[
        dict(_voc, data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'),
             ann_file='ImageSets/Segmentation/train.txt'),
        dict(_voc, data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClassAug'),
             ann_file='ImageSets/Segmentation/aug.txt'),
    ]))
val_dataloader = dict(batch_size=1, num_workers=4, persistent_workers=True,
                      dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
