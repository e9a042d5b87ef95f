"""Datasets: small, deterministic generated data sets that let configs run without downloads, and the mmseg
dataset classes of the segmentation configs.

Each generator lives in its own module and writes a standard on-disk format (COCO for detection, mmseg's
img_dir/ann_dir layout for segmentation), so the toolboxes' dataset classes read it; add a new generator by adding a
module and exporting it here. The mmseg classes (:mod:`mmmv.datasets.seg_datasets`) import mmseg, so they are not
imported here: :func:`seg_dataset_builder` imports them when a config builds one.
"""
import importlib
from typing import Callable

from .demo_lesions import LESION_CLASSES, generate_demo_lesions
from .demo_shapes import DEMO_CLASSES, generate_demo_coco

# type names in configs of the classes in seg_datasets.py
SEG_DATASET_NAMES = ('ISIC2017Dataset', 'ISIC2018Dataset', 'SynapseSliceDataset', 'DemoLesionDataset')


def seg_dataset_builder(name: str) -> Callable:
    """A function building the mmseg dataset class `name` of :mod:`mmmv.datasets.seg_datasets` from config keywords,
    importing mmseg on the first call."""
    if name not in SEG_DATASET_NAMES:
        raise ValueError(f'unknown segmentation dataset {name!r}; valid names: {", ".join(SEG_DATASET_NAMES)}')

    def build(**cfg):
        try:
            module = importlib.import_module('.seg_datasets', __name__)
        except ImportError as error:
            raise ImportError(f'{name} needs mmsegmentation: pip install "mmmv[seg]" (see docs/install.md)') \
                from error
        return getattr(module, name)(**cfg)

    build.__name__ = build.__qualname__ = f'build_{name}'
    build.__doc__ = f'Build mmmv.datasets.seg_datasets.{name} (imports mmseg).'
    return build


__all__ = [
    'DEMO_CLASSES', 'generate_demo_coco', 'LESION_CLASSES', 'generate_demo_lesions', 'SEG_DATASET_NAMES',
    'seg_dataset_builder'
]
