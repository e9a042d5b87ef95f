# MambaVision-L3-256-21K: pre-trained on ImageNet-21K, fine-tuned on ImageNet-1K (mmpretrain). Published top-1: 87.3 at
# 256 x 256. Official weights:
# https://huggingface.co/nvidia/MambaVision-L3-256-21K/resolve/main/mambavision_L3_21k_740m_256.pth.tar
#
#   python tools/model_converters/mambavision2mmmv.py mambavision_L3_21k_740m_256.pth.tar \
#       checkpoints/mambavision_l3_256_21k_in1k.pth
#   python tools/test.py configs/mambavision_l3_256_21k_in1k.py checkpoints/mambavision_l3_256_21k_in1k.pth
#
# Test transform: crop_pct 1.0, size 256 (below).
#
# The ImageNet-21K pre-training and ImageNet-1K fine-tuning recipes of this model are not published. This config is for
# evaluating the released weights and for fine-tuning from them; training it runs the base's 1K recipe at 256 x 256,
# which is not the official procedure.
_base_ = ['./_base_/mambavision_in1k.py']

model = dict(backbone=dict(arch='L3-256-21k', drop_path_rate=0.5), head=dict(in_channels=2048))

# Train and test at 256 x 256: the base's pipelines with RandomResizedCrop 256; test: short side resized to
# floor(256 / 1.0) = 256 (bicubic), then a centre crop 256.
train_pipeline = [dict(step, scale=256) if step.type == 'RandomResizedCrop' else step
                  for step in _base_.train_pipeline]
test_pipeline = [dict(step, scale=256) if step.type == 'ResizeEdge' else
                 dict(step, crop_size=256) if step.type == 'CenterCrop' else step for step in _base_.test_pipeline]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
