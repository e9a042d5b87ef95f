# UPerNet + MambaVision-T on ADE20K, 160k iterations at 512 x 512, with the official MambaVision segmentation recipe
# (published: 46.0 mIoU single scale): AdamW lr 5e-5 wd 0.01 with no decay on norms, 1500-iteration linear warmup then
# poly decay (power 1), AMP, drop path 0.3, windows (8, 8, 64, 32), 16 images per step.
#
#   python tools/model_converters/mambavision2mmmv.py mambavision_tiny_1k.pth.tar checkpoints/mambavision_t_in1k.pth
#   bash tools/dist_train.sh configs/upernet_mambavision_t_ade20k.py 8        # 8 GPUs x 2 images
#
# Testing the official ADE20K checkpoint (the whole model, converted; docs/model_zoo.md):
#   python tools/model_converters/mambavision2mmmv.py mamba_vision_160k_ade20k-512x512_tiny.pth \
#       checkpoints/upernet_mambavision_t_ade20k.pth
#   python tools/test.py configs/upernet_mambavision_t_ade20k.py checkpoints/upernet_mambavision_t_ade20k.pth
#
# The official segmentation backbone does not pass drop_path_rate on (its runs trained with 0.2); the value here is
# the one its config states. Everything else (UPerNet + FCN auxiliary head, the ADE20K pipeline, 160k schedule) is
# mmseg's own Swin-T config.
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'
custom_imports = dict(imports=['mmmv'], allow_failed_imports=False)

pretrained = 'checkpoints/mambavision_t_in1k.pth'
model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='MambaVision',
        arch='T',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.3,
        # at 512 x 512 the stride-16 map (32 x 32) and the stride-32 map (16 x 16) fit in one window each
        window_size=(8, 8, 64, 32),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    decode_head=dict(in_channels=[80, 160, 320, 640], num_classes=150),
    auxiliary_head=dict(in_channels=320, num_classes=150))

optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    optimizer=dict(type='AdamW', lr=5e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]

# The official run: 16 GPUs x 1 image; the same 16 images per step as 8 GPUs x 2 (mmseg's default for this base).
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
auto_scale_lr = dict(enable=False, base_batch_size=16)
