"""mmmv.ops.selective_scan against its float64 specification `selective_scan_ref`: outputs, last states and
every gradient, per dtype with named tolerances; argument checks; backend choice; bounded memory."""
import itertools
from typing import Dict, Optional

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mmmv.ops import selective_scan, selective_scan_ref
from mmmv.ops.selective_scan import interface
from mmmv.ops.selective_scan.torch_backend import (MAX_CHUNK, MIN_BLOCK, MIN_CHUNK, SEQUENTIAL_SCAN, block_length,
                                                     chunk_length, selective_scan_torch)

# (rtol, atol) for outputs, by the dtype of u: mamba_ssm's test_selective_scan uses the float32 and bfloat16
# values; float16 sits between them; float64 runs the same math as the reference.
TOLERANCES = {
    torch.float64: (1e-9, 1e-9),
    torch.float32: (6e-4, 2e-3),
    torch.float16: (3e-3, 5e-3),
    torch.bfloat16: (3e-2, 5e-2),
}
# Gradients use the output tolerance scaled by (rtol factor, atol factor), as mamba_ssm does for du and ddelta.
GRAD_TOLERANCE_FACTORS = {'u': (1, 2), 'delta': (5, 10)}
INPUT_NAMES = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')


def make_inputs(batch: int = 2,
                dim: int = 8,
                length: int = 33,
                state: int = 4,
                groups_B: Optional[int] = None,
                groups_C: Optional[int] = None,
                dtype: torch.dtype = torch.float32,
                D: bool = True,
                z: bool = True,
                delta_bias: bool = True,
                seed: int = 0,
                device: str = 'cpu') -> Dict[str, Optional[torch.Tensor]]:
    """Inputs drawn as in mamba_ssm's tests; u, delta, B, C, z in `dtype`, the parameters A, D, delta_bias
    in float32 (float64 when dtype is). groups None means B / C shared by all channels (batch, N, L)."""
    gen = torch.Generator().manual_seed(seed)
    param_dtype = torch.float64 if dtype == torch.float64 else torch.float32

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    def rand(*shape):
        return torch.rand(*shape, generator=gen)

    def bc(groups):
        return randn(batch, state, length) if groups is None else randn(batch, groups, state, length)

    inputs = dict(
        u=randn(batch, dim, length).to(dtype),
        delta=(0.5 * rand(batch, dim, length)).to(dtype),
        A=(-0.5 - rand(dim, state)).to(param_dtype),
        B=bc(groups_B).to(dtype),
        C=bc(groups_C).to(dtype),
        D=randn(dim).to(param_dtype) if D else None,
        z=randn(batch, dim, length).to(dtype) if z else None,
        delta_bias=(0.1 * rand(dim)).to(param_dtype) if delta_bias else None,
    )
    return {name: None if t is None else t.to(device).requires_grad_() for name, t in inputs.items()}


# Layouts of (u, delta, B, C, d y) as the MambaVision mixer and torch.compile can pass them (the kernels read any
# strides; a layout the eager model never produces is where a wrong stride would hide): 'slice' is a token-major
# view of some channels of a wider buffer, with a storage offset (a split of a projection's output, or the half of
# a concatenation's gradient).
MIXER_LAYOUTS = {
    'eager-mixer': ('contiguous', 'token-major', 'contiguous', 'contiguous', 'slice'),
    'channels-last-conv': ('token-major', 'token-major', 'contiguous', 'contiguous', 'slice'),
    'token-major': ('token-major',) * 5,
    'projection-views': ('contiguous', 'slice', 'slice', 'slice', 'contiguous'),
    'contiguous': ('contiguous',) * 5,
}


def laid_out(t: torch.Tensor, layout: str) -> torch.Tensor:
    """A (batch, channels, L) tensor with t's values in `layout` (see MIXER_LAYOUTS), detached."""
    t = t.detach()
    if layout == 'contiguous':
        return t.contiguous()
    if layout == 'token-major':
        return t.transpose(1, 2).contiguous().transpose(1, 2)
    batch, channels, length = t.shape
    wide = torch.zeros(batch, length, 2 * channels + 3, dtype=t.dtype, device=t.device)
    wide[:, :, 3:3 + channels] = t.transpose(1, 2)
    return wide[:, :, 3:3 + channels].transpose(1, 2)


