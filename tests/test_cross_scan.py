"""mmmv.ops.cross_scan against an independent float64 reference that walks each direction's token order with
explicit Python loops: cross_scan / cross_merge (values, round trip, adjointness) and cross_selective_scan
(values and the gradients of every input), on small maps with H != W, odd sizes and single rows / columns;
argument errors and the fused-path dispatch."""
import importlib
from typing import Dict, List, Optional, Tuple

import pytest
import torch

from mmmv.ops import cross_merge, cross_scan, cross_selective_scan, selective_scan_ref
from test_selective_scan import GRAD_TOLERANCE_FACTORS, TOLERANCES

# The module (mmmv.ops.cross_scan is the function once mmmv.ops has imported it).
cross_scan_module = importlib.import_module('mmmv.ops.cross_scan')

MAP_SIZES = [(3, 5), (5, 3), (1, 7), (6, 1), (4, 4), (1, 1)]
INPUT_NAMES = ('u', 'delta', 'A', 'B', 'C', 'D', 'delta_bias')


# ----------------------------------------------------------------------------------------------------
# The reference: token orders written out by hand, one direction at a time.
# ----------------------------------------------------------------------------------------------------
def token_orders(height: int, width: int) -> List[List[Tuple[int, int]]]:
    """VM-UNet's four scan orders as lists of (row, column): raster, column-major, and both reversed."""
    row_major = [(h, w) for h in range(height) for w in range(width)]
    column_major = [(h, w) for w in range(width) for h in range(height)]
    return [row_major, column_major, row_major[::-1], column_major[::-1]]


def reference_cross_scan(x: torch.Tensor) -> torch.Tensor:
    batch, channels, height, width = x.shape
    directions = [torch.stack([x[:, :, h, w] for h, w in order], dim=-1) for order in token_orders(height, width)]
    return torch.stack(directions, dim=1)


def reference_cross_merge(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    out = [[0 for _ in range(width)] for _ in range(height)]
    for k, order in enumerate(token_orders(height, width)):
        for t, (h, w) in enumerate(order):
            out[h][w] = out[h][w] + y[:, k, :, t]
    return torch.stack([out[h][w] for h in range(height) for w in range(width)], dim=-1)


def reference_cross_selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus, height, width):
    """Direction by direction: gather the tokens in scan order, run `selective_scan_ref` on that direction's
    channels, put each output token back at its raster position and sum. float64 throughout."""
    inner = u.shape[1]
    out = [[0 for _ in range(width)] for _ in range(height)]
    for k, order in enumerate(token_orders(height, width)):
        positions = [h * width + w for h, w in order]
        channels = slice(k * inner, (k + 1) * inner)

        def in_order(t):
            return torch.stack([t[..., p] for p in positions], dim=-1)

        y = selective_scan_ref(
            in_order(u), in_order(delta[:, k]), A[channels], in_order(B[:, k]), in_order(C[:, k]),
            None if D is None else D[channels],
            delta_bias=None if delta_bias is None else delta_bias[channels],
            delta_softplus=delta_softplus)
        for t, (h, w) in enumerate(order):
            out[h][w] = out[h][w] + y[..., t]
    return torch.stack([out[h][w] for h in range(height) for w in range(width)], dim=-1)


