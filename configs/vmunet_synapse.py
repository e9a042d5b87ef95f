# VM-UNet on Synapse multi-organ CT (TransUNet's preprocessing: 18 training cases as 2D slices, 12 test cases), with
# the official recipe: 224 x 224 inputs, 9 classes, CE + Dice, AdamW lr 1e-3 wd 1e-2, batch 32, 300 epochs, cosine
# schedule (T_max 100 epochs), random rot90/flip or small rotations. Scored per case in 3D (Dice and HD95 per organ,
# averaged over the 12 test cases, then over organs, as the paper's DSC 81.08) and pooled over all pixels.
#
#   python tools/dataset_converters/prepare_synapse.py DOWNLOAD_DIR data/synapse
#   python tools/train.py configs/vmunet_synapse.py
_base_ = ['./vmunet_isic17.py']

dataset_type = 'SynapseSliceDataset'
data_root = 'data/synapse/'
crop_size = (224, 224)
num_classes = 9

model = dict(
    # TransUNet's slices hold CT scaled to [0, 1]: the network sees them so (the grey image repeated to 3 channels)
    data_preprocessor=dict(mean=[0.0, 0.0, 0.0], std=[255.0, 255.0, 255.0], size=crop_size),
    decode_head=dict(
        num_classes=num_classes,
        out_channels=num_classes,
        threshold=None,
        # VM-UNet's CeDiceLoss(loss_weight=[1, 1]): cross-entropy + per-class soft Dice averaged over the classes
        loss_decode=[
            dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
            dict(type='VMUNetDiceLoss', loss_weight=1.0),
        ]))

# TransUNet's RandomGenerator (kept by VM-UNet): a rotation by 90-degree steps and a flip (p = 0.5), else a rotation
# by [-20, 20] degrees; then resize to 224 x 224.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomRotFlip', rotate_prob=0.5, flip_prob=0.5, degree=20),
    dict(type='Resize', scale=crop_size, keep_ratio=False),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=crop_size, keep_ratio=False),
    dict(type='LoadAnnotations'),  # predictions are resized back to 512 x 512 and scored there, as VM-UNet does
    dict(type='PackSegInputs'),
]
train_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = [dict(type='CaseDiceHD95Metric'), dict(type='PooledSegMetric')]
test_evaluator = val_evaluator

max_epochs = 300
param_scheduler = [
    dict(type='CosineAnnealingLR', T_max=100, eta_min=1e-5, by_epoch=True, begin=0, end=max_epochs),
]
train_cfg = dict(val_interval=100)  # VM-UNet: val_interval 100
default_hooks = dict(checkpoint=dict(interval=100, save_best='case/DSC'))
