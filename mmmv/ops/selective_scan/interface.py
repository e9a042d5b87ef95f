"""The public selective-scan op: argument checks and backend dispatch.

The backend of a call is, in order: the `backend` argument; the innermost `scan_backend(...)` context (or
`set_scan_backend`, which configs reach through the models' ``scan_backend`` option); the environment variable
``MMMV_SCAN_BACKEND``; else 'auto', which picks Triton for CUDA tensors when triton imports and the torch backend
otherwise.
"""
import contextlib
import importlib.util
import logging
import os
import threading
from typing import Callable, Dict, Iterator, Optional, Tuple, Union

import torch

from .torch_backend import selective_scan_torch

ENV_BACKEND = 'MMMV_SCAN_BACKEND'
AUTO = 'auto'
BACKEND_NAMES = ('torch', 'triton', 'export')
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_PREFIX = 'selective_scan: '
_logger = logging.getLogger(__name__)


class _Override(threading.local):
    """Per thread, the stack of backends forced by `scan_backend` contexts. It exists in every thread from the
    start: torch.compile guards on what a traced `scan_backend` reads, and a stack created by the first call made
    the second call recompile."""

    def __init__(self):
        self.stack = []


_override = _Override()


_loaded: Dict[str, Callable] = {}  # the imported Triton backend and the untraced torch backend, once built


def _triton_implementation() -> Callable:
    """The Triton backend, imported on first use (importing triton reads TRITON_INTERPRET)."""
    if 'triton' in _loaded:
        return _loaded['triton']
    if importlib.util.find_spec('triton') is None:
        raise ValueError(f"{_PREFIX}backend 'triton' needs the triton package: pip install triton "
                         "(or `pip install mmmv[triton]`); or use backend='torch'")
    from .triton_backend import selective_scan_triton
    _loaded['triton'] = selective_scan_triton
    return selective_scan_triton


def untraced_torch_backend() -> Callable:
    """The torch backend wrapped in `torch.compiler.disable`: what a traced call (torch.compile) runs.

    Dynamo cannot trace the torch backend: its backward writes into non-contiguous ``out=`` views (a graph break
    that makes the whole autograd.Function run eagerly), and with symbolic sizes its Python plan of chunks
    specialises or fails (tests/test_compile.py). So under torch.compile the scan runs eagerly between the compiled
    graphs, one graph break per scan. The Triton backend is a custom op and stays inside the graph. Built on first
    use (`torch.compiler.disable` imports torch._dynamo); the backbones' ``compile`` option builds it before
    tracing, otherwise the first trace also breaks at its creation.
    """
    if 'torch_untraced' not in _loaded:
        _loaded['torch_untraced'] = torch.compiler.disable(
            selective_scan_torch, reason="mmmv's torch scan backend runs eagerly under torch.compile")
    return _loaded['torch_untraced']


# name -> a function returning the implementation, which has the signature of `selective_scan` minus `backend`
BACKENDS: Dict[str, Callable[[], Callable]] = {
    'torch': lambda: selective_scan_torch,
    'triton': _triton_implementation,
    # forward only, exportable (torch.export / ONNX): chosen explicitly, never by 'auto'
    'export': lambda: importlib.import_module(f'{__package__}.export_backend').selective_scan_export,
}
_triton_checked: Dict[str, bool] = {}


def triton_available() -> bool:
    """Whether the Triton backend imports here (auto dispatch sends CUDA tensors to it then)."""
    if 'available' not in _triton_checked:
        try:
            _triton_implementation()
            _triton_checked['available'] = True
        except Exception as error:  # noqa: BLE001 - reported once: auto dispatch then uses the torch backend
            _logger.warning('mmmv: the Triton selective scan is unavailable (%s: %s); CUDA tensors use the slower '
                            "torch backend. pip install triton to get it.", type(error).__name__, error)
            _triton_checked['available'] = False
    return _triton_checked['available']


# torch.compile runs `triton_available` once while tracing and keeps the answer (the import machinery cannot be
# traced). This is what torch.compiler.assume_constant_result does; calling it would import torch._dynamo (and with
# it triton, ~1.5 s) at `import mmmv` (tests/test_startup.py checks both).
triton_available._dynamo_marked_constant = True


