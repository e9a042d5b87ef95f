# UPerNet + MambaVision-L3-512-21K on ADE20K, 160k iterations at 640 x 640: the official recipe. Published: 53.2 mIoU
# (single scale). The backbone starts from the ImageNet-21K pre-trained, 512 px fine-tuned classifier.
#
#   python tools/model_converters/mambavision2mmmv.py mambavision_L3_21k_740m_512.pth.tar \
#       checkpoints/mambavision_l3_512_21k_in1k.pth
#   bash tools/dist_train.sh configs/upernet_mambavision_l3_512_21k_ade20k_640.py 8            # 8 GPUs x 2 images
#   python tools/model_converters/mambavision2mmmv.py mamba_vision_160k_ade20k-640x640_l3_21k.pth \
#       checkpoints/upernet_mambavision_l3_512_21k_ade20k_640.pth
#   python tools/test.py configs/upernet_mambavision_l3_512_21k_ade20k_640.py \
#       checkpoints/upernet_mambavision_l3_512_21k_ade20k_640.pth
#
# The recipe, as published: AdamW lr 8e-5, wd 0.05, no decay on parameters whose name contains 'norm'; full float32
# (the official run turned AMP off for this model because it was unstable: `--amp` turns it on); 1500 iterations of
# linear warm-up then poly decay (power 1) to 160k; drop path 0.8 (the official backbone class does not pass it on, so
# the published run trained with 0.2); windows (8, 8, 64, 32); 16 images per step (official: 16 GPUs x 1).
# Everything else (UPerNet + FCN auxiliary head, the 640 x 640 ADE20K pipeline, the 160k schedule) is mmseg's own.
_base_ = [
    'mmseg::_base_/models/upernet_swin.py',
    'mmseg::_base_/datasets/ade20k_640x640.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
custom_imports = dict(imports=['mmmv'], allow_failed_imports=False)

crop_size = (640, 640)
data_preprocessor = dict(size=crop_size)
pretrained = 'checkpoints/mambavision_l3_512_21k_in1k.pth'
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='MambaVision',
        arch='L3-512-21k',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.8,
        layer_scale=1e-5,
        # at 640 x 640 the stride-16 map (40 x 40) and the stride-32 map (20 x 20) fit in one window each
        window_size=(8, 8, 64, 32),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    decode_head=dict(in_channels=[256, 512, 1024, 2048], num_classes=150),
    auxiliary_head=dict(in_channels=1024, num_classes=150))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=8e-5, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=160000, val_interval=5000)

train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
auto_scale_lr = dict(enable=False, base_batch_size=16)
