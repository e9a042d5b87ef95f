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


def _key(device: int, args: tuple, constexprs: dict) -> tuple:
    """What the JIT specialises a launch on, as a hashable key: integer arguments by value (finer than the JIT, which
    only looks at their size, 1 and divisibility by 16), pointers by dtype and 16-byte alignment."""
    return (device, tuple(constexprs.items()),
            *[(a.dtype, a.data_ptr() % 16 == 0) if isinstance(a, torch.Tensor) else a for a in args])


def _launchable(compiled) -> bool:
    return all(hasattr(compiled, name) for name in ('run', 'function', 'packed_metadata', 'launch_metadata'))


def launch(kernel, grid: Tuple[int, int, int], *args, **constexprs) -> None:
    """``kernel[grid](*args, **constexprs)``: non-constexpr arguments positional, the first a tensor, constexprs (and
    launch options such as ``num_warps``) by keyword. Runs on the first argument's device: Triton launches on the
    current device, so a model on cuda:1 in a process whose current device is cuda:0 (``model.to('cuda:1')`` without
    ``torch.cuda.set_device``) would otherwise fail in Triton's launcher (triton-lang/triton#2441: "Pointer argument
    cannot be accessed from Triton")."""
    device = args[0].device
    if device.type == 'cuda' and device.index is not None and device.index != torch.cuda.current_device():
        with torch.cuda.device(device.index):
            _launch(kernel, grid, args, constexprs)
        return
    _launch(kernel, grid, args, constexprs)


def _launch(kernel, grid: Tuple[int, int, int], args: tuple, constexprs: dict) -> None:
    if not fast_launch_enabled() or not isinstance(kernel, _state.jit_type):
        kernel[grid](*args, **constexprs)
        return
    driver = _driver()
    device = driver.get_current_device()
    cache = _caches.setdefault(id(kernel), {})
    key = _key(device, args, constexprs)
    entry = cache.get(key)
    if entry is None:
        compiled = kernel[grid](*args, **constexprs)  # compiles on a miss, and launches
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
    compiled.run(grid[0], grid[1], grid[2], stream, compiled.function, compiled.packed_metadata,
                 compiled.launch_metadata(grid, stream, *full), runtime.launch_enter_hook, runtime.launch_exit_hook,
                 *full)


def clear_cache() -> None:
    """Forget every compiled kernel kept by `launch` (and re-read the environment at the next launch)."""
    _caches.clear()
    _state.enabled = _state.driver = None
