# UPerNet + VMamba-T (v0 VSS blocks) on ADE20K, 160k iterations at 512 x 512: the MambaVision-T config's schedule
# (1500-iteration warmup, poly decay, AMP, 16 images per step) with the backbone swapped and VMamba's lr 6e-5 and drop
# path 0.2. VMamba reports 47.9 mIoU (single scale) for its tiny model (its later releases; mmmv implements v0).
#
#   python tools/model_converters/vmunet2mmmv.py vssmtiny_dp01_ckpt_epoch_292.pth checkpoints/vmamba_t_v0.pth
#   bash tools/dist_train.sh configs/upernet_vssm_t_ade20k.py 8             # 8 GPUs x 2 images
_base_ = './upernet_mambavision_t_ade20k.py'

pretrained = 'checkpoints/vmamba_t_v0.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='VSSEncoder',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        out_norm='ln',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
optim_wrapper = dict(
    optimizer=dict(lr=6e-5),
    paramwise_cfg=dict(custom_keys={'.A_logs': dict(decay_mult=0.0), '.Ds': dict(decay_mult=0.0)}))