def check_backend_name(backend, source: str) -> str:
    """`backend` normalised (lower case), or a TypeError / ValueError naming `source` and the valid names."""
    if not isinstance(backend, str):
        raise TypeError(f'{_PREFIX}backend must be a string or None, got {type(backend).__name__} (from {source})')
    name = backend.strip().lower()
    if name != AUTO and name not in BACKEND_NAMES:
        valid = ', '.join(repr(n) for n in (*BACKEND_NAMES, AUTO))
        raise ValueError(f'{_PREFIX}unknown backend {backend!r} (from {source}); valid names: {valid} or None')
    return name


def set_scan_backend(backend: Optional[str]) -> None:
    """Make `backend` ('torch', 'triton', 'export', 'auto') the default of this thread's calls; None clears it."""
    _override.stack = [] if backend is None else [check_backend_name(backend, 'set_scan_backend')]


def get_scan_backend() -> Optional[str]:
    """The backend forced by `scan_backend` / `set_scan_backend` in this thread, or None."""
    stack = _override.stack
    return stack[-1] if stack else None


@contextlib.contextmanager
def scan_backend(backend: Optional[str]) -> Iterator[None]:
    """Run the selective scans inside the block on `backend` ('torch', 'triton', 'export', 'auto'); None changes
    nothing.

    Example::

        with scan_backend('torch'):
            loss = model(images).sum()
    """
    if backend is None:
        yield
        return
    stack = _override.stack
    stack.append(check_backend_name(backend, 'scan_backend'))
    try:
        yield
    finally:
        stack.pop()


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    backend: Optional[str] = None,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Selective scan (Mamba S6) with the semantics of mamba_ssm's ``selective_scan_fn``.

    For every batch element and channel, with the state h (N,) starting at zero::

        dt_t = softplus(delta_t + delta_bias)        (softplus only if delta_softplus)
        h_t  = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t
        y_t  = sum_n C_t * h_t + D * u_t
        y_t  = y_t * silu(z_t)                       (only if z is given)

    The math runs in float32 (float64 when u is float64) whatever the input dtypes; gradients
    come back in each input's dtype. Inputs may be non-contiguous views. `selective_scan_ref` is the
    specification.

    Args:
        u: (batch, D, L) input; float16, bfloat16, float32 or float64.
        delta: (batch, D, L) time step, before bias and softplus.
        A: (D, N) real state matrix (one diagonal per channel), usually float32.
        B: (batch, N, L) shared by all channels, or (batch, G, N, L) grouped: channel d uses group
            d // (D // G); G must divide D.
        C: (batch, N, L) or (batch, G, N, L), like B (its sharing or G may differ from B's).
        D: (D,) skip connection, optional.
        z: (batch, D, L) gate, optional.
        delta_bias: (D,) added to delta, optional.
        delta_softplus: apply softplus to delta after the bias.
        return_last_state: also return the state after the last token.
        backend: 'triton' (fused Triton kernels; CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``;
            float16 / bfloat16 / float32), 'torch' (vectorised PyTorch, any device and dtype), 'export' (forward
            only, one ``torch._higher_order_ops.scan`` that ``torch.export`` and ONNX export can trace, see
            ``export_backend.py``), or None / 'auto' for the best available one ('torch' or 'triton'). When None, a
            `scan_backend` context or ``MMMV_SCAN_BACKEND`` (torch, triton, export or auto) may force the choice.

    Returns:
        y (batch, D, L) in u's dtype; with ``return_last_state`` the tuple (y, last_state) where
        last_state is (batch, D, N) float32 (float64 when u is float64) and differentiable.

    Raises:
        TypeError: an input is not a tensor, is complex or has an unsupported dtype.
        ValueError: shapes or devices do not match, or the backend is unknown or not available.
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    name = resolve_backend(backend, u)
    if name == 'triton':
        triton_available()  # imports the backend outside torch.compile's tracing
    if name == 'torch' and torch.compiler.is_compiling():
        implementation = untraced_torch_backend()
    else:
        implementation = BACKENDS[name]()
    return implementation(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                          return_last_state=return_last_state)


def resolve_backend(backend: Optional[str], u: torch.Tensor) -> str:
    """The backend name a call with `backend` on tensors like `u` runs on (see the module docstring)."""
    if backend is not None:
        name = check_backend_name(backend, 'backend')
    elif get_scan_backend() is not None:
        name = get_scan_backend()
    else:
        name = check_backend_name(os.environ.get(ENV_BACKEND, '').strip() or AUTO, f'${ENV_BACKEND}')
    if name != AUTO:
        return name
    if u.is_cuda and u.dtype != torch.float64 and triton_available():
        return 'triton'
    return 'torch'


def check_tensors(prefix: str, required: Dict[str, torch.Tensor], optional: Dict[str, Optional[torch.Tensor]]) -> None:
    """Raise a TypeError / ValueError naming the argument that is not a real tensor of a supported dtype on the
    device of the first required one (``u``); optional ones may be None. `prefix` names the calling op."""
    device = None
    for name, tensor in {**required, **optional}.items():
        if tensor is None and name in optional:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f'{prefix}{name} must be a torch.Tensor, got {type(tensor).__name__}')
        if tensor.is_complex():
            raise TypeError(f'{prefix}{name} must be real, got complex dtype {tensor.dtype} '
                            '(complex A, B, C are not supported)')
        if tensor.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f'{prefix}{name} has unsupported dtype {tensor.dtype}; '
                            f'expected one of {", ".join(map(str, SUPPORTED_DTYPES))}')
        device = tensor.device if device is None else device
        if tensor.device != device:
            raise ValueError(f'{prefix}{name} is on {tensor.device} but u is on {device}; '
                             'all inputs must be on one device')


