# MambaVision-L3-512-21K: pre-trained on ImageNet-21K, fine-tuned on ImageNet-1K (mmpretrain). Published top-1: 88.1 at
# 512 x 512. Official weights:
# https://huggingface.co/nvidia/MambaVision-L3-512-21K/resolve/main/mambavision_L3_21k_740m_512.pth.tar
#
#   python tools/model_converters/mambavision2mmmv.py mambavision_L3_21k_740m_512.pth.tar \
#       checkpoints/mambavision_l3_512_21k_in1k.pth
#   python tools/test.py configs/mambavision_l3_512_21k_in1k.py checkpoints/mambavision_l3_512_21k_in1k.pth
#
# The ImageNet-21K pre-training and ImageNet-1K fine-tuning recipes of this model are not published. This config is for
# evaluating the released weights and for fine-tuning from them; training it runs the base's 1K recipe at 512 x 512,
# which is not the official procedure.
#
# Same data, test transform and training as the L2-512-21K config (512 x 512, crop_pct 0.93: short side resized to
# floor(512 / 0.93) = 550, bicubic, then a centre crop 512); only the backbone differs.
_base_ = ['./mambavision_l2_512_21k_in1k.py']

model = dict(backbone=dict(arch='L3-512-21k', drop_path_rate=0.5), head=dict(in_channels=2048))
