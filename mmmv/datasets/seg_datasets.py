"""mmseg datasets of the VM-UNet configs: ISIC2017, ISIC2018 (binary lesion), Synapse (9 classes) and the demo lesions.

All read mmseg's folder layout written by ``tools/dataset_converters/prepare_isic.py`` / ``prepare_synapse.py``
(PNG images, PNG label maps holding class indices 0..K-1)::

    DATA_ROOT/img_dir/{train,val,test}/NAME.png
    DATA_ROOT/ann_dir/{train,val,test}/NAME.png

This module imports mmseg. :mod:`mmmv.registry` registers builders that import it only when a dataset is built, so
``import mmmv`` does not need mmseg.
"""
import os.path as osp

from mmseg.datasets import BaseSegDataset, SynapseDataset

from .demo_lesions import DEFAULT_IMAGE_SIZE, DEFAULT_NUM_TRAIN, DEFAULT_NUM_VAL, LESION_CLASSES, generate_demo_lesions

LESION_PALETTE = [[0, 0, 0], [230, 60, 60]]


class _CheckedFolders:
    """Fails with the preparation command when the image folder is missing or holds no image."""
    PREPARE = ''

    def load_data_list(self):
        img_dir = self.data_prefix.get('img_path', '')
        if not self.ann_file and not osp.isdir(img_dir):
            raise FileNotFoundError(f'{type(self).__name__}: image folder {img_dir!r} does not exist; '
                                    f'prepare the data with: {self.PREPARE}')
        data_list = super().load_data_list()
        if not data_list:
            raise FileNotFoundError(f'{type(self).__name__}: no *{self.img_suffix} image in {img_dir!r}; '
                                    f'prepare the data with: {self.PREPARE}')
        return data_list


class ISIC2017Dataset(_CheckedFolders, BaseSegDataset):
    """ISIC 2017 Task 1 lesion segmentation: classes background (0) and lesion (1)."""
    METAINFO = dict(classes=LESION_CLASSES, palette=LESION_PALETTE)
    PREPARE = 'python tools/dataset_converters/prepare_isic.py isic2017 DOWNLOAD_DIR data/isic2017'

    def __init__(self, img_suffix: str = '.png', seg_map_suffix: str = '.png', **kwargs):
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, **kwargs)


class ISIC2018Dataset(ISIC2017Dataset):
    """ISIC 2018 Task 1 lesion segmentation: classes background (0) and lesion (1)."""
    PREPARE = 'python tools/dataset_converters/prepare_isic.py isic2018 DOWNLOAD_DIR data/isic2018'


class SynapseSliceDataset(_CheckedFolders, SynapseDataset):
    """Synapse multi-organ CT as 2D slices of TransUNet's preprocessing (9 classes: background and 8 organs).

    mmseg's ``SynapseDataset`` with PNG images: slices are named ``caseXXXX_sliceYYY``, which
    ``CaseDiceHD95Metric`` uses to rebuild the 3D cases. (A separate name, because mmseg's ``SynapseDataset`` is found
    first in mmseg configs and expects JPEG images.)
    """
    PREPARE = 'python tools/dataset_converters/prepare_synapse.py DOWNLOAD_DIR data/synapse'

    def __init__(self, img_suffix: str = '.png', seg_map_suffix: str = '.png', **kwargs):
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, **kwargs)


class DemoLesionDataset(ISIC2017Dataset):
    """The generated lesion dataset of :mod:`mmmv.datasets.demo_lesions`, in the ISIC layout under ``data_root``.

    The data is generated (on the main process) when ``data_root`` does not hold it already with the same
    parameters, so a demo config runs from a fresh clone. Give the train and val datasets the same parameters.

    Args:
        num_train, num_val, image_size, seed: generation parameters (see ``generate_demo_lesions``).
        **kwargs: as ``BaseSegDataset``; ``data_root`` is required.
    """
    PREPARE = 'python tools/misc/make_demo_data.py --kind lesions'

    def __init__(self,
                 num_train: int = DEFAULT_NUM_TRAIN,
                 num_val: int = DEFAULT_NUM_VAL,
                 image_size=DEFAULT_IMAGE_SIZE,
                 seed: int = 0,
                 **kwargs):
        data_root = kwargs.get('data_root')
        if not data_root:
            raise ValueError('DemoLesionDataset needs data_root: the folder the demo data is generated in')
        from mmengine.dist import barrier, is_main_process
        if is_main_process():
            generate_demo_lesions(data_root, num_train=num_train, num_val=num_val, image_size=tuple(image_size),
                                  seed=seed)
        barrier()
        super().__init__(**kwargs)


SEG_DATASETS = (ISIC2017Dataset, ISIC2018Dataset, SynapseSliceDataset, DemoLesionDataset)
