"""The scripts under tools/ as modules for tests (tools/ is not a package): ``load_tool('analysis/x.py')``."""
import importlib.util
import os.path as osp
import sys
from types import ModuleType

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def load_tool(path: str, register: bool = False) -> ModuleType:
    """tools/<path> executed as a module named after the file; `register` also puts it in sys.modules under that
    name (worker processes unpickle its functions by module name)."""
    name = osp.splitext(osp.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, osp.join(REPO, 'tools', path))
    module = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
