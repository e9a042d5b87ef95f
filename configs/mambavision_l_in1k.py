# MambaVision-L ImageNet-1K classifier (mmpretrain). Published top-1: 85.0 at 224 x 224. Official weights:
# https://huggingface.co/nvidia/MambaVision-L-1K/resolve/main/mambavision_large_1k.pth.tar
#
#   python tools/model_converters/mambavision2mmmv.py mambavision_large_1k.pth.tar checkpoints/mambavision_l_in1k.pth
#   python tools/test.py configs/mambavision_l_in1k.py checkpoints/mambavision_l_in1k.pth
#
# Test transform (the base's): crop_pct 1.0 -> short side floor(224 / 1.0) = 224 (bicubic), centre crop 224.
#
# Training: the published recipe (wd 0.12, 20 warm-up epochs, drop path 0.3; official MESA weight 6.0), without MESA
# (configs/_base_/mambavision_in1k.py says what that leaves out).
_base_ = ['./_base_/mambavision_in1k.py']

model = dict(backbone=dict(arch='L', drop_path_rate=0.3), head=dict(in_channels=1568))
optim_wrapper = dict(optimizer=dict(weight_decay=0.12))
