# The VM-UNet ISIC 2017 config (configs/vmunet_isic17.py) on mmmv's embedded demo data: 64 x 64 skin-like images with
# one dark lesion each (40 train / 12 val, generated into data/demo_lesions on first use, or by
# tools/misc/make_demo_data.py --kind lesions). Trains from scratch on a CPU in a few minutes, reports the pooled DSC / mIoU and
# saves pictures of the predicted masks next to the ground truth (WORK_DIR/TIMESTAMP/vis_data/vis_image/).
#
#   python tools/train.py configs/demo/vmunet_demo.py
#   python tools/test.py configs/demo/vmunet_demo.py WORK_DIR/epoch_N.pth --show-dir predictions
_base_ = ['../vmunet_isic17.py']

dataset_type = 'DemoLesionDataset'
data_root = 'data/demo_lesions/'
image_size = (64, 64)
demo_data = dict(num_train=40, num_val=12, image_size=image_size, seed=0)  # mmmv.datasets.generate_demo_lesions

# VM-UNet's architecture at a quarter of its width and half its depth, from scratch (no download offline): the same
# modules, about 1.2 M parameters instead of 27.4 M, so that a CPU trains it in minutes.
embed_dim = 24
model = dict(
    data_preprocessor=dict(size=image_size),
    backbone=dict(arch=dict(_delete_=True, depths=(1, 1, 1, 1), embed_dim=embed_dim), drop_path_rate=0.0, init_cfg=None),
    decode_head=dict(
        in_channels=(embed_dim, 2 * embed_dim, 4 * embed_dim, 8 * embed_dim, 8 * embed_dim),
        decoder_depths=(1, 1, 1, 1),
        drop_path_rate=0.0,
        init_cfg=None))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='Resize', scale=image_size, keep_ratio=False),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='RandomFlip', prob=0.5, direction='vertical'),
    dict(type='RandomRotate', prob=0.5, degree=180, pad_val=0, seg_pad_val=0),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_size, keep_ratio=False),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=1,
    dataset=dict(type=dataset_type, data_root=data_root, pipeline=train_pipeline, **demo_data))
val_dataloader = dict(
    batch_size=4,
    num_workers=1,
    dataset=dict(type=dataset_type, data_root=data_root, pipeline=test_pipeline, **demo_data))
test_dataloader = val_dataloader

max_epochs = 15
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=10),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=1e-5, by_epoch=True, begin=0, end=max_epochs),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
default_hooks = dict(
    logger=dict(interval=5),
    checkpoint=dict(interval=max_epochs, save_best=None),
    # draw every validation image: input, ground truth and prediction, side by side
    visualization=dict(type='SegVisualizationHook', draw=True, interval=1))
custom_hooks = [dict(type='PredictionPicturesHook')]  # prints the folder of those pictures at the end
env_cfg = dict(cudnn_benchmark=False)
