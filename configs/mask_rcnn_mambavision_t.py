# Mask R-CNN + FPN with a MambaVision-T backbone on COCO 2017, 1x schedule (12 epochs), AdamW lr 1e-4, wd 0.05.
#
#   python tools/train.py configs/mask_rcnn_mambavision_t.py                 # 1 GPU (or CPU)
#   bash tools/dist_train.sh configs/mask_rcnn_mambavision_t.py 8            # 8 GPUs, 2 images each
#
# The backbone starts from the official ImageNet-1K weights converted to mmmv keys (docs/converting_weights.md):
#   python tools/model_converters/mambavision2mmmv.py mambavision_tiny_1k.pth.tar checkpoints/mambavision_t_in1k.pth
# Everything else comes from mmdet's own bases.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
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
        drop_path_rate=0.2,
        # windows of the official detection recipe: at 1333 x 800 the stride-16/32 maps fit in one (zero-padded) window
        window_size=(8, 8, 112, 56),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(in_channels=[80, 160, 320, 640]))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    # no decay on norms, layer scales and the SSM's A_log / D (as the official training)
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        custom_keys={
            '.A_log': dict(decay_mult=0.0),
            '.D': dict(decay_mult=0.0),
            '.gamma': dict(decay_mult=0.0),
        }))

# 8 GPUs x 2 images; `--auto-scale-lr` scales lr for other batch sizes.
auto_scale_lr = dict(enable=False, base_batch_size=16)
