"""mmmv's models in the OpenMMLab registries.

Each model is registered once, in mmengine's root ``MODELS`` registry. mmdet's, mmseg's and mmpretrain's ``MODELS``
are children of it and look names up in their parent when they do not hold them, so ``type='MambaVision'`` builds from
any of the three toolboxes' configs (through ``custom_imports=dict(imports=['mmmv'])``) without mmmv importing any
toolbox: a user with only one of them installed can use it.

``VMUNetHead`` subclasses mmseg's ``BaseDecodeHead``, so its class cannot exist without mmseg. Its name is registered
to :func:`build_vmunet_head`, which imports mmseg only when such a head is built, and says how to install it when
mmseg is missing.

The segmentation configs' extras are registered the same way: the ``VMUNetDiceLoss`` loss (``MODELS``), the
``PooledSegMetric`` and ``CaseDiceHD95Metric`` metrics (``METRICS``; they need only mmengine), the
``TrainBenchmarkHook`` and ``PredictionPicturesHook`` (``HOOKS``; like every hook it is registered through :func:`lazy_builder`, because importing
mmengine's ``Hook`` imports mmengine's optimisers and torch.distributed, over a second of ``import mmmv``), and, when
mmseg is installed, the dataset names of :data:`mmmv.datasets.SEG_DATASET_NAMES` (``DATASETS``), each bound to a builder that
imports mmseg when the dataset is built.
"""
import importlib
import importlib.util
from typing import Callable

from mmengine.registry import DATASETS, HOOKS, METRICS, MODELS

from .datasets import SEG_DATASET_NAMES, seg_dataset_builder
from .evaluation.metrics import CaseDiceHD95Metric, PooledSegMetric
from .losses import VMUNetDiceLoss
from .models import MambaVision, VSSEncoder


def lazy_builder(module: str, name: str) -> Callable:
    """A function building ``module.name`` from config keywords, importing `module` on the first build."""

    def build(**cfg):
        return getattr(importlib.import_module(module), name)(**cfg)

    build.__name__ = build.__qualname__ = f'build_{name}'
    build.__doc__ = f'Build {module}.{name} (imported on first use).'
    return build


def build_vmunet_head(**cfg):
    """Build :class:`mmmv.models.vmunet_head.VMUNetHead` (``type='VMUNetHead'``), importing mmseg now."""
    from .models.vmunet_head import VMUNetHead  # raises ImportError with the install command without mmseg
    return VMUNetHead(**cfg)


MODELS.register_module(name='MambaVision', module=MambaVision)
MODELS.register_module(name='VSSEncoder', module=VSSEncoder)
MODELS.register_module(name='VMUNetHead', module=build_vmunet_head)
MODELS.register_module(name='VMUNetDiceLoss', module=VMUNetDiceLoss)
METRICS.register_module(name='PooledSegMetric', module=PooledSegMetric)
METRICS.register_module(name='CaseDiceHD95Metric', module=CaseDiceHD95Metric)
HOOKS.register_module(name='TrainBenchmarkHook', module=lazy_builder('mmmv.engine.hooks', 'TrainBenchmarkHook'))
HOOKS.register_module(name='PredictionPicturesHook',
                      module=lazy_builder('mmmv.engine.picture_hook', 'PredictionPicturesHook'))
if importlib.util.find_spec('mmseg') is not None:
    for _name in SEG_DATASET_NAMES:
        DATASETS.register_module(name=_name, module=seg_dataset_builder(_name))

__all__ = ['MODELS', 'build_vmunet_head', 'lazy_builder']