def make_inputs(height: int, width: int, batch: int = 2, inner: int = 3, state: int = 4,
                dtype: torch.dtype = torch.float32, D: bool = True, delta_bias: bool = True,
                seed: int = 0) -> Dict[str, Optional[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    length = height * width
    param_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    inputs = dict(
        u=torch.randn(batch, inner, length, generator=gen).to(dtype),
        delta=(0.5 * torch.rand(batch, 4, inner, length, generator=gen)).to(dtype),
        A=(-0.5 - torch.rand(4 * inner, state, generator=gen)).to(param_dtype),
        B=torch.randn(batch, 4, state, length, generator=gen).to(dtype),
        C=torch.randn(batch, 4, state, length, generator=gen).to(dtype),
        D=torch.randn(4 * inner, generator=gen).to(param_dtype) if D else None,
        delta_bias=(0.1 * torch.rand(4 * inner, generator=gen)).to(param_dtype) if delta_bias else None,
    )
    return {n: None if t is None else t.requires_grad_() for n, t in inputs.items()}


def assert_matches_reference(inputs, height, width, delta_softplus=True, backend='torch', fused=None, run=None):
    """`cross_selective_scan` (or `run`, called like it) against the reference: the output and every gradient."""
    ref_inputs = {n: None if t is None else t.detach().double().cpu().requires_grad_() for n, t in inputs.items()}
    if run is None:
        y = cross_selective_scan(**inputs, delta_softplus=delta_softplus, height=height, width=width,
                                 backend=backend, fused=fused)
    else:
        y = run(**inputs, delta_softplus=delta_softplus, height=height, width=width)
    y_ref = reference_cross_selective_scan(**ref_inputs, delta_softplus=delta_softplus, height=height, width=width)
    dtype = inputs['u'].dtype
    rtol, atol = TOLERANCES[dtype]
    assert y.dtype == dtype and y.shape == inputs['u'].shape
    torch.testing.assert_close(y.double().cpu(), y_ref, rtol=rtol, atol=atol, msg=lambda m: f'y: {m}')

    names = [n for n in INPUT_NAMES if inputs[n] is not None]
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(y, [inputs[n] for n in names], dy.to(dtype).to(y.device))
    grads_ref = torch.autograd.grad(y_ref, [ref_inputs[n] for n in names], dy.double())
    for name, grad, grad_ref in zip(names, grads, grads_ref):
        assert grad.shape == inputs[name].shape and grad.dtype == inputs[name].dtype, name
        rtol_factor, atol_factor = GRAD_TOLERANCE_FACTORS.get(name, (1, 1))
        torch.testing.assert_close(grad.double().cpu(), grad_ref, rtol=rtol * rtol_factor, atol=atol * atol_factor,
                                   msg=lambda m, name=name: f'd{name}: {m}')


# ----------------------------------------------------------------------------------------------------
# cross_scan and cross_merge.
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('height, width', MAP_SIZES)
def test_cross_scan_matches_reference(height, width):
    x = torch.randn(2, 3, height, width, dtype=torch.float64)
    torch.testing.assert_close(cross_scan(x), reference_cross_scan(x), rtol=0, atol=0)


def test_cross_scan_orders_by_hand():
    """A 2 x 3 map holding its raster positions: the four sequences written out."""
    x = torch.arange(6.).view(1, 1, 2, 3)
    expected = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 3, 1, 4, 2, 5], [5, 4, 3, 2, 1, 0], [5, 2, 4, 1, 3, 0]])
    assert torch.equal(cross_scan(x)[0, :, 0], expected.float())


@pytest.mark.parametrize('height, width', MAP_SIZES)
def test_cross_merge_matches_reference(height, width):
    y = torch.randn(2, 4, 3, height * width, dtype=torch.float64)
    torch.testing.assert_close(cross_merge(y, height, width), reference_cross_merge(y, height, width),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('height, width', [(3, 5), (1, 4), (7, 2)])
def test_round_trip_and_adjoint(height, width):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, height, width, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 4, 3, height * width, generator=gen, dtype=torch.float64, requires_grad=True)
    # Each direction is a permutation, so merging the four scans of x gives 4 x.
    torch.testing.assert_close(cross_merge(cross_scan(x), height, width), 4 * x.flatten(2))
    # <cross_scan(x), y> == <x, cross_merge(y)>
    lhs = (cross_scan(x) * y).sum()
    rhs = (x.flatten(2) * cross_merge(y, height, width)).sum()
    torch.testing.assert_close(lhs, rhs)
    # and autograd agrees: the gradient of one is the other.
    grad_x, = torch.autograd.grad(cross_scan(x), x, y)
    torch.testing.assert_close(grad_x.flatten(2), cross_merge(y, height, width), rtol=0, atol=0)
    grad_y, = torch.autograd.grad(cross_merge(y, height, width), y, x.flatten(2).detach())
    torch.testing.assert_close(grad_y, cross_scan(x.detach()), rtol=0, atol=0)


