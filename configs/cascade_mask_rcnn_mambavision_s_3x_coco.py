# Cascade Mask R-CNN + FPN with MambaVision-S, COCO 3x: the official recipe, as the T file
# (configs/cascade_mask_rcnn_mambavision_t_3x_coco.py) with the S backbone and drop path 0.3 (see the T file's note:
# the published run trained with 0.2). Published: box AP 52.3, mask AP 45.2.
#
#   python tools/model_converters/mambavision2mmmv.py mambavision_small_1k.pth.tar checkpoints/mambavision_s_in1k.pth
#   python tools/model_converters/mambavision2mmmv.py cascade_mask_rcnn_mamba_vision_small_3x_coco.pth \
#       checkpoints/cascade_mask_rcnn_mambavision_s_3x_coco.pth
#   python tools/test.py configs/cascade_mask_rcnn_mambavision_s_3x_coco.py \
#       checkpoints/cascade_mask_rcnn_mambavision_s_3x_coco.pth
_base_ = './cascade_mask_rcnn_mambavision_t_3x_coco.py'

model = dict(
    backbone=dict(
        arch='S',
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint='checkpoints/mambavision_s_in1k.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
