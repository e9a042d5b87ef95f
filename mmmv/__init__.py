"""mmmv: Mamba-based vision backbones for the OpenMMLab toolboxes.

``import mmmv`` (or ``custom_imports=dict(imports=['mmmv'])`` in a config) registers the models in mmengine's registry
and makes mmengine's checkpoint loading work, safely, on torch >= 2.6. Neither needs more than mmengine; without
mmengine the plain-PyTorch models and ops are still usable.

Start-up stays short (tests/test_startup.py): neither torch._dynamo nor triton is imported until a scan runs on
Triton, and mmengine's checkpoint module (with its runner) is patched when something imports it, not imported here.
"""
import importlib.util
import warnings

# mmengine 0.10 imports pkg_resources, whose deprecation warning (setuptools >= 67) is printed once per import site,
# four times before a tool says anything; it is harmless (tools/install.sh pins setuptools < 81, which still has it).
warnings.filterwarnings('ignore', message='pkg_resources is deprecated as an API', category=UserWarning)

from .ops import selective_scan  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = ['__version__', 'selective_scan']

if importlib.util.find_spec('mmengine') is not None:
    from . import registry  # noqa: F401
    from .checkpoint.safe_load import patch_mmengine_on_import

    patch_mmengine_on_import()

from .compat import guard_mmpretrain_multimodal  # noqa: E402

guard_mmpretrain_multimodal()