def test_cross_scan_keeps_dtype_and_non_contiguous_input():
    x = torch.randn(2, 5, 3, 4).to(torch.bfloat16).transpose(2, 3)  # (2, 5, 4, 3), not contiguous
    assert not x.is_contiguous()
    out = cross_scan(x)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 4, 5, 12)
    torch.testing.assert_close(out, reference_cross_scan(x), rtol=0, atol=0)


def test_index_cache():
    first = cross_scan_module.direction_indices(3, 5, torch.device('cpu'))
    assert cross_scan_module.direction_indices(3, 5, torch.device('cpu')) is first
    order, inverse = first
    assert order.shape == inverse.shape == (4, 15) and order.dtype == torch.int64
    assert torch.equal(order.gather(1, inverse), torch.arange(15).expand(4, 15))


# ----------------------------------------------------------------------------------------------------
# cross_selective_scan.
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('height, width', MAP_SIZES)
def test_scan_matches_reference(height, width):
    assert_matches_reference(make_inputs(height, width), height, width)


@pytest.mark.parametrize('dtype', [torch.float64, torch.bfloat16])
def test_scan_dtypes(dtype):
    assert_matches_reference(make_inputs(3, 5, dtype=dtype), 3, 5)


@pytest.mark.parametrize('has_D, has_bias, softplus', [(False, False, False), (True, False, True),
                                                       (False, True, False)])
def test_scan_optional_inputs(has_D, has_bias, softplus):
    assert_matches_reference(make_inputs(2, 5, D=has_D, delta_bias=has_bias), 2, 5, delta_softplus=softplus)


def test_scan_directions_differ():
    """Each direction contributes its own scan: dropping one direction's B changes the result (a check that the
    four are not scanning the same order or ignoring their group)."""
    inputs = {n: t.detach() for n, t in make_inputs(3, 4).items()}
    y = cross_selective_scan(**inputs, height=3, width=4, backend='torch')
    for k in range(4):
        B = inputs['B'].clone()
        B[:, k] = 0
        y_k = cross_selective_scan(**{**inputs, 'B': B}, height=3, width=4, backend='torch')
        assert (y_k - y).abs().max() > 1e-3, k


def test_scan_triton_backend_unfused():
    """The unfused path on the Triton scan (the interpreter on CPU, set up by tests/conftest.py)."""
    pytest.importorskip('triton')
    from mmmv.ops.selective_scan import triton_backend
    if not torch.cuda.is_available() and not triton_backend.interpreting():
        pytest.skip('no CUDA and TRITON_INTERPRET is not set')
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    inputs = {n: t.detach().to(device).requires_grad_() for n, t in make_inputs(3, 5, batch=1, inner=2).items()}
    assert_matches_reference(inputs, 3, 5, backend='triton', fused=False)


# ----------------------------------------------------------------------------------------------------
# The fused Triton 2D scan (the interpreter on CPU; tests/test_selective_scan_gpu.py repeats these at full size).
# ----------------------------------------------------------------------------------------------------
def _triton_device() -> str:
    pytest.importorskip('triton')
    from mmmv.ops.selective_scan import triton_backend
    if not torch.cuda.is_available() and not triton_backend.interpreting():
        pytest.skip('no CUDA and TRITON_INTERPRET is not set')
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def _fused_run(chunk_size=None, n_splits=None):
    """cross_selective_scan_triton with the launch heuristics overridden, to cross chunk and split boundaries."""
    from mmmv.ops.selective_scan.triton_backend import cross_selective_scan_triton

    def run(**inputs):
        return cross_selective_scan_triton(**inputs, chunk_size=chunk_size, n_splits=n_splits)

    return run


def _on(device: str, inputs):
    return {n: None if t is None else t.detach().to(device).requires_grad_() for n, t in inputs.items()}


# (height, width, chunk_size, n_splits): chunks of 2 and 4 tokens and several splits cut every direction's order
# at places that are not row or column ends; single rows and columns make two directions coincide.
FUSED_CASES = [(3, 5, 4, None), (5, 3, 2, 3), (1, 7, 2, 2), (6, 1, 4, 2), (4, 4, None, None), (1, 1, None, None),
               (7, 9, 8, 3)]


