# Cascade Mask R-CNN + FPN with a MambaVision-T backbone on COCO 2017: the official MambaVision detection recipe
# (3x schedule, 36 epochs, multi-scale + crop training). Published: box AP 51.1, mask AP 44.3 (docs/model_zoo.md).
#
#   python tools/model_converters/mambavision2mmmv.py mambavision_tiny_1k.pth.tar checkpoints/mambavision_t_in1k.pth
#   bash tools/dist_train.sh configs/cascade_mask_rcnn_mambavision_t_3x_coco.py 8          # 8 GPUs x 2 images
#
# Testing the official COCO checkpoint (the whole model, converted):
#   python tools/model_converters/mambavision2mmmv.py cascade_mask_rcnn_mamba_vision_tiny_3x_coco.pth \
#       checkpoints/cascade_mask_rcnn_mambavision_t_3x_coco.pth
#   python tools/test.py configs/cascade_mask_rcnn_mambavision_t_3x_coco.py \
#       checkpoints/cascade_mask_rcnn_mambavision_t_3x_coco.pth
#
# The recipe, as published: three cascade stages whose box heads are 4 shared 3x3 convs (SyncBN) + 1 fc with GIoU
# regression on decoded boxes; DETR-style augmentation (flip, then either multi-scale 480..800 or resize + random crop
# + multi-scale); AdamW lr 1e-4, wd 0.05 with no decay on parameters whose name contains 'norm'; AMP; linear warm-up
# over 1000 iterations, lr x0.1 at epochs 27 and 33; 16 images per step. Windows (8, 8, 112, 56): at 1333 x 800 the
# stride-16 and stride-32 maps fit in one zero-padded window each.
#
# Note on drop path: the official detection backbone class accepts drop_path_rate in its config but does not pass it on,
# so the published T, S and B runs all trained with its default, 0.2. This file and the S / B files keep the values
# their official configs state (T 0.2, S 0.3, B 0.5); set model.backbone.drop_path_rate=0.2 to train as the released
# checkpoints were trained. Inference is unaffected.
_base_ = [
    'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmmv'], allow_failed_imports=False)

pretrained = 'checkpoints/mambavision_t_in1k.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='MambaVision',
        arch='T',
        out_indices=(0, 1, 2, 3),
        out_norm='ln2d',
        drop_path_rate=0.2,
        layer_scale=None,
        window_size=(8, 8, 112, 56),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(in_channels=[80, 160, 320, 640]),
    roi_head=dict(bbox_head=[
        dict(
            type='ConvFCBBoxHead',
            num_shared_convs=4,
            num_shared_fcs=1,
            in_channels=256,
            conv_out_channels=256,
            fc_out_channels=1024,
            roi_feat_size=7,
            num_classes=80,
            bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.], target_stds=stds),
            reg_class_agnostic=False,
            reg_decoded_bbox=True,
            norm_cfg=dict(type='SyncBN', requires_grad=True),
            loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type='GIoULoss', loss_weight=10.0))
        # the target stds of the three cascade stages (each stage's boxes are closer to the truth)
        for stds in ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067])
    ]))

# Augmentation of DETR / Sparse R-CNN: flip, then one of (a) resize the short side to 480..800 (step 32, long side
# <= 1333) or (b) resize to 400/500/600, crop a random 384..600 box, then (a).
multi_scale = [(short, 1333) for short in range(480, 801, 32)]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=multi_scale, keep_ratio=True)],
            [
                dict(type='RandomChoiceResize', scales=[(400, 1333), (500, 1333), (600, 1333)], keep_ratio=True),
                dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600), allow_negative_crop=True),
                dict(type='RandomChoiceResize', scales=multi_scale, keep_ratio=True),
            ],
        ]),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33], gamma=0.1),
]
optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0)}))

# 8 GPUs x 2 images (mmdet's coco_instance batch size); `--auto-scale-lr` scales lr for other totals.
auto_scale_lr = dict(enable=False, base_batch_size=16)
