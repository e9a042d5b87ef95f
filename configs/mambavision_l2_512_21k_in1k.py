# MambaVision-L2-512-21K: pre-trained on ImageNet-21K, fine-tuned on ImageNet-1K (mmpretrain). Published top-1: 87.3 at
# 512 x 512. Official weights:
# https://huggingface.co/nvidia/MambaVision-L2-512-21K/resolve/main/mambavision_L2_21k_240m_512.pth.tar
#
#   python tools/model_converters/mambavision2mmmv.py mambavision_L2_21k_240m_512.pth.tar \
#       checkpoints/mambavision_l2_512_21k_in1k.pth
#   python tools/test.py configs/mambavision_l2_512_21k_in1k.py checkpoints/mambavision_l2_512_21k_in1k.pth
#
# Test transform: crop_pct 0.93, size 512 (below).
#
# The ImageNet-21K pre-training and ImageNet-1K fine-tuning recipes of this model are not published. This config is for
# evaluating the released weights and for fine-tuning from them; training it runs the base's 1K recipe at 512 x 512,
# which is not the official procedure.
_base_ = ['./_base_/mambavision_in1k.py']

model = dict(backbone=dict(arch='L2-512-21k', drop_path_rate=0.3), head=dict(in_channels=1568))

# Train and test at 512 x 512: the base's pipelines with RandomResizedCrop 512; test: short side resized to
# floor(512 / 0.93) = 550 (bicubic), then a centre crop 512.
train_pipeline = [dict(step, scale=512) if step.type == 'RandomResizedCrop' else step
                  for step in _base_.train_pipeline]
test_pipeline = [dict(step, scale=550) if step.type == 'ResizeEdge' else
                 dict(step, crop_size=512) if step.type == 'CenterCrop' else step for step in _base_.test_pipeline]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
