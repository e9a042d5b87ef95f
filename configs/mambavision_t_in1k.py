# MambaVision-T ImageNet-1K classifier (mmpretrain). Published top-1: 82.3 at 224 x 224. Official weights:
# https://huggingface.co/nvidia/MambaVision-T-1K/resolve/main/mambavision_tiny_1k.pth.tar
#
#   python tools/model_converters/mambavision2mmmv.py mambavision_tiny_1k.pth.tar checkpoints/mambavision_t_in1k.pth
#   python tools/test.py configs/mambavision_t_in1k.py checkpoints/mambavision_t_in1k.pth
#
# Test transform (the base's): crop_pct 1.0 -> short side floor(224 / 1.0) = 224 (bicubic), centre crop 224. With
# converted official weights its logits equal the official model's.
#
# Training: the published recipe (wd 0.05, 20 warm-up epochs, drop path 0.2; official MESA weight 0.5), without MESA
# (configs/_base_/mambavision_in1k.py says what that leaves out).
_base_ = ['./_base_/mambavision_in1k.py']

model = dict(backbone=dict(arch='T', drop_path_rate=0.2), head=dict(in_channels=640))
