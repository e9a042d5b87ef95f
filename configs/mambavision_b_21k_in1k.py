# MambaVision-B-21K: pre-trained on ImageNet-21K, fine-tuned on ImageNet-1K (mmpretrain). Published top-1: 84.9 at 224 x
# 224. Official weights: https://huggingface.co/nvidia/MambaVision-B-21K/resolve/main/mambavision_base_21k.pth.tar
#
#   python tools/model_converters/mambavision2mmmv.py mambavision_base_21k.pth.tar \
#       checkpoints/mambavision_b_21k_in1k.pth
#   python tools/test.py configs/mambavision_b_21k_in1k.py checkpoints/mambavision_b_21k_in1k.pth
#
# Test transform (the base's): crop_pct 1.0 -> short side floor(224 / 1.0) = 224 (bicubic), centre crop 224.
#
# The ImageNet-21K pre-training and ImageNet-1K fine-tuning recipes of this model are not published. This config is for
# evaluating the released weights and for fine-tuning from them; training it runs the base's 1K recipe, which is not the
# official procedure.
_base_ = ['./_base_/mambavision_in1k.py']

model = dict(backbone=dict(arch='B', drop_path_rate=0.3), head=dict(in_channels=1024))
