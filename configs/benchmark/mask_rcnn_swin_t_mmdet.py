# mmdet's own Mask R-CNN Swin-T 1x config, unchanged except for a random backbone initialisation (no download): the
# reference that tools/analysis/benchmark_train.py times configs/mask_rcnn_mambavision_t.py against.
#
#   python tools/analysis/benchmark_train.py configs/benchmark/mask_rcnn_swin_t_mmdet.py --amp
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
custom_imports = dict(imports=['mmmv'], allow_failed_imports=False)  # TrainBenchmarkHook
model = dict(backbone=dict(init_cfg=None))
