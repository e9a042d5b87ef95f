"""Selective scan in plain PyTorch: blocked, vectorised, memory-bounded, for any device.

The recurrence h_t = a_t * h_{t-1} + b_t, with a_t = exp(dt_t * A) in [0, 1] and b_t = dt_t * B_t * u_t, runs as
a loop over tokens in which every step advances many pieces of the sequence at once. The sequence is cut into
chunks of T tokens, the unit of memory (backward keeps only the state entering each chunk), and a chunk into
K blocks of S tokens, scanned side by side:

1. pass 1 scans blocks 0 .. K-2 from a zero state and keeps only their end states;
2. a scan over the blocks (a loop, or log depth for many blocks) composes these with each block's total decay
   exp(A * sum dt) into the state entering every block;
3. pass 2 scans every block from its entering state and writes the states.

A pass is S elementwise ops, each on the same step of all K blocks, so a chunk costs about 2 S + K ops on
tensors K times wider than one token; K is chosen so that a step is wide enough for an op to cost its data,
not its launch. The arithmetic is that of the sequential recurrence (products of numbers in [0, 1], and sums):
nothing overflows or is divided, whatever delta and L are.

Backward recomputes a chunk's decays and states from its saved entering state and runs the adjoint recurrence
g_t = C_t dy_t + a_{t+1} g_{t+1} the same way from the end of the chunk, chunks from the last. No tensor of
size (batch, D, N, L) is ever held: memory grows with L only through the (batch, D, L) inputs and outputs.

Layout: inside, tensors are time-major and working tensors are (S, K, batch, N, D). A step is one contiguous
block, and channels are innermost, so that the products of per-channel values (dt, u) with per-state ones
(A, B, C) are vectorised along D and the sums over the N states are small matrix products. The (batch, D, L)
inputs and outputs are converted once each way, as 2-D transposes.

Layers: layout, scans and chunk math (`_scan_chunk`, `_adjoint_chunk`, ...) -> launchers looping over chunks
(`_forward`, `_backward`) -> `SelectiveScanFunction` -> `selective_scan_torch`, called by
`interface.selective_scan`.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

# The chunk length T is the largest power of two for which one (T, batch, D, N) working tensor holds at most
# CHUNK_BUDGET_ELEMENTS elements (backward keeps three such tensors), clamped to [MIN_CHUNK, MAX_CHUNK].
# On CPU the budget trades the cache misses of large chunks against the fixed ops of each chunk (measured on a
# 2-core x86 CPU); GPUs want fewer, larger chunks (the time goes into kernel launches).
CHUNK_BUDGET_ELEMENTS = {'cpu': 2**21, 'accelerator': 2**25}
MIN_CHUNK = 16
MAX_CHUNK = 2048
# A chunk is cut into as few blocks as make one step of all of them at least STEP_ELEMENTS state elements
# (an op on fewer costs mostly its launch; on CPU 2**16 also spreads each op over the threads), keeping blocks
# of at least MIN_BLOCK tokens.
STEP_ELEMENTS = {'cpu': 2**16, 'accelerator': 2**20}
MIN_BLOCK = 8
# The scans over blocks run as a loop up to this length: fewer ops than the log-depth recursion, which takes
# over above it (the many blocks of a GPU chunk) and ends in the loop.
SEQUENTIAL_SCAN = 32


# ----------------------------------------------------------------------------------------------------
# Layout: (batch, ..., L) <-> time-major (L, batch, ...).
# ----------------------------------------------------------------------------------------------------
def _time_major(x: torch.Tensor) -> torch.Tensor:
    """(batch, ..., L) -> (L, batch, ...), contiguous, same dtype.

    A contiguous input is moved as one 2-D transpose, several times faster on CPU than copying the permuted
    3-D or 4-D view; a view that is already time-major in memory (u = x.transpose(1, 2)) is not copied.
    """
    moved = x.movedim(-1, 0)
    if moved.is_contiguous():
        return moved
    if x.is_contiguous():
        return x.view(-1, x.shape[-1]).t().contiguous().view(moved.shape)
    return moved.contiguous()


def _sequence_last(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(L, batch, ...) contiguous -> (batch, ..., L) contiguous in `dtype`."""
    x = x.to(dtype)
    return x.view(x.shape[0], -1).t().contiguous().view(*x.shape[1:], x.shape[0])


