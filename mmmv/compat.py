"""Keep the toolboxes importable next to packages newer than they are.

mmpretrain 1.2 imports its multimodal models (BLIP, OFA, ...) whenever transformers >= 4.28 is installed, and they
import names that transformers 4.56 removed from ``transformers.modeling_utils`` (``apply_chunking_to_forward``,
``find_pruneable_heads_and_indices``, ``prune_linear_layer``). With such a transformers, ``import mmpretrain.models``
fails with ``TypeError: NoneType takes no arguments``, and so does ``import mmdet.models`` (mmdet imports mmpretrain's
batch augments): every detection and classification config stops before its model is built.

``import mmmv`` therefore sets mmpretrain's own switch for a missing transformers (``WITH_MULTIMODAL``) to False
as soon as ``mmpretrain.utils.dependency`` is imported, when the installed versions are known to clash, with a
warning. The multimodal models then raise mmpretrain's "install the multimodal dependencies" error if built; nothing
else changes.
"""
import importlib.util
import itertools
import sys
import warnings
from importlib import metadata
from typing import Optional

from .import_hooks import after_import

TRANSFORMERS_WITHOUT_OLD_NAMES = (4, 56)
MMPRETRAIN_DEPENDENCY = 'mmpretrain.utils.dependency'


def version_tuple(version: str) -> tuple:
    """(major, minor) of a version string; pre-release tails are ignored: '4.56.0rc1' -> (4, 56)."""
    numbers = []
    for part in version.split('.')[:2]:
        digits = ''.join(itertools.takewhile(str.isdigit, part))
        numbers.append(int(digits) if digits else 0)
    return tuple(numbers)


def multimodal_clash() -> Optional[str]:
    """Why mmpretrain's multimodal models cannot import next to the installed transformers, or None."""
    try:
        transformers = metadata.version('transformers')
        mmpretrain = metadata.version('mmpretrain')
    except metadata.PackageNotFoundError:
        return None
    if version_tuple(transformers) < TRANSFORMERS_WITHOUT_OLD_NAMES or version_tuple(mmpretrain) > (1, 2):
        return None
    return (f"mmpretrain {mmpretrain}'s multimodal models (BLIP, OFA, ...) do not import with transformers "
            f'{transformers}, so mmmv turned them off (detection, segmentation and classification are unaffected); '
            'to use them: pip install "transformers<4.56"')


def _disable_multimodal(dependency) -> None:
    reason = multimodal_clash()
    if reason is None or not getattr(dependency, 'WITH_MULTIMODAL', False):
        return
    if 'mmpretrain.models' in sys.modules:  # too late: its multimodal package has run already
        return
    dependency.WITH_MULTIMODAL = False
    warnings.warn(reason, stacklevel=2)


def guard_mmpretrain_multimodal() -> None:
    """Apply :func:`_disable_multimodal` when mmpretrain's dependency module is imported (now if it already is).
    Costs two metadata lookups when mmpretrain is installed; nothing is imported."""
    if importlib.util.find_spec('mmpretrain') is not None and multimodal_clash() is not None:
        after_import(MMPRETRAIN_DEPENDENCY, _disable_multimodal)
