"""Stand-in modules for ``import torchvision`` where no working torchvision exists (CPU-only torch: PyPI's Linux
torchvision wheels are CUDA builds). Only for test subprocesses: mmpretrain and timm import torchvision at module level
although the code paths the tests exercise (building models, forward passes) never call it. Anything that *uses* a
stubbed name gets an inert placeholder, so a test relying on real torchvision behaviour would fail, not pass.
"""
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types


class _Placeholder(type):
    def __getattr__(cls, name):
        if name.startswith('__'):
            raise AttributeError(name)
        return _placeholder(name)


def _placeholder(name):
    return _Placeholder(name, (), {'__init__': lambda self, *args, **kwargs: None})


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith('__'):
            raise AttributeError(name)
        value = _placeholder(name)
        setattr(self, name, value)
        return value


class _TorchvisionStubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname == 'torchvision' or fullname.startswith('torchvision.'):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def torchvision_works() -> bool:
    if importlib.util.find_spec('torchvision') is None:
        return False
    try:
        import torchvision  # noqa: F401
    except Exception:  # a CUDA-only build raises RuntimeError/OSError on a CPU-only torch
        for name in [n for n in sys.modules if n == 'torchvision' or n.startswith('torchvision.')]:
            del sys.modules[name]
        return False
    return True


def install_if_needed() -> bool:
    """Install the stand-ins unless a working torchvision is importable; returns True if installed."""
    if torchvision_works():
        return False
    sys.meta_path.insert(0, _TorchvisionStubFinder())
    return True


def uninstall() -> None:
    """Take the stand-ins out again, the finder and every module it stubbed, for a process that goes on without them
    (pytest's, after a test that ran code installing them in-process)."""
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _TorchvisionStubFinder)]
    for name in [name for name, module in sys.modules.items() if isinstance(module, _StubModule)]:
        del sys.modules[name]
