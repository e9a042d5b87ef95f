# Backbone swapping, detection: mmdet's own Swin-T Mask R-CNN config with MambaVision-T in place of Swin.
# Three things change: custom_imports, the backbone (with _delete_=True so none of Swin's keys survive), and the
# FPN's in_channels. Everything else (heads, data, schedule, optimizer) is mmdet's.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
custom_imports = dict(imports=['mmmv'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        _delete_=True,
        type='MambaVision',
        arch='T',
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/mambavision_t_in1k.pth', prefix='backbone.')),
    neck=dict(in_channels=[80, 160, 320, 640]))