# ----------------------------------------------------------------------------------------------------
# Scans along the leading axis, for the sequences of blocks: a loop, or log depth for long ones.
# ----------------------------------------------------------------------------------------------------
def _scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Inclusive scan h_t = a_t * h_{t-1} + b_t over dim 0, with h_{-1} = h0, into `out`; O(T) work.

    Up to SEQUENTIAL_SCAN steps, a loop. Above, odd/even reduction: each pair (2k, 2k+1) is folded into one step
    with the associative operator (a1, b1) o (a2, b2) = (a1 * a2, a2 * b1 + b2), the half-length sequence of pairs
    is scanned recursively (giving the odd positions), and every even position is one step from its left neighbour.
    """
    length = b.shape[0]
    if length <= SEQUENTIAL_SCAN:
        h = h0
        for a_t, b_t, out_t in zip(a.unbind(0), b.unbind(0), out.unbind(0)):
            h = torch.addcmul(b_t, a_t, h, out=out_t)
        return out
    torch.addcmul(b[0], a[0], h0, out=out[0])
    a_left, b_left = a[0:length - 1:2], b[0:length - 1:2]
    a_right, b_right = a[1::2], b[1::2]
    _scan(a_right * a_left, torch.addcmul(b_right, a_right, b_left), h0, out=out[1::2])
    torch.addcmul(b[2::2], a[2::2], out[1:length - 1:2], out=out[2::2])
    return out


def _reverse_scan(a: torch.Tensor, b: torch.Tensor, g_end: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """g_t = a_t * g_{t+1} + b_t over dim 0, from the end, with g_T = g_end, into `out`: `_scan` mirrored.

    Above SEQUENTIAL_SCAN steps, the pairs are (T-2, T-1), (T-4, T-3), ...; the half-length scan gives their left
    members and every other position is one step from its right neighbour.
    """
    length = b.shape[0]
    if length <= SEQUENTIAL_SCAN:
        g = g_end
        for a_t, b_t, out_t in zip(a.unbind(0)[::-1], b.unbind(0)[::-1], out.unbind(0)[::-1]):
            g = torch.addcmul(b_t, a_t, g, out=out_t)
        return out
    torch.addcmul(b[-1], a[-1], g_end, out=out[-1])
    odd = length % 2  # the first pair starts at 1 when the length is odd, leaving 0 unpaired
    a_left, b_left = a[odd:length - 1:2], b[odd:length - 1:2]
    a_right, b_right = a[odd + 1::2], b[odd + 1::2]
    _reverse_scan(a_left * a_right, torch.addcmul(b_left, a_left, b_right), g_end, out=out[odd:length - 1:2])
    torch.addcmul(b[1 - odd:length - 1:2], a[1 - odd:length - 1:2], out[2 - odd::2], out=out[1 - odd:length - 1:2])
    return out


# ----------------------------------------------------------------------------------------------------
# Chunk math on working tensors (S, K, batch, N, D): token j of block k at [j, k]. Per-channel inputs are
# (S, K, batch, D); B and C (S, K, batch, G, N), channel d using group d // (D // G).
# ----------------------------------------------------------------------------------------------------
def _decays(dt: torch.Tensor, A_t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """a = exp(dt * A): dt (..., D), A_t (N, D) -> out (..., N, D)."""
    return torch.mul(dt.unsqueeze(-2), A_t, out=out).exp_()


def _outer(x: torch.Tensor, bc: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[..., n, d] = x[..., d] * bc[..., group(d), n]: x (..., D), bc (..., G, N) -> out (..., N, D)."""
    groups = bc.shape[-2]
    if groups == 1:
        return torch.mul(x.unsqueeze(-2), bc.transpose(-1, -2), out=out)
    torch.mul(x.unflatten(-1, (groups, -1)).unsqueeze(-3), bc.transpose(-1, -2).unsqueeze(-1),
              out=out.unflatten(-1, (groups, -1)))
    return out


def _sum_states(h: torch.Tensor, bc: torch.Tensor) -> torch.Tensor:
    """sum_n bc[..., group(d), n] * h[..., n, d]: h (..., N, D), bc (..., G, N) -> (..., D)."""
    groups = bc.shape[-2]
    if groups == 1:
        return torch.matmul(bc, h).squeeze(-2)
    per_group = h.unflatten(-1, (groups, -1)).movedim(-2, -3)  # (..., G, N, D / G)
    return torch.matmul(bc.unsqueeze(-2), per_group).flatten(-3)