@pytest.mark.parametrize('height, width, chunk_size, n_splits', FUSED_CASES)
def test_fused_matches_reference(height, width, chunk_size, n_splits):
    inputs = _on(_triton_device(), make_inputs(height, width, batch=2, inner=3))
    assert_matches_reference(inputs, height, width, run=_fused_run(chunk_size, n_splits))


@pytest.mark.parametrize('has_D, has_bias, softplus', [(False, False, False), (True, False, True),
                                                       (False, True, False)])
def test_fused_optional_inputs(has_D, has_bias, softplus):
    inputs = _on(_triton_device(), make_inputs(2, 5, D=has_D, delta_bias=has_bias))
    assert_matches_reference(inputs, 2, 5, delta_softplus=softplus, run=_fused_run(chunk_size=4))


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_fused_half_dtypes(dtype):
    """Half-precision inputs are read as they are and computed in float32; outputs and gradients in their dtype."""
    inputs = _on(_triton_device(), make_inputs(3, 4, dtype=dtype))
    assert_matches_reference(inputs, 3, 4, run=_fused_run(chunk_size=4))


def test_fused_reads_views_in_place():
    """Strided views (u a transposed channels-last map, delta straight from VM-UNet's einsum, B / C slices of one
    projection) give the reference result."""
    device = _triton_device()
    batch, inner, state, height, width = 2, 3, 4, 3, 5
    base = {n: t.detach().to(device) for n, t in make_inputs(height, width, batch=batch, inner=inner,
                                                             state=state).items()}
    u = base['u'].transpose(1, 2).contiguous().transpose(1, 2)  # (B, Di, L) stored token-major
    delta = base['delta'].permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)  # as einsum may return it
    x_dbl = torch.cat([base['B'], base['C']], dim=2)  # (B, 4, 2N, L): B and C are slices of one tensor
    inputs = dict(base, u=u, delta=delta, B=x_dbl[:, :, :state], C=x_dbl[:, :, state:])
    assert not any(inputs[n].is_contiguous() for n in ('u', 'delta', 'B', 'C'))
    inputs = {n: t.requires_grad_() for n, t in inputs.items()}
    assert_matches_reference(inputs, height, width, run=_fused_run(chunk_size=4))


def test_fused_equals_unfused_and_is_the_default():
    """With the scan on Triton, fused=None takes the fused path, whose result equals the unfused path's."""
    device = _triton_device()
    inputs = {n: t.detach().to(device) for n, t in make_inputs(4, 6, batch=1, inner=2).items()}
    assert cross_scan_module._resolve_fused(None, 'triton', inputs['u']) is True
    fused = cross_selective_scan(**inputs, height=4, width=6, backend='triton')
    unfused = cross_selective_scan(**inputs, height=4, width=6, backend='triton', fused=False)
    torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-5)


def test_fused_compiles_to_one_graph():
    """torch.compile(fullgraph=True) traces the dispatch and keeps the fused scan as the custom op."""
    device = _triton_device()
    inputs = {n: t.detach().to(device).requires_grad_() for n, t in make_inputs(3, 4, batch=1, inner=2).items()}

    def step(u, delta, A, B, C, D, delta_bias):
        return cross_selective_scan(u * 2, delta, A, B, C, D, delta_bias, height=3, width=4,
                                    backend='triton').square().sum()

    compiled = torch.compile(step, fullgraph=True, backend='aot_eager' if device == 'cpu' else 'inductor')
    loss = compiled(**inputs)
    grads = torch.autograd.grad(loss, [inputs['u'], inputs['B']])
    expected = step(**inputs)
    grads_expected = torch.autograd.grad(expected, [inputs['u'], inputs['B']])
    torch.testing.assert_close(loss, expected)
    for got, want in zip(grads, grads_expected):
        torch.testing.assert_close(got, want)


