"""`mmmv.ops.selective_scan.launch`: the shortcut past Triton's per-launch argument binding. On a GPU it launches
every scan kernel (the GPU scan tests run through it); here its bookkeeping is checked against a stand-in kernel:
which calls reuse a compiled kernel, and what its launcher is passed."""
import types

import pytest
import torch

from mmmv.ops.selective_scan import launch as fast


class FakeCompiled:
    def __init__(self, log):
        self.log, self.function, self.packed_metadata = log, 'function', 'packed'

    def launch_metadata(self, grid, stream, *args):
        return ('metadata', grid, stream)

    def run(self, *args):
        self.log.append(('run', args))


class FakeKernel:
    """A stand-in JIT kernel with parameters (x_ptr, n, BLOCK: constexpr, FLAG: constexpr = 7)."""

    def __init__(self, launchable=True):
        self.log = []
        self.launchable = launchable
        self.params = [types.SimpleNamespace(name=name, default=default)
                       for name, default in (('x_ptr', None), ('n', None), ('BLOCK', None), ('FLAG', 7))]

    def __getitem__(self, grid):
        def jit_launch(*args, **kwargs):
            self.log.append(('jit', grid, args, kwargs))
            compiled = FakeCompiled(self.log)
            if not self.launchable:
                del compiled.packed_metadata
            return compiled
        return jit_launch


class Hooks:
    launch_enter_hook = 'enter'
    launch_exit_hook = 'exit'


@pytest.fixture
def shortcut(monkeypatch):
    """The shortcut switched on, with FakeKernel as the JIT type and a driver on device 0, stream 's'."""
    fast.clear_cache()
    monkeypatch.setattr(fast._state, 'enabled', True)
    monkeypatch.setattr(fast._state, 'jit_type', FakeKernel)
    monkeypatch.setattr(fast._state, 'knobs', types.SimpleNamespace(runtime=Hooks))
    monkeypatch.setattr(fast._state, 'driver', types.SimpleNamespace(get_current_device=lambda: 0,
                                                                     get_current_stream=lambda device: 's'))
    yield
    fast.clear_cache()


def kinds(kernel):
    return [entry[0] for entry in kernel.log]


def test_second_identical_launch_skips_the_jit_and_passes_every_parameter_in_order(shortcut):
    kernel, x = FakeKernel(), torch.zeros(8)
    for _ in range(2):
        fast.launch(kernel, (3, 2, 1), x, 5, BLOCK=16, num_warps=4)
    assert kinds(kernel) == ['jit', 'run']
    # grid, stream, function, packed metadata, launch metadata, hooks, then every parameter (the defaulted FLAG too)
    assert kernel.log[1][1] == (3, 2, 1, 's', 'function', 'packed', ('metadata', (3, 2, 1), 's'), 'enter', 'exit',
                                x, 5, 16, 7)


@pytest.mark.parametrize('change', ['int', 'constexpr', 'dtype', 'alignment', 'option'])
def test_what_the_jit_specialises_on_gives_a_new_compile(shortcut, change):
    kernel, storage = FakeKernel(), torch.zeros(16)
    fast.launch(kernel, (1, 1, 1), storage[:8], 5, BLOCK=16, num_warps=4)
    other = dict(int=((storage[:8], 6), dict(BLOCK=16, num_warps=4)),
                 constexpr=((storage[:8], 5), dict(BLOCK=32, num_warps=4)),
                 dtype=((storage[:8].double(), 5), dict(BLOCK=16, num_warps=4)),
                 alignment=((storage[1:9], 5), dict(BLOCK=16, num_warps=4)),  # 4 bytes past a 16-byte boundary
                 option=((storage[:8], 5), dict(BLOCK=16, num_warps=8)))[change]
    fast.launch(kernel, (1, 1, 1), *other[0], **other[1])
    assert kinds(kernel) == ['jit', 'jit']


def test_a_new_tensor_with_the_same_dtype_and_alignment_reuses_the_kernel(shortcut):
    kernel = FakeKernel()
    fast.launch(kernel, (1, 1, 1), torch.zeros(8), 5, BLOCK=16)
    y = torch.ones(8)
    fast.launch(kernel, (1, 1, 1), y, 5, BLOCK=16)
    assert kinds(kernel) == ['jit', 'run'] and kernel.log[1][1][9] is y