def _sum_channels(w: torch.Tensor, h: torch.Tensor, groups: int) -> torch.Tensor:
    """sum_{d in group} w[..., d] * h[..., n, d]: w (..., D), h (..., N, D) -> (..., G, N)."""
    # (1, D) @ (D, N) with h transposed: several times faster on CPU than (N, D) @ (D, 1).
    if groups == 1:
        return torch.matmul(w.unsqueeze(-2), h.transpose(-1, -2))
    per_group = h.unflatten(-1, (groups, -1)).movedim(-2, -3)  # (..., G, N, D / G)
    return torch.matmul(w.unflatten(-1, (groups, -1)).unsqueeze(-2), per_group.transpose(-1, -2)).squeeze(-2)


def _block_decay(dt: torch.Tensor, A_t: torch.Tensor) -> torch.Tensor:
    """exp(A * sum_j dt_j) over the tokens of each block: dt (S, K, batch, D), A_t (N, D) -> (K, batch, N, D)."""
    summed = dt.sum(0)
    return _decays(summed, A_t, out=summed.new_empty(*summed.shape[:-1], *A_t.shape))


class _Steps:
    """A working tensor (S, K, ...) and views of its steps: all blocks, all but the last, all but the first.
    Making a view costs about as much as a small op, so they are made once per chunk shape and reused."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor
        self.all = tensor.unbind(0)
        self.leading = tensor[:, :-1].unbind(0)
        self.trailing = tensor[:, 1:].unbind(0)


def _scan_chunk(a: _Steps, h: _Steps, dt: torch.Tensor, A_t: torch.Tensor, h_in: torch.Tensor) -> torch.Tensor:
    """The states of one chunk, in place: h holds b_t on entry and h_t on return (see the module docstring).

    Args:
        a, h: (S, K, batch, N, D) decays and drives.
        dt: (S, K, batch, D), for the blocks' total decays.
        A_t: (N, D).
        h_in: (batch, N, D), the state entering the chunk.

    Returns:
        The state entering each block, (K, batch, N, D).
    """
    entry = h_in.new_empty(h.tensor.shape[1:])
    entry[0] = h_in
    if entry.shape[0] > 1:
        # Pass 1: end states of blocks 0 .. K-2 from zero (pass 2 needs no end state of the last block).
        end = h.leading[0].clone()
        for a_j, b_j in zip(a.leading[1:], h.leading[1:]):
            torch.addcmul(b_j, a_j, end, out=end)
        _scan(_block_decay(dt[:, :-1], A_t), end, h_in, out=entry[1:])
    # Pass 2: every block from its entering state.
    h.all[0].addcmul_(a.all[0], entry)
    for j in range(1, len(h.all)):
        h.all[j].addcmul_(a.all[j], h.all[j - 1])
    return entry


def _adjoint_chunk(a: _Steps, g: _Steps, dt: torch.Tensor, A_t: torch.Tensor, g_out: torch.Tensor) -> torch.Tensor:
    """The adjoint states of one chunk, in place: g holds C_t dy_t on entry and g_t on return.

    g_t = C_t dy_t + a_{t+1} g_{t+1}, where the term of the token after the chunk, g_out = a_{T} g_{T}, is given.
    `_scan_chunk` mirrored: pass 1 gives the adjoint at the first token of blocks 1 .. K-1 from a zero right end,
    a reverse scan over the blocks gives the term entering each block's last token from the right, pass 2 writes g.

    Args:
        a, g: (S, K, batch, N, D). dt: (S, K, batch, D). A_t: (N, D).
        g_out: (batch, N, D).

    Returns:
        The term that this chunk passes to the token before it, a_0 g_0 (batch, N, D).
    """
    right = g_out.new_empty(g.tensor.shape[1:])  # enters the last token of each block from the right
    right[-1] = g_out
    if right.shape[0] > 1:
        first = g.trailing[-1].clone()  # pass 1 over blocks 1 .. K-1, from their last token to their first
        for a_next, c_j in zip(a.trailing[:0:-1], g.trailing[-2::-1]):
            torch.addcmul(c_j, a_next, first, out=first)
        # right_k = a0_{k+1} (first_{k+1} + decay_{k+1} right_{k+1}), decay from a block's token 1 to its end
        a_first = a.all[0][1:]
        decay = _block_decay(dt[1:, 1:], A_t).mul_(a_first)
        _reverse_scan(decay, first.mul_(a_first), g_out, out=right[:-1])
    g.all[-1].add_(right)
    for j in range(len(g.all) - 2, -1, -1):
        g.all[j].addcmul_(a.all[j + 1], g.all[j + 1])
    return a.all[0][0] * g.all[0][0]


# ----------------------------------------------------------------------------------------------------
# Launchers: loop over chunks, hand out working tensors, write the outputs. All time-major.
# ----------------------------------------------------------------------------------------------------
Chunk = Tuple[int, int, int]  # (first token, S steps, K blocks): tokens first .. first + S * K - 1


def _plan(length: int, chunk: int, block: int) -> List[Chunk]:
    """Chunks of chunk // block blocks of `block` tokens; the tokens left over form a chunk of as many whole
    blocks as fit and, at the very end, a chunk of one shorter block."""
    blocks_per_chunk = max(chunk // block, 1)
    chunks, start = [], 0
    while start < length:
        blocks = min(blocks_per_chunk, (length - start) // block)
        steps = block if blocks else length - start
        blocks = max(blocks, 1)
        chunks.append((start, steps, blocks))
        start += steps * blocks
    return chunks


def _view(x: torch.Tensor, chunk: Chunk) -> torch.Tensor:
    """The tokens of `chunk` of a time-major tensor (L, ...), step-major: (S, K, ...), a view."""
    start, steps, blocks = chunk
    return x[start:start + steps * blocks].unflatten(0, (blocks, steps)).transpose(0, 1)


class _Workspace:
    """`count` working tensors, allocated once for the largest chunk and viewed as (S, K, batch, N, D)."""

    def __init__(self, count: int, chunks: Sequence[Chunk], state_shape: Sequence[int], like: torch.Tensor):
        self.state_shape = tuple(state_shape)
        largest = max(steps * blocks for _, steps, blocks in chunks) * math.prod(self.state_shape)
        self.buffers = [like.new_empty(largest) for _ in range(count)]
        self.views: Dict[Tuple[int, int], List[_Steps]] = {}

    def __call__(self, chunk: Chunk) -> List[_Steps]:
        shape = (*chunk[1:], *self.state_shape)
        if shape[:2] not in self.views:
            self.views[shape[:2]] = [_Steps(buffer[:math.prod(shape)].view(shape)) for buffer in self.buffers]
        return self.views[shape[:2]]


def _forward(u: torch.Tensor, dt: torch.Tensor, A_t: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             chunks: Sequence[Chunk]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The scan without the D skip and the z gate.

    Args:
        u, dt: (L, batch, D). A_t: (N, D), A transposed. B, C: (L, batch, G, N) (G may differ between B and C).
        chunks: from `_plan`.

    Returns:
        y (L, batch, D) = sum_n C_t h_t; the last state (batch, N, D); the states entering each chunk
        (num_chunks, batch, N, D).
    """
    _, batch, dim = u.shape
    state_shape = (batch, A_t.shape[0], dim)
    x = dt * u
    y = torch.empty_like(u)
    chunk_states = u.new_empty(len(chunks), *state_shape)
    h = u.new_zeros(state_shape)
    workspace = _Workspace(2, chunks, state_shape, u)
    for i, chunk in enumerate(chunks):
        chunk_states[i] = h
        a, states = workspace(chunk)
        dt_c = _view(dt, chunk)
        _decays(dt_c, A_t, out=a.tensor)
        _outer(_view(x, chunk), _view(B, chunk), out=states.tensor)
        _scan_chunk(a, states, dt_c, A_t, h)
        h = states.all[-1][-1].clone()
        _view(y, chunk).copy_(_sum_states(states.tensor, _view(C, chunk)))
    return y, h, chunk_states


