# UPerNet + MambaVision-B on ADE20K, 160k iterations at 512 x 512: the official recipe, as the T file
# (configs/upernet_mambavision_t_ade20k.py) with the B backbone (layer scale 1e-5), windows (8, 8, 64, 32), drop path
# 0.4 and lr 5e-5. Published: 49.1 mIoU (single scale; official run 16 GPUs x 1 image, the same 16 per step as here).
#
#   python tools/model_converters/mambavision2mmmv.py mambavision_base_1k.pth.tar checkpoints/mambavision_b_in1k.pth
#   python tools/model_converters/mambavision2mmmv.py mamba_vision_160k_ade20k-512x512_base.pth \
#       checkpoints/upernet_mambavision_b_ade20k.pth
#   python tools/test.py configs/upernet_mambavision_b_ade20k.py checkpoints/upernet_mambavision_b_ade20k.pth
#
# The official segmentation backbone does not pass drop_path_rate on (its runs trained with 0.2); the value here is
# the one its config states. Inference is unaffected.
_base_ = './upernet_mambavision_t_ade20k.py'

model = dict(
    backbone=dict(
        arch='B',
        drop_path_rate=0.4,
        layer_scale=1e-5,
        init_cfg=dict(checkpoint='checkpoints/mambavision_b_in1k.pth')),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
