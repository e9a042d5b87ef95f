# MambaVision-B ImageNet-1K classifier (mmpretrain). Published top-1: 84.2 at 224 x 224. Official weights:
# https://huggingface.co/nvidia/MambaVision-B-1K/resolve/main/mambavision_base_1k.pth.tar
#
#   python tools/model_converters/mambavision2mmmv.py mambavision_base_1k.pth.tar checkpoints/mambavision_b_in1k.pth
#   python tools/test.py configs/mambavision_b_in1k.py checkpoints/mambavision_b_in1k.pth
#
# Test transform (the base's): crop_pct 1.0 -> short side floor(224 / 1.0) = 224 (bicubic), centre crop 224.
#
# Training: the published recipe (wd 0.075, 35 warm-up epochs, drop path 0.3; official MESA weight 1.0 from 30% of
# training), without MESA (configs/_base_/mambavision_in1k.py says what that leaves out).
_base_ = ['./_base_/mambavision_in1k.py']

model = dict(backbone=dict(arch='B', drop_path_rate=0.3), head=dict(in_channels=1024))
optim_wrapper = dict(optimizer=dict(weight_decay=0.075))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6 / 5e-3, by_epoch=True, begin=0, end=35, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=275, eta_min=5e-6, by_epoch=True, begin=35, end=310),
]