def assert_layouts_match_reference(inputs: Dict[str, Optional[torch.Tensor]], layouts: tuple, scan,
                                   tolerance: float) -> None:
    """`scan` (called like `selective_scan`, without z) on u, delta, B, C and d y laid out as `layouts`: the output
    and every gradient within `tolerance` of the float64 reference, relative to each one's norm."""
    values = {name: t.detach() for name, t in inputs.items() if t is not None}
    tensors = {name: laid_out(values[name], layout).requires_grad_()
               for name, layout in zip(('u', 'delta', 'B', 'C'), layouts)}
    tensors.update({name: values[name].clone().requires_grad_() for name in ('A', 'D', 'delta_bias')})
    reference = {name: t.double().requires_grad_() for name, t in values.items()}
    y = scan(**tensors, delta_softplus=True)
    y_ref = selective_scan_ref(**reference, delta_softplus=True)
    dy = laid_out(torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y.device, y.dtype), layouts[4])
    names = sorted(tensors)
    grads = torch.autograd.grad(y, [tensors[n] for n in names], dy)
    grads_ref = torch.autograd.grad(y_ref, [reference[n] for n in names], dy.double())
    for name, out, out_ref in [('y', y, y_ref)] + list(zip(['d' + n for n in names], grads, grads_ref)):
        error = ((out.double() - out_ref).norm() / out_ref.norm()).item()
        assert error <= tolerance, f'{name}: relative error {error:.2e} with layouts {layouts}'


def assert_matches_reference(inputs: Dict[str, Optional[torch.Tensor]],
                             delta_softplus: bool = True,
                             chunk_size: Optional[int] = None,
                             last_state_grad: bool = True,
                             seed: int = 1,
                             scan=None) -> None:
    """Output, last state and the gradient of every input that requires grad, against the float64 reference
    (fed the same values, so only the arithmetic differs). `scan` is the implementation under test (called like
    `selective_scan`); None means the torch backend with `chunk_size`."""
    ref_inputs = {
        name: None if t is None else t.detach().double().requires_grad_(t.requires_grad)
        for name, t in inputs.items()
    }
    if scan is None:  # the torch backend, with `chunk_size`
        y, last_state = selective_scan_torch(
            **inputs, delta_softplus=delta_softplus, return_last_state=True, chunk_size=chunk_size)
    else:
        y, last_state = scan(**inputs, delta_softplus=delta_softplus, return_last_state=True)
    y_ref, last_state_ref = selective_scan_ref(**ref_inputs, delta_softplus=delta_softplus, return_last_state=True)

    dtype = inputs['u'].dtype
    rtol, atol = TOLERANCES[dtype]
    assert y.dtype == dtype
    assert last_state.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(y.double(), y_ref, rtol=rtol, atol=atol, msg=lambda m: f'y: {m}')
    torch.testing.assert_close(
        last_state.double(), last_state_ref, rtol=rtol, atol=atol, msg=lambda m: f'last_state: {m}')

    names = [name for name in INPUT_NAMES if inputs[name] is not None and inputs[name].requires_grad]
    if not names:
        return
    gen = torch.Generator().manual_seed(seed)
    dy = torch.randn(y.shape, generator=gen).to(y.device, dtype)
    outputs, grad_outputs = [y], [dy]
    outputs_ref, grad_outputs_ref = [y_ref], [dy.double()]
    if last_state_grad and last_state_ref.requires_grad:  # it does not depend on C, D, z
        dlast = torch.randn(last_state.shape, generator=gen).to(last_state.device, last_state.dtype)
        outputs.append(last_state), grad_outputs.append(dlast)
        outputs_ref.append(last_state_ref), grad_outputs_ref.append(dlast.double())
    grads = torch.autograd.grad(outputs, [inputs[n] for n in names], grad_outputs)
    grads_ref = torch.autograd.grad(outputs_ref, [ref_inputs[n] for n in names], grad_outputs_ref)
    for name, grad, grad_ref in zip(names, grads, grads_ref):
        assert grad.dtype == inputs[name].dtype, name
        assert grad.shape == inputs[name].shape, name
        rtol_factor, atol_factor = GRAD_TOLERANCE_FACTORS.get(name, (1, 1))
        torch.testing.assert_close(
            grad.double(), grad_ref, rtol=rtol * rtol_factor, atol=atol * atol_factor,
            msg=lambda m, name=name: f'd{name}: {m}')


