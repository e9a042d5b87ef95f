# VM-UNet on ISIC 2018 lesion segmentation: the ISIC 2017 recipe (configs/vmunet_isic17.py) on the 2018 data.
#
#   python tools/dataset_converters/prepare_isic.py isic2018 DOWNLOAD_DIR data/isic2018 --size 256
#   python tools/train.py configs/vmunet_isic18.py
_base_ = ['./vmunet_isic17.py']

dataset_type = 'ISIC2018Dataset'
data_root = 'data/isic2018/'
train_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root))
val_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root))
test_dataloader = val_dataloader
