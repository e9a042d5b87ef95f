# VM-UNet (Ruan & Xiang 2024) on ISIC 2017 lesion segmentation, with the official recipe: 256 x 256 inputs,
# BCE + Dice on one sigmoid output, AdamW lr 1e-3 wd 1e-2, batch 32, 300 epochs, cosine schedule, flips and rotations;
# metrics pooled over all validation pixels (DSC, mIoU = IoU of the lesion, accuracy, sensitivity, specificity).
#
#   python tools/dataset_converters/prepare_isic.py isic2017 DOWNLOAD_DIR data/isic2017 --size 256
#   python tools/model_converters/vmunet2mmmv.py vmamba_small_e238_ema.pth \
#       checkpoints/vmunet_init_vmamba_s_v0.pth --mirror-decoder
#   python tools/train.py configs/vmunet_isic17.py
#
# VM-UNet is a plain mmseg EncoderDecoder: VSSEncoder(out_type='unet') hands the stage inputs and the bottleneck to
# VMUNetHead. Both start from VMamba-S v0 ImageNet weights, mirrored into the decoder as VM-UNet does (the converter
# above writes them; without the file set `pretrained = None` to train from scratch). docs/segmentation.md has details.
_base_ = ['mmseg::_base_/default_runtime.py']
custom_imports = dict(imports=['mmmv'], allow_failed_imports=False)

dataset_type = 'ISIC2017Dataset'
data_root = 'data/isic2017/'
crop_size = (256, 256)
pretrained = 'checkpoints/vmunet_init_vmamba_s_v0.pth'
drop_path_rate = 0.3  # VM-UNet's model_config; the decoder uses the same rate, its schedule reversed

# VM-UNet stretches each image to [0, 255] and feeds it unnormalised; mmmv uses the ImageNet statistics of the
# pretrained encoder instead (docs/segmentation.md).
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=crop_size)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='VSSEncoder',
        arch='vmunet',
        out_type='unet',  # the inputs of stages 0-3 (the decoder's skips) and the bottleneck
        out_indices=(0, 1, 2, 3),
        out_norm=None,
        drop_path_rate=drop_path_rate,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    decode_head=dict(
        type='VMUNetHead',
        in_channels=(96, 192, 384, 768, 768),
        decoder_depths=(2, 2, 2, 1),
        drop_path_rate=drop_path_rate,
        num_classes=2,
        out_channels=1,  # one sigmoid output, as VM-UNet
        threshold=0.5,
        # VM-UNet's BceDiceLoss(wb=1, wd=1). mmseg's DiceLoss is not used: with one output channel it scores the
        # background (mmmv/losses.py).
        loss_decode=[
            dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
            dict(type='VMUNetDiceLoss', loss_weight=1.0),
        ],
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='decode_head.')),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))

# VM-UNet: horizontal and vertical flips (each p = 0.5), a rotation by [0, 360) degrees (p = 0.5) with black corners
# labelled background, then resize to 256 x 256.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='Resize', scale=crop_size, keep_ratio=False),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='RandomFlip', prob=0.5, direction='vertical'),
    dict(type='RandomRotate', prob=0.5, degree=180, pad_val=0, seg_pad_val=0),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=crop_size, keep_ratio=False),
    dict(type='LoadAnnotations'),  # after Resize: predictions are scored at the label's own size
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=32,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='img_dir/train', seg_map_path='ann_dir/train'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='img_dir/val', seg_map_path='ann_dir/val'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='PooledSegMetric')
test_evaluator = val_evaluator

# Schedule: VM-UNet steps torch's CosineAnnealingLR once per epoch with T_max = 50 and eta_min = 1e-5 over 300
# epochs, so the rate follows a cosine down and back up three times (period 100 epochs); mmengine's scheduler is the
# same formula.
max_epochs = 300
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2))
param_scheduler = [
    dict(type='CosineAnnealingLR', T_max=50, eta_min=1e-5, by_epoch=True, begin=0, end=max_epochs),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=30)  # VM-UNet: val_interval 30
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=True),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # VM-UNet keeps the checkpoint of lowest loss on this same split; here the best pooled DSC
    checkpoint=dict(type='CheckpointHook', by_epoch=True, interval=30, max_keep_ckpts=1, save_best='DSC',
                    rule='greater'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
log_processor = dict(by_epoch=True)
# pictures (tools/test.py --show-dir, or draw=True above): masks over the image at half opacity
visualizer = dict(alpha=0.5)
randomness = dict(seed=42)  # VM-UNet's seed
# 1 GPU x 32 images; `tools/train.py --auto-scale-lr` scales lr for other batch sizes
auto_scale_lr = dict(enable=False, base_batch_size=32)