def _backward(dy: torch.Tensor, dlast: Optional[torch.Tensor], u: torch.Tensor, dt: torch.Tensor,
              A_t: torch.Tensor, B: torch.Tensor, C: torch.Tensor, chunk_states: torch.Tensor,
              chunks: Sequence[Chunk]) -> Tuple[torch.Tensor, ...]:
    """Gradients of `_forward` given dy (L, batch, D) and the last state's gradient (batch, N, D) or None.

    With g_t the gradient reaching h_t and z_t = g_t a_t h_{t-1} the gradient reaching log a_t = dt_t A::

        du_t = dt_t sum_n g_t B_t          ddt_t = u_t sum_n g_t B_t + sum_n A z_t
        dA   = sum_{batch,t} dt_t z_t
        dB_t = sum_{d in group} g_t dt_t u_t        dC_t = sum_{d in group} h_t dy_t

    Returns:
        du, ddt (L, batch, D); dA_t (N, D); dB, dC shaped like B, C.
    """
    x = dt * u
    du, ddt, dB, dC = torch.empty_like(u), torch.empty_like(u), torch.empty_like(B), torch.empty_like(C)
    dA_t = torch.zeros_like(A_t)
    g_out = dlast if dlast is not None else u.new_zeros(chunk_states.shape[1:])
    workspace = _Workspace(3, chunks, chunk_states.shape[1:], u)
    for i in reversed(range(len(chunks))):
        chunk = chunks[i]
        a, h, g = workspace(chunk)
        dt_c, u_c, x_c, dy_c, B_c, C_c = (_view(t, chunk) for t in (dt, u, x, dy, B, C))
        _decays(dt_c, A_t, out=a.tensor)
        _outer(x_c, B_c, out=h.tensor)
        entry = _scan_chunk(a, h, dt_c, A_t, chunk_states[i])
        _outer(dy_c, C_c, out=g.tensor)
        g_out = _adjoint_chunk(a, g, dt_c, A_t, g_out)

        g_B = _sum_states(g.tensor, B_c)
        torch.mul(dt_c, g_B, out=_view(du, chunk))
        _view(dB, chunk).copy_(_sum_channels(x_c, g.tensor, B.shape[2]))
        _view(dC, chunk).copy_(_sum_channels(dy_c, h.tensor, C.shape[2]))
        z = a.tensor.mul_(g.tensor)  # z_t = g_t a_t h_{t-1}, in the place of a
        z[1:].mul_(h.tensor[:-1])
        z[0].mul_(entry)
        ddt_c = u_c * g_B
        for z_n, A_n in zip(z.unbind(-2), A_t):
            ddt_c.addcmul_(z_n, A_n)
        _view(ddt, chunk).copy_(ddt_c)
        dA_t += torch.mul(z, dt_c.unsqueeze(-2), out=h.tensor).sum((0, 1, 2))
    return du, ddt, dA_t, dB, dC