def test_without_an_enter_hook_the_launch_metadata_is_not_built(shortcut, monkeypatch):
    """Triton's launch metadata is None without an enter hook; building it would pass every argument once more."""
    monkeypatch.setattr(fast._state, 'knobs', types.SimpleNamespace(
        runtime=types.SimpleNamespace(launch_enter_hook=None, launch_exit_hook=None)))
    monkeypatch.setattr(FakeCompiled, 'launch_metadata', lambda *args: pytest.fail('launch metadata built'))
    kernel, x = FakeKernel(), torch.zeros(8)
    for _ in range(2):
        fast.launch(kernel, (3, 2, 1), x, 5, BLOCK=16)
    assert kinds(kernel) == ['jit', 'run']
    assert kernel.log[1][1][6:9] == (None, None, None)  # metadata and both hooks


def test_a_tensor_where_the_first_launch_had_a_scalar_goes_through_the_jit(shortcut):
    """Scalars are keyed as they come, behind the leading tensors of the kernel's first launch: a launch with a
    tensor among them is not kept (a tensor would be keyed by identity), nor one with a scalar among the tensors."""
    kernel, x = FakeKernel(), torch.zeros(8)
    fast.launch(kernel, (1, 1, 1), x, 5, BLOCK=16)
    for _ in range(2):
        fast.launch(kernel, (1, 1, 1), x, torch.zeros(2), BLOCK=16)
    fast.launch(kernel, (1, 1, 1), x, 5, BLOCK=16)
    assert kinds(kernel) == ['jit', 'jit', 'jit', 'run']
    assert len(fast._caches[id(kernel)]) == 1
    other = FakeKernel()
    fast.launch(other, (1, 1, 1), x, x, BLOCK=16)
    for _ in range(2):
        fast.launch(other, (1, 1, 1), x, 5, BLOCK=16)
    assert kinds(other) == ['jit', 'jit', 'jit']


def test_stand_ins_unlaunchable_kernels_and_the_switch_go_through_the_jit(shortcut, monkeypatch):
    class StandIn(FakeKernel):  # what scan_kernel_resources.py puts in a kernel's place: not the JIT's type
        pass

    stand_in = StandIn()
    monkeypatch.setattr(fast._state, 'jit_type', type(None))
    for _ in range(2):
        fast.launch(stand_in, (1, 1, 1), torch.zeros(8), 5, BLOCK=16)
    assert kinds(stand_in) == ['jit', 'jit']
    monkeypatch.setattr(fast._state, 'jit_type', FakeKernel)
    unlaunchable = FakeKernel(launchable=False)
    for _ in range(2):
        fast.launch(unlaunchable, (1, 1, 1), torch.zeros(8), 5, BLOCK=16)
    assert kinds(unlaunchable) == ['jit', 'jit']
    kernel = FakeKernel()
    monkeypatch.setattr(fast._state, 'enabled', False)
    for _ in range(2):
        fast.launch(kernel, (1, 1, 1), torch.zeros(8), 5, BLOCK=16)
    assert kinds(kernel) == ['jit', 'jit']


def test_the_cache_is_bounded(shortcut, monkeypatch):
    monkeypatch.setattr(fast, 'MAX_ENTRIES', 3)
    kernel = FakeKernel()
    for n in range(5):
        fast.launch(kernel, (1, 1, 1), torch.zeros(8), n, BLOCK=16)
    assert len(fast._caches[id(kernel)]) <= 3


def test_the_environment_switches_it_off_and_the_interpreter_never_uses_it(monkeypatch):
    fast.clear_cache()
    try:
        monkeypatch.setenv('TRITON_INTERPRET', '0')
        monkeypatch.setenv('MMMV_TRITON_FAST_LAUNCH', '0')
        assert not fast.fast_launch_enabled()
        fast.clear_cache()
        monkeypatch.setenv('MMMV_TRITON_FAST_LAUNCH', '1')
        monkeypatch.setenv('TRITON_INTERPRET', '1')
        assert not fast.fast_launch_enabled()
    finally:
        fast.clear_cache()


def test_launch_configurations_are_kept_per_sizes(monkeypatch):
    from mmmv.ops.selective_scan import triton_backend
    monkeypatch.setattr(triton_backend, '_CONFIGS', {})
    monkeypatch.setattr(triton_backend, 'MAX_CONFIGS', 2)
    u, B = torch.zeros(2, 64, 100), torch.zeros(2, 1, 16, 100)  # B grouped, as scan_forward passes it
    first = triton_backend._config_for(u, B, B, None, None, 0)
    assert triton_backend._config_for(u, B, B, None, None, 0) is first
    assert first == triton_backend.launch_config(2, 64, 100, 16, 64, u.device)
    longer = triton_backend._config_for(torch.zeros(2, 64, 300), torch.zeros(2, 1, 16, 300), B, None, None, 0)
    assert longer.n_chunks > first.n_chunks
    triton_backend._config_for(torch.zeros(1, 64, 100), torch.zeros(1, 1, 16, 100), B, None, None, 0)
    assert len(triton_backend._CONFIGS) <= 2
