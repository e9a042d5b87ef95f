"""The scan's backward with warp-local chunks, in Gluon (Triton's language with explicit layouts), for CUDA GPUs.

The Triton backward (`triton_kernels._bwd_kernel`) holds (tokens x channels x states) tiles: every state of a
(token, channel) pair is a lane, and the sums over the states (dx, d dt), over the channels (dB, dC) and the
reverse scan cost shuffles and shared-memory round trips per element; at the VSS sizes it is bound by the L1 /
shared-memory pipe. Here a program owns R = BD * NW channels of one group and walks the sequence from its end in
chunks of 32 * K steps; the tile is [R, 32, K]: each warp owns BD channels, held in its threads, and the chunk's
steps, K consecutive ones per lane. The states are a loop. So

- the sums over the states are running sums in registers, and dB / dC's sums over a warp's channels are in-thread;
  each warp leaves its rows in shared memory, and every S = NW states the program adds the NW warps' rows up (a
  warp per state) between two barriers. (Summed across the warps at every state, as `gl.sum` over the channels
  does, the barriers and shared-memory round trips took 55% of the kernel's time on an H200.) dA's sums over the
  tokens stay per thread in shared memory until the end (no shuffles per state);
- both scans are in-thread sequential scans followed by a warp scan of the 32 lane aggregates: the forward with
  Triton's warp scan, the adjoint (from the end) with `shfl.down` steps written in PTX (`_suffix_step`): Triton
  lowers a reverse scan with a lane flip per value, and Gluon has no other way to shuffle down. The adjoint's
  inputs are put in reverse order within each lane by renaming registers (`_flip_k`), so that its in-thread scan
  runs forward, and its result is put back in order the same way. (Loading them reversed instead cost 50 more
  registers per thread: the reversed addresses and masks stay live.)

- the adjoint's decays a_{t+1} are the forward's a_t one register (or lane: one shuffle) on: one exp2 per state
  element, not two;
- an iteration's operands (A's column, the B and C rows, the chunk-entry state, the adjoint carried in) are loaded
  one iteration ahead, since nothing else pipelines the loop.

No shared memory or barrier is needed for the scans. The adjoint carried from a chunk to the one before it lives in
a small scratch buffer (one value per (batch, channel, state)); the state entering a chunk is the forward's stored
chunk-entry state. Sums over channels (dB, dC) go to per-program partial rows and sums over tokens (dA, dD,
d delta_bias) to per-batch rows, added up afterwards in a fixed order, as in the Triton backward: deterministic.
Shared memory: 1 KiB per (padded) state for dA and 2 * NW * NW * 32 * K floats for the dB / dC rows, 32 KiB at 16
states (`triton_backend.WARP_MAX_STATES` bounds the states).

Plain (grouped) scans only: the fused four-direction backward reaches this kernel on copies in scan order
(`triton_backend._cross_backward_in_steps`). Gluon has no interpreter: the Triton backward remains the path on the
CPU (tests under ``TRITON_INTERPRET=1``) and for what this kernel does not cover (z, a sequence split for
parallelism); `triton_backend.scan_backward` picks.
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

LOG2E = gl.constexpr(1.4426950408889634)
# a barrier of the program's threads: `gl.barrier` from Triton 3.7, `gl.thread_barrier` before
_barrier = gl.barrier if hasattr(gl, 'barrier') else gl.thread_barrier


@gluon.jit
def _combine(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@gluon.jit
def _time_step(raw, mask, SOFTPLUS: gl.constexpr):
    dt = raw
    if SOFTPLUS:
        dt = gl.where(raw <= 20.0, gl.log(1.0 + gl.exp(raw)), raw)
    return gl.where(mask, dt, 0.0)


@gluon.jit
def _shuffle(x, ASM: gl.constexpr):
    """A warp shuffle of every register of x (a float32 tensor whose axis across lanes holds one lane each)."""
    return gl.inline_asm_elementwise(ASM, "=r,r", [x.to(gl.int32, bitcast=True)], dtype=gl.int32, is_pure=True,
                                     pack=1).to(gl.float32, bitcast=True)


@gluon.jit
def _down(x, OFF: gl.constexpr):
    """x of lane + OFF (x's own on the lanes where that is past 31)."""
    if OFF == 1:
        r = _shuffle(x, "shfl.sync.down.b32 $0, $1, 1, 0x1f, -1;")
    elif OFF == 2:
        r = _shuffle(x, "shfl.sync.down.b32 $0, $1, 2, 0x1f, -1;")
    elif OFF == 4:
        r = _shuffle(x, "shfl.sync.down.b32 $0, $1, 4, 0x1f, -1;")
    elif OFF == 8:
        r = _shuffle(x, "shfl.sync.down.b32 $0, $1, 8, 0x1f, -1;")
    else:
        r = _shuffle(x, "shfl.sync.down.b32 $0, $1, 16, 0x1f, -1;")
    return r


@gluon.jit
def _suffix_step(P, G, lane, OFF: gl.constexpr):
    """One Kogge-Stone step of the adjoint's composition over lanes, from the last: lane l's segment (P, G), with
    g_first = G + P * g_after, takes in lane l + OFF's."""
    ok = lane + OFF < 32
    P2 = _down(P, OFF)
    G2 = _down(G, OFF)
    return gl.where(ok, P * P2, P), gl.where(ok, G + P * G2, G)


@gluon.jit
def _flip_k(x, LAYOUT: gl.constexpr, R: gl.constexpr, K: gl.constexpr, LOGK: gl.constexpr):
    """x [R, 32, K] with its in-thread axis reversed: a split and a join per bit of k, i.e. renamed registers."""
    for b in gl.static_range(LOGK):
        y = x.reshape([R, 32, K >> (b + 1), 2, 1 << b]).permute([0, 1, 2, 4, 3])
        lo, hi = gl.split(y)
        x = gl.join(hi, lo).permute([0, 1, 2, 4, 3]).reshape([R, 32, K])
    return gl.convert_layout(x, LAYOUT)


@gluon.jit
def _lane_last(x, L2: gl.constexpr, R: gl.constexpr, K: gl.constexpr, LOGK: gl.constexpr):
    """x [R, 32, K] -> its last in-thread element as an [R, 32] tensor: splits, i.e. renamed registers."""
    for b in gl.static_range(LOGK):
        _, x = gl.split(x.reshape([R, 32, K >> (b + 1), 2]))
    return gl.convert_layout(x.reshape([R, 32]), L2)


@gluon.jit
def _next_reversed(a, after, lane, LAYOUT: gl.constexpr, L2: gl.constexpr, R: gl.constexpr, K: gl.constexpr):
    """The decay of each step's next step, a lane's K steps reversed (as `_flip_k`): [n, a_{K-1}, ..., a_1] from a
    [R, 32, K], where n is the next lane's a_0, or `after` [R, 32] on the last lane (the next chunk's first step).
    Renamed registers and one shuffle."""
    if K == 1:
        first = gl.convert_layout(a.reshape([R, 32]), L2)
        nxt = gl.where(lane == 31, after, _down(first, 1))
        out = gl.expand_dims(nxt, 2)
    elif K == 2:
        a0, a1 = gl.split(a)
        a0 = gl.convert_layout(a0, L2)
        nxt = gl.where(lane == 31, after, _down(a0, 1))
        out = gl.join(nxt, gl.convert_layout(a1, L2))
    else:  # K == 4: k = 2 i + j
        even, odd = gl.split(a.reshape([R, 32, 2, 2]))
        a0, a2 = gl.split(even)
        a1, a3 = gl.split(odd)
        a0 = gl.convert_layout(a0, L2)
        nxt = gl.where(lane == 31, after, _down(a0, 1))
        even_out = gl.join(nxt, gl.convert_layout(a2, L2))
        odd_out = gl.join(gl.convert_layout(a3, L2), gl.convert_layout(a1, L2))
        out = gl.join(even_out, odd_out).reshape([R, 32, 4])
    return gl.convert_layout(out, LAYOUT)


@gluon.jit
def _operands(A_ptr, b_row, c_row, states_ptr, g_ptr, dlast_ptr, d, mask_d, step_in, state_rows, chunk, n, step, L, N,
              s_ad, s_an, s_bn, s_cn, pid_b, n_fwd_chunks, fwd_chunk, channels, BL: gl.constexpr,
              HAS_DLAST: gl.constexpr):
    """What the backward's iteration over (chunk, state n) loads: A[:, n], the B and C rows of the chunk's steps, the
    forward's state entering the chunk, and the adjoint after it (the scratch g, or d last_state past the end; 0 if
    neither). Nothing past the first chunk (chunk < 0: the loop's last prefetch)."""
    ok = chunk >= 0
    pos = chunk * BL + step_in
    mask_l = (pos < L) & ok
    A_n = gl.load(A_ptr + d * s_ad + n * s_an, mask=mask_d & ok, other=0.0).to(gl.float32)
    B_n = gl.load(b_row + n * s_bn + pos, mask=mask_l, other=0.0).to(gl.float32)
    C_n = gl.load(c_row + n * s_cn + pos, mask=mask_l, other=0.0).to(gl.float32)
    h0 = gl.load(states_ptr + ((pid_b * n_fwd_chunks + (chunk * BL) // fwd_chunk) * channels + d) * N + n,
                 mask=mask_d & ok, other=0.0)
    if HAS_DLAST:
        g = gl.where(step == 0, gl.load(dlast_ptr + state_rows + n, mask=mask_d & ok, other=0.0),
                     gl.load(g_ptr + state_rows + n, mask=mask_d & ok & (step > 0), other=0.0))
    else:
        g = gl.load(g_ptr + state_rows + n, mask=mask_d & ok & (step > 0), other=0.0)
    return A_n, B_n, C_n, h0, g


@gluon.jit
def _bwd_warp_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, dout_ptr, states_ptr, dlast_ptr, g_ptr,
    du_ptr, ddelta_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr,
    L, channels, ch_per_B, ch_per_C, group_channels, programs_per_group, n_fwd_chunks, fwd_chunk, N,
    s_ub, s_ug, s_ud, s_ul, s_db, s_dg, s_dd, s_dl, s_ad, s_an,
    s_bb, s_bg, s_bn, s_cb, s_cg, s_cn, s_ob, s_og, s_od, s_ol,
    s_gb, s_gd, s_gl, s_eb, s_eg, s_ed, s_el,
    HAS_D: gl.constexpr, HAS_BIAS: gl.constexpr, SOFTPLUS: gl.constexpr, HAS_DLAST: gl.constexpr,
    BD: gl.constexpr, K: gl.constexpr, LOGK: gl.constexpr, NW: gl.constexpr, NP: gl.constexpr,
):
    """Gradients for batch pid0 and the R = BD * NW channels of program pid1 (one group of group_channels
    channels; programs_per_group programs per group). B and C are read as (batch, group, N, L) with unit token
    stride; u, delta, dout and d delta through grouped strides (`triton_backend._grouped_strides`), du per channel
    through (s_gb, s_gd, s_gl). Partial dB / dC rows: (batch, programs, N, L) contiguous; dA: (batch, channels, N),
    dD and d delta_bias: (batch, channels). g_ptr: (batch, channels, N) scratch for the adjoint between chunks.
    The forward's chunk-entry states are every `fwd_chunk` steps, which divides 32 * K."""
    L3: gl.constexpr = gl.BlockedLayout([BD, 1, K], [1, 32, 1], [NW, 1, 1], [2, 1, 0])
    L2: gl.constexpr = gl.SliceLayout(2, L3)  # [R, 32]: a value per (channel, lane)
    LB2: gl.constexpr = gl.BlockedLayout([BD, 1], [1, 32], [NW, 1], [1, 0])  # L2 as a blocked layout (scans)
    LC: gl.constexpr = gl.SliceLayout(1, L2)  # [R]
    LT: gl.constexpr = gl.SliceLayout(0, L3)  # [32, K]: a row of steps (B, C, the partial dB / dC rows)
    R: gl.constexpr = BD * NW
    BL: gl.constexpr = 32 * K
    pid_b = gl.program_id(0).to(gl.int64)
    pid_p = gl.program_id(1)
    group = pid_p // programs_per_group
    first = group * group_channels + (pid_p % programs_per_group) * R
    d = first + gl.arange(0, R, layout=LC)
    mask_d = (d < (group + 1) * group_channels) & (d < channels)
    d_in = d - group * group_channels
    mask_d2 = gl.expand_dims(mask_d, 1)
    mask_d3 = gl.expand_dims(mask_d2, 2)
    lane = gl.expand_dims(gl.arange(0, 32, layout=gl.SliceLayout(0, L2)), 0)  # [1, 32]
    step_in = (gl.expand_dims(gl.arange(0, 32, layout=gl.SliceLayout(1, LT)), 1) * K
               + gl.expand_dims(gl.arange(0, K, layout=gl.SliceLayout(0, LT)), 0))  # [32, K]: lane * K + k
    bias = gl.load(bias_ptr + d, mask=mask_d & HAS_BIAS, other=0.0).to(gl.float32)
    bias3 = gl.expand_dims(gl.expand_dims(bias, 1), 2)
    skip3 = gl.expand_dims(gl.expand_dims(gl.load(D_ptr + d, mask=mask_d & HAS_D, other=0.0).to(gl.float32), 1), 2)
    u_rows = gl.expand_dims(gl.expand_dims(pid_b * s_ub + group * s_ug + d_in * s_ud, 1), 2)
    delta_row = pid_b * s_db + group * s_dg + d_in * s_dd
    delta_rows = gl.expand_dims(gl.expand_dims(delta_row, 1), 2)
    dout_rows = gl.expand_dims(gl.expand_dims(pid_b * s_ob + group * s_og + d_in * s_od, 1), 2)
    du_rows = gl.expand_dims(gl.expand_dims(pid_b * s_gb + d * s_gd, 1), 2)
    ddelta_rows = gl.expand_dims(gl.expand_dims(pid_b * s_eb + group * s_eg + d_in * s_ed, 1), 2)
    b_row = B_ptr + pid_b * s_bb + (first // ch_per_B) * s_bg
    c_row = C_ptr + pid_b * s_cb + (first // ch_per_C) * s_cg
    part_row = (pid_b * gl.num_programs(1) + pid_p) * N * L
    state_rows = (pid_b * channels + d) * N  # rows of dA, the scratch g and dlast
    n_chunks = gl.cdiv(L, BL)
    # shared memory: dA's per-thread sums (NP states x the program's [R, 32] threads' values), and S states of the
    # warps' dB / dC rows (each warp's sums over its own channels); LF reads a state's NW rows, each thread a column
    S: gl.constexpr = NW
    dA_smem = gl.allocate_shared_memory(gl.float32, [NP, R, 32], gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
    dB_smem = gl.allocate_shared_memory(gl.float32, [S, NW, BL], gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
    dC_smem = gl.allocate_shared_memory(gl.float32, [S, NW, BL], gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
    LF: gl.constexpr = gl.BlockedLayout([NW, 1], [1, 32], [1, NW], [0, 1])  # [NW, BL]
    flush_steps = gl.arange(0, BL, layout=gl.SliceLayout(0, LF))
    dD_acc = gl.zeros([R], gl.float32, LC)
    dbias_acc = gl.zeros([R], gl.float32, LC)
    # a (chunk, state) iteration's operands are loaded one iteration ahead: the loop is not pipelined, and each
    # state's first instructions would otherwise wait for them
    A_nx, B_nx, C_nx, h0_nx, g_nx = _operands(A_ptr, b_row, c_row, states_ptr, g_ptr, dlast_ptr, d, mask_d, step_in,
                                              state_rows, n_chunks - 1, 0, 0, L, N, s_ad, s_an, s_bn, s_cn, pid_b,
                                              n_fwd_chunks, fwd_chunk, channels, BL, HAS_DLAST)
    for step in range(n_chunks):
        chunk = n_chunks - 1 - step
        pos = chunk * BL + step_in
        tok = pos  # memory positions of the steps (a plain scan: the steps themselves)
        mask_l = pos < L
        mask = gl.expand_dims(mask_l, 0) & mask_d3
        tok3 = gl.expand_dims(tok, 0)
        dt = _time_step(gl.load(delta_ptr + delta_rows + tok3 * s_dl, mask=mask, other=0.0).to(gl.float32) + bias3,
                        mask, SOFTPLUS)
        x = dt * gl.load(u_ptr + u_rows + tok3 * s_ul, mask=mask, other=0.0).to(gl.float32)
        dy = gl.load(dout_ptr + dout_rows + tok3 * s_ol, mask=mask, other=0.0).to(gl.float32)
        # the time step of the next chunk's first step (past the end: 0, a decay of 1), for the adjoint's decays
        after_pos = (chunk + 1) * BL
        mask_after = mask_d & (after_pos < L)
        dt_after = gl.expand_dims(_time_step(gl.load(delta_ptr + delta_row + after_pos * s_dl, mask=mask_after,
                                                     other=0.0).to(gl.float32) + bias, mask_after, SOFTPLUS), 1)
        gB_acc = gl.zeros([R, 32, K], gl.float32, L3)
        zA_acc = gl.zeros([R, 32, K], gl.float32, L3)
        for n in range(N):
            A_n, Bn, Cn, h0, g_after = A_nx, B_nx, C_nx, h0_nx, g_nx
            wrap = (n + 1) // N  # 1 at the chunk's last state: the next is state 0 of the chunk before
            A_nx, B_nx, C_nx, h0_nx, g_nx = _operands(A_ptr, b_row, c_row, states_ptr, g_ptr, dlast_ptr, d, mask_d,
                                                      step_in, state_rows, chunk - wrap, n + 1 - wrap * N,
                                                      step + wrap, L, N, s_ad, s_an, s_bn, s_cn, pid_b, n_fwd_chunks,
                                                      fwd_chunk, channels, BL, HAS_DLAST)
            A3 = gl.expand_dims(gl.expand_dims(A_n, 1), 2)
            Bn = gl.expand_dims(Bn, 0)
            Cn = gl.expand_dims(Cn, 0)
            # states: h_t = a_t h_{t-1} + x_t B_t from the chunk-entry state h0, in the thread, then over lanes
            a = gl.exp2(dt * (A3 * LOG2E))
            drive = x * Bn
            pa, pb = gl.associative_scan((a, drive), 2, _combine)
            h0 = gl.expand_dims(h0, 1)
            agg_a = _lane_last(pa, L2, R, K, LOGK)
            agg_b = _lane_last(pb, L2, R, K, LOGK)
            agg_b = gl.where(lane == 0, agg_b + agg_a * h0, agg_b)
            _, h_end = gl.associative_scan((gl.convert_layout(agg_a, LB2), gl.convert_layout(agg_b, LB2)), 1,
                                           _combine)  # the state at each lane's last step
            h_before = gl.where(lane == 0, h0, _shuffle(gl.convert_layout(h_end, L2),
                                                        "shfl.sync.up.b32 $0, $1, 1, 0x0, -1;"))
            h = pb + pa * gl.expand_dims(h_before, 2)
            # adjoint g_t = C_t dy_t + a_{t+1} g_{t+1}: in the thread (reversed steps), then over lanes from the end;
            # a_{t+1} is a's next register, the next lane's first or the next chunk's first step's decay
            a_after = gl.exp2(dt_after * (gl.expand_dims(A_n, 1) * LOG2E))
            qa, qg = gl.associative_scan((_next_reversed(a, a_after, lane, L3, L2, R, K),
                                          _flip_k(Cn * dy, L3, R, K, LOGK)), 2, _combine)
            P = _lane_last(qa, L2, R, K, LOGK)  # a lane's first step is the last of its reversed steps
            G = _lane_last(qg, L2, R, K, LOGK)
            P, G = _suffix_step(P, G, lane, 1)
            P, G = _suffix_step(P, G, lane, 2)
            P, G = _suffix_step(P, G, lane, 4)
            P, G = _suffix_step(P, G, lane, 8)
            P, G = _suffix_step(P, G, lane, 16)
            # g at the next chunk's first step (or d last_state past the sequence's end)
            g_after = gl.expand_dims(g_after, 1)
            g_first = G + P * g_after  # g at each lane's first step
            g_next_lane = gl.where(lane == 31, g_after, _down(g_first, 1))
            gl.store(gl.expand_dims(g_ptr + state_rows + n, 1) + lane * 0, g_first, mask=(lane == 0) & mask_d2)
            g = _flip_k(qg + qa * gl.expand_dims(g_next_lane, 2), L3, R, K, LOGK)
            # a_t h_{t-1} = h_t - x_t B_t: the decay's share of the state
            carried = (h - drive) * g
            gB_acc += g * Bn
            zA_acc += carried * A3
            # dA: each thread's running sums (its channels, its lane's steps) in shared memory, summed over the
            # lanes at the end; no shuffles here, but the compiler puts a barrier before the read and the write
            # (it cannot tell that each thread touches only its own words)
            dA_lane = gl.sum(carried * dt, axis=2)
            dA_slot = dA_smem.index(n)
            dA_slot.store(gl.where(step > 0, dA_slot.load(L2), 0.0) + dA_lane)
            # dB, dC: each warp's sums over its own channels (in the thread) wait in shared memory; every S states
            # the warps' rows are added up, a warp per state, and stored: two barriers per S states
            slot = n % S
            dB_smem.index(slot).store(gl.sum((g * x).reshape([NW, BD, 32, K]), axis=1).reshape([NW, BL]))
            dC_smem.index(slot).store(gl.sum((h * dy).reshape([NW, BD, 32, K]), axis=1).reshape([NW, BL]))
            if (slot == S - 1) | (n == N - 1):
                _barrier()
                flush_mask = chunk * BL + flush_steps < L
                for j in gl.static_range(S):
                    flush_ptrs = part_row + (n - slot + j) * L + chunk * BL + flush_steps
                    row_mask = flush_mask & (j <= slot)
                    gl.store(dB_ptr + flush_ptrs, gl.sum(dB_smem.index(j).load(LF), axis=0), mask=row_mask)
                    gl.store(dC_ptr + flush_ptrs, gl.sum(dC_smem.index(j).load(LF), axis=0), mask=row_mask)
                _barrier()
        u = gl.load(u_ptr + u_rows + tok3 * s_ul, mask=mask, other=0.0).to(gl.float32)
        du = gB_acc * dt
        if HAS_D:
            du += skip3 * dy
            dD_acc += gl.sum(gl.sum(dy * u, axis=2), axis=1)
        ddt = gB_acc * u + zA_acc
        if SOFTPLUS:
            raw = gl.load(delta_ptr + delta_rows + tok3 * s_dl, mask=mask, other=0.0).to(gl.float32) + bias3
            ddt = ddt * (1.0 / (1.0 + gl.exp(-raw)))
        ddt = gl.where(mask, ddt, 0.0)
        dbias_acc += gl.sum(gl.sum(ddt, axis=2), axis=1)
        gl.store(du_ptr + du_rows + tok3 * s_gl, du.to(du_ptr.dtype.element_ty), mask=mask)
        gl.store(ddelta_ptr + ddelta_rows + tok3 * s_el, ddt.to(ddelta_ptr.dtype.element_ty), mask=mask)
    for n in range(N):
        gl.store(dA_ptr + state_rows + n, gl.sum(dA_smem.index(n).load(L2), axis=1), mask=mask_d)
    gl.store(dD_ptr + pid_b * channels + d, dD_acc, mask=mask_d)
    gl.store(dbias_ptr + pid_b * channels + d, dbias_acc, mask=mask_d)
