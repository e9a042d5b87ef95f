"""Selective scan in plain PyTorch: chunked, vectorised, memory-bounded, for any device.

The recurrence h_t = a_t * h_{t-1} + b_t, with a_t = exp(dt_t * A) in [0, 1] and b_t = dt_t * B_t * u_t,
is cut into chunks of T tokens. Inside a chunk it runs as a log-depth, O(T)-work associative scan
(odd/even reduction) on the pairs (a, b), (a1, b1) o (a2, b2) = (a1 * a2, a2 * b1 + b2), which only
multiplies numbers in [0, 1] and so cannot overflow; a Python loop over the L / T chunks carries the state.

Only the state entering each chunk is kept for backward, which recomputes a chunk's states from it and
runs the adjoint recurrence g_t = C_t * dy_t + a_{t+1} * g_{t+1} as the mirrored scan, chunk by chunk from
the end. No tensor of size (batch, D, N, L) is ever held: memory grows with L only through the
(batch, D, L) inputs and outputs. Tensors are time-major inside, so that each step is a contiguous block.

Layers: chunk math (`_scan`, `_reverse_scan`, ...) -> launchers looping over chunks (`_forward`,
`_backward`) -> `SelectiveScanFunction` -> `selective_scan_torch`, called by `interface.selective_scan`.
"""
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

# The chunk length T is the largest power of two for which one (T, batch, D, N) working tensor holds at most
# CHUNK_BUDGET_ELEMENTS elements (backward keeps about ten such tensors alive), clamped to
# [MIN_CHUNK, MAX_CHUNK]: below MIN_CHUNK the Python loop over chunks would dominate. GPUs want fewer, larger
# chunks (the time goes into kernel launches), CPUs smaller ones.
CHUNK_BUDGET_ELEMENTS = {'cpu': 2**19, 'accelerator': 2**25}
MIN_CHUNK = 16
MAX_CHUNK = 2048


