"""Loading checkpoints on torch >= 2.6 without letting them run code.

torch >= 2.6 loads with ``weights_only=True`` by default: a restricted unpickler that only rebuilds tensors, plain
containers and the globals on an allow-list. Checkpoints written by mmengine (resume checkpoints with the message hub's
``HistoryBuffer`` and numpy values), by the OpenMMLab toolboxes and by timm's train script (``args`` is an
``argparse.Namespace``) reference a few more globals, so plain ``torch.load`` refuses them, and
``weights_only=False`` would let a downloaded file run arbitrary code. :func:`safe_load` keeps ``weights_only=True``
and adds an explicit allow-list (:data:`_SAFE_GLOBAL_GROUPS`, extendable with :func:`register_safe_globals`);
:func:`patch_mmengine` routes mmengine's checkpoint loaders through it.
"""
import _compat_pickle
import errno
import functools
import importlib.util
import io
import os
import os.path as osp
import pickle
import re
import struct
import threading
import zipfile
from tempfile import TemporaryDirectory
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union
from urllib.parse import urlparse

import torch

from ..import_hooks import after_import

__all__ = [
    'CorruptCheckpointError', 'UnsafeCheckpointError', 'patch_mmengine', 'patch_mmengine_on_import',
    'register_safe_globals', 'safe_load'
]

