"""Triton kernels of the selective scan: forward, backward, and the two "carry" passes that split long sequences.

Every kernel works on one batch element and a range of channels, and walks the sequence in chunks of BL tokens.
A chunk is a (BL tokens, BD channels, NP states) tile in registers: the decays a = exp(dt * A) and drives
b = dt * B * u are formed there and scanned along the tokens with `tl.associative_scan` on the pairs (a, b),
(a1, b1) o (a2, b2) = (a1 * a2, a2 * b1 + b2); the state entering the chunk is carried in registers. Tokens are the
first axis on purpose: Triton then gives each thread all BL tokens of its (channel, state) pairs, so the scan is a
sequential loop in registers, with no shuffles and no barriers (as in mamba_ssm's CUDA kernel, a thread per state).
A program's channels always lie in one group of B and of C, which are therefore read once per token, not once per
channel. Inputs are read
through their strides (views are not copied) and converted to float32; all math is float32.

In the forward and backward kernels, inputs narrower than float32 (bfloat16, float16) are pinned after their
conversion (`_pin`, NARROW): Triton's layout pass (3.6) otherwise moves the layout conversion that broadcasts a
(token, channel) tile over the states above the conversion to float32 (it is cheaper on the narrow type), and with it
the softplus and the products that follow, so that every state lane recomputed them: the sm_90 code of the bfloat16
kernels had 1.7-1.9x the exponentials and 3-4x the FMAs of the float32 ones
(tools/analysis/scan_kernel_resources.py). Triton 3.9 does not move it; the pin then changes nothing.

Parallelism comes from the batch, the channels and, when those are too few (a detection input gives batch 2 and
thousands of tokens), from splitting the sequence into `n_splits` spans. A split needs the state entering it; a
cheap first pass (`_fwd_carry_kernel`) computes each span's end state from zero and its total decay without a scan,
h_end = sum_t exp(A * sum_{k>t} dt_k) * b_t, and the main pass composes those of the earlier spans. The backward
does the same for the adjoint state g_t = C_t dy_t + a_{t+1} g_{t+1} from the end (`_bwd_carry_kernel`).

The backward's adjoint recurrence runs from the end of a chunk, but not as `tl.associative_scan(reverse=True)`:
Triton (3.6) lowers a reverse scan with a flip of the lanes, five butterfly shuffles per value of every input and
output, even along an axis that lies in one thread (640 of the VSS backward's 1032 shuffles per chunk). The tiles are
flipped along the tokens instead (`_flip_tokens`; in one thread: a renaming of registers) and scanned forward. The decay that
links token t to t + 1 is a_{t+1}; rather than a second, shifted time step, the combine (`_combine_later`) carries
each segment's first decay, so a chunk needs only its own decays.

The forward stores the state entering every chunk, (batch, n_chunks, D, N) float32 (a chunk's states are
contiguous, so the stores coalesce), and nothing of size
(batch, D, N, L); the backward recomputes a chunk's states from it. Reductions over channels (dB, dC) and over tokens
(dA, dD, d delta_bias) are written as per-program partial sums and added up in a fixed order afterwards, so the
results are deterministic: no atomics.
"""
import triton
import triton.language as tl
from triton.runtime.jit import constexpr_function

LOG2E = tl.constexpr(1.4426950408889634)


@constexpr_function
def _log2(n):
    return n.bit_length() - 1


@triton.jit
def _flip_tokens(x):
    """A 3-D tile x reversed along its first axis (a power of two long), as `tl.flip` does it: viewed as (2, 2, ..., 2, ...),
    each pair (p, q) of each size-2 axis becomes (q, p), here as (p + q) - (p, q) on the bits as int32, where tl.flip
    takes xor sums. Compiled, both are a renaming of registers when the axis lies in one thread (exact integer
    arithmetic that LLVM folds); Triton's interpreter (CI) sums with numpy but xor-sums element by element in Python,
    4 times slower for the whole backward."""
    y = tl.reshape(x.to(tl.int32, bitcast=True), [2] * _log2(x.shape[0]) + [x.shape[1], x.shape[2]])
    for axis in tl.static_range(_log2(x.shape[0])):
        y = tl.sum(y, axis, keep_dims=True) - y
    return tl.reshape(y, x.shape).to(tl.float32, bitcast=True)


