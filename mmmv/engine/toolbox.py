"""A config's model, built in its toolbox, for the tools that run a model outside a Runner (FLOPs, export, inference).

The toolbox is the config's ``default_scope`` ('mmdet', 'mmseg' or 'mmpretrain'). Problems a user can fix (a config of
no toolbox, a toolbox that cannot be imported, mmpretrain without a working torchvision) are raised as
:class:`SetupError`, whose message is one line naming the fix; the tools print it without a traceback
(:func:`run_tool`, :func:`exit_tool`).
"""
import importlib
import importlib.util
import sys
import traceback
from typing import Callable, Optional, Tuple

TOOLBOXES = ('mmdet', 'mmseg', 'mmpretrain')
PACKAGES = {'mmdet': 'mmdet==3.3.0', 'mmseg': 'mmsegmentation==1.2.2', 'mmpretrain': 'mmpretrain==1.2.0'}


DETECTION_SHAPE = (800, 1280)  # H x W of mmdet's get_flops
SEGMENTATION_SHAPE = (512, 512)
CLASSIFICATION_SIZE = 224


class SetupError(RuntimeError):
    """Something about the installation, the config or the files it names that the user must fix; one line."""


def torchvision_fix() -> str:
    """How to get a torchvision that works with the installed torch."""
    import torch
    version = torch.__version__
    build = version.split('+')[1] if '+' in version else ''
    index = f'https://download.pytorch.org/whl/{build}' if build else 'your PyTorch index'
    major, minor = version.split('.')[:2]
    wanted = f'torchvision==0.{int(minor) + 15}.*' if major == '2' else 'torchvision'
    return f'pip install --no-deps "{wanted}" --index-url {index} (the build made for torch {version})'


def torchvision_problem() -> Optional[str]:
    """None when torchvision imports; else why not (its first error line). mmpretrain needs it, mmdet / mmseg do not."""
    try:
        importlib.import_module('torchvision')
    except ModuleNotFoundError as error:
        if error.name == 'torchvision':
            return 'torchvision is not installed'
        return f'torchvision fails to import (ModuleNotFoundError: {error})'
    except Exception as error:  # noqa: BLE001 - a CUDA build on a CPU torch raises RuntimeError / OSError
        for name in [n for n in sys.modules if n == 'torchvision' or n.startswith('torchvision.')]:
            del sys.modules[name]
        first = str(error).splitlines()[0] if str(error) else ''
        return f'torchvision fails to import ({type(error).__name__}: {first})'
    return None


def _mentions_torchvision(error: BaseException) -> bool:
    return 'torchvision' in ''.join(traceback.format_exception(error))


def import_toolbox(scope: str) -> None:
    """Import toolbox `scope` and register its modules (without changing the default scope)."""
    if scope not in TOOLBOXES:
        raise SetupError(f"default_scope is {scope!r}; mmmv's tools need one of {', '.join(TOOLBOXES)}: inherit a "
                         'toolbox base such as "mmdet::_base_/default_runtime.py"')
    if importlib.util.find_spec(scope) is None:
        raise SetupError(f'this config needs {scope}, which is not installed; fix: bash tools/install.sh '
                         f'(or pip install "{PACKAGES[scope]}")')
    try:
        importlib.import_module(f'{scope}.utils').register_all_modules(init_default_scope=False)
    except Exception as error:  # noqa: BLE001 - only a failing torchvision import is turned into the fix
        if not _mentions_torchvision(error):
            raise
        problem = torchvision_problem() or f'torchvision fails ({type(error).__name__})'
        raise SetupError(f'{scope} imports torchvision, but {problem}; fix: {torchvision_fix()}') from error


def build_model(cfg, *, revert_sync_bn: bool = True):
    """The config's model from its toolbox's registry, in eval mode, with its random initial weights: no
    ``init_cfg`` checkpoint is read. SyncBN layers become BatchNorm (one process) unless `revert_sync_bn` is False."""
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import DefaultScope
    scope = cfg.get('default_scope')
    import_toolbox(scope)
    registry = importlib.import_module(f'{scope}.registry').MODELS
    with DefaultScope.overwrite_default_scope(scope):
        model = registry.build(cfg.model)
    if revert_sync_bn:
        model = revert_sync_batchnorm(model)
    return model.eval()