# ----------------------------------------------------------------------------------------------------
# Numerics against the reference.
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('length', [1, 2, 7, 33, 130])
def test_lengths(length):
    assert_matches_reference(make_inputs(length=length, groups_C=2))


@pytest.mark.parametrize('chunk_size', [1, 3, 16, 24, 40, 64])
def test_chunk_carry(chunk_size):
    """Small chunks: the state (forward) and the adjoint (backward) cross many chunk boundaries, and (from 16
    tokens) the block boundaries inside a chunk: 2, 3, 5 and 8 blocks of 8 tokens, then shorter tail chunks."""
    assert_matches_reference(make_inputs(length=130, groups_B=2), chunk_size=chunk_size)


def test_many_blocks():
    """A chunk of more than 2 * SEQUENTIAL_SCAN blocks: their states compose through two levels of the log-depth
    scans over blocks before the loop takes over."""
    chunk_size = MIN_BLOCK * (2 * SEQUENTIAL_SCAN + 3)
    assert block_length(chunk_size, 2 * 8 * 4) == MIN_BLOCK
    assert_matches_reference(make_inputs(length=700, groups_B=2), chunk_size=chunk_size)


@pytest.mark.parametrize(
    'dim, groups_B, groups_C',
    [
        (8, None, None),  # shared, as MambaVision
        (8, 1, 1),
        (16, 4, 4),  # VSS: four scan directions
        (16, 2, None),
        (16, None, 8),
        (16, 16, 4),
    ])
def test_groups(dim, groups_B, groups_C):
    assert_matches_reference(make_inputs(dim=dim, length=37, groups_B=groups_B, groups_C=groups_C), chunk_size=8)


@pytest.mark.parametrize('has_D, has_z, has_bias, softplus', list(itertools.product([False, True], repeat=4)))
def test_optional_inputs(has_D, has_z, has_bias, softplus):
    inputs = make_inputs(length=21, D=has_D, z=has_z, delta_bias=has_bias)
    assert_matches_reference(inputs, delta_softplus=softplus, chunk_size=8)


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_dtypes(dtype):
    inputs = make_inputs(length=70, groups_B=4, dtype=dtype)
    y = selective_scan(**inputs, delta_softplus=True)
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert_matches_reference(inputs, chunk_size=16)


def test_mixed_dtypes():
    """bfloat16 activations with float32 B, C (as mamba_ssm allows) and float32 parameters."""
    inputs = make_inputs(length=40, dtype=torch.bfloat16)
    inputs['B'] = inputs['B'].detach().float().requires_grad_()
    assert_matches_reference(inputs)


def test_without_last_state_gradient():
    """Loss on y only (mamba_ssm's case); the last state still matches."""
    assert_matches_reference(make_inputs(length=50), chunk_size=16, last_state_grad=False)


@pytest.mark.parametrize('names', [('u', ), ('delta', 'delta_bias'), ('A', 'B'), ('C', 'D', 'z'), ()])
def test_some_inputs_require_grad(names):
    inputs = make_inputs(length=30)
    inputs = {n: None if t is None else t.detach().requires_grad_(n in names) for n, t in inputs.items()}
    assert_matches_reference(inputs, chunk_size=8)


