from .mambavision import ARCH_SETTINGS, MambaVision, MambaVisionClassifier
from .vss import (SS2D, FinalPatchExpand4x, PatchEmbed2D, PatchExpand, PatchMerging2D, VSSBlock, VSSEncoder,
                  VSSStage)

__all__ = [
    'ARCH_SETTINGS', 'MambaVision', 'MambaVisionClassifier', 'SS2D', 'VSSBlock', 'VSSStage', 'VSSEncoder',
    'PatchEmbed2D', 'PatchMerging2D', 'PatchExpand', 'FinalPatchExpand4x', 'VMUNetHead'
]


def __getattr__(name):
    # VMUNetHead subclasses mmseg's BaseDecodeHead: imported on first use, so that mmmv.models needs no mmseg
    if name == 'VMUNetHead':
        from .vmunet_head import VMUNetHead
        return VMUNetHead
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
