# Backbone swapping, segmentation: mmseg's own Swin-T UPerNet ADE20K config with MambaVision-T in place of Swin.
# The decode head takes all four maps, the auxiliary FCN head the third one.
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'
custom_imports = dict(imports=['mmmv'], allow_failed_imports=False)
model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='MambaVision',
        arch='T',
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/mambavision_t_in1k.pth', prefix='backbone.')),
    decode_head=dict(in_channels=[80, 160, 320, 640]),
    auxiliary_head=dict(in_channels=320))
