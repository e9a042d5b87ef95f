# What every MambaVision ImageNet-1K classifier config shares (configs/mambavision_*_in1k.py): the mmpretrain model
# skeleton, the ImageNet data, the official test transform at 224 with crop_pct 1.0, and the official training recipe
# of the 1K models with the T/T2/S settings (weight decay 0.05, 20 warm-up epochs).
#
# Each variant file sets the backbone arch and drop_path_rate, the head's in_channels (8 x dim), its test transform
# where it is not 224 / crop_pct 1.0 and the recipe values that differ (B: wd 0.075 and 35 warm-up epochs; L, L2:
# wd 0.12). arch=None and in_channels=None below fail at build time if a variant forgets them.
#
# The recipe: LAMB, lr 5e-3 for a global batch of 4096 (32 GPUs x 128; with fewer GPUs pass --auto-scale-lr),
# betas (0.9, 0.999), eps 1e-8, no weight decay on norms, biases, A_log and D; gradient clipping at norm 5; AMP;
# 310 epochs: linear warm-up from lr 1e-6, then cosine to 5e-6; EMA of the weights (momentum 2e-4 = decay 0.9998);
# label smoothing 0.1, Mixup 0.8, CutMix 1.0, RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25 (pixel mode),
# random resized crop (bicubic), horizontal flip.
#
# Not reproduced by training with these configs: the official runs add MESA (memory-efficient sharpness-aware
# training), a self-distillation loss between the model's outputs and those of its own EMA, switched on after a
# fraction of the epochs (loss weight 0.5 for T, 0.75 T2, 1.0 S, 1.0 B, 6.0 L and L2; start ratio 0.3 for B, 0.25 for
# the others). mmpretrain has no MESA, so these configs train without it and may not reach the published top-1;
# evaluating the released weights is unaffected.
_base_ = ['mmpretrain::_base_/default_runtime.py']
custom_imports = dict(imports=['mmmv'], allow_failed_imports=False)

model = dict(
    type='ImageClassifier',
    backbone=dict(type='MambaVision', arch=None, out_indices=(3,), out_norm=None, final_norm=True),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=None,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        topk=(1, 5)),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]))

dataset_type = 'ImageNet'
data_root = 'data/imagenet'
data_preprocessor = dict(
    num_classes=1000,
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    to_rgb=True)
bgr_mean = data_preprocessor['mean'][::-1]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=224, backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='RandAugment', policies='timm_increasing', num_policies=2, total_level=10, magnitude_level=9,
         magnitude_std=0.5, hparams=dict(pad_val=[round(x) for x in bgr_mean], interpolation='bicubic')),
    dict(type='RandomErasing', erase_prob=0.25, mode='rand', min_area_ratio=0.02, max_area_ratio=1 / 3,
         fill_color=bgr_mean, fill_std=[58.395, 57.12, 57.375][::-1]),
    dict(type='PackInputs'),
]
# Test transform as timm evaluates the official models: short side resized to floor(size / crop_pct) (bicubic), then
# a centre crop of size; here size 224, crop_pct 1.0 -> 224.
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=224, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=128,
    num_workers=8,
    dataset=dict(type=dataset_type, data_root=data_root, split='train', pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True))
val_dataloader = dict(
    batch_size=128,
    num_workers=8,
    dataset=dict(type=dataset_type, data_root=data_root, split='val', pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False))
val_evaluator = dict(type='Accuracy', topk=(1, 5))
test_dataloader = val_dataloader
test_evaluator = val_evaluator

# 32 GPUs x 128 images = 4096
optim_wrapper = dict(
    type='AmpOptimWrapper',
    optimizer=dict(type='Lamb', lr=5e-3, weight_decay=0.05, betas=(0.9, 0.999), eps=1e-8),
    clip_grad=dict(max_norm=5.0),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        custom_keys={'.A_log': dict(decay_mult=0.0), '.D': dict(decay_mult=0.0)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6 / 5e-3, by_epoch=True, begin=0, end=20, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=290, eta_min=5e-6, by_epoch=True, begin=20, end=310),
]
train_cfg = dict(by_epoch=True, max_epochs=310, val_interval=10)
val_cfg = dict()
test_cfg = dict()
custom_hooks = [dict(type='EMAHook', momentum=2e-4, priority='ABOVE_NORMAL')]
auto_scale_lr = dict(base_batch_size=4096)