def test_non_contiguous_inputs():
    """delta, u and z as transposed views, B and C sliced out of one projection, as in the Mamba mixers."""
    batch, dim, length, state = 2, 8, 45, 4
    inputs = make_inputs(batch=batch, dim=dim, length=length, state=state)
    gen = torch.Generator().manual_seed(3)
    projection = torch.randn(batch, length, 2 * state, generator=gen).requires_grad_()
    for name in ('u', 'delta', 'z'):
        inputs[name] = inputs[name].detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
        assert not inputs[name].is_contiguous()
    inputs['B'], inputs['C'] = projection.transpose(1, 2).split(state, dim=1)
    assert not inputs['B'].is_contiguous()
    y = selective_scan(**inputs, delta_softplus=True)
    y_contiguous = selective_scan(**{n: None if t is None else t.contiguous() for n, t in inputs.items()},
                                  delta_softplus=True)
    torch.testing.assert_close(y, y_contiguous, rtol=0, atol=1e-6)
    assert_matches_reference(inputs, chunk_size=16)


def test_deterministic():
    inputs = make_inputs(length=64, groups_B=4, dim=16)
    results = []
    for _ in range(2):
        y, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True)
        results.append([y, last, *torch.autograd.grad((y.sum() + last.sum()), [inputs[n] for n in INPUT_NAMES])])
    for first, second in zip(*results):
        assert torch.equal(first, second)


def test_public_function_returns():
    inputs = make_inputs(length=10)
    y = selective_scan(**inputs)
    y_last, last = selective_scan(**inputs, return_last_state=True, backend='torch')
    assert torch.equal(y, y_last)
    assert last.shape == (2, 8, 4) and last.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('length, groups_B, chunk_size', [(7, None, None), (130, 4, 16), (1000, 2, None)])
def test_cuda(dtype, length, groups_B, chunk_size):
    inputs = make_inputs(dim=16, length=length, groups_B=groups_B, dtype=dtype, device='cuda')
    assert_matches_reference(inputs, chunk_size=chunk_size)


@pytest.mark.slow
def test_long_sequence_vss_shape():
    """One VSS-like scan (4 direction groups, N = 16) over a 64 x 64 map, default chunking."""
    assert_matches_reference(make_inputs(batch=1, dim=16, length=4096, state=16, groups_B=4, groups_C=4))


