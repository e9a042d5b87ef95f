"""Reference selective scan: the specification of ``mmmv.ops.selective_scan``.

A plain sequential loop over the sequence in float64, written to be read and trusted rather than to be
fast. Tests differentiate it with autograd to obtain reference gradients for the fast backends.
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F


def _per_channel(bc: torch.Tensor, dim: int) -> torch.Tensor:
    """(batch, N, L) or (batch, G, N, L) -> (batch, dim, N, L): channel d reads group d // (dim // G)."""
    if bc.dim() == 3:
        bc = bc.unsqueeze(1)
    return bc.repeat_interleave(dim // bc.shape[1], dim=1)


def selective_scan_ref(
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
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Selective scan (Mamba S6), one token at a time, in float64.

    For every batch element b and channel d, with the state h (N,) starting at zero::

        dt_t = softplus(delta_t + delta_bias)        (softplus only if delta_softplus)
        h_t  = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t
        y_t  = sum_n C_t * h_t + D * u_t
        y_t  = y_t * silu(z_t)                       (only if z is given)

    Args:
        u: (batch, dim, L) input.
        delta: (batch, dim, L) time step, before bias and softplus.
        A: (dim, N) real state matrix (diagonal per channel).
        B: (batch, N, L) shared by all channels, or (batch, G, N, L) grouped: channel d uses group
            d // (dim // G).
        C: (batch, N, L) or (batch, G, N, L), grouped like B (its G may differ from B's).
        D: (dim,) skip connection, optional.
        z: (batch, dim, L) gate, optional.
        delta_bias: (dim,) added to delta, optional.
        delta_softplus: apply softplus to delta after the bias.
        return_last_state: also return the state after the last token.

    Returns:
        y (batch, dim, L) in u's dtype; with ``return_last_state`` also the last state (batch, dim, N),
        in float32 (float64 when u is float64).
    """
    f64 = torch.float64
    dim = u.shape[1]
    dt = delta.to(f64)
    if delta_bias is not None:
        dt = dt + delta_bias.to(f64)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    u64, A64 = u.to(f64), A.to(f64)
    B64, C64 = _per_channel(B.to(f64), dim), _per_channel(C.to(f64), dim)

    h = u64.new_zeros(u.shape[0], dim, A.shape[1])  # (batch, dim, N)
    ys = []
    # unbind rather than index per token: autograd then gathers the gradients once, not once per token.
    for dt_t, u_t, B_t, C_t in zip(dt.unbind(-1), u64.unbind(-1), B64.unbind(-1), C64.unbind(-1)):
        dt_t, u_t = dt_t.unsqueeze(-1), u_t.unsqueeze(-1)  # (batch, dim, 1); B_t, C_t (batch, dim, N)
        h = torch.exp(dt_t * A64) * h + dt_t * B_t * u_t
        ys.append((C_t * h).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else u64.new_zeros(u.shape)
    if D is not None:
        y = y + D.to(f64)[:, None] * u64
    if z is not None:
        y = y * F.silu(z.to(f64))
    y = y.to(u.dtype)
    if not return_last_state:
        return y
    return y, h.to(f64 if u.dtype == f64 else torch.float32)