FileOrPath = Union[str, os.PathLike, io.IOBase]
MapLocation = Union[None, str, torch.device, Dict[str, str], Callable]
SafeGlobal = Tuple[Any, str]  # (the object, the dotted name a pickle refers to it by)


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The checkpoint's pickle references a global outside the allow-list; nothing from the file was run.

    Attributes:
        path: the file (or a description of the file object).
        offending: the dotted names of the refused globals (or torch's description of the refused operation).
    """

    def __init__(self, path: str, offending: List[str]):
        self.path = path
        self.offending = offending
        super().__init__(
            f"Refused to load checkpoint '{path}': unpickling it needs what mmmv's allow-list of globals that are "
            f"safe to unpickle does not allow: {'; '.join(offending)}. Nothing from the file was executed: the "
            'restricted unpickler (torch.load(weights_only=True)) stopped there, before calling anything it does '
            'not allow.\n'
            'Globals like this can run arbitrary code when unpickled. If you trust the file, either\n'
            '  (1) re-save it once as a plain state dict (in an environment where running it is acceptable):\n'
            "        ckpt = torch.load(path, weights_only=False); torch.save({'state_dict': ckpt['state_dict']}, "
            'new_path)\n'
            '  (2) or, if the global is a plain data class you have reviewed, add it to the allow-list:\n'
            '        mmmv.checkpoint.register_safe_globals([TheClass])')


class CorruptCheckpointError(RuntimeError):
    """The file exists but cannot be read as a checkpoint (truncated, damaged or not a checkpoint at all)."""

    def __init__(self, path: str, detail: str):
        self.path = path
        super().__init__(f"Cannot read checkpoint '{path}': {detail}. The file is truncated or damaged (an "
                         'interrupted download or copy?) or is not a checkpoint written by torch.save; download or '
                         'copy it again.')


# The allow-list. Each group says why unpickling its members cannot run code: the restricted unpickler only ever
# calls an allowed function with arguments that are themselves allowed objects or plain data, and only creates
# instances of allowed classes by `cls.__new__(cls)` followed by `__setstate__`/`__dict__.update` with such data.


def _numpy_globals() -> List[SafeGlobal]:
    """numpy arrays, scalars and dtypes (mmengine's message hub, dataset metainfo, metrics, palettes).

    ``_reconstruct(ndarray, shape, dtype)`` allocates an empty array and ``ndarray.__setstate__`` fills it from raw
    bytes (object arrays get their items from the same restricted unpickler); ``scalar(dtype, bytes)`` builds a numpy
    scalar from raw bytes; ``dtype(spec, align, copy)`` parses a type code and ``__setstate__`` sets byte order and
    field layout. None of them imports or calls anything the file names. The dtype classes
    (``numpy.dtypes.Float64DType``...) are never named in a pickle, but the unpickler only calls ``__setstate__`` on
    instances of allowed classes. numpy 2 pickles ``numpy._core.*``; files written with numpy 1.x say
    ``numpy.core.*``: both spellings map to the same functions, so ``numpy.core`` is never imported.
    """
    import numpy as np
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:
        from numpy.core import multiarray  # numpy 1.x
    found = [(np.ndarray, 'numpy.ndarray'), (np.dtype, 'numpy.dtype')]
    for package in ('numpy._core', 'numpy.core'):
        found += [(multiarray._reconstruct, f'{package}.multiarray._reconstruct'),
                  (multiarray.scalar, f'{package}.multiarray.scalar')]
    dtype_classes = {type(np.dtype(code)) for code in np.typecodes['All'] + 'V'}
    dtype_classes.update(cls for cls in vars(getattr(np, 'dtypes', object)).values()
                         if isinstance(cls, type) and issubclass(cls, np.dtype))  # numpy >= 1.25 (StringDType...)
    found += [(cls, f'{cls.__module__}.{cls.__qualname__}') for cls in sorted(dtype_classes, key=str)]
    return found


def _stdlib_globals() -> List[SafeGlobal]:
    """``argparse.Namespace``: the ``args`` of timm's train script in the official MambaVision ``*.pth.tar``.

    An instance is a bag of attributes, rebuilt by ``__new__`` plus ``__dict__.update``. (torch already allows
    OrderedDict, Counter, set, bytearray and complex; ``defaultdict`` cannot be rebuilt by the restricted unpickler
    at all, which only fills plain dicts.)
    """
    import argparse
    return [(argparse.Namespace, 'argparse.Namespace')]


def _mmengine_globals() -> List[SafeGlobal]:
    """mmengine's ``HistoryBuffer``: the message hub's ``log_scalars`` in every resume checkpoint.

    An instance holds two numpy arrays and an int. Its ``__getstate__`` adds the class's statistics methods, which
    pickle protocol 2 writes as ``getattr(HistoryBuffer, 'min')``; its ``__setstate__`` merges them back into the
    class-level table and sets the attributes. ``builtins.getattr`` itself would reach anything
    (``getattr(f, '__globals__')``...), so that name maps to :func:`_history_buffer_getattr`, which resolves exactly
    those methods and refuses everything else (a crafted file can still put other allowed objects in that table;
    none of them runs code). Only importable where mmengine is; elsewhere a checkpoint that needs it is refused with
    its name, like any other global.
    """
    try:
        from mmengine.logging.history_buffer import HistoryBuffer
    except ImportError:  # mmengine is optional: its classes can only occur in checkpoints that need it installed
        return []
    return [(HistoryBuffer, 'mmengine.logging.history_buffer.HistoryBuffer'),
            (_history_buffer_getattr, 'builtins.getattr')]


_HISTORY_BUFFER_STATISTICS = ('min', 'max', 'current', 'mean')  # HistoryBuffer._set_default_statistics


def _history_buffer_getattr(obj: Any, name: str) -> Callable:
    """``getattr`` as HistoryBuffer pickles need it: only ``HistoryBuffer.{min,max,current,mean}``."""
    from mmengine.logging.history_buffer import HistoryBuffer
    if obj is not HistoryBuffer or name not in _HISTORY_BUFFER_STATISTICS:
        raise pickle.UnpicklingError(f'Can only getattr HistoryBuffer.{{{",".join(_HISTORY_BUFFER_STATISTICS)}}}, '
                                     f'but got getattr({obj!r}, {name!r})')
    return getattr(HistoryBuffer, name)


_SAFE_GLOBAL_GROUPS: Tuple[Callable[[], List[SafeGlobal]], ...] = (_numpy_globals, _stdlib_globals,
                                                                    _mmengine_globals)
_registered_globals: List[SafeGlobal] = []
# torch's safe_globals context edits a process-wide set; one load at a time keeps threads from removing each
# other's entries mid-load.
_load_lock = threading.RLock()


@functools.lru_cache(maxsize=None)
def _builtin_safe_globals() -> Tuple[SafeGlobal, ...]:
    return tuple(item for group in _SAFE_GLOBAL_GROUPS for item in group())


def _allowed_globals() -> List[SafeGlobal]:
    return [*_builtin_safe_globals(), *_registered_globals]


def register_safe_globals(safe_globals: Iterable[Union[Any, SafeGlobal]]) -> None:
    """Add classes or functions to the allow-list used by :func:`safe_load` (and so by patched mmengine).

    Only add a global if unpickling it cannot run code: a plain data class rebuilt from its ``__dict__`` is fine; a
    class with a custom ``__setstate__``/``__reduce__`` that calls out, or any function that imports, evaluates,
    opens or executes something (``eval``, ``getattr``, ``os.system``...) is not.

    Args:
        safe_globals: classes/functions, named in the pickle as ``f'{obj.__module__}.{obj.__qualname__}'``, or
            ``(obj, 'dotted.name')`` pairs for objects that a pickle names differently (renamed modules).
    """
    for item in safe_globals:
        if isinstance(item, tuple):
            if len(item) != 2 or not isinstance(item[1], str):
                raise ValueError(f'Expected (object, "dotted.name"), got {item!r}')
            entry = item
        elif hasattr(item, '__module__') and hasattr(item, '__qualname__'):
            entry = (item, f'{item.__module__}.{item.__qualname__}')
        else:
            raise TypeError(f'Expected a class, a function or an (object, "dotted.name") pair, got {item!r}')
        if entry not in _registered_globals:
            _registered_globals.append(entry)


def safe_load(file_or_path: FileOrPath, map_location: MapLocation = 'cpu') -> Any:
    """Load a checkpoint without running code from it.

    ``.pth``/``.pth.tar``/``.ckpt`` files (anything ``torch.save`` writes, zip or legacy format) are read with
    ``torch.load(weights_only=True)`` plus the allow-list; ``.safetensors`` files (Hugging Face layout) with the
    ``safetensors`` package.

    Args:
        file_or_path: a path (``~`` is expanded) or a binary file object.
        map_location: as for :func:`torch.load`. For ``.safetensors`` a device (string or ``torch.device``).

    Returns:
        The loaded object (a dict of tensors for ``.safetensors``).

    Raises:
        FileNotFoundError: no file at the path.
        UnsafeCheckpointError: the pickle references a global outside the allow-list (nothing was run).
        CorruptCheckpointError: the file is truncated, damaged or not a checkpoint.
        ImportError: a ``.safetensors`` file without the ``safetensors`` package.
    """
    if isinstance(file_or_path, (str, os.PathLike)):
        path = osp.expanduser(os.fspath(file_or_path))
        if not osp.isfile(path):
            raise FileNotFoundError(errno.ENOENT, 'No checkpoint file at this path'
                                    if not osp.isdir(path) else 'Expected a checkpoint file, got a directory', path)
        if path.endswith('.safetensors'):
            return _load_safetensors(path, map_location)
        with open(path, 'rb') as f:
            return _load_pickled(f, path, map_location)
    name = getattr(file_or_path, 'name', None)
    return _load_pickled(file_or_path, str(name) if name else f'<{type(file_or_path).__name__}>', map_location)


def _load_pickled(f: io.IOBase, name: str, map_location: MapLocation) -> Any:
    if not hasattr(torch.serialization, 'safe_globals'):
        raise RuntimeError(f"Loading '{name}' safely needs torch >= 2.5 (torch.serialization.safe_globals); "
                           f'found torch {torch.__version__}')
    start = f.tell()
    _check_header(f.read(4), name)
    f.seek(start)
    with _load_lock, torch.serialization.safe_globals(_allowed_globals()):
        try:
            return torch.load(f, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            offending = _refused_globals(f, start, str(err))
            if offending:
                raise UnsafeCheckpointError(name, offending) from err
            raise CorruptCheckpointError(name, f'it cannot be unpickled ({_torch_detail(str(err))})') from err
        except (EOFError, IndexError, ValueError, struct.error) as err:
            # What torch's readers raise on a file that ends too early (ValueError: the zip reader on a buffer).
            raise CorruptCheckpointError(name, f'reading it failed with {type(err).__name__}: {err}') from err
        except RuntimeError as err:
            if 'corrupt' not in str(err) and 'PytorchStreamReader' not in str(err):
                raise  # not about the file's bytes (e.g. a CUDA map_location on a CPU-only machine)
            raise CorruptCheckpointError(name, str(err).split('. ')[0]) from err


def _check_header(header: bytes, name: str) -> None:
    """Refuse early what torch.load would misread: a checkpoint is a zip archive or a pickle (protocol >= 2)."""
    if len(header) < 4:
        raise CorruptCheckpointError(name, f'the file holds only {len(header)} bytes')
    if not (header.startswith(b'PK\x03\x04') or header.startswith(b'\x80')):
        raise CorruptCheckpointError(name, f'it starts with {header!r}: neither a zip archive nor a pickle as '
                                           'torch.save writes them')


# The restricted unpickler's refusals that name a global. builtins are reported without their module.
_REFUSED_GLOBAL = re.compile(r'GLOBAL (\S+) (?:whose module \S+ is blocked|was not an allowed global)')
_REFUSED_OPERATION = re.compile(r'^(Trying to call reduce for unrecognized function .*|Can only .*)$', re.MULTILINE)


def _refused_globals(f: io.IOBase, start: int, message: str) -> List[str]:
    """The globals (or operations) the restricted unpickler refused, or [] if the error was about something else.

    The message names the first refused global; a zip checkpoint is also disassembled (nothing is called) to
    list all of them.
    """
    at_end = not f.read(1)
    f.seek(start)
    is_zip = zipfile.is_zipfile(f)
    f.seek(start)
    if at_end and not is_zip:
        return []  # a legacy-format file cut inside a GLOBAL line reads as a refused, truncated name
    found = [name if '.' in name else f'builtins.{name}' for name in _REFUSED_GLOBAL.findall(message)]
    if found and is_zip and hasattr(torch.serialization, 'get_unsafe_globals_in_checkpoint'):
        found += sorted(torch.serialization.get_unsafe_globals_in_checkpoint(f))
    if found:
        return list(dict.fromkeys(_python3_name(name) for name in found))
    return _REFUSED_OPERATION.findall(message)[:1]


def _python3_name(full_name: str) -> str:
    """The name a plain unpickler resolves a GLOBAL to: pickle protocol 2 writes some Python 3 names the Python 2
    way (``subprocess.call`` as ``commands.call``), and torch's restricted unpickler only maps a few back."""
    parts = full_name.split('.')
    for split in range(1, len(parts)):
        module, name = '.'.join(parts[:split]), '.'.join(parts[split:])
        if (module, name) in _compat_pickle.NAME_MAPPING:
            return '.'.join(_compat_pickle.NAME_MAPPING[module, name])
        if module in _compat_pickle.IMPORT_MAPPING:
            return f'{_compat_pickle.IMPORT_MAPPING[module]}.{name}'
    return full_name


def _torch_detail(message: str) -> str:
    """torch's reason without its preamble (which suggests weights_only=False)."""
    lines = [line.strip() for line in message.split('\n') if line.strip()]
    detail = [line for line in lines if not line.startswith(('Weights only load failed', 'Check the documentation',
                                                             '(1)', '(2)', 'Please file an issue'))]
    return detail[0] if detail else lines[-1] if lines else 'unknown error'


def _load_safetensors(path: str, map_location: MapLocation) -> Dict[str, torch.Tensor]:
    """A ``.safetensors`` file: a JSON header and raw tensor bytes, nothing executable."""
    try:
        import safetensors
        import safetensors.torch
    except ImportError as err:
        raise ImportError(f"Loading '{path}' needs the safetensors package: pip install safetensors "
                          "(it is in mmmv's dev extras: pip install 'mmmv[dev]')") from err
    if map_location is None:
        device = 'cpu'
    elif isinstance(map_location, (str, torch.device)):
        device = str(map_location)
    else:
        raise ValueError(f"Loading '{path}': .safetensors files take a device as map_location (e.g. 'cpu', "
                         f"'cuda:0'), got {map_location!r}")
    try:
        return safetensors.torch.load_file(path, device=device)
    except safetensors.SafetensorError as err:
        raise CorruptCheckpointError(path, f'safetensors cannot read it ({err})') from err


# mmengine. Its scheme loaders (mmengine.runner.checkpoint.load_from_*) call torch.load / torch.hub's
# load_state_dict_from_url directly, the latter still with weights_only=False. The replacements below keep their
# names (CheckpointLoader logs `__name__[10:]` as the backend) and signatures.


def load_from_local(filename: str, map_location: MapLocation = None) -> Any:
    """mmengine scheme ``''``: a local file, through :func:`safe_load`."""
    return safe_load(filename, map_location)


def load_from_http(filename: str, map_location: MapLocation = None, model_dir: Optional[str] = None) -> Any:
    """mmengine schemes ``http://``, ``https://`` (and, through them, ``torchvision://``, ``mmcls://`` and URL
    entries of ``open-mmlab://``): download once into torch.hub's cache like mmengine, then :func:`safe_load`.

    In distributed runs rank 0 downloads first, the other ranks read the cached file after a barrier.
    """
    from mmengine.dist import get_dist_info
    rank, world_size = get_dist_info()
    if rank == 0:
        cached = _download_to_hub_cache(filename, model_dir)
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:
            cached = _download_to_hub_cache(filename, model_dir)
    return safe_load(cached, map_location)


def _download_to_hub_cache(url: str, model_dir: Optional[str]) -> str:
    """The cached copy of ``url`` where ``torch.hub.load_state_dict_from_url`` keeps it, downloaded if missing."""
    model_dir = model_dir or osp.join(torch.hub.get_dir(), 'checkpoints')
    os.makedirs(model_dir, exist_ok=True)
    cached = osp.join(model_dir, osp.basename(urlparse(url).path))
    if not osp.exists(cached):
        torch.hub.download_url_to_file(url, cached, progress=True)
    return cached


def load_from_pavi(filename: str, map_location: MapLocation = None) -> Any:
    """mmengine scheme ``pavi://``: download from pavi's model cloud, then :func:`safe_load`."""
    if not filename.startswith('pavi://'):
        raise ValueError(f'Expected a path starting with pavi://, got {filename}')
    try:
        from pavi import modelcloud
    except ImportError as err:
        raise ImportError('Please install pavi to load checkpoint from modelcloud.') from err
    model = modelcloud.get(filename[len('pavi://'):])
    with TemporaryDirectory() as tmp_dir:
        downloaded = osp.join(tmp_dir, model.name)
        model.download(downloaded)
        return safe_load(downloaded, map_location)


def load_from_ceph(filename: str, map_location: MapLocation = None, backend: str = 'petrel') -> Any:
    """mmengine schemes ``s3://``, ``petrel://``: read through mmengine's file backend, then :func:`safe_load`."""
    from mmengine.fileio import get_file_backend
    file_backend = get_file_backend(filename, backend_args={'backend': backend})
    with io.BytesIO(file_backend.get(filename)) as buffer:
        buffer.name = filename
        return safe_load(buffer, map_location)


def load_from_openmmlab(filename: str, map_location: MapLocation = None) -> Any:
    """mmengine schemes ``open-mmlab://``, ``openmmlab://``: a model-zoo name resolved with mmengine's tables
    (deprecated names included), then loaded as a URL or as a file under ``$MMENGINE_HOME``."""
    import warnings

    from mmengine.runner import checkpoint as mm_checkpoint
    prefix = 'open-mmlab://' if filename.startswith('open-mmlab://') else 'openmmlab://'
    model_name = filename[len(prefix):]
    deprecated = mm_checkpoint.get_deprecated_model_names()
    if model_name in deprecated:
        warnings.warn(f'{prefix}{model_name} is deprecated in favor of {prefix}{deprecated[model_name]}',
                      DeprecationWarning)
        model_name = deprecated[model_name]
    model_url = mm_checkpoint.get_external_models()[model_name]
    if model_url.startswith(('http://', 'https://')):
        return load_from_http(model_url, map_location=map_location)
    return safe_load(osp.join(mm_checkpoint._get_mmengine_home(), model_url), map_location)


# mmengine loaders replaced, by name. load_from_torchvision and load_from_mmcls need no replacement: they call the
# module's `load_from_http`, which is rebound too.
_MMENGINE_LOADERS = {
    fn.__name__: fn
    for fn in (load_from_local, load_from_http, load_from_pavi, load_from_ceph, load_from_openmmlab)
}


def patch_mmengine() -> bool:
    """Route mmengine's checkpoint loading through :func:`safe_load`. Idempotent.

    Every scheme of ``mmengine.runner.checkpoint.CheckpointLoader`` whose loader is one of mmengine's own
    ``load_from_{local,http,pavi,ceph,openmmlab}`` is re-registered (``register_scheme(..., force=True)``) with the
    replacement of the same name above, and those module attributes are rebound so that mmengine's other loaders
    (``torchvision://``, ``mmcls://``) reach the safe ``load_from_http``. ``load_checkpoint``, ``_load_checkpoint``,
    ``CheckpointLoader.load_checkpoint``, ``Runner.load_checkpoint``/``resume`` and ``init_cfg=dict(type='Pretrained')``
    all go through these loaders.

    Returns:
        True when mmengine is patched (now or before); False when mmengine is not installed or torch is older than
        2.5 (no ``torch.serialization.safe_globals``), leaving everything as it was.
    """
    if not hasattr(torch.serialization, 'safe_globals'):
        return False
    try:
        from mmengine.runner import checkpoint as mm_checkpoint
    except ImportError:
        return False
    loader_cls = mm_checkpoint.CheckpointLoader
    for name, replacement in _MMENGINE_LOADERS.items():
        prefixes = [prefix for prefix, loader in loader_cls._schemes.items()
                    if loader.__name__ == name and loader.__module__ == mm_checkpoint.__name__]
        if prefixes:
            loader_cls.register_scheme(prefixes, replacement, force=True)
        if hasattr(mm_checkpoint, name):
            setattr(mm_checkpoint, name, replacement)
    return True


_MMENGINE_CHECKPOINT = 'mmengine.runner.checkpoint'


def patch_mmengine_on_import() -> None:
    """:func:`patch_mmengine` now if mmengine's checkpoint module is imported, else as soon as it is.

    ``import mmmv`` calls this: importing ``mmengine.runner`` costs over a second (it imports mmengine's optimisers and
    torch.distributed), which a user of the models alone should not pay; nothing can load a checkpoint through
    mmengine before importing that module, so patching it on import is as safe as patching it at once."""
    if importlib.util.find_spec('mmengine') is not None:
        after_import(_MMENGINE_CHECKPOINT, _patch_module)


def _patch_module(module) -> None:
    patch_mmengine()
