"""Four-direction 2D selective scan (VMamba / VM-UNet "SS2D" core): cross scan, cross merge and the scan between.

A feature map of H x W tokens is scanned along four token orders (VM-UNet's order)::

    k0  row-major raster           (0, 0), (0, 1), ..., (0, W-1), (1, 0), ...
    k1  column-major (transpose)   (0, 0), (1, 0), ..., (H-1, 0), (0, 1), ...
    k2  k0 reversed
    k3  k1 reversed

`cross_scan` lays a map out in these four orders, `cross_merge` maps four sequences back to raster order and sums
them (each is the other's adjoint), and `cross_selective_scan` runs one selective scan over the four directions with
B/C grouped by direction and merges the result.

Everything here takes its inputs in raster order. Because VM-UNet's projections (x_proj, dt_proj) act per token,
projecting the raster map and then permuting (what callers of `cross_selective_scan` do) equals VM-UNet's permuting
first and projecting after.

Paths of `cross_selective_scan`:
    unfused  build the four permuted copies with index gathers (one cached index per (H, W, device); computed in
             the graph under torch.export, where H and W may be symbolic), run `selective_scan` over 4 * Di
             channels, then `cross_merge`. Works on every scan backend, 'export' included.
    fused    ``cross_selective_scan_triton`` in ``selective_scan/triton_backend.py`` runs the Triton scan kernels
             with the four directions as channel groups: each kernel finds a direction's tokens in the raster
             inputs by index arithmetic, reads the shared u in place, and writes the direction's output in raster
             order; the four outputs (and, in backward, the four shares of du) are summed. No permuted copies.
             Chosen with ``fused=True``; ``fused=None`` uses it whenever the scan runs on Triton
             (`FUSED_BY_DEFAULT`). Both paths give the same results up to float32 rounding.
"""
import functools
from typing import Optional, Tuple

import torch

from .selective_scan import resolve_backend, selective_scan
from .selective_scan.interface import check_tensors, triton_available

NUM_DIRECTIONS = 4
# Whether fused=None picks the fused Triton path when the scan runs on Triton (the unfused path otherwise).
FUSED_BY_DEFAULT = True
_INDEX_CACHE_SIZE = 64
_PREFIX = 'cross_selective_scan: '


# ----------------------------------------------------------------------------------------------------
# Token orders.
# ----------------------------------------------------------------------------------------------------
def _token_orders(height: int, width: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """`direction_indices`, uncached, from views of one arange: also for symbolic sizes (``torch.export``)."""
    raster = torch.arange(height * width, device=device)
    column_major = raster.view(height, width).t().flatten()  # k1's step t visits row t % H, column t // H
    column_visit = raster.view(width, height).t().flatten()  # k1 visits raster position (r, c) at step c * H + r
    order = torch.stack([raster, column_major, raster.flip(0), column_major.flip(0)])
    # k2 and k3 run k0 and k1 backwards; (r, c) -> (H-1-r, W-1-c) maps k1's step s to L-1-s, so k3's inverse is a flip
    inverse = torch.stack([raster, column_visit, raster.flip(0), column_visit.flip(0)])
    return order, inverse


@functools.lru_cache(maxsize=_INDEX_CACHE_SIZE)
def direction_indices(height: int, width: int, device: torch.device = torch.device('cpu')
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The four token orders of an H x W map, as int64 tensors of shape (4, H*W) on `device`; cached.

    Returns:
        (order, inverse): ``order[k, t]`` is the raster position of the t-th token of direction k;
        ``inverse[k, p]`` is the step at which direction k visits raster position p.
    """
    return _token_orders(height, width, device)


def _indices(height: int, width: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """`direction_indices`; while torch.export traces, computed in the graph instead (the sizes may be symbolic, and
    a cached tensor would become a constant of the exported program)."""
    if torch.compiler.is_exporting():
        return _token_orders(height, width, device)
    return direction_indices(height, width, device)


def _gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (batch, 4, C, L), index (4, L) -> (batch, 4, C, L) with out[:, k, :, t] = x[:, k, :, index[k, t]]."""
    return x.gather(3, index[None, :, None, :].expand(x.shape))


def _check_map_size(height, width, length: int, where: str) -> None:
    for name, value in (('height', height), ('width', width)):
        if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)) or value < 1:
            raise ValueError(f'{where}{name} must be a positive int, got {value!r}')
    if height * width != length:
        raise ValueError(f'{where}height * width = {height} * {width} = {height * width} does not match the '
                         f'sequence length L = {length}')