# ----------------------------------------------------------------------------------------------------
# Autograd.
# ----------------------------------------------------------------------------------------------------
def _time_step(delta: torch.Tensor, delta_bias: Optional[torch.Tensor], softplus: bool) -> torch.Tensor:
    """dt = softplus(delta + delta_bias), time-major (L, batch, D)."""
    dt = delta if delta_bias is None else delta + delta_bias
    return F.softplus(dt) if softplus else dt


class SelectiveScanFunction(torch.autograd.Function):
    """Autograd wrapper: converts layouts and dtypes, saves the time-major inputs and the chunk-start states,
    calls the launchers.

    Arguments and results are those of `selective_scan_torch`, with B and C always grouped (batch, G, N, L).
    Saved tensors keep the inputs' dtypes (dt is saved in place of delta when delta has the compute dtype), so
    that low-precision activations are not kept in float32.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, chunk: int, block: int):
        dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
        u_t, delta_t, B_t, C_t = (_time_major(t) for t in (u, delta, B, C))
        z_t = None if z is None else _time_major(z)
        chunks = _plan(u.shape[-1], chunk, block)
        dt = _time_step(delta_t.to(dtype), None if delta_bias is None else delta_bias.to(dtype), delta_softplus)
        u_c = u_t.to(dtype)
        y, last_state, chunk_states = _forward(u_c, dt, A.to(dtype).t().contiguous(), B_t.to(dtype), C_t.to(dtype),
                                               chunks)
        if D is not None:
            y.addcmul_(u_c, D.to(dtype))
        out = y if z_t is None else y * F.silu(z_t.to(dtype))
        # With a gate, keep the ungated output for dz: (L, batch, D), like an input.
        saves_dt = delta.dtype == dtype
        ctx.save_for_backward(u_t, dt if saves_dt else delta_t, A, B_t, C_t, D, z_t, delta_bias, chunk_states,
                              None if z is None else y)
        ctx.delta_softplus, ctx.chunks, ctx.saves_dt, ctx.dtype = delta_softplus, chunks, saves_dt, dtype
        ctx.input_dtypes = (delta.dtype, B.dtype, C.dtype)
        ctx.set_materialize_grads(False)
        return _sequence_last(out, u.dtype), last_state.transpose(1, 2).contiguous()

    @staticmethod
    def backward(ctx, dout, dlast):
        u_t, dt, A, B_t, C_t, D, z_t, delta_bias, chunk_states, y = ctx.saved_tensors
        dtype, (delta_dtype, B_dtype, C_dtype) = ctx.dtype, ctx.input_dtypes
        u = u_t.to(dtype)
        dy = torch.zeros_like(u) if dout is None else _time_major(dout).to(dtype)
        dz = None
        if z_t is not None:
            z = z_t.to(dtype)
            sig_z = torch.sigmoid(z)
            dz = _sequence_last(dy * y * sig_z * (1 + z * (1 - sig_z)), z_t.dtype)
            dy = dy * z * sig_z
        if not ctx.saves_dt:
            dt = _time_step(dt.to(dtype), None if delta_bias is None else delta_bias.to(dtype), ctx.delta_softplus)
        dlast = None if dlast is None else dlast.transpose(1, 2).contiguous()
        du, ddt, dA_t, dB, dC = _backward(dy, dlast, u, dt, A.to(dtype).t().contiguous(), B_t.to(dtype),
                                          C_t.to(dtype), chunk_states, ctx.chunks)
        dD = None
        if D is not None:
            du.addcmul_(dy, D.to(dtype))
            dD = (dy * u).sum((0, 1)).to(D.dtype)
        if ctx.delta_softplus:  # d softplus(v) / dv = sigmoid(v) = 1 - exp(-softplus(v))
            ddt.mul_(torch.expm1(dt.neg())).neg_()
        ddelta_bias = None if delta_bias is None else ddt.sum((0, 1)).to(delta_bias.dtype)
        return (_sequence_last(du, u_t.dtype), _sequence_last(ddt, delta_dtype), dA_t.t().to(A.dtype),
                _sequence_last(dB, B_dtype), _sequence_last(dC, C_dtype), dD, dz, ddelta_bias, None, None, None)


# ----------------------------------------------------------------------------------------------------
# Backend entry point (inputs already checked by `interface.selective_scan`).
# ----------------------------------------------------------------------------------------------------
def chunk_length(batch: int, dim: int, state_size: int, length: int, device_type: str = 'cpu') -> int:
    """The chunk length T of a (batch, dim, L) scan with N = state_size on a device of this type."""
    budget = CHUNK_BUDGET_ELEMENTS['cpu' if device_type == 'cpu' else 'accelerator']
    per_token = max(budget // max(batch * dim * state_size, 1), 1)
    power_of_two = 1 << (per_token.bit_length() - 1)
    return max(1, min(max(power_of_two, MIN_CHUNK), MAX_CHUNK, length))


def block_length(chunk: int, state_width: int, device_type: str = 'cpu') -> int:
    """The block length S of chunks of `chunk` tokens with `state_width` = batch * D * N state elements per
    token: the chunk is cut into K = chunk // S blocks, as few as give a step of STEP_ELEMENTS."""
    step = STEP_ELEMENTS['cpu' if device_type == 'cpu' else 'accelerator']
    blocks = max(1, min(-(-step // max(state_width, 1)), chunk // MIN_BLOCK))
    return max(1, chunk // blocks)


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
    batch, dim, length = u.shape
    state_size = A.shape[1]
    chunk = chunk_size or chunk_length(batch, dim, state_size, length, u.device.type)
    block = block_length(chunk, batch * dim * state_size, u.device.type)
    y, last_state = SelectiveScanFunction.apply(
        u, delta, A, B if B.dim() == 4 else B.unsqueeze(1), C if C.dim() == 4 else C.unsqueeze(1), D, z,
        delta_bias, delta_softplus, chunk, block)
    return (y, last_state) if return_last_state else y
