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
not its launch. Blocks double the elementwise work, so a token whose state is wide enough on its own makes the
chunk one block, scanned token by token (pass 2 only). The arithmetic is that of the sequential recurrence
(products of numbers in [0, 1], and sums): nothing overflows or is divided, whatever delta and L are.

Backward recomputes a chunk's decays and states from its saved entering state and runs the adjoint recurrence
g_t = C_t dy_t + a_{t+1} g_{t+1} the same way from the end of the chunk, chunks from the last. No tensor of
size (batch, D, N, L) is ever held: memory grows with L only through the (batch, D, L) inputs and outputs.

Cost: on CPU the time goes into the passes over the (S, K, batch, N, D) working tensors of a chunk, each op a
pass (the scans' steps cost mostly their launches). So each quantity of that size is made by one op where
possible: a = 2^(dt A log2(e)) (exp2, about half the price of exp), the products of per-channel and per-state
values by broadcasting, the sums over states or channels by batched matrix products, and dA accumulates
dt_t z_t into one buffer across chunks, summed once. The work of size (batch, D) per token (x = dt u, the D
skip, the gate in forward, the softplus derivative, dD, d delta_bias) is done chunk by chunk while the chunk is
in cache, and the results go chunk by chunk straight into the (batch, D, L) outputs, without full-length
temporaries.

Layout: inside, tensors are time-major and working tensors are (S, K, batch, N, D). A step is one contiguous
block, and channels are innermost, so that the products of per-channel values (dt, u) with per-state ones
(A, B, C) are vectorised along D and the sums over the N states are small matrix products. The (batch, D, L)
inputs are converted once, as 2-D transposes; the outputs are written chunk by chunk through time-major views.

Layers: layout, scans and chunk math (`_scan_chunk`, `_adjoint_chunk`, ...) -> launchers looping over chunks
(`_forward`, `_backward`) -> `SelectiveScanFunction` -> `selective_scan_torch`, called by
`interface.selective_scan`.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

# The chunk length T is the largest power of two for which one (T, batch, D, N) working tensor holds at most
# CHUNK_BUDGET_ELEMENTS elements (backward keeps four such tensors), clamped to [MIN_CHUNK, MAX_CHUNK].
# On CPU the budget trades the cache misses of large chunks against the fixed ops of each chunk: 4 MiB per
# tensor beat 2 and 8 MiB by up to 10 % on a 2-core x86 CPU sharing a 32 MiB L3; GPUs want fewer, larger chunks
# (the time goes into kernel launches).
CHUNK_BUDGET_ELEMENTS = {'cpu': 2**20, 'accelerator': 2**25}
MIN_CHUNK = 16
MAX_CHUNK = 2048
# A chunk is cut into as few blocks as make one step of all of them at least STEP_ELEMENTS state elements
# (an op on fewer costs mostly its launch), keeping blocks of at least MIN_BLOCK tokens; unless one token holds
# WIDE_STATE state elements: then an op on one token already spends much of its time on data, and blocks,
# which double the elementwise work (two passes), measured slower on CPU: the chunk is one block, scanned
# token by token.
STEP_ELEMENTS = {'cpu': 2**15, 'accelerator': 2**20}
WIDE_STATE = {'cpu': 2**12, 'accelerator': 2**20}
MIN_BLOCK = 8
# The scans over blocks run as a loop up to this length: fewer ops than the log-depth recursion, which takes
# over above it (the many blocks of a GPU chunk) and ends in the loop.
SEQUENTIAL_SCAN = 32
LOG2_E = 1 / math.log(2)
# The steps of the passes, ops that cost mostly their launch, run in inference mode, which skips autograd's
# dispatch: about a sixth of such an op's cost on CPU. They only write working buffers, never an output.
_step_mode = torch.inference_mode


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
def _decays(dt: torch.Tensor, A2_t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """a = exp(dt * A) = 2^(dt * A2), A2 = A log2(e): dt (..., D), A2_t (N, D) -> out (..., N, D).

    exp2 costs about half of exp on CPU (AVX2); scaling A once moves the exponent by a rounding of A.
    """
    return torch.mul(dt.unsqueeze(-2), A2_t, out=out).exp2_()


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


def _block_decay(dt: torch.Tensor, A2_t: torch.Tensor) -> torch.Tensor:
    """exp(A * sum_j dt_j) over the tokens of each block: dt (S, K, batch, D), A2_t (N, D) -> (K, batch, N, D)."""
    summed = dt.sum(0)
    return _decays(summed, A2_t, out=summed.new_empty(*summed.shape[:-1], *A2_t.shape))


class _Steps:
    """A working tensor (S, K, ...) and views of its steps: all blocks, all but the last, all but the first.
    Making a view costs about as much as a small op, so they are made once per chunk shape and reused."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor
        self.all = tensor.unbind(0)
        self.leading = tensor[:, :-1].unbind(0)
        self.trailing = tensor[:, 1:].unbind(0)


def _scan_chunk(a: _Steps, h: _Steps, dt: torch.Tensor, A2_t: torch.Tensor, h_in: torch.Tensor) -> torch.Tensor:
    """The states of one chunk, in place: h holds b_t on entry and h_t on return (see the module docstring).

    Args:
        a, h: (S, K, batch, N, D) decays and drives.
        dt: (S, K, batch, D), for the blocks' total decays.
        A2_t: (N, D), A log2(e).
        h_in: (batch, N, D), the state entering the chunk.

    Returns:
        The state entering each block, (K, batch, N, D).
    """
    if h.tensor.shape[1] == 1:
        entry = h_in.unsqueeze(0)
    else:
        entry = h_in.new_empty(h.tensor.shape[1:])
        entry[0] = h_in
        # Pass 1: end states of blocks 0 .. K-2 from zero (pass 2 needs no end state of the last block).
        end = h.leading[0].clone()
        with _step_mode():
            for a_j, b_j in zip(a.leading[1:], h.leading[1:]):
                torch.addcmul(b_j, a_j, end, out=end)
        _scan(_block_decay(dt[:, :-1], A2_t), end, h_in, out=entry[1:])
    # Pass 2: every block from its entering state.
    h.all[0].addcmul_(a.all[0], entry)
    with _step_mode():
        for h_j, a_j, h_prev in zip(h.all[1:], a.all[1:], h.all):
            h_j.addcmul_(a_j, h_prev)
    return entry


def _adjoint_chunk(a: _Steps, g: _Steps, dt: torch.Tensor, A2_t: torch.Tensor, g_out: torch.Tensor) -> torch.Tensor:
    """The adjoint states of one chunk, in place: g holds C_t dy_t on entry and g_t on return.

    g_t = C_t dy_t + a_{t+1} g_{t+1}, where the term of the token after the chunk, g_out = a_{T} g_{T}, is given.
    `_scan_chunk` mirrored: pass 1 gives the adjoint at the first token of blocks 1 .. K-1 from a zero right end,
    a reverse scan over the blocks gives the term entering each block's last token from the right, pass 2 writes g.

    Args:
        a, g: (S, K, batch, N, D). dt: (S, K, batch, D). A2_t: (N, D), A log2(e).
        g_out: (batch, N, D).

    Returns:
        The term that this chunk passes to the token before it, a_0 g_0 (batch, N, D).
    """
    if g.tensor.shape[1] == 1:
        right = g_out.unsqueeze(0)  # enters the last token of each block from the right
    else:
        right = g_out.new_empty(g.tensor.shape[1:])
        right[-1] = g_out
        first = g.trailing[-1].clone()  # pass 1 over blocks 1 .. K-1, from their last token to their first
        with _step_mode():
            for a_next, c_j in zip(a.trailing[:0:-1], g.trailing[-2::-1]):
                torch.addcmul(c_j, a_next, first, out=first)
        # right_k = a0_{k+1} (first_{k+1} + decay_{k+1} right_{k+1}), decay from a block's token 1 to its end
        a_first = a.all[0][1:]
        decay = _block_decay(dt[1:, 1:], A2_t).mul_(a_first)
        _reverse_scan(decay, first.mul_(a_first), g_out, out=right[:-1])
    g.all[-1].add_(right)
    with _step_mode():
        for g_j, a_next, g_next in zip(g.all[-2::-1], a.all[:0:-1], g.all[:0:-1]):
            g_j.addcmul_(a_next, g_next)
    return a.all[0][0] * g.all[0][0]


# ----------------------------------------------------------------------------------------------------
# Launchers: loop over chunks, hand out working tensors, write the outputs. All time-major (the outputs through
# time-major views of the (batch, D, L) results).
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


def _views(x: torch.Tensor, chunks: Sequence[Chunk]) -> List[torch.Tensor]:
    """The tokens of every chunk of a time-major tensor (L, ...), step-major: views (S, K, ...).

    A view costs about as much as a small op, so each run of chunks of one shape is cut by a single unbind.
    """
    views: List[torch.Tensor] = []
    first = 0
    while first < len(chunks):
        start, steps, blocks = chunks[first]
        end = first
        while end < len(chunks) and chunks[end][1:] == (steps, blocks):
            end += 1
        tokens = x[start:start + (end - first) * steps * blocks]
        views += tokens.unflatten(0, (end - first, blocks, steps)).transpose(1, 2).unbind(0)
        first = end
    return views


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
             D: Optional[torch.Tensor], z: Optional[torch.Tensor], chunks: Sequence[Chunk],
             out: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """The scan, with the D skip and the z gate, written chunk by chunk into `out`.

    Args:
        u: (L, batch, D), any dtype. dt: (L, batch, D). A_t: (N, D), A transposed. B, C: (L, batch, G, N) (G may
            differ between B and C). D: (D,) or None. z: (L, batch, D), any dtype, or None. All but u and z in the
            compute dtype.
        chunks: from `_plan`.
        out: (L, batch, D), any dtype and strides (a time-major view of the (batch, D, L) result): receives
            y_t = sum_n C_t h_t + D u_t, times silu(z_t).

    Returns:
        The last state (batch, N, D); the states entering each chunk (num_chunks, batch, N, D); with a gate, the
        ungated output (L, batch, D), which the gradient of z needs, else None.
    """
    _, batch, dim = u.shape
    dtype = dt.dtype
    state_shape = (batch, A_t.shape[0], dim)
    A2_t = A_t * LOG2_E
    ungated = None if z is None else torch.empty_like(dt)
    chunk_states = dt.new_empty(len(chunks) + 1, *state_shape)  # and the last state
    chunk_states[0] = 0
    workspace = _Workspace(2, chunks, state_shape, dt)
    views = [_views(t, chunks) if t is not None else [None] * len(chunks) for t in (dt, u, B, C, z, ungated, out)]
    for i, (chunk, dt_c, u_c, B_c, C_c, z_c, ungated_c, out_c) in enumerate(zip(chunks, *views)):
        a, states = workspace(chunk)
        u_c = u_c.to(dtype)
        _decays(dt_c, A2_t, out=a.tensor)
        _outer(dt_c * u_c, B_c, out=states.tensor)
        _scan_chunk(a, states, dt_c, A2_t, chunk_states[i])
        chunk_states[i + 1] = states.all[-1][-1]
        y = _sum_states(states.tensor, C_c)
        if D is not None:
            y.addcmul_(u_c, D)
        if z is not None:
            ungated_c.copy_(y)
            y.mul_(F.silu(z_c.to(dtype)))
        out_c.copy_(y)
    h = chunk_states[-1]
    chunk_states = chunk_states[:-1]
    return h, chunk_states, ungated


def _backward(dy: torch.Tensor, dlast: Optional[torch.Tensor], u: torch.Tensor, dt: torch.Tensor,
              A_t: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor],
              chunk_states: torch.Tensor, chunks: Sequence[Chunk], softplus: bool, du: torch.Tensor,
              ddt: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
    """Gradients of `_forward` (without the gate) given dy (L, batch, D) and the last state's gradient
    (batch, N, D) or None.

    With g_t the gradient reaching h_t and z_t = g_t a_t h_{t-1} the gradient reaching log a_t = dt_t A::

        du_t = dt_t sum_n g_t B_t + D dy_t          ddt_t = u_t sum_n g_t B_t + sum_n A z_t
        dA   = sum_{batch,t} dt_t z_t               dD = sum_{batch,t} u_t dy_t
        dB_t = sum_{d in group} g_t dt_t u_t        dC_t = sum_{d in group} h_t dy_t

    and, with softplus, ddt_t is taken through it to the gradient of delta + delta_bias: d softplus(v) / dv =
    sigmoid(v) = 1 - exp(-dt).

    Args:
        u: (L, batch, D), any dtype; the others as in `_forward`.
        du, ddt: (L, batch, D), any dtype and strides (time-major views of the (batch, D, L) gradients): receive
            the gradients of u and of delta (+ delta_bias), chunk by chunk.

    Returns:
        dA_t (N, D); dB, dC shaped like B, C; dD (D,) or None; the sum of ddt over batch and tokens (D,).
    """
    dtype = dt.dtype
    dB, dC = torch.empty_like(B), torch.empty_like(C)
    dD = None if D is None else dt.new_zeros(dt.shape[-1])
    ddt_sum = dt.new_zeros(dt.shape[-1])
    A2_t = A_t * LOG2_E
    g_out = dlast if dlast is not None else dt.new_zeros(chunk_states.shape[1:])
    workspace = _Workspace(4, chunks, chunk_states.shape[1:], dt)
    z_dt = workspace.buffers[3].zero_()  # sum over the chunks of dt_t z_t, reduced to dA once at the end
    views = zip(chunks, chunk_states, *(_views(t, chunks) for t in (dt, dy, u, B, C, du, ddt, dB, dC)))
    for chunk, h_in, dt_c, dy_c, u_c, B_c, C_c, du_c, ddt_c, dB_c, dC_c in reversed(list(views)):
        a, h, g, z_dt_c = workspace(chunk)
        u_c = u_c.to(dtype)
        x_c = dt_c * u_c
        _decays(dt_c, A2_t, out=a.tensor)
        _outer(x_c, B_c, out=h.tensor)
        entry = _scan_chunk(a, h, dt_c, A2_t, h_in)
        _outer(dy_c, C_c, out=g.tensor)
        g_out = _adjoint_chunk(a, g, dt_c, A2_t, g_out)

        g_B = _sum_states(g.tensor, B_c)
        dB_c.copy_(_sum_channels(x_c, g.tensor, B.shape[2]))
        dC_c.copy_(_sum_channels(dy_c, h.tensor, C.shape[2]))
        z = a.tensor.mul_(g.tensor)  # z_t = g_t a_t h_{t-1}, in the place of a
        z[1:].mul_(h.tensor[:-1])
        z[0].mul_(entry)
        z_dt_c.tensor.addcmul_(z, dt_c.unsqueeze(-2))
        ddt_z = torch.mul(z, A_t, out=h.tensor).sum(-2).addcmul_(u_c, g_B)  # the product into h, free now
        if softplus:
            ddt_z.mul_(dt_c.neg().expm1_()).neg_()
        ddt_sum += ddt_z.sum((0, 1, 2))
        ddt_c.copy_(ddt_z)
        du_z = g_B.mul_(dt_c)
        if D is not None:
            du_z.addcmul_(dy_c, D)
            dD += (dy_c * u_c).sum((0, 1, 2))
        du_c.copy_(du_z)
    dA_t = z_dt.view(-1, *A_t.shape).sum(0)
    return dA_t, dB, dC, dD, ddt_sum


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
        out = u.new_empty(u.shape)
        last_state, chunk_states, y = _forward(u_t, dt, A.to(dtype).t().contiguous(), B_t.to(dtype), C_t.to(dtype),
                                               None if D is None else D.to(dtype), z_t, chunks, out.movedim(-1, 0))
        # With a gate, y is the ungated output, kept for dz: (L, batch, D), like an input.
        saves_dt = delta.dtype == dtype
        ctx.save_for_backward(u_t, dt if saves_dt else delta_t, A, B_t, C_t, D, z_t, delta_bias, chunk_states, y)
        ctx.delta_softplus, ctx.chunks, ctx.saves_dt, ctx.dtype = delta_softplus, chunks, saves_dt, dtype
        ctx.input_dtypes = (delta.dtype, B.dtype, C.dtype)
        ctx.set_materialize_grads(False)
        return out, last_state.transpose(1, 2).contiguous()

    @staticmethod
    def backward(ctx, dout, dlast):
        u_t, dt, A, B_t, C_t, D, z_t, delta_bias, chunk_states, y = ctx.saved_tensors
        dtype, (delta_dtype, B_dtype, C_dtype) = ctx.dtype, ctx.input_dtypes
        dy = dt.new_zeros(u_t.shape) if dout is None else _time_major(dout).to(dtype)
        dz = None
        if z_t is not None:
            z = z_t.to(dtype)
            sig_z = torch.sigmoid(z)
            dz = _sequence_last(dy * y * sig_z * (1 + z * (1 - sig_z)), z_t.dtype)
            dy = dy * z * sig_z
        if not ctx.saves_dt:
            dt = _time_step(dt.to(dtype), None if delta_bias is None else delta_bias.to(dtype), ctx.delta_softplus)
        dlast = None if dlast is None else dlast.transpose(1, 2).contiguous()
        shape = (*u_t.shape[1:], u_t.shape[0])
        du, ddelta = u_t.new_empty(shape), u_t.new_empty(shape, dtype=delta_dtype)
        dA_t, dB, dC, dD, ddelta_bias = _backward(
            dy, dlast, u_t, dt, A.to(dtype).t().contiguous(), B_t.to(dtype), C_t.to(dtype),
            None if D is None else D.to(dtype), chunk_states, ctx.chunks, ctx.delta_softplus, du.movedim(-1, 0),
            ddelta.movedim(-1, 0))
        return (du, ddelta, dA_t.t().to(A.dtype), _sequence_last(dB, B_dtype), _sequence_last(dC, C_dtype),
                None if D is None else dD.to(D.dtype), dz,
                None if delta_bias is None else ddelta_bias.to(delta_bias.dtype), None, None, None)


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
    device = 'cpu' if device_type == 'cpu' else 'accelerator'
    if state_width >= WIDE_STATE[device]:
        return chunk
    blocks = max(1, min(-(-STEP_ELEMENTS[device] // max(state_width, 1)), chunk // MIN_BLOCK))
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