# ----------------------------------------------------------------------------------------------------
# Cross scan and cross merge.
# ----------------------------------------------------------------------------------------------------
def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """Lay a map out in the four scan orders.

    Args:
        x: (batch, C, H, W).

    Returns:
        (batch, 4, C, H*W): direction k's tokens in its scan order (k0 raster, k1 column-major, k2 / k3 reversed).
        Differentiable; its gradient is `cross_merge` of the incoming gradient.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f'cross_scan: x must have shape (batch, C, H, W), got {shape}')
    batch, channels, height, width = x.shape
    order, _ = _indices(height, width, x.device)
    raster = x.reshape(batch, 1, channels, height * width).expand(batch, NUM_DIRECTIONS, channels, height * width)
    return _gather_tokens(raster, order)


def cross_merge(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Map four direction sequences back to raster order and sum them.

    Args:
        y: (batch, 4, C, H*W), direction k's tokens in its scan order.
        height, width: the map size.

    Returns:
        (batch, C, H*W) in raster order. Differentiable; its gradient is `cross_scan` of the incoming gradient.
    """
    if not isinstance(y, torch.Tensor) or y.dim() != 4 or y.shape[1] != NUM_DIRECTIONS:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f'cross_merge: y must have shape (batch, 4, C, H*W), got {shape}')
    _check_map_size(height, width, y.shape[3], 'cross_merge: ')
    _, inverse = _indices(height, width, y.device)
    return _gather_tokens(y, inverse).sum(1)


# ----------------------------------------------------------------------------------------------------
# The four-direction selective scan.
# ----------------------------------------------------------------------------------------------------
def cross_selective_scan(u: torch.Tensor,
                         delta: torch.Tensor,
                         A: torch.Tensor,
                         B: torch.Tensor,
                         C: torch.Tensor,
                         D: Optional[torch.Tensor] = None,
                         delta_bias: Optional[torch.Tensor] = None,
                         delta_softplus: bool = True,
                         *,
                         height: int,
                         width: int,
                         backend: Optional[str] = None,
                         fused: Optional[bool] = None) -> torch.Tensor:
    """Selective scans of an H x W map along its four directions, merged back to raster order and summed.

    Direction k (k0 raster, k1 column-major, k2 / k3 reversed) scans the channels ``k*Di:(k+1)*Di`` of `A`, `D`
    and `delta_bias`, with ``delta[:, k]``, ``B[:, k]``, ``C[:, k]``; every direction reads the same `u`.
    All sequences are given in raster order (token p = h * W + w); the reordering happens here.

    Args:
        u: (batch, Di, H*W) input, raster order, shared by the four directions.
        delta: (batch, 4, Di, H*W) time steps per direction (before bias and softplus), raster order.
        A: (4*Di, N) state matrix, direction-major (channel k*Di + d).
        B: (batch, 4, N, H*W) per direction, raster order.
        C: (batch, 4, N, H*W) per direction, raster order.
        D: (4*Di,) skip connection, optional.
        delta_bias: (4*Di,) added to delta, optional.
        delta_softplus: apply softplus to delta after the bias (VM-UNet: True).
        height, width: the map size; H * W must equal the sequence length.
        backend: the scan backend ('torch', 'triton', 'auto' or None), as for `selective_scan`.
        fused: True runs the fused Triton 2D scan, False the unfused path (index gathers + `selective_scan` +
            `cross_merge`); None decides (see `FUSED_BY_DEFAULT`).

    Returns:
        (batch, Di, H*W) in u's dtype, raster order.

    Raises:
        TypeError: an input is not a tensor, or `fused` is not a bool or None.
        ValueError: shapes do not match, or the fused path was asked for and cannot run.
    """
    _check_inputs(u, delta, A, B, C, D, delta_bias, height, width)
    if _resolve_fused(fused, backend, u):
        return _fused(u, delta, A, B, C, D, delta_bias, delta_softplus, height=height, width=width)
    return _unfused(u, delta, A, B, C, D, delta_bias, delta_softplus, height=height, width=width, backend=backend)