def _check_inputs(u, delta, A, B, C, D, z, delta_bias) -> None:
    """Raise a TypeError / ValueError naming the argument, the expected and the received shape."""
    check_tensors(_PREFIX, dict(u=u, delta=delta, A=A, B=B, C=C), dict(D=D, z=z, delta_bias=delta_bias))

    if u.dim() != 3:
        raise ValueError(f'{_PREFIX}u must have shape (batch, D, L), got {tuple(u.shape)}')
    batch, dim, length = u.shape
    _check_shape('delta', delta, '(batch, D, L)', (batch, dim, length))
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f'{_PREFIX}A must have shape (D, N) = ({dim}, N), got {tuple(A.shape)}')
    state_size = A.shape[1]
    _check_groups('B', B, batch, dim, state_size, length)
    _check_groups('C', C, batch, dim, state_size, length)
    _check_shape('D', D, '(D,)', (dim, ))
    _check_shape('delta_bias', delta_bias, '(D,)', (dim, ))
    _check_shape('z', z, '(batch, D, L)', (batch, dim, length))


def _check_shape(name: str, tensor: Optional[torch.Tensor], names: str, expected: Tuple[int, ...]) -> None:
    if tensor is not None and tuple(tensor.shape) != expected:
        raise ValueError(f'{_PREFIX}{name} must have shape {names} = {expected}, got {tuple(tensor.shape)}')


def _check_groups(name: str, tensor: torch.Tensor, batch: int, dim: int, state_size: int, length: int) -> None:
    """B or C: shared (batch, N, L) or grouped (batch, G, N, L) with G dividing D."""
    shape = tuple(tensor.shape)
    if shape == (batch, state_size, length):
        return
    if len(shape) == 4 and shape[0] == batch and shape[2:] == (state_size, length):
        if shape[1] > 0 and dim % shape[1] == 0:
            return
        raise ValueError(f'{_PREFIX}{name} has G = {shape[1]} groups, which does not divide D = {dim} channels '
                         f'(shape {shape})')
    raise ValueError(f'{_PREFIX}{name} must have shape (batch, N, L) = {(batch, state_size, length)} or '
                     f'(batch, G, N, L) = ({batch}, G, {state_size}, {length}) with G dividing D = {dim}, '
                     f'got {shape}')