def load_weights(model, checkpoint: str, *, strict: bool = True) -> dict:
    """Load `checkpoint` (mmmv's safe loading: no code in it runs) into `model`; returns the checkpoint's meta.

    Missing and unexpected keys fail with their names when `strict`."""
    import os.path as osp

    import mmmv  # noqa: F401  (safe loading of mmengine checkpoints)
    from mmengine.runner import load_checkpoint
    if not osp.isfile(checkpoint):
        raise SetupError(f'checkpoint {checkpoint!r} does not exist; convert an official one with '
                         'tools/model_converters/ (docs/converting_weights.md)')
    loaded = load_checkpoint(model, checkpoint, map_location='cpu', strict=strict,
                             revise_keys=[(r'^module\.', '')])
    return loaded.get('meta', {}) if isinstance(loaded, dict) else {}


# ---------------------------------------------------------------------------------------------------------------------
def _pair(size) -> tuple:
    """An mmcv/mmseg size (int, or (H, W)) as (H, W)."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _classification_crop(cfg):
    dataloader = cfg.get('test_dataloader') or {}
    pipeline = cfg.get('test_pipeline') or dataloader.get('dataset', {}).get('pipeline', [])
    for transform in pipeline:
        if transform.get('type') == 'CenterCrop':
            return _pair(transform['crop_size'])
    return None


def default_shape(cfg, scope: str) -> tuple:
    """(H, W) of the input when --shape is not given."""
    if scope == 'mmdet':
        return DETECTION_SHAPE
    if scope == 'mmseg':
        size = cfg.get('crop_size') or cfg.model.get('data_preprocessor', {}).get('size')
        return _pair(size) if size else SEGMENTATION_SHAPE
    return _classification_crop(cfg) or _pair(CLASSIFICATION_SIZE)


def run_tool(main: Callable[[], int]) -> int:
    """Run a tool's `main`, turning a :class:`SetupError` into ``error: ...`` on stderr and exit status 2. A process
    group that the run initialised (``torchrun`` / ``dist_train.sh``) is destroyed before the tool returns, whichever
    way it ends (:func:`exit_tool` also skips the interpreter's teardown after such a run)."""
    return _run(main)[0]


def exit_tool(main: Callable[[], int]) -> None:
    """End a tool's process with `run_tool(main)`'s status (``sys.exit``). After a distributed run, one that left a
    process group for `run_tool` to destroy, the process ends with ``os._exit`` once Python's streams and logging are
    flushed and unreferenced objects collected (a DataLoader's workers are shut down then): in the interpreter's
    teardown, C++ threads of torch.distributed outlived their owners and aborted finished two-process gloo runs
    ('terminate called without an active exception', SIGABRT with no Python frame left; about 1 run in 8 on a loaded
    2-core machine, after the group had been destroyed), and torchrun then reported the run as failed."""
    status, distributed = _run(main)
    if not distributed:
        sys.exit(status)
    import gc
    import logging
    import os
    gc.collect()
    logging.shutdown()
    if status is not None and not isinstance(status, int):  # what sys.exit does with a message
        print(status, file=sys.stderr)
        status = 1
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(status or 0)


def _run(main: Callable[[], int]) -> Tuple[int, bool]:
    """`main`'s status (2 after a SetupError) and whether a process group was left for this to destroy."""
    try:
        status = main()
    except SetupError as error:
        print(f'error: {error}', file=sys.stderr)
        status = 2
    finally:
        distributed = destroy_process_group()
    return status, distributed


def destroy_process_group() -> bool:
    """`torch.distributed.destroy_process_group` where a default group exists (a local call, no collective); whether
    one did."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        return True
    return False