def _unfused(u, delta, A, B, C, D, delta_bias, delta_softplus, *, height, width, backend):
    batch, inner, length = u.shape
    order, _ = _indices(height, width, u.device)
    us = _gather_tokens(u.unsqueeze(1).expand(batch, NUM_DIRECTIONS, inner, length), order)
    deltas = _gather_tokens(delta, order)
    y = selective_scan(
        us.reshape(batch, NUM_DIRECTIONS * inner, length),
        deltas.reshape(batch, NUM_DIRECTIONS * inner, length),
        A,
        _gather_tokens(B, order),
        _gather_tokens(C, order),
        D,
        delta_bias=delta_bias,
        delta_softplus=delta_softplus,
        backend=backend)
    return cross_merge(y.view(batch, NUM_DIRECTIONS, inner, length), height, width)


def _resolve_fused(fused: Optional[bool], backend: Optional[str], u: torch.Tensor) -> bool:
    """Whether a call with `fused` and `backend` on tensors like `u` takes the fused Triton path."""
    if fused is not None and not isinstance(fused, bool):
        raise TypeError(f'{_PREFIX}fused must be True, False or None, got {fused!r}')
    scan_on_triton = resolve_backend(backend, u) == 'triton'
    if fused is None:
        return FUSED_BY_DEFAULT and scan_on_triton and _fused_implementation(required=False) is not None
    if fused and not scan_on_triton:
        raise ValueError(f"{_PREFIX}fused=True runs Triton kernels, but the scan backend resolves to 'torch' "
                         f"(backend={backend!r}); pass backend='triton' or fused=False")
    return fused


def _fused_implementation(required: bool = True):
    """``cross_selective_scan_triton`` from the Triton backend; None (or, if `required`, a ValueError with the fix)
    when triton or the function is missing."""
    if not triton_available():  # a constant to torch.compile, which cannot trace the import machinery
        if not required:
            return None
        raise ValueError(f'{_PREFIX}fused 2D scan needs the triton package: pip install triton; or pass fused=False')
    from .selective_scan import triton_backend
    implementation = getattr(triton_backend, 'cross_selective_scan_triton', None)
    if implementation is None and required:
        raise ValueError(f'{_PREFIX}fused 2D scan needs cross_selective_scan_triton in '
                         'mmmv.ops.selective_scan.triton_backend, which this version lacks; pass fused=False')
    return implementation


def _fused(u, delta, A, B, C, D, delta_bias, delta_softplus, *, height, width):
    """The single call site of the fused path: ``cross_selective_scan_triton`` takes the arguments of
    `cross_selective_scan` (already checked) minus `backend` and `fused`."""
    implementation = _fused_implementation()
    return implementation(u, delta, A, B, C, D, delta_bias, delta_softplus, height=height, width=width)


def _check_inputs(u, delta, A, B, C, D, delta_bias, height, width) -> None:
    """Raise a TypeError / ValueError naming the argument, its expected and its received shape, dtype or device."""
    check_tensors(_PREFIX, dict(u=u, delta=delta, A=A, B=B, C=C), dict(D=D, delta_bias=delta_bias))
    if u.dim() != 3:
        raise ValueError(f'{_PREFIX}u must have shape (batch, Di, H*W), got {tuple(u.shape)}')
    batch, inner, length = u.shape
    _check_map_size(height, width, length, _PREFIX)
    k = NUM_DIRECTIONS
    _check_shape('delta', delta, '(batch, 4, Di, H*W)', (batch, k, inner, length))
    if A.dim() != 2 or A.shape[0] != k * inner:
        raise ValueError(f'{_PREFIX}A must have shape (4*Di, N) = ({k * inner}, N), got {tuple(A.shape)}')
    state = A.shape[1]
    _check_shape('B', B, '(batch, 4, N, H*W)', (batch, k, state, length))
    _check_shape('C', C, '(batch, 4, N, H*W)', (batch, k, state, length))
    _check_shape('D', D, '(4*Di,)', (k * inner, ))
    _check_shape('delta_bias', delta_bias, '(4*Di,)', (k * inner, ))


def _check_shape(name: str, tensor: Optional[torch.Tensor], names: str, expected: Tuple[int, ...]) -> None:
    if tensor is not None and tuple(tensor.shape) != expected:
        raise ValueError(f'{_PREFIX}{name} must have shape {names} = {expected}, got {tuple(tensor.shape)}')
