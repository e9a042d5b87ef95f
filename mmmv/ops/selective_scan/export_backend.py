"""Selective scan for export: forward only, built from ops that ``torch.export`` and the ONNX exporter translate.

The torch backend (`torch_backend.py`) is an ``autograd.Function`` with Python loops over chunks whose count depends
on the sequence length, ``out=`` arguments and in-place updates: ``torch.export`` cannot turn it into a graph with a
symbolic length. Here the recurrence h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t is one call of torch's ``scan``
higher-order operator over time, which ``torch.onnx.export(..., dynamo=True)`` writes as one ONNX ``Scan`` node whose
trip count follows the (possibly dynamic) sequence length:

- outside the loop, time-major (L, batch, ...) tensors are prepared once: dt (after bias and softplus), dt * u, B, C;
- the scan carries the state (batch, D, N) and advances it `tokens_per_step` tokens per step (an ONNX Scan iteration
  has a fixed cost in onnxruntime, so steps of several tokens are faster): a step computes its tokens' decays
  exp(dt * A) and drives dt * u * B at once, updates the state token by token, and reads out y_t = sum_n C_t h_t of
  all its tokens with one matrix product. No (L, batch, D, N) tensor exists;
- the sequence is zero-padded to a whole number of steps: a padded token has dt = 0, hence decay 1 and drive 0, and
  leaves the state unchanged, so the last state is exact; its outputs are dropped.

The operator is called directly (``scan_op``) rather than through ``torch._higher_order_ops.scan.scan``, which
compiles every call with torch.compile: under torch.export that costs seconds per scan, and eager calls recompile
for each new shape. Eager calls run the operator's plain loop over the steps.

Same arguments, semantics and dtypes as `mmmv.ops.selective_scan` (see its docstring; `selective_scan_ref` is the
specification), without gradients.
"""
from typing import Callable, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch.fx.experimental.symbolic_shapes import statically_known_true

# Tokens advanced per scan step; chosen by measuring onnxruntime on CPU (docs/deployment.md).
TOKENS_PER_STEP = 8
_PREFIX = 'selective_scan: '


def _time_major_groups(bc: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """B or C, (batch, N, L) or (batch, G, N, L) -> (L, batch, G, N) in `dtype`."""
    grouped = bc if bc.dim() == 4 else bc.unsqueeze(1)
    return grouped.to(dtype).permute(3, 0, 1, 2)


def _pad_steps(x: torch.Tensor, tokens: int) -> torch.Tensor:
    """(L, ...) zero-padded at the end to a whole number of steps of `tokens`, as (steps, tokens, ...)."""
    length = x.shape[0]
    steps = (length + tokens - 1) // tokens
    x = F.pad(x, (0, 0) * (x.dim() - 1) + (0, steps * tokens - length))
    return x.view(steps, tokens, *x.shape[1:])


def _drives(x: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """x[..., d] * B[..., group(d), n]: x (T, batch, D), B (T, batch, G, N) -> (T, batch, D, N)."""
    groups, state = B.shape[-2:]
    steps, _, dim = x.shape
    drives = x.unflatten(-1, (groups, dim // groups)).unsqueeze(-1) * B.unsqueeze(-2)
    return drives.reshape(steps, -1, dim, state)


def _read_out(h: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """sum_n C[..., group(d), n] * h[..., d, n]: h (T, batch, D, N), C (T, batch, G, N) -> (T, batch, D)."""
    groups, state = C.shape[-2:]
    steps, _, dim, _ = h.shape
    per_group = h.reshape(steps, -1, groups, dim // groups, state)
    return torch.matmul(per_group, C.unsqueeze(-1)).reshape(steps, -1, dim)


def scan_operator() -> Callable:
    """torch's ``scan`` higher-order operator, or a ValueError naming the fix where this torch lacks it."""
    try:
        from torch._higher_order_ops.scan import scan_op  # imports torch._dynamo: only when a scan runs here
    except ImportError as error:
        raise ValueError(f"{_PREFIX}backend 'export' needs torch's scan operator (torch._higher_order_ops.scan), "
                         f'which torch {torch.__version__} lacks ({error}); install a newer torch') from None
    return scan_op


def _step(h: torch.Tensor, dt: torch.Tensor, x: torch.Tensor, B: torch.Tensor, C: torch.Tensor, A: torch.Tensor
          ) -> List[torch.Tensor]:
    """One scan step: the state after T more tokens and their outputs.

    Args:
        h: (batch, D, N) state entering the step.
        dt, x: (T, batch, D), the time steps and dt * u of the step's tokens.
        B, C: (T, batch, G, N).
        A: (D, N).

    Returns:
        [the state after the last token (batch, D, N), y (T, batch, D) without the D skip and the gate].
    """
    decays = torch.exp(dt.unsqueeze(-1) * A)
    drives = _drives(x, B)
    states = []
    for decay, drive in zip(decays.unbind(0), drives.unbind(0)):
        h = decay * h + drive
        states.append(h)
    return [h, _read_out(torch.stack(states), C)]


def selective_scan_export(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                          D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
                          delta_softplus: bool, return_last_state: bool, tokens_per_step: Optional[int] = None
                          ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """The export backend of `mmmv.ops.selective_scan`: the same arguments (all given) and results, forward only.

    Args:
        tokens_per_step: tokens advanced per step of the scan (see the module docstring), `TOKENS_PER_STEP` if None;
            any positive int gives the same results.
    """
    scan_op = scan_operator()
    tokens_per_step = tokens_per_step or TOKENS_PER_STEP
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    batch, dim, length = u.shape
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    u_c = u.to(dtype)
    inputs = [dt.permute(2, 0, 1), (dt * u_c).permute(2, 0, 1), _time_major_groups(B, dtype),
              _time_major_groups(C, dtype)]
    h0 = u_c.new_zeros(batch, dim, A.shape[1])
    if statically_known_true(length == 0):  # the operator needs a step; a symbolic length is taken as >= 2, unguarded
        last_state, y = h0, u_c.new_zeros(u.shape)
    else:
        # A is passed, not closed over: the operator's steps may only read their arguments
        last_state, ys = scan_op(_step, [h0], [_pad_steps(x, tokens_per_step) for x in inputs],
                                 additional_inputs=(A.to(dtype), ))
        y = ys.flatten(0, 1)[:length].permute(1, 2, 0)  # (batch, D, L)
    if D is not None:
        y = y + D.to(dtype)[:, None] * u_c
    if z is not None:
        y = y * F.silu(z.to(dtype))
    y = y.to(u.dtype)
    return (y, last_state) if return_last_state else y