@triton.jit
def _combine(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _combine_later(p1, f1, g1, p2, f2, g2):
    """Reverse-scan combine of the adjoint recurrence g_t = x_t + a_{t+1} g_{t+1} without a shifted decay: a
    segment [t..s] is (P = a_{t+1} ... a_s, F = a_t, G = sum_j a_{t+1} ... a_j x_j); (p1, f1, g1) is the later
    segment, (p2, f2, g2) the earlier one."""
    link = p2 * f1
    return link * p1, f2, g2 + link * g1


@triton.jit
def _pin(x, NARROW: tl.constexpr):
    """x (a 2-D tile), unchanged. With NARROW, through a maximum over a pair of copies of itself: a reduction, which
    Triton's layout pass does not move a layout conversion above, so what was computed before stays computed once per
    element of the compact tile (see the module docstring). The pair's axis is put first so that the reduction's
    layout does not become that of the (tokens, channels, states) tiles."""
    if NARROW:
        return tl.max(tl.permute(tl.join(x, x), (2, 0, 1)), axis=0)
    else:
        return x


@triton.jit
def _load_f32(ptrs, mask, NARROW: tl.constexpr):
    """A (BL, BD) tile as float32, 0 outside `mask`, pinned when the input is narrower (`_pin`)."""
    return _pin(tl.load(ptrs, mask=mask, other=0.0).to(tl.float32), NARROW)


@triton.jit
def _time_step(delta_ptrs, mask, bias, SOFTPLUS: tl.constexpr, NARROW: tl.constexpr):
    """dt = softplus(delta + bias) as float32, 0 outside `mask` (pinned when narrow, `_pin`); also delta + bias
    (softplus' argument). Tiles are (BL, BD); `bias` is (BD,)."""
    raw = tl.load(delta_ptrs, mask=mask, other=0.0).to(tl.float32) + bias[None, :]
    dt = raw
    if SOFTPLUS:
        dt = tl.where(raw <= 20.0, tl.log(1.0 + tl.exp(raw)), raw)
    return _pin(tl.where(mask, dt, 0.0), NARROW), raw


@triton.jit
def _tokens(pos, group, L, H, CROSS: tl.constexpr):
    """Memory positions of scan steps `pos`. Plain scans: the steps themselves. Four-direction scans of an
    H x (L / H) map stored in raster order (CROSS): direction `group` 0 is the raster order, 1 the column-major
    order, 2 and 3 those reversed; step p of direction 1 is token (p % H, p // H)."""
    if CROSS:
        p = tl.where(group >= 2, L - 1 - pos, pos)
        return tl.where(group % 2 == 1, (p % H) * (L // H) + p // H, p)
    else:
        return pos


@triton.jit
def _channels(pid, group_channels, programs_per_group, channels, BD: tl.constexpr):
    """Channels of program `pid` (BD consecutive ones of one group, masked at the group's end), its first channel
    and its group."""
    group = pid // programs_per_group
    first = group * group_channels + (pid % programs_per_group) * BD
    d = first + tl.arange(0, BD)
    return d, (d < (group + 1) * group_channels) & (d < channels), first, group


@triton.jit
def _fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
    y_ptr, states_ptr, last_ptr, carry_h_ptr, carry_dt_ptr,
    L, channels, ch_per_B, ch_per_C, group_channels, programs_per_group, chunks_per_split, n_splits, N, H,
    s_ub, s_ug, s_ud, s_ul, s_db, s_dg, s_dd, s_dl, s_ad, s_an,
    s_bb, s_bg, s_bn, s_bl, s_cb, s_cg, s_cn, s_cl, s_zb, s_zd, s_zl, s_yb, s_yd, s_yl,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_CARRY: tl.constexpr, STORE_LAST: tl.constexpr, CROSS: tl.constexpr, NARROW: tl.constexpr,
    BD: tl.constexpr, NP: tl.constexpr, BL: tl.constexpr,
):
    """y for BD channels (program pid1) of batch pid0 over split pid2; stores the chunk-entry states.

    Grid (batch, groups * programs_per_group, n_splits). With HAS_CARRY, the state entering the split is composed
    from the carry pass's per-split end states and decays of all earlier splits. With CROSS, the groups are the
    four directions of an H-row map (see `_tokens`). u and delta are addressed as (batch, group, channel of the
    group, token) through their strides: a grouped view of a (batch, D, L) tensor, or u shared by all groups
    (group stride 0).
    """
    pid_b = tl.program_id(0).to(tl.int64)
    split = tl.program_id(2)
    d, mask_d, first, group = _channels(tl.program_id(1), group_channels, programs_per_group, channels, BD)
    n = tl.arange(0, NP)
    t = tl.arange(0, BL)
    mask_n = n < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    A = tl.load(A_ptr + d[:, None] * s_ad + n[None, :] * s_an, mask=mask_dn, other=0.0).to(tl.float32) * LOG2E
    bias = tl.load(bias_ptr + d, mask=mask_d & HAS_BIAS, other=0.0).to(tl.float32)
    skip = tl.load(D_ptr + d, mask=mask_d & HAS_D, other=0.0).to(tl.float32)
    b_rows = B_ptr + pid_b * s_bb + (first // ch_per_B) * s_bg + n[None, :] * s_bn
    c_rows = C_ptr + pid_b * s_cb + (first // ch_per_C) * s_cg + n[None, :] * s_cn
    d_in = d - group * group_channels
    u_cols = u_ptr + pid_b * s_ub + group * s_ug + d_in[None, :] * s_ud
    delta_cols = delta_ptr + pid_b * s_db + group * s_dg + d_in[None, :] * s_dd
    n_chunks = tl.cdiv(L, BL)

    h = tl.zeros((BD, NP), dtype=tl.float32)
    if HAS_CARRY:
        for prev in range(0, split):
            base = (pid_b * n_splits + prev) * channels
            h_end = tl.load(carry_h_ptr + (base + d)[:, None] * N + n[None, :], mask=mask_dn, other=0.0)
            dt_sum = tl.load(carry_dt_ptr + base + d, mask=mask_d, other=0.0)
            h = tl.exp2(A * dt_sum[:, None]) * h + h_end

    chunk_begin = split * chunks_per_split
    chunk_end = tl.minimum(chunk_begin + chunks_per_split, n_chunks)
    for chunk in range(chunk_begin, chunk_end):
        pos = chunk * BL + t
        tok = _tokens(pos, group, L, H, CROSS)
        mask_l = pos < L
        mask = mask_l[:, None] & mask_d[None, :]
        mask_bc = mask_l[:, None] & mask_n[None, :]
        state_ptrs = states_ptr + ((pid_b * n_chunks + chunk) * channels + d[:, None]) * N + n[None, :]
        tl.store(state_ptrs, h, mask=mask_dn)

        u = _load_f32(u_cols + tok[:, None] * s_ul, mask, NARROW)
        dt, _ = _time_step(delta_cols + tok[:, None] * s_dl, mask, bias, SOFTPLUS, NARROW)
        Bt = tl.load(b_rows + tok[:, None] * s_bl, mask=mask_bc, other=0.0).to(tl.float32)
        Ct = tl.load(c_rows + tok[:, None] * s_cl, mask=mask_bc, other=0.0).to(tl.float32)
        decay = tl.exp2(dt[:, :, None] * A[None, :, :])
        drive = (dt * u)[:, :, None] * Bt[:, None, :]
        acc_a, acc_b = tl.associative_scan((decay, drive), 0, _combine)
        hs = acc_b + acc_a * h[None, :, :]
        y = tl.sum(hs * Ct[:, None, :], axis=2)
        if HAS_D:
            y += skip[None, :] * u
        if HAS_Z:
            z = _load_f32(z_ptr + pid_b * s_zb + tok[:, None] * s_zl + d[None, :] * s_zd, mask, NARROW)
            y = y * z * tl.sigmoid(z)
        tl.store(y_ptr + pid_b * s_yb + tok[:, None] * s_yl + d[None, :] * s_yd, y, mask=mask)
        # padded tokens have decay 1 and drive 0, so the last row is the state after the last real token
        h = tl.sum(tl.where(t[:, None, None] == BL - 1, hs, 0.0), axis=0)

    if STORE_LAST:
        if split == n_splits - 1:
            tl.store(last_ptr + (pid_b * channels + d[:, None]) * N + n[None, :], h, mask=mask_dn)


@triton.jit
def _fwd_carry_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, bias_ptr, carry_h_ptr, carry_dt_ptr,
    L, channels, ch_per_B, group_channels, programs_per_group, chunks_per_split, n_splits, N, H,
    s_ub, s_ug, s_ud, s_ul, s_db, s_dg, s_dd, s_dl, s_ad, s_an, s_bb, s_bg, s_bn, s_bl,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, CROSS: tl.constexpr,
    BD: tl.constexpr, NP: tl.constexpr, BL: tl.constexpr,
):
    """For each split: the state at its end starting from zero, and the sum of its time steps (its decay is
    exp(A * sum)). Grid as `_fwd_kernel`; no scan, one exp per state element."""
    pid_b = tl.program_id(0).to(tl.int64)
    split = tl.program_id(2)
    d, mask_d, first, group = _channels(tl.program_id(1), group_channels, programs_per_group, channels, BD)
    n = tl.arange(0, NP)
    t = tl.arange(0, BL)
    mask_n = n < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    A = tl.load(A_ptr + d[:, None] * s_ad + n[None, :] * s_an, mask=mask_dn, other=0.0).to(tl.float32) * LOG2E
    bias = tl.load(bias_ptr + d, mask=mask_d & HAS_BIAS, other=0.0).to(tl.float32)
    b_rows = B_ptr + pid_b * s_bb + (first // ch_per_B) * s_bg + n[None, :] * s_bn
    d_in = d - group * group_channels
    u_cols = u_ptr + pid_b * s_ub + group * s_ug + d_in[None, :] * s_ud
    delta_cols = delta_ptr + pid_b * s_db + group * s_dg + d_in[None, :] * s_dd
    n_chunks = tl.cdiv(L, BL)
    h = tl.zeros((BD, NP), dtype=tl.float32)
    dt_sum = tl.zeros((BD, ), dtype=tl.float32)
    chunk_begin = split * chunks_per_split
    chunk_end = tl.minimum(chunk_begin + chunks_per_split, n_chunks)
    for chunk in range(chunk_begin, chunk_end):
        pos = chunk * BL + t
        tok = _tokens(pos, group, L, H, CROSS)
        mask_l = pos < L
        mask = mask_l[:, None] & mask_d[None, :]
        u = _load_f32(u_cols + tok[:, None] * s_ul, mask, False)
        dt, _ = _time_step(delta_cols + tok[:, None] * s_dl, mask, bias, SOFTPLUS, False)
        Bt = tl.load(b_rows + tok[:, None] * s_bl, mask=mask_l[:, None] & mask_n[None, :], other=0.0).to(tl.float32)
        after = tl.cumsum(dt, axis=0, reverse=True) - dt  # sum of the later time steps of the chunk
        total = tl.sum(dt, axis=0)
        weight = tl.exp2(after[:, :, None] * A[None, :, :])
        h = tl.exp2(total[:, None] * A) * h + tl.sum(weight * (dt * u)[:, :, None] * Bt[:, None, :], axis=0)
        dt_sum += total
    base = (pid_b * n_splits + split) * channels
    tl.store(carry_h_ptr + (base + d)[:, None] * N + n[None, :], h, mask=mask_dn)
    tl.store(carry_dt_ptr + base + d, dt_sum, mask=mask_d)


@triton.jit
def _bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, states_ptr, dlast_ptr,
    carry_g_ptr, carry_dt_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr,
    L, channels, ch_per_B, ch_per_C, group_channels, ch_per_program, programs_per_group, chunks_per_split, n_splits,
    N, H,
    s_ub, s_ug, s_ud, s_ul, s_db, s_dg, s_dd, s_dl, s_ad, s_an,
    s_bb, s_bg, s_bn, s_bl, s_cb, s_cg, s_cn, s_cl, s_zb, s_zd, s_zl, s_ob, s_og, s_od, s_ol,
    s_gb, s_gd, s_gl, s_eb, s_eg, s_ed, s_el, s_wb, s_wd, s_wl, s_pn, s_pl,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_CARRY: tl.constexpr, HAS_DLAST: tl.constexpr, CROSS: tl.constexpr, NARROW: tl.constexpr,
    BD: tl.constexpr, NP: tl.constexpr, BL: tl.constexpr,
):
    """Gradients for batch pid0, channel program pid1 and split pid2, walking the split's chunks from the end.

    Program pid1 covers up to ch_per_program channels of one group of group_channels consecutive channels (every
    channel of a group reads the same rows of B and of C), programs_per_group programs per group, in blocks of BD;
    its sums over those channels of dB and dC go to row pid1 of the partial buffers (batch, programs, N, L); its
    sums over tokens of dA, dD and d delta_bias to row (pid0, pid2) of (batch, n_splits, channels[, N]).
    du, d delta and dz are written in the dtype of their buffers (the inputs' dtypes). With CROSS (see `_fwd_kernel`),
    u and dout are shared by the groups (group stride 0), and du is written per channel d, in raster order, for the
    caller to sum over the directions. u, delta, dout and d delta are addressed through grouped strides (see
    `_fwd_kernel`); the partial dB / dC rows through (s_pn, s_pl).
    """
    pid_b = tl.program_id(0).to(tl.int64)
    pid_p = tl.program_id(1)
    split = tl.program_id(2)
    n = tl.arange(0, NP)
    t = tl.arange(0, BL)
    mask_n = n < N
    group = pid_p // programs_per_group
    first = group * group_channels + (pid_p % programs_per_group) * ch_per_program
    group_end = (group + 1) * group_channels
    n_chunks = tl.cdiv(L, BL)
    chunk_begin = split * chunks_per_split
    chunk_end = tl.minimum(chunk_begin + chunks_per_split, n_chunks)
    b_rows = B_ptr + pid_b * s_bb + (first // ch_per_B) * s_bg + n[None, :] * s_bn
    c_rows = C_ptr + pid_b * s_cb + (first // ch_per_C) * s_cg + n[None, :] * s_cn
    part_rows = (pid_b * tl.num_programs(1) + pid_p) * N * L + n[None, :] * s_pn  # this program's dB / dC part

    for block in range(0, ch_per_program, BD):
        d = first + block + tl.arange(0, BD)
        mask_d = (d < group_end) & (d < channels) & (block + tl.arange(0, BD) < ch_per_program)
        mask_dn = mask_d[:, None] & mask_n[None, :]
        A_nat = tl.load(A_ptr + d[:, None] * s_ad + n[None, :] * s_an, mask=mask_dn, other=0.0).to(tl.float32)
        A = A_nat * LOG2E
        bias = tl.load(bias_ptr + d, mask=mask_d & HAS_BIAS, other=0.0).to(tl.float32)
        skip = tl.load(D_ptr + d, mask=mask_d & HAS_D, other=0.0).to(tl.float32)

        # adjoint state entering the split from its right: d last_state, carried through the later splits
        g = tl.zeros((BD, NP), dtype=tl.float32)
        if HAS_DLAST:
            g = tl.load(dlast_ptr + (pid_b * channels + d[:, None]) * N + n[None, :], mask=mask_dn, other=0.0)
        if HAS_CARRY:
            for later in range(n_splits - 1, split, -1):
                base = (pid_b * n_splits + later) * channels
                g_begin = tl.load(carry_g_ptr + (base + d)[:, None] * N + n[None, :], mask=mask_dn, other=0.0)
                dt_sum = tl.load(carry_dt_ptr + base + d, mask=mask_d, other=0.0)
                g = tl.exp2(A * dt_sum[:, None]) * g + g_begin
            if split < n_splits - 1:  # g is the adjoint at the next split's first token: decay it by that token
                nxt = _tokens(tl.full((1, BD), chunk_end * BL, tl.int32), group, L, H, CROSS)
                d_row = d - group * group_channels
                dt_first, _ = _time_step(delta_ptr + pid_b * s_db + group * s_dg + d_row[None, :] * s_dd
                                         + nxt * s_dl, mask_d[None, :], bias, SOFTPLUS, NARROW)
                g = tl.exp2(A * tl.sum(dt_first, axis=0)[:, None]) * g

        dA_acc = tl.zeros((BD, NP), dtype=tl.float32)
        dD_acc = tl.zeros((BD, ), dtype=tl.float32)
        dbias_acc = tl.zeros((BD, ), dtype=tl.float32)
        d_in = d - group * group_channels
        for step in range(chunk_end - chunk_begin):
            chunk = chunk_end - 1 - step
            pos = chunk * BL + t
            tok = _tokens(pos, group, L, H, CROSS)
            mask_l = pos < L
            mask = mask_l[:, None] & mask_d[None, :]
            mask_bc = mask_l[:, None] & mask_n[None, :]
            u = _load_f32(u_ptr + pid_b * s_ub + group * s_ug + tok[:, None] * s_ul + d_in[None, :] * s_ud, mask,
                          NARROW)
            delta_cols = delta_ptr + pid_b * s_db + group * s_dg + d_in[None, :] * s_dd
            dt, raw = _time_step(delta_cols + tok[:, None] * s_dl, mask, bias, SOFTPLUS, NARROW)
            Bt = tl.load(b_rows + tok[:, None] * s_bl, mask=mask_bc, other=0.0).to(tl.float32)
            Ct = tl.load(c_rows + tok[:, None] * s_cl, mask=mask_bc, other=0.0).to(tl.float32)
            dout = _load_f32(dout_ptr + pid_b * s_ob + group * s_og + tok[:, None] * s_ol + d_in[None, :] * s_od,
                             mask, NARROW)
            h0 = tl.load(states_ptr + ((pid_b * n_chunks + chunk) * channels + d[:, None]) * N + n[None, :],
                         mask=mask_dn, other=0.0)

            # recompute the chunk's states
            decay = tl.exp2(dt[:, :, None] * A[None, :, :])
            drive = (dt * u)[:, :, None] * Bt[:, None, :]
            acc_a, acc_b = tl.associative_scan((decay, drive), 0, _combine)
            hs = acc_b + acc_a * h0[None, :, :]
            dy = dout
            if HAS_Z:
                z = _load_f32(z_ptr + pid_b * s_zb + tok[:, None] * s_zl + d[None, :] * s_zd, mask, NARROW)
                y = tl.sum(hs * Ct[:, None, :], axis=2)
                if HAS_D:
                    y += skip[None, :] * u
                sig = tl.sigmoid(z)
                dz = dout * y * sig * (1.0 + z * (1.0 - sig))
                tl.store(dz_ptr + pid_b * s_wb + tok[:, None] * s_wl + d[None, :] * s_wd, dz, mask=mask)
                dy = dout * z * sig

            # adjoint states g_t = C_t dy_t + a_{t+1} g_{t+1}, from the chunk's end: a forward scan of the flipped
            # tiles (see the module docstring); g carried to the previous chunk is a_t g_t at its first token
            acc_p, _, acc_g = tl.associative_scan((tl.full(decay.shape, 1.0, tl.float32), _flip_tokens(decay),
                                                   _flip_tokens(Ct[:, None, :] * dy[:, :, None])), 0, _combine_later)
            acc_p = _flip_tokens(acc_p)
            acc_g = _flip_tokens(acc_g)
            gs = acc_g + acc_p * g[None, :, :]
            g = tl.sum(tl.where(t[:, None, None] == 0, decay * gs, 0.0), axis=0)

            # a_t h_{t-1} = h_t - b_t: the decay's share of the state, without shifting h
            carried = (hs - drive) * gs
            gB = tl.sum(gs * Bt[:, None, :], axis=2)
            du = gB * dt
            ddt = gB * u + tl.sum(carried * A_nat[None, :, :], axis=2)
            if HAS_D:
                du += skip[None, :] * dy
                dD_acc += tl.sum(dy * u, axis=0)
            dA_acc += tl.sum(carried * dt[:, :, None], axis=0)
            if SOFTPLUS:
                ddt = ddt * tl.sigmoid(raw)
            ddt = tl.where(mask, ddt, 0.0)
            dbias_acc += tl.sum(ddt, axis=0)
            tl.store(du_ptr + pid_b * s_gb + tok[:, None] * s_gl + d[None, :] * s_gd, du, mask=mask)
            tl.store(ddelta_ptr + pid_b * s_eb + group * s_eg + tok[:, None] * s_el + d_in[None, :] * s_ed, ddt,
                     mask=mask)

            # this block's share of dB, dC: added to the partial rows owned by this program
            dB_part = tl.sum(gs * (dt * u)[:, :, None], axis=1)
            dC_part = tl.sum(hs * dy[:, :, None], axis=1)
            part_ptrs = part_rows + tok[:, None] * s_pl
            if block > 0:
                dB_part += tl.load(dB_ptr + part_ptrs, mask=mask_bc, other=0.0)
                dC_part += tl.load(dC_ptr + part_ptrs, mask=mask_bc, other=0.0)
            tl.store(dB_ptr + part_ptrs, dB_part, mask=mask_bc)
            tl.store(dC_ptr + part_ptrs, dC_part, mask=mask_bc)
            if ch_per_program > BD:
                tl.debug_barrier()  # the next block reads these rows back, possibly in other threads

        base = (pid_b * n_splits + split) * channels
        tl.store(dA_ptr + (base + d)[:, None] * N + n[None, :], dA_acc, mask=mask_dn)
        if HAS_D:
            tl.store(dD_ptr + base + d, dD_acc, mask=mask_d)
        if HAS_BIAS:
            tl.store(dbias_ptr + base + d, dbias_acc, mask=mask_d)


@triton.jit
def _bwd_carry_kernel(
    delta_ptr, A_ptr, C_ptr, z_ptr, bias_ptr, dout_ptr, carry_g_ptr, carry_dt_ptr,
    L, channels, ch_per_C, group_channels, programs_per_group, chunks_per_split, n_splits, N, H,
    s_db, s_dg, s_dd, s_dl, s_ad, s_an, s_cb, s_cg, s_cn, s_cl, s_zb, s_zd, s_zl, s_ob, s_og, s_od, s_ol,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, CROSS: tl.constexpr,
    BD: tl.constexpr, NP: tl.constexpr, BL: tl.constexpr,
):
    """For each split: the adjoint state at its first token when none enters from its right, and the sum of the
    time steps that decay it (those of its tokens 2..end and of the token after it). Grid as `_fwd_kernel`.

    dy = dout * silu(z) needs no forward state, so no scan: g_first = sum_t exp(A * sum_{first<k<=t} dt_k) C_t dy_t.
    """
    pid_b = tl.program_id(0).to(tl.int64)
    split = tl.program_id(2)
    d, mask_d, first, group = _channels(tl.program_id(1), group_channels, programs_per_group, channels, BD)
    n = tl.arange(0, NP)
    t = tl.arange(0, BL)
    mask_n = n < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    A = tl.load(A_ptr + d[:, None] * s_ad + n[None, :] * s_an, mask=mask_dn, other=0.0).to(tl.float32) * LOG2E
    bias = tl.load(bias_ptr + d, mask=mask_d & HAS_BIAS, other=0.0).to(tl.float32)
    c_rows = C_ptr + pid_b * s_cb + (first // ch_per_C) * s_cg + n[None, :] * s_cn
    d_in = d - group * group_channels
    delta_cols = delta_ptr + pid_b * s_db + group * s_dg + d_in[None, :] * s_dd
    dout_cols = dout_ptr + pid_b * s_ob + group * s_og + d_in[None, :] * s_od
    n_chunks = tl.cdiv(L, BL)
    g = tl.zeros((BD, NP), dtype=tl.float32)
    dt_sum = tl.zeros((BD, ), dtype=tl.float32)
    chunk_begin = split * chunks_per_split
    chunk_end = tl.minimum(chunk_begin + chunks_per_split, n_chunks)
    for step in range(chunk_end - chunk_begin):
        chunk = chunk_end - 1 - step
        pos = chunk * BL + t
        tok = _tokens(pos, group, L, H, CROSS)
        tok_next = _tokens(pos + 1, group, L, H, CROSS)
        mask_l = pos < L
        mask = mask_l[:, None] & mask_d[None, :]
        mask_next = (pos + 1 < L)[:, None] & mask_d[None, :]
        dt_next, _ = _time_step(delta_cols + tok_next[:, None] * s_dl, mask_next, bias, SOFTPLUS, False)
        Ct = tl.load(c_rows + tok[:, None] * s_cl, mask=mask_l[:, None] & mask_n[None, :], other=0.0).to(tl.float32)
        dy = _load_f32(dout_cols + tok[:, None] * s_ol, mask, False)
        if HAS_Z:
            z = _load_f32(z_ptr + pid_b * s_zb + tok[:, None] * s_zl + d[None, :] * s_zd, mask, False)
            dy = dy * z * tl.sigmoid(z)
        before = tl.cumsum(dt_next, axis=0) - dt_next  # sum_{first<k<=t} dt_k = sum_{first<=k<t} dt_next_k
        total = tl.sum(dt_next, axis=0)
        weight = tl.exp2(before[:, :, None] * A[None, :, :])
        g = tl.exp2(total[:, None] * A) * g + tl.sum(weight * Ct[:, None, :] * dy[:, :, None], axis=0)
        dt_sum += total
    base = (pid_b * n_splits + split) * channels
    tl.store(carry_g_ptr + (base + d)[:, None] * N + n[None, :], g, mask=mask_dn)
    tl.store(carry_dt_ptr + base + d, dt_sum, mask=mask_d)
