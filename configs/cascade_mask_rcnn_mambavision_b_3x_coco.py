# Cascade Mask R-CNN + FPN with MambaVision-B, COCO 3x: the official recipe, as the T file
# (configs/cascade_mask_rcnn_mambavision_t_3x_coco.py) with the B backbone (layer scale 1e-5), drop path 0.5 (see the
# T file's note: the published run trained with 0.2) and lr 2e-4. Published: box AP 52.8, mask AP 45.7.
#
#   python tools/model_converters/mambavision2mmmv.py mambavision_base_1k.pth.tar checkpoints/mambavision_b_in1k.pth
#   python tools/model_converters/mambavision2mmmv.py cascade_mask_rcnn_mamba_vision_base_3x_coco.pth \
#       checkpoints/cascade_mask_rcnn_mambavision_b_3x_coco.pth
#   python tools/test.py configs/cascade_mask_rcnn_mambavision_b_3x_coco.py \
#       checkpoints/cascade_mask_rcnn_mambavision_b_3x_coco.pth
_base_ = './cascade_mask_rcnn_mambavision_t_3x_coco.py'

model = dict(
    backbone=dict(
        arch='B',
        drop_path_rate=0.5,
        layer_scale=1e-5,
        init_cfg=dict(checkpoint='checkpoints/mambavision_b_in1k.pth')),
    neck=dict(in_channels=[128, 256, 512, 1024]))
optim_wrapper = dict(optimizer=dict(lr=2e-4))
