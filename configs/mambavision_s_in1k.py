# MambaVision-S ImageNet-1K classifier (mmpretrain). Published top-1: 83.3 at 224 x 224. Official weights:
# https://huggingface.co/nvidia/MambaVision-S-1K/resolve/main/mambavision_small_1k.pth.tar
#
#   python tools/model_converters/mambavision2mmmv.py mambavision_small_1k.pth.tar checkpoints/mambavision_s_in1k.pth
#   python tools/test.py configs/mambavision_s_in1k.py checkpoints/mambavision_s_in1k.pth
#
# Test transform: crop_pct 0.93, size 224 (below).
#
# Training: the published recipe (wd 0.05, 20 warm-up epochs, drop path 0.2; official MESA weight 1.0), without MESA
# (configs/_base_/mambavision_in1k.py says what that leaves out).
_base_ = ['./_base_/mambavision_in1k.py']

model = dict(backbone=dict(arch='S', drop_path_rate=0.2), head=dict(in_channels=768))

# Test: the base's pipeline with the short side resized to floor(224 / 0.93) = 240 (bicubic), then a
# centre crop 224.
test_pipeline = [dict(step, scale=240) if step.type == 'ResizeEdge' else step for step in _base_.test_pipeline]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