# ----------------------------------------------------------------------------------------------------
# Memory: nothing of size (batch, D, N, L) is created or saved.
# ----------------------------------------------------------------------------------------------------
class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op returns while active (forward and backward alike)."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def test_memory_bounded_at_long_length():
    batch, dim, length, state = 1, 8, 16384, 8
    full = batch * dim * state * length
    chunk = chunk_length(batch, dim, state, length)
    assert chunk < length
    inputs = make_inputs(batch=batch, dim=dim, length=length, state=state, z=False)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with _LargestTensor() as largest, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True)
        grads = torch.autograd.grad(y.sum() + last.sum(), [inputs[n] for n in INPUT_NAMES if inputs[n] is not None])
    assert all(torch.isfinite(g).all() for g in grads)
    # Working tensors cover one chunk (plus one token); saved ones are the inputs and the chunk-start states.
    assert largest.numel <= batch * dim * state * (chunk + 1) < full
    num_chunks = -(-length // chunk)
    input_numel = sum(t.numel() for t in inputs.values() if t is not None)
    assert sum(saved) <= input_numel + batch * dim * state * num_chunks < full


def test_chunk_length():
    assert chunk_length(2, 8, 4, 5) == 5  # a short sequence is one chunk
    for batch, dim, state in [(1, 8, 8), (128, 160, 8), (32, 768, 16), (1, 1, 1)]:
        for device_type in ('cpu', 'cuda'):
            chunk = chunk_length(batch, dim, state, 1 << 20, device_type)
            assert chunk & (chunk - 1) == 0 and MIN_CHUNK <= chunk <= MAX_CHUNK
    assert chunk_length(128, 160, 8, 196, 'cuda') >= chunk_length(128, 160, 8, 196, 'cpu')


def test_block_length():
    for chunk in (1, 7, 16, 130, 2048):
        for state_width in (1, 64, 2560, 1 << 22):
            for device_type in ('cpu', 'cuda'):
                block = block_length(chunk, state_width, device_type)
                assert min(MIN_BLOCK, chunk) <= block <= chunk
    assert block_length(512, 1 << 22) == 512  # a wide state needs no blocks
    assert block_length(512, 64) == MIN_BLOCK  # a narrow one gets as many blocks as fit


# ----------------------------------------------------------------------------------------------------
# Argument checks and backend choice.
# ----------------------------------------------------------------------------------------------------
def _replace(name, value):
    inputs = make_inputs(batch=2, dim=8, length=12, state=4)
    inputs[name] = value
    return inputs


@pytest.mark.parametrize(
    'name, value, error, match',
    [
        ('u', torch.randn(2, 8), ValueError, r'u must have shape \(batch, D, L\), got \(2, 8\)'),
        ('delta', torch.randn(2, 8, 11), ValueError,
         r'delta must have shape \(batch, D, L\) = \(2, 8, 12\), got \(2, 8, 11\)'),
        ('delta', torch.randn(3, 8, 12), ValueError, r'delta must have shape .* got \(3, 8, 12\)'),
        ('A', torch.randn(7, 4), ValueError, r'A must have shape \(D, N\) = \(8, N\), got \(7, 4\)'),
        ('A', torch.randn(8, 4, 1), ValueError, r'A must have shape \(D, N\)'),
        ('B', torch.randn(2, 4, 11), ValueError,
         r'B must have shape \(batch, N, L\) = \(2, 4, 12\) or \(batch, G, N, L\) = \(2, G, 4, 12\) '
         r'with G dividing D = 8, got \(2, 4, 11\)'),
        ('B', torch.randn(2, 5, 12), ValueError, r'B must have shape .* got \(2, 5, 12\)'),
        ('C', torch.randn(1, 4, 12), ValueError, r'C must have shape .* got \(1, 4, 12\)'),
        ('C', torch.randn(2, 3, 4, 12), ValueError, r'C has G = 3 groups, which does not divide D = 8'),
        ('D', torch.randn(7), ValueError, r'D must have shape \(D,\) = \(8,\), got \(7,\)'),
        ('delta_bias', torch.randn(8, 1), ValueError, r'delta_bias must have shape \(D,\) = \(8,\), got \(8, 1\)'),
        ('z', torch.randn(2, 8, 13), ValueError, r'z must have shape \(batch, D, L\) = \(2, 8, 12\), got \(2, 8, 13\)'),
        ('A', torch.randn(8, 4, dtype=torch.complex64), TypeError, r'A must be real, got complex dtype'),
        ('u', torch.ones(2, 8, 12, dtype=torch.int64), TypeError, r'u has unsupported dtype torch.int64'),
        ('B', [[1.0]], TypeError, r'B must be a torch.Tensor, got list'),
        ('D', torch.randn(8, device='meta'), ValueError, r'D is on meta but u is on cpu'),
    ])
def test_argument_errors(name, value, error, match):
    with pytest.raises(error, match=match):
        selective_scan(**_replace(name, value))


def test_backend_errors():
    inputs = make_inputs(length=5)
    with pytest.raises(ValueError, match=r"unknown backend 'cuda'.*valid names: 'torch', 'triton', 'export', 'auto'"):
        selective_scan(**inputs, backend='cuda')
    with pytest.raises(TypeError, match='backend must be a string'):
        selective_scan(**inputs, backend=1)


def test_backend_environment_variable(monkeypatch):
    inputs = make_inputs(length=5)
    for value in ('torch', 'auto', 'TORCH', ''):
        monkeypatch.setenv(interface.ENV_BACKEND, value)
        selective_scan(**inputs)
    monkeypatch.setenv(interface.ENV_BACKEND, 'triton')
    assert interface.resolve_backend(None, inputs['u']) == 'triton'
    selective_scan(**inputs, backend='torch')  # an explicit backend wins over the variable
    monkeypatch.setenv(interface.ENV_BACKEND, 'fast')
    with pytest.raises(ValueError, match=r"unknown backend 'fast' \(from \$MMMV_SCAN_BACKEND\)"):
        selective_scan(**inputs)