def test_fused_rejects_float64():
    _triton_device()
    inputs = {n: t.detach() for n, t in make_inputs(2, 3, dtype=torch.float64).items()}
    with pytest.raises(TypeError, match=r"takes float16, bfloat16 or float32 inputs; u is torch.float64 "
                                        r"\(use backend='torch' for float64\)"):
        cross_selective_scan(**inputs, height=2, width=3, backend='triton', fused=True)


# ----------------------------------------------------------------------------------------------------
# Fused-path dispatch and argument errors.
# ----------------------------------------------------------------------------------------------------
def test_fused_dispatch(monkeypatch):
    inputs = {n: t.detach() for n, t in make_inputs(2, 3).items()}
    u = inputs['u']
    assert cross_scan_module._resolve_fused(None, 'torch', u) is False
    assert cross_scan_module._resolve_fused(False, 'triton', u) is False
    with pytest.raises(ValueError, match=r"fused=True runs Triton kernels.*resolves to 'torch'"):
        cross_selective_scan(**inputs, height=2, width=3, backend='torch', fused=True)
    with pytest.raises(TypeError, match='fused must be True, False or None'):
        cross_selective_scan(**inputs, height=2, width=3, fused='yes')

    # fused=True calls cross_selective_scan_triton once, with the checked arguments, and returns its result.
    calls = []

    def fake(u, delta, A, B, C, D, delta_bias, delta_softplus, *, height, width):
        calls.append((height, width, delta_softplus))
        return torch.zeros_like(u)

    monkeypatch.setattr(cross_scan_module, '_fused_implementation', lambda required=True: fake)
    out = cross_selective_scan(**inputs, height=2, width=3, backend='triton', fused=True)
    assert calls == [(2, 3, True)] and torch.equal(out, torch.zeros_like(u))
    assert cross_scan_module._resolve_fused(None, 'triton', u) is True  # the default on Triton is fused ...
    assert cross_scan_module._resolve_fused(None, 'torch', u) is False
    monkeypatch.setattr(cross_scan_module, 'FUSED_BY_DEFAULT', False)
    assert cross_scan_module._resolve_fused(None, 'triton', u) is False  # ... unless the module flag is off


def test_fused_missing_implementation(monkeypatch):
    pytest.importorskip('triton')
    from mmmv.ops.selective_scan import triton_backend
    monkeypatch.delattr(triton_backend, 'cross_selective_scan_triton', raising=False)
    inputs = {n: t.detach() for n, t in make_inputs(2, 3).items()}
    with pytest.raises(ValueError, match='fused 2D scan needs cross_selective_scan_triton'):
        cross_selective_scan(**inputs, height=2, width=3, backend='triton', fused=True)
    monkeypatch.setattr(cross_scan_module, 'FUSED_BY_DEFAULT', True)
    assert cross_scan_module._resolve_fused(None, 'triton', inputs['u']) is False  # falls back silently by design


def _replace(**changes):
    inputs = {n: t.detach() for n, t in make_inputs(2, 3, batch=2, inner=3, state=4).items()}
    inputs.update(changes)
    return inputs


@pytest.mark.parametrize('changes, size, error, match', [
    (dict(u=torch.randn(2, 3)), (2, 3), ValueError, r'u must have shape \(batch, Di, H\*W\), got \(2, 3\)'),
    (dict(), (2, 4), ValueError, r'height \* width = 2 \* 4 = 8 does not match the sequence length L = 6'),
    (dict(), (0, 6), ValueError, r'height must be a positive int, got 0'),
    (dict(), (2.0, 3), ValueError, r'height must be a positive int, got 2.0'),
    (dict(delta=torch.randn(2, 3, 6)), (2, 3), ValueError,
     r'delta must have shape \(batch, 4, Di, H\*W\) = \(2, 4, 3, 6\), got \(2, 3, 6\)'),
    (dict(A=torch.randn(3, 4)), (2, 3), ValueError, r'A must have shape \(4\*Di, N\) = \(12, N\), got \(3, 4\)'),
    (dict(B=torch.randn(2, 4, 6)), (2, 3), ValueError,
     r'B must have shape \(batch, 4, N, H\*W\) = \(2, 4, 4, 6\), got \(2, 4, 6\)'),
    (dict(C=torch.randn(2, 1, 4, 6)), (2, 3), ValueError, r'C must have shape .* got \(2, 1, 4, 6\)'),
    (dict(D=torch.randn(3)), (2, 3), ValueError, r'D must have shape \(4\*Di,\) = \(12,\), got \(3,\)'),
    (dict(delta_bias=torch.randn(12, 1)), (2, 3), ValueError, r'delta_bias must have shape \(4\*Di,\)'),
    (dict(B=[0.0]), (2, 3), TypeError, r'B must be a torch.Tensor, got list'),
])
def test_argument_errors(changes, size, error, match):
    with pytest.raises(error, match=match):
        cross_selective_scan(**_replace(**changes), height=size[0], width=size[1], backend='torch')


