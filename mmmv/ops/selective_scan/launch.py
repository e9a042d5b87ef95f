"""Launching the scan's Triton kernels with less host time than ``kernel[grid](*args, **constexprs)``.

Triton's JIT binds and specialises every argument on every launch (the type and 16-divisibility of each integer,
the dtype and alignment of each pointer, a cache-key string), then looks up the compiled kernel. The scan's kernels
take about 60 arguments, so that costs more host time than the kernel itself at MambaVision sizes, and an eager
step there waits on the host. `launch` keys the compiled kernel by what the JIT specialises on, cheaply (the integer
arguments themselves, each pointer's dtype and 16-byte alignment, the constexprs), and on a hit calls the compiled
kernel's launcher with the arguments the JIT would pass it. The first call with a key, and every call under the
interpreter or to anything that is not a `triton.JITFunction` (a test's stand-in), goes through the JIT.

``MMMV_TRITON_FAST_LAUNCH=0`` turns the shortcut off.
"""
import os
from typing import Any, Dict, Optional, Tuple

import torch

# compiled kernels kept per kernel; past this, the cache starts again (sizes that keep changing, e.g. detection)
MAX_ENTRIES = 512
_UNLAUNCHABLE = object()  # a compiled kernel without the launcher attributes this module calls


class _State:
    """The Triton objects the shortcut calls, resolved at its first use (the driver initialises CUDA)."""
    enabled: Optional[bool] = None
    jit_type: Any = None
    driver: Any = None
    knobs: Any = None


_state = _State()
_caches: Dict[int, dict] = {}
_pointers: Dict[int, int] = {}  # per kernel: its leading tensor arguments, as its first launch passed them


def fast_launch_enabled() -> bool:
    """Whether `launch` may skip the JIT: not under ``TRITON_INTERPRET=1``, not turned off by the environment."""
    if _state.enabled is None:
        interpreting = os.environ.get('TRITON_INTERPRET', '0').strip() not in ('', '0')
        wanted = os.environ.get('MMMV_TRITON_FAST_LAUNCH', '1').strip() not in ('', '0')
        _state.enabled = wanted and not interpreting
        if _state.enabled:
            from triton import knobs
            from triton.runtime.jit import JITFunction
            _state.jit_type, _state.knobs = JITFunction, knobs
    return _state.enabled


def _driver():
    """Triton's active driver, first asked for at the first real launch (it needs a GPU)."""
    if _state.driver is None:
        from triton.runtime import driver
        _state.driver = driver.active
    return _state.driver


def _key(device: int, args: tuple, constexprs: dict, pointers: int) -> tuple:
    """What the JIT specialises a launch on, as a hashable key: integer arguments by value (finer than the JIT, which
    only looks at their size, 1 and divisibility by 16), the `pointers` leading tensors by dtype and 16-byte
    alignment. The integers are kept as the tuple they came in (no per-argument test): a launch of ~70 arguments
    cost ~25 us of host time to key with one."""
    return (device, tuple(constexprs.items()), args[pointers:],
            *[(t.dtype, t.data_ptr() % 16 == 0) for t in args[:pointers]])


def _leading_tensors(args: tuple) -> int:
    """How many arguments in front are tensors."""
    for i, arg in enumerate(args):
        if not isinstance(arg, torch.Tensor):
            return i
    return len(args)


def _launchable(compiled) -> bool:
    return all(hasattr(compiled, name) for name in ('run', 'function', 'packed_metadata', 'launch_metadata'))


def launch(kernel, grid: Tuple[int, int, int], *args, **constexprs) -> None:
    """``kernel[grid](*args, **constexprs)``: non-constexpr arguments positional, the tensors (pointers) in front
    and then the scalars, constexprs (and launch options such as ``num_warps``) by keyword. Runs on the first
    argument's device: Triton launches on the current device, so a model on cuda:1 in a process whose current device
    is cuda:0 (``model.to('cuda:1')`` without ``torch.cuda.set_device``) would otherwise fail in Triton's launcher
    (triton-lang/triton#2441: "Pointer argument cannot be accessed from Triton")."""
    index = args[0].get_device()  # -1 off CUDA
    if index < 0:
        _launch(kernel, grid, args, constexprs, None)
    elif index != torch.cuda.current_device():
        with torch.cuda.device(index):
            _launch(kernel, grid, args, constexprs, index)
    else:
        _launch(kernel, grid, args, constexprs, index)


def _launch(kernel, grid: Tuple[int, int, int], args: tuple, constexprs: dict, device: Optional[int]) -> None:
    """`launch` on the current device, `device` (None: ask the driver)."""
    if not fast_launch_enabled() or not isinstance(kernel, _state.jit_type):
        kernel[grid](*args, **constexprs)
        return
    driver = _driver()
    if device is None:
        device = driver.get_current_device()
    cache = _caches.get(id(kernel))
    if cache is None:
        cache = _caches[id(kernel)] = {}
        _pointers[id(kernel)] = _leading_tensors(args)
    pointers = _pointers[id(kernel)]
    try:
        key = _key(device, args, constexprs, pointers)
    except AttributeError:  # not a tensor where this kernel's first launch had one: left to the JIT
        key = None
    entry = cache.get(key)
    if entry is None:
        compiled = kernel[grid](*args, **constexprs)  # compiles on a miss, and launches
        if key is None or _leading_tensors(args) != pointers:
            return  # keyed wrongly (a tensor among the scalars would be keyed by identity): not kept
        if len(cache) >= MAX_ENTRIES:
            cache.clear()
        # the JIT passes the launcher every parameter in signature order, constexprs included
        tail = tuple(constexprs[p.name] if p.name in constexprs else p.default for p in kernel.params[len(args):])
        cache[key] = (compiled, tail) if _launchable(compiled) else _UNLAUNCHABLE
        return
    if entry is _UNLAUNCHABLE:
        kernel[grid](*args, **constexprs)
        return
    compiled, tail = entry
    stream = driver.get_current_stream(device)
    full = args + tail
    runtime = _state.knobs.runtime
    enter_hook = runtime.launch_enter_hook
    # without an enter hook Triton's launch metadata is None (CompiledKernel.launch_metadata): not asked for then,
    # as the call alone passes ~70 arguments
    metadata = None if enter_hook is None else compiled.launch_metadata(grid, stream, *full)
    compiled.run(grid[0], grid[1], grid[2], stream, compiled.function, compiled.packed_metadata, metadata,
                 enter_hook, runtime.launch_exit_hook, *full)


def clear_cache() -> None:
    """Forget every compiled kernel kept by `launch` (and re-read the environment at the next launch)."""
    _caches.clear()
    _pointers.clear()
    _state.enabled = _state.driver = None
