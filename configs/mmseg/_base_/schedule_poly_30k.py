# The paper's schedule: total batch 16, SGD, poly learning rate from 0.007, 30k iterations.
_base_ = ['mmseg::_base_/default_runtime.py']
optimizer = dict(type='SGD', lr=0.007, momentum=0.9, weight_decay=1e-4)
optim_wrapper = dict(type='OptimWrapper', optimizer=optimizer, clip_grad=None)
param_scheduler = [dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=30000, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=30000, val_interval=30000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=5000),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
# scalars to vis_data/scalars.json and TensorBoard (tensorboard --logdir WORK_DIR), as detectron2
visualizer = dict(type='SegLocalVisualizer', name='visualizer',
                  vis_backends=[dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')])
# BCN's estimate rate follows the learning rate; a no-op for models without estimate-mode BCN.
custom_hooks = [dict(type='EstimateRateHook'), dict(type='ExactResumeHook')]
# Buffers are never broadcast: estimate-mode BCN keeps its estimates per GPU (the paper).
model_wrapper_cfg = dict(type='MMDistributedDataParallel', broadcast_buffers=False)
# 4 GPUs x 4 images; other GPU counts rescale the lr linearly with --cfg-options auto_scale_lr.enable=True
auto_scale_lr = dict(enable=False, base_batch_size=16)