# ----------------------------------------------------------------------------------------------------
# Chunk math. Tensors are time-major so that a step along the sequence is one contiguous block:
# working tensors (T, batch, D, N), B and C (T, batch, G, N) with D // G channels per group.
# ----------------------------------------------------------------------------------------------------
def _scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Inclusive scan h_t = a_t * h_{t-1} + b_t over dim 0, with h_{-1} = h0; log depth, O(T) work.

    Odd/even reduction: each pair (2k, 2k+1) is folded into one step with the associative operator,
    the half-length sequence of pairs is scanned recursively (giving the odd positions), and every
    even position is then one step from its left neighbour.

    Args:
        a, b: (T, ...).
        h0: (...), the state before the first token.
        out: (T, ...) to write h into (may be a strided view), or None.

    Returns:
        h: (T, ...).
    """
    length = b.shape[0]
    h = torch.empty_like(b) if out is None else out
    torch.addcmul(b[0], a[0], h0, out=h[0])
    if length > 1:
        a_left, b_left = a[0:length - 1:2], b[0:length - 1:2]
        a_right, b_right = a[1::2], b[1::2]
        _scan(a_right * a_left, torch.addcmul(b_right, a_right, b_left), h0, out=h[1::2])
        torch.addcmul(b[2::2], a[2::2], h[1:length - 1:2], out=h[2::2])
    return h


def _reverse_scan(a: torch.Tensor, b: torch.Tensor, g_end: torch.Tensor,
                  out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """g_t = a_t * g_{t+1} + b_t over dim 0, from the end, with g_T = g_end: `_scan` mirrored (no flip copies).

    The pairs are (T-2, T-1), (T-4, T-3), ...; the half-length scan gives their left members and every
    other position is one step from its right neighbour. Shapes as `_scan`.
    """
    length = b.shape[0]
    g = torch.empty_like(b) if out is None else out
    torch.addcmul(b[-1], a[-1], g_end, out=g[-1])
    if length > 1:
        odd = length % 2  # the first pair starts at 1 when the length is odd, leaving 0 unpaired
        a_left, b_left = a[odd:length - 1:2], b[odd:length - 1:2]
        a_right, b_right = a[odd + 1::2], b[odd + 1::2]
        _reverse_scan(a_left * a_right, torch.addcmul(b_left, a_left, b_right), g_end, out=g[odd:length - 1:2])
        torch.addcmul(b[1 - odd:length - 1:2], a[1 - odd:length - 1:2], g[2 - odd::2], out=g[1 - odd:length - 1:2])
    return g


def _mul_groups(x: torch.Tensor, bc: torch.Tensor) -> torch.Tensor:
    """x (T, batch, D, 1) times bc (T, batch, G, N), each channel with its group -> (T, batch, D, N)."""
    return (x.unflatten(2, (bc.shape[2], -1)) * bc.unsqueeze(3)).flatten(2, 3)


def _sum_states(x: torch.Tensor, bc: torch.Tensor) -> torch.Tensor:
    """sum_n x[d, n] * bc[group(d), n]: x (T, batch, D, N), bc (T, batch, G, N) -> (T, batch, D)."""
    return torch.matmul(x.unflatten(2, (bc.shape[2], -1)), bc.unsqueeze(-1)).flatten(2)


def _sum_channels(w: torch.Tensor, x: torch.Tensor, groups: int) -> torch.Tensor:
    """sum_{d in group} w[d] * x[d, n]: w (T, batch, D), x (T, batch, D, N) -> (T, batch, G, N)."""
    return torch.matmul(w.unflatten(2, (groups, 1, -1)), x.unflatten(2, (groups, -1))).squeeze(3)


def _decay(dt: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """a_t = exp(dt_t * A): dt (T, batch, D), A (D, N) -> (T, batch, D, N)."""
    return (dt.unsqueeze(-1) * A).exp_()


def _drive(u: torch.Tensor, dt: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """b_t = dt_t * B_t * u_t: u, dt (T, batch, D), B (T, batch, G, N) -> (T, batch, D, N)."""
    return _mul_groups((dt * u).unsqueeze(-1), B)


def _time_step(delta: torch.Tensor, delta_bias: Optional[torch.Tensor],
               softplus: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """dt = softplus(delta + delta_bias) (L, batch, D), and d dt / d delta when softplus is on."""
    dt = delta if delta_bias is None else delta + delta_bias
    if not softplus:
        return dt, None
    return F.softplus(dt), torch.sigmoid(dt)


def _chunks(length: int, chunk: int) -> Sequence[Tuple[int, int]]:
    return [(start, min(start + chunk, length)) for start in range(0, length, chunk)]


# ----------------------------------------------------------------------------------------------------
# Launchers: allocate outputs and loop over chunks. All time-major.
# ----------------------------------------------------------------------------------------------------
def _forward(u: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             chunk: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The scan without the D skip and the z gate.

    Args:
        u, dt: (L, batch, D). A: (D, N). B, C: (L, batch, G, N) (G may differ between B and C).
        chunk: chunk length T.

    Returns:
        y (L, batch, D) = sum_n C_t h_t; the last state (batch, D, N); the states entering each chunk
        (num_chunks, batch, D, N).
    """
    length, batch, dim = u.shape
    chunks = _chunks(length, chunk)
    y = torch.empty_like(u)
    chunk_states = u.new_empty(len(chunks), batch, dim, A.shape[1])
    h = u.new_zeros(batch, dim, A.shape[1])
    for k, (s, e) in enumerate(chunks):
        chunk_states[k] = h
        states = _scan(_decay(dt[s:e], A), _drive(u[s:e], dt[s:e], B[s:e]), h)
        y[s:e] = _sum_states(states, C[s:e])
        h = states[-1]
    return y, h, chunk_states


def _backward(dy: torch.Tensor, dlast: Optional[torch.Tensor], u: torch.Tensor, dt: torch.Tensor,
              A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, chunk_states: torch.Tensor,
              chunk: int) -> Tuple[torch.Tensor, ...]:
    """Gradients of `_forward` given dy (L, batch, D) and the last state's gradient (batch, D, N) or None.

    With g_t the gradient reaching h_t (g_t = C_t dy_t + a_{t+1} g_{t+1}) and g_t * a_t * h_{t-1} written as
    g_t * (h_t - b_t), which needs no shifted copy of the states::

        du_t = dt_t sum_n g_t B_t          ddt_t = u_t sum_n g_t B_t + sum_n A g_t (h_t - b_t)
        dA   = sum_{batch,t} dt_t g_t (h_t - b_t)
        dB_t = sum_{d in group} g_t dt_t u_t        dC_t = sum_{d in group} h_t dy_t

    Returns:
        du, ddt (L, batch, D); dA (D, N); dB, dC shaped like B, C.
    """
    du, ddt, dB, dC = torch.empty_like(u), torch.empty_like(dt), torch.empty_like(B), torch.empty_like(C)
    dA = torch.zeros_like(A)
    # dt of token L is 0, so a_L = 1 and the last chunk's reverse scan starts from g_L = dlast.
    dt_next = F.pad(dt, (0, 0, 0, 0, 0, 1))
    g = dlast if dlast is not None else u.new_zeros(chunk_states.shape[1:])
    for k, (s, e) in reversed(list(enumerate(_chunks(u.shape[0], chunk)))):
        u_k, dt_k, dy_k, B_k = u[s:e], dt[s:e], dy[s:e], B[s:e]
        a = _decay(dt_next[s:e + 1], A)  # a_s .. a_e
        b = _drive(u_k, dt_k, B_k)
        states = _scan(a[:-1], b, chunk_states[k])
        grads = _reverse_scan(a[1:], _mul_groups(dy_k.unsqueeze(-1), C[s:e]), g)
        g = grads[0]

        g_decay = (states - b).mul_(grads)  # g_t * a_t * h_{t-1}
        g_B = _sum_states(grads, B_k)
        torch.mul(dt_k, g_B, out=du[s:e])
        torch.addcmul((g_decay * A).sum(-1), u_k, g_B, out=ddt[s:e])
        dA += (g_decay * dt_k.unsqueeze(-1)).sum((0, 1))
        dB[s:e] = _sum_channels(dt_k * u_k, grads, B.shape[2])
        dC[s:e] = _sum_channels(dy_k, states, C.shape[2])
    return du, ddt, dA, dB, dC


