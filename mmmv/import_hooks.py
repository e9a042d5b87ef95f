"""Run a function on a module right after its code, whether it is already imported or imported later.

mmmv adapts other packages where they are first used, without importing them itself (``import mmmv`` stays light):
mmengine's checkpoint loading (:mod:`mmmv.checkpoint.safe_load`) and mmpretrain's multimodal switch
(:mod:`mmmv.compat`).
"""
import importlib.abc
import importlib.util
import sys
from types import ModuleType
from typing import Callable

AfterImport = Callable[[ModuleType], None]


class _CallAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when `fullname` is imported, lets the usual finders find it and makes its loader call
    `callback(module)` right after the module's code, before anyone else can use the module."""

    def __init__(self, fullname: str, callback: AfterImport):
        self.fullname, self.callback = fullname, callback

    def find_spec(self, fullname, path, target=None):
        if fullname != self.fullname:
            return None
        sys.meta_path.remove(self)  # once; also keeps the find_spec below from coming back here
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            exec_module, callback = spec.loader.exec_module, self.callback

            def exec_and_call(module):
                exec_module(module)
                callback(module)

            spec.loader.exec_module = exec_and_call
        return spec


def after_import(fullname: str, callback: AfterImport) -> None:
    """`callback(module)` now if module `fullname` is imported, else right after its code runs on its first import.
    Registering the same (fullname, callback) twice before the import calls it once."""
    if fullname in sys.modules:
        callback(sys.modules[fullname])
    elif not any(isinstance(finder, _CallAfterImport) and finder.fullname == fullname and finder.callback is callback
                 for finder in sys.meta_path):
        sys.meta_path.insert(0, _CallAfterImport(fullname, callback))
