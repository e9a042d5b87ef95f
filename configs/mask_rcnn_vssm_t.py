# Mask R-CNN + FPN with a VMamba-T (v0 VSS blocks) backbone on COCO 2017: the MambaVision-T config's recipe (1x,
# AdamW lr 1e-4, wd 0.05, no decay on norms and the SSM's A / D), which is also VMamba's, with the backbone swapped.
# VMamba reports 47.3 box / 42.7 mask AP for its tiny model (its later releases; mmmv implements the v0 block).
#
#   python tools/model_converters/vmunet2mmmv.py vssmtiny_dp01_ckpt_epoch_292.pth checkpoints/vmamba_t_v0.pth
#   bash tools/dist_train.sh configs/mask_rcnn_vssm_t.py 8                  # 8 GPUs, 2 images each
#
# For S / B: arch='small' / 'base', drop_path_rate 0.3 / 0.5, neck in_channels of embed_dim 96 / 128 doubled per stage.
_base_ = './mask_rcnn_mambavision_t.py'

pretrained = 'checkpoints/vmamba_t_v0.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='VSSEncoder',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        out_norm='ln',  # a LayerNorm per output, as VMamba's detection backbone
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(in_channels=[96, 192, 384, 768]))
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'.A_logs': dict(decay_mult=0.0), '.Ds': dict(decay_mult=0.0)}))