# ----------------------------------------------------------------------------------------------------
# Autograd.
# ----------------------------------------------------------------------------------------------------
class SelectiveScanFunction(torch.autograd.Function):
    """Autograd wrapper: saves the inputs and the chunk-start states, calls the launchers.

    Inputs are time-major and in one floating dtype (float32, or float64): u, delta, z (L, batch, D);
    A (D, N); B, C (L, batch, G, N); D, delta_bias (D,). Returns y (L, batch, D) and the last state.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, chunk: int):
        dt, _ = _time_step(delta, delta_bias, delta_softplus)
        y, last_state, chunk_states = _forward(u, dt, A, B, C, chunk)
        if D is not None:
            y = torch.addcmul(y, u, D)
        out = y if z is None else y * F.silu(z)
        # With a gate, keep the ungated output for dz: (L, batch, D), like an input.
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, chunk_states, None if z is None else y)
        ctx.delta_softplus, ctx.chunk = delta_softplus, chunk
        ctx.set_materialize_grads(False)
        return out, last_state

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, delta_bias, chunk_states, y = ctx.saved_tensors
        dout = torch.zeros_like(u) if dout is None else dout
        dz = None
        if z is not None:
            sig_z = torch.sigmoid(z)
            dz = dout * y * sig_z * (1 + z * (1 - sig_z))
            dout = dout * z * sig_z
        dt, dsoftplus = _time_step(delta, delta_bias, ctx.delta_softplus)
        du, ddelta, dA, dB, dC = _backward(dout, dlast, u, dt, A, B, C, chunk_states, ctx.chunk)
        dD = None
        if D is not None:
            du = torch.addcmul(du, dout, D)
            dD = (dout * u).sum((0, 1))
        if dsoftplus is not None:
            ddelta = ddelta * dsoftplus
        ddelta_bias = None if delta_bias is None else ddelta.sum((0, 1))
        return du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, None, None


# ----------------------------------------------------------------------------------------------------
# Backend entry point (inputs already checked by `interface.selective_scan`).
# ----------------------------------------------------------------------------------------------------
def chunk_length(batch: int, dim: int, state_size: int, length: int, device_type: str = 'cpu') -> int:
    """The chunk length T of a (batch, dim, L) scan with N = state_size on a device of this type."""
    budget = CHUNK_BUDGET_ELEMENTS['cpu' if device_type == 'cpu' else 'accelerator']
    per_token = max(budget // max(batch * dim * state_size, 1), 1)
    power_of_two = 1 << (per_token.bit_length() - 1)
    return max(1, min(max(power_of_two, MIN_CHUNK), MAX_CHUNK, length))


def selective_scan_torch(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                         D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
                         delta_softplus: bool, return_last_state: bool,
                         chunk_size: Optional[int] = None) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """The torch backend of `mmmv.ops.selective_scan`: the same arguments (all given) and results.

    Computes in float32, or float64 when u is float64; gradients come back in each input's dtype.

    Args:
        chunk_size: chunk length T; None picks it from the memory budget (`chunk_length`). Tests set a
            small one to exercise the carry between chunks.
    """
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32

    def time_major(x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:  # (batch, ..., L) -> (L, batch, ...)
        return None if x is None else x.movedim(-1, 0).to(dtype, memory_format=torch.contiguous_format)

    def parameter(x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if x is None else x.to(dtype)

    batch, dim, length = u.shape
    groups_B = B if B.dim() == 4 else B.unsqueeze(1)
    groups_C = C if C.dim() == 4 else C.unsqueeze(1)
    chunk = chunk_size or chunk_length(batch, dim, A.shape[1], length, u.device.type)
    y, last_state = SelectiveScanFunction.apply(
        time_major(u), time_major(delta), parameter(A), time_major(groups_B), time_major(groups_C), parameter(D),
        time_major(z), parameter(delta_bias), delta_softplus, chunk)
    y = y.movedim(0, -1).to(u.dtype, memory_format=torch.contiguous_format)
    return (y, last_state) if return_last_state else y
