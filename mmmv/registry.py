"""mmmv's models in the OpenMMLab registries.

Each model is registered once, in mmengine's root ``MODELS`` registry. mmdet's, mmseg's and mmpretrain's ``MODELS``
are children of it and look names up in their parent when they do not hold them, so ``type='MambaVision'`` builds from
any of the three toolboxes' configs (through ``custom_imports=dict(imports=['mmmv'])``) without mmmv importing any
toolbox: a user with only one of them installed can use it.
"""
from mmengine.registry import MODELS

from .models import MambaVision

MODELS.register_module(name='MambaVision', module=MambaVision)

__all__ = ['MODELS']