def test_cross_scan_merge_errors():
    with pytest.raises(ValueError, match=r'cross_scan: x must have shape \(batch, C, H, W\), got \(2, 3, 4\)'):
        cross_scan(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match=r'cross_merge: y must have shape \(batch, 4, C, H\*W\), got \(2, 3, 5, 6\)'):
        cross_merge(torch.randn(2, 3, 5, 6), 2, 3)
    with pytest.raises(ValueError, match=r'cross_merge: height \* width = 2 \* 2 = 4 does not match .* L = 6'):
        cross_merge(torch.randn(2, 4, 5, 6), 2, 2)


@pytest.mark.parametrize('height, width, chunk_size, dtype', [(3, 5, 4, torch.float32), (5, 3, 2, torch.float32),
                                                              (1, 7, None, torch.float32), (4, 6, 8, torch.bfloat16)])
def test_fused_backward_in_scan_order_copies(height, width, chunk_size, dtype, monkeypatch):
    """The rewrite that runs the four-direction backward as a plain grouped one on copies in scan order (what the
    warp-layout backward does on CUDA; forced here, where it runs on the Triton backward): every gradient against
    the reference, shapes and dtypes as the inputs'."""
    from mmmv.ops.selective_scan import triton_backend

    device = _triton_device()
    rewrites = []
    monkeypatch.setattr(triton_backend, '_cross_in_steps', lambda warp_k: rewrites.append(1) or True)
    inputs = _on(device, make_inputs(height, width, batch=2, inner=3, dtype=dtype))
    assert_matches_reference(inputs, height, width, run=_fused_run(chunk_size=chunk_size))
    assert rewrites


def test_fused_backward_in_scan_order_keeps_strides(monkeypatch):
    """The rewrite's gradients have the in-place backward's shapes, strides and dtypes (the fake implementation
    under torch.compile describes the in-place one) and its values, here with VSS's token-major u."""
    from mmmv.ops.selective_scan import triton_backend

    device = _triton_device()
    x = {n: None if t is None else t.detach().to(device) for n, t in make_inputs(4, 6, batch=2, inner=3).items()}
    x['u'] = x['u'].transpose(1, 2).contiguous().transpose(1, 2)
    args = (x['u'], x['delta'], x['A'], x['B'], x['C'], x['D'], None, x['delta_bias'])
    _, _, states = triton_backend.scan_forward(*args, True, False, 4, None, 4)
    dout = torch.randn_like(x['u'])
    backward_args = (dout, None, *args, states, True, 4, None, 4)
    in_place = triton_backend.scan_backward(*backward_args)
    monkeypatch.setattr(triton_backend, '_cross_in_steps', lambda warp_k: True)
    cross_scan_module.direction_indices.cache_clear()
    rewritten = triton_backend.scan_backward(*backward_args)
    # its token orders are its own (a tensor cached by this opaque op would outlive a CUDA graph's private pool)
    assert cross_scan_module.direction_indices.cache_info().currsize == 0
    for name, a, b in zip(('du', 'ddelta', 'dA', 'dB', 'dC', 'dD', 'dz', 'dbias'), in_place, rewritten):
        assert (a.shape, a.stride(), a.dtype) == (b.shape, b.stride(), b.dtype), name
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f'{name}: {m}')
