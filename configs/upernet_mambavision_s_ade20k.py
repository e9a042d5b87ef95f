# UPerNet + MambaVision-S on ADE20K, 160k iterations at 512 x 512: the official recipe, as the T file
# (configs/upernet_mambavision_t_ade20k.py) with the S backbone, windows (8, 8, 160, 56), drop path 0.7 and lr 6e-5.
# Published: 48.2 mIoU (single scale). The official run used 8 GPUs x 2 images, as this file does.
#
#   python tools/model_converters/mambavision2mmmv.py mambavision_small_1k.pth.tar checkpoints/mambavision_s_in1k.pth
#   python tools/model_converters/mambavision2mmmv.py mamba_vision_160k_ade20k-512x512_small.pth \
#       checkpoints/upernet_mambavision_s_ade20k.pth
#   python tools/test.py configs/upernet_mambavision_s_ade20k.py checkpoints/upernet_mambavision_s_ade20k.pth
#
# The official segmentation backbone does not pass drop_path_rate on (its runs trained with 0.2); the value here is
# the one its config states. Inference is unaffected.
_base_ = './upernet_mambavision_t_ade20k.py'

model = dict(
    backbone=dict(
        arch='S',
        drop_path_rate=0.7,
        window_size=(8, 8, 160, 56),
        init_cfg=dict(checkpoint='checkpoints/mambavision_s_in1k.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
optim_wrapper = dict(optimizer=dict(lr=6e-5))
