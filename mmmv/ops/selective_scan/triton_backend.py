"""Selective scan on Triton kernels (`triton_kernels`), as the `torch.library` custom ops ``mmmv::selective_scan_fwd``
and ``mmmv::selective_scan_bwd`` with an autograd formula, so that `torch.compile` keeps them as single graph nodes
and `torch.export` records them.

The kernels need a CUDA GPU, or CPU tensors with ``TRITON_INTERPRET=1`` set before triton is first imported
(that is how CI runs them). Inputs are read in place through their strides; float16 / bfloat16 / float32 inputs are
computed in float32 and every output comes back in its input's dtype (float64 belongs to the torch backend).

The same kernels run the fused four-direction 2D scan (`cross_selective_scan_triton`, called by
`mmmv.ops.cross_selective_scan`): with ``height`` set, the channel groups are the four scan directions of an
H x W map, and the kernels find each direction's tokens in the raster-ordered inputs by index arithmetic, read the
shared u once per direction without copies, and write each direction's output in raster order; the four are summed
here. No permuted copy of anything is made.

On CUDA, 16-state backwards run the warp-layout kernel of `gluon_kernels` instead (`_warp_backward_k` decides; the
fused four-direction one on copies in scan order, `_cross_backward_in_steps`); CPU runs, z and small batches keep
the Triton backward.

Layers: launch configuration (`LaunchConfig`, `launch_config`) -> kernel launchers (`scan_forward`,
`scan_backward`) -> custom ops -> `selective_scan_triton` (called by `interface.selective_scan`) and
`cross_selective_scan_triton`.
"""
import math
import os
import warnings
from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Tuple

import torch

from . import triton_kernels as kernels
from .launch import launch as launch_kernel

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# A (tokens, channels, states) tile gives each thread all tokens of one (channel, state) pair, so each 3-D working
# tensor costs a thread `chunk` registers; the backward holds about ten of them. Chunks measured fastest on an H100
# (fwd + bwd, bf16; docs/benchmarks.md): 8 tokens up to 8 states (MambaVision), 32 tokens for 16 states (VSS).
THREADS_PER_PROGRAM = 128
BWD_THREADS_PER_PROGRAM = 128
SHORT_CHUNK, LONG_CHUNK, LONG_CHUNK_STATES = 8, 32, 16
# programs wanted per streaming multiprocessor before the sequence is split as well
PROGRAMS_PER_SM = 4
# Backward programs per group of channels: each writes its own partial dB / dC rows (batch, N, L) float32, and a
# program with more channels than one tile adds each tile's share to its rows in memory (a read, a layout conversion
# and a write per chunk). At least 8 programs per group, and up to one per tile while the partial rows together
# stay within the size of u in float32 (group_channels / (2 N) programs): on an H200 one program per tile made the
# MambaVision forward + backward up to 14% faster (one detection case 2% slower; docs/benchmarks.md); VSS keeps 8
# (one per tile would triple the rows' memory there).
MAX_PARTIAL_ROWS = 8
DIRECTIONS = 4  # of a fused 2D scan
# The warp-layout backward (`gluon_kernels`, CUDA only): BD channels per thread and NW warps per program; its chunks
# are 32 * K steps, K = 4 unless the sequence is short. It has no sequence splits, so below WARP_MIN_PROGRAMS
# programs per streaming multiprocessor (a detection input's batch of 2) the Triton backward runs, which splits.
# ``MMMV_SCAN_BACKWARD=triton`` or ``=warp`` picks one (the tests compare them); the default picks by the size.
# On an H200 it took 0.25x the Triton backward's time at VSS stage 1 (16 states) and 0.64-0.66x at MambaVision-T / B
# stage 3 (8 states); below 8 states it is untried.
WARP_BD, WARP_NW = 2, 4
WARP_MIN_PROGRAMS = 2
WARP_MIN_STATES = 8
# Its shared memory holds every state's dA sums (1 KiB per padded state) besides the dB / dC rows: up to 64 states.
WARP_MAX_STATES = 64
# Registers per thread: ptxas would take 232 (float32, 4 steps per lane), two programs of 128 threads per SM; capped
# at 168 it takes 150-168 without spills and fits three.
WARP_MAX_REGISTERS = 168
# Every launch asks for fused multiply-adds, as the kernels were written and measured with: Triton 3.10 turns them off
# by default (and 3.9 warns at each compile that does not say).
FP_FUSION = dict(enable_fp_fusion=True)


def interpreting() -> bool:
    """Whether triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get('TRITON_INTERPRET', '0').strip() not in ('', '0')


@dataclass(frozen=True)
class LaunchConfig:
    """How one call is cut into programs: BL tokens per chunk, BD channels per register tile, NP padded states;
    the sequence cut into splits of `chunks_per_split` chunks; in backward, programs of `ch_per_program` channels."""
    chunk: int
    block_d: int
    states_padded: int
    n_chunks: int
    fwd_splits: int
    fwd_chunks_per_split: int
    bwd_block_d: int
    bwd_ch_per_program: int
    bwd_splits: int
    bwd_chunks_per_split: int
    num_warps: int
    bwd_num_warps: int


def _pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _splits(programs: int, n_chunks: int, target: int, forced: Optional[int]) -> Tuple[int, int]:
    """(number of splits, chunks per split) so that programs * splits reaches `target`, or as `forced`."""
    wanted = forced if forced is not None else math.ceil(target / max(programs, 1))
    per_split = math.ceil(n_chunks / max(1, min(wanted, n_chunks)))
    return math.ceil(n_chunks / per_split), per_split


def launch_config(batch: int, dim: int, length: int, state: int, group_channels: int, device: torch.device,
                  chunk_size: Optional[int] = None, n_splits: Optional[int] = None) -> LaunchConfig:
    """The launch configuration for a call; `chunk_size` and `n_splits` override the heuristics (tests use them
    to cross chunk and split boundaries at small sizes)."""
    states_padded = max(2, _pow2(state))
    if chunk_size is None:
        chunk = LONG_CHUNK if states_padded >= LONG_CHUNK_STATES else SHORT_CHUNK
    else:
        if chunk_size < 2 or chunk_size & (chunk_size - 1):
            raise ValueError(f'selective_scan: chunk_size must be a power of two >= 2, got {chunk_size}')
        chunk = chunk_size
    block_d = max(1, min(_pow2(group_channels), THREADS_PER_PROGRAM // states_padded))
    n_chunks = math.ceil(length / chunk)
    groups = dim // group_channels
    target = PROGRAMS_PER_SM * multiprocessors(device) if device.type == 'cuda' else 1
    fwd_splits, fwd_per_split = _splits(batch * groups * math.ceil(group_channels / block_d), n_chunks, target,
                                       n_splits)
    # backward programs own one tile of channels or, in wide groups, several, so that the partial dB / dC rows
    # (one per program) stay few
    bwd_block_d = max(1, min(_pow2(group_channels), BWD_THREADS_PER_PROGRAM // states_padded))
    tiles = math.ceil(group_channels / bwd_block_d)
    rows = min(tiles, max(MAX_PARTIAL_ROWS, group_channels // (2 * states_padded)))
    ch_per_program = math.ceil(tiles / rows) * bwd_block_d
    programs = batch * groups * math.ceil(group_channels / ch_per_program)
    bwd_splits, bwd_per_split = _splits(programs, n_chunks, target, n_splits)
    return LaunchConfig(chunk, block_d, states_padded, n_chunks, fwd_splits, fwd_per_split, bwd_block_d,
                        ch_per_program, bwd_splits, bwd_per_split, _warps(block_d, states_padded),
                        _warps(bwd_block_d, states_padded))


_MULTIPROCESSORS = {}


def multiprocessors(device: torch.device) -> int:
    """The streaming multiprocessors of a CUDA device (asked once per device: the query costs host time)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _MULTIPROCESSORS:
        _MULTIPROCESSORS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _MULTIPROCESSORS[index]


def _warps(block_d: int, states_padded: int) -> int:
    """Warps that cover a (channels, states) tile exactly: a warp along the tokens would break the in-thread scan."""
    return max(1, min(8, block_d * states_padded // 32))


def _grouped(x: torch.Tensor) -> torch.Tensor:
    """B or C as (batch, G, N, L): the shared layout gets a group axis of size 1 (a view)."""
    return x.unsqueeze(1) if x.dim() == 3 else x


def _common_group_channels(dim: int, B: torch.Tensor, C: torch.Tensor) -> int:
    """Channels per group of the finest grouping that both B's and C's groupings coarsen."""
    return math.gcd(dim // B.shape[1], dim // C.shape[1])


def _scanned_channels(u: torch.Tensor, height: int) -> int:
    """Channels scanned: u's, or four times u's in a four-direction scan (``height`` > 0)."""
    return u.shape[1] * (DIRECTIONS if height else 1)


_CONFIGS = {}
MAX_CONFIGS = 1024


def _config_for(u, B, C, chunk_size, n_splits, height) -> LaunchConfig:
    """`launch_config` of a call, kept per sizes (the same layers run every step); symbolic sizes (the fake
    implementations under torch.compile) are not kept."""
    batch, _, length = u.shape
    dim = _scanned_channels(u, height)
    args = (batch, dim, length, B.shape[2], _common_group_channels(dim, B, C), u.device, chunk_size, n_splits)
    return _kept(launch_config, args if all(type(size) is int for size in args[:5]) else None, *args)


def _kept(build, key: Optional[tuple], *args):
    """``build(*args)``, kept in `_CONFIGS` per `key` (launch configurations and plans alike, so that whatever
    swaps or clears one clears the other); None keeps nothing (symbolic sizes: the fake implementations)."""
    if key is None:
        return build(*args)
    kept = _CONFIGS.get(key)
    if kept is None:
        if len(_CONFIGS) >= MAX_CONFIGS:
            _CONFIGS.clear()
        kept = _CONFIGS[key] = build(*args)
    return kept


def _fake_splits(n_splits: Optional[int], launch: bool) -> Optional[int]:
    """The splits of a call: as asked, or one when nothing is launched (the fake implementations). The splits
    change no output's shape or stride (only internal buffers), and choosing them compares the batch and the length
    with the GPU's size: under torch.compile with symbolic sizes those comparisons would become guards, and a batch
    or length crossing one would recompile."""
    return n_splits if launch else 1


def _check_runnable(u: torch.Tensor) -> None:
    if u.device.type == 'cuda' or (u.device.type == 'cpu' and interpreting()):
        return
    hint = ('set TRITON_INTERPRET=1 before importing triton to run the kernels on CPU (slow; meant for tests)'
            if u.device.type == 'cpu' else "use backend='torch'")
    raise ValueError(f"selective_scan: backend 'triton' runs on CUDA tensors, got a tensor on {u.device}; {hint}")


def _narrow(*tensors: torch.Tensor) -> bool:
    """Whether an input the kernels load per (token, channel) is narrower than float32 (the kernels' NARROW)."""
    return any(t.dtype != torch.float32 for t in tensors)


def _optional(t: Optional[torch.Tensor], fallback: torch.Tensor) -> torch.Tensor:
    """A valid pointer for an absent input; the kernels never read it (the HAS_* flag is off)."""
    return fallback if t is None else t


def _grouped_strides(t: torch.Tensor, group_channels: int, shared: bool = False) -> Tuple[int, int, int, int]:
    """(batch, group, channel, token) strides by which the kernels address u, delta, dout and d delta: a
    (batch, G, Dg, L) tensor as it is, a (batch, D, L) tensor cut into groups of `group_channels` channels, or
    (`shared`) one (batch, Dg, L) tensor read by every group (the four directions' u)."""
    if t.dim() == 4:
        return tuple(t.stride())
    batch, channel, token = t.stride()
    return batch, 0 if shared else group_channels * channel, channel, token


def _channel_buffer(like: torch.Tensor, shape: Tuple[int, int, int], dtype: torch.dtype) -> torch.Tensor:
    """An empty (batch, channels, L) buffer, token-major (channels contiguous) when `like` is, so that the kernels'
    stores coalesce in the same way as their loads; else contiguous."""
    batch, channels, length = shape
    if like.stride(1) == 1 and length > 1:
        return torch.empty((batch, length, channels), device=like.device, dtype=dtype).transpose(1, 2)
    return torch.empty(shape, device=like.device, dtype=dtype)


class _ForwardPlan(NamedTuple):
    """What a forward launches, but for its tensors and y's strides (`_forward_plan`)."""
    cfg: LaunchConfig
    dim: int
    grid: Tuple[int, int, int]
    carry_scalars: tuple  # of `_fwd_carry_kernel`
    carry_flags: dict
    scalars: tuple  # of `_fwd_kernel`, y's strides left out
    flags: dict


def _plan_key(kind: str, u, delta, A, B, C, D, z, delta_bias, options: tuple, launch: bool) -> Optional[tuple]:
    """The key of a plan: everything of the inputs that a plan reads (sizes, strides, the dtypes that set NARROW,
    which optional inputs are given, the device) and the call's options. None when nothing is launched (the fake
    implementations; their sizes may be symbolic)."""
    if not launch:
        return None
    return (kind, u.shape, u.stride(), u.dtype, delta.shape, delta.stride(), delta.dtype, A.shape, A.stride(),
            B.shape, B.stride(), C.shape, C.stride(), D is None, None if z is None else z.stride(),
            delta_bias is None, u.device, *options)


def _layout(u, A, B, C, chunk_size, n_splits, height, launch) -> tuple:
    """What the plans of a forward and of a backward share: B and C grouped (`_grouped`), the channels scanned, N,
    the launch configuration and the channels per group."""
    B, C = _grouped(B), _grouped(C)
    dim = _scanned_channels(u, height)
    cfg = _config_for(u, B, C, chunk_size, _fake_splits(n_splits, launch), height)
    return B, C, dim, A.shape[1], cfg, _common_group_channels(dim, B, C)


def _forward_plan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk_size, n_splits,
                  height, launch) -> _ForwardPlan:
    """The launch configuration, grid, scalar arguments and constexprs of a forward; the scalars only when it
    launches."""
    B, C, dim, state, cfg, group_channels = _layout(u, A, B, C, chunk_size, n_splits, height, launch)
    batch, _, length = u.shape
    per_group = math.ceil(group_channels / cfg.block_d)
    grid = (batch, dim // group_channels * per_group, cfg.fwd_splits)
    if not launch:
        return _ForwardPlan(cfg, dim, grid, (), {}, (), {})
    u_strides = _grouped_strides(u, group_channels, shared=bool(height))
    delta_strides = _grouped_strides(delta, group_channels)
    flags = dict(CROSS=bool(height), BD=cfg.block_d, NP=cfg.states_padded, BL=cfg.chunk, num_warps=cfg.num_warps,
                 **FP_FUSION)
    carry_scalars = (length, dim, dim // B.shape[1], group_channels, per_group, cfg.fwd_chunks_per_split,
                     cfg.fwd_splits, state, height, *u_strides, *delta_strides, *A.stride(), *B.stride())
    scalars = (length, dim, dim // B.shape[1], dim // C.shape[1], group_channels, per_group, cfg.fwd_chunks_per_split,
               cfg.fwd_splits, state, height, *u_strides, *delta_strides, *A.stride(), *B.stride(), *C.stride(),
               *_optional(z, u).stride())
    return _ForwardPlan(
        cfg, dim, grid, carry_scalars, dict(flags, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus),
        scalars, dict(flags, HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                      SOFTPLUS=delta_softplus, HAS_CARRY=cfg.fwd_splits > 1, STORE_LAST=return_last_state,
                      NARROW=_narrow(u, delta)))


def _contiguous_strides(shape) -> Tuple[int, ...]:
    """The strides of a contiguous tensor of `shape`."""
    strides, size = [], 1
    for extent in reversed(shape):
        strides.append(size)
        size *= extent
    return tuple(reversed(strides))


def _unit_token_strides(x: torch.Tensor) -> Tuple[int, ...]:
    """The strides of x as the warp-layout kernels read it (`_unit_tokens`): its own, or a contiguous copy's."""
    return tuple(x.stride()) if x.stride(-1) == 1 else _contiguous_strides(x.shape)


def _unit_tokens(x: torch.Tensor) -> torch.Tensor:
    """B or C with unit token stride, as the warp-layout kernels read them: copied when their tokens are not
    contiguous, which costs less than their strided reads per state."""
    return x if x.stride(-1) == 1 else x.contiguous()


def scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, return_last_state: bool,
                 chunk_size: Optional[int] = None, n_splits: Optional[int] = None, height: int = 0,
                 launch: bool = True):
    """Launch the forward. Returns y (u's dtype), last state (batch, D, N) float32 (empty unless asked for) and
    the chunk-entry states (batch, n_chunks, D, N) float32 that the backward needs.

    With ``height`` > 0, a four-direction scan of an H x (L / H) map (`cross_selective_scan_triton`): u is
    (batch, Di, L), delta (batch, 4, Di, L), B and C (batch, 4, N, L), all raster order; y is the sum of the
    four directions' outputs, (batch, Di, L), summed in float32.

    With ``launch=False`` nothing runs: the outputs are allocated and reduced as the launch would (the fake
    implementation of the custom op, so that its outputs have the real ones' shapes *and strides*).

    What depends only on the inputs' sizes, strides and dtypes and on the options is planned once per such key
    (`_forward_plan`; host time: the same layers run every step)."""
    D, delta_bias = _unit_stride(D), _unit_stride(delta_bias)
    if launch:
        _check_runnable(u)
    options = (delta_softplus, return_last_state, chunk_size, n_splits, height)
    plan = _kept(_forward_plan, _plan_key('fwd', u, delta, A, B, C, D, z, delta_bias, options, launch),
                 u, delta, A, B, C, D, z, delta_bias, *options, launch)
    cfg, dim = plan.cfg, plan.dim
    batch, inner, length = u.shape
    state = A.shape[1]
    if height:
        y = _channel_buffer(u, (batch, dim, length), torch.float32)
    else:
        y = torch.empty((batch, dim, length), device=u.device, dtype=u.dtype)
    states = torch.empty((batch, cfg.n_chunks, dim, state), device=u.device, dtype=torch.float32)
    last = torch.empty((batch, dim, state) if return_last_state else (0, ), device=u.device, dtype=torch.float32)
    carry_h = carry_dt = u
    bias = _optional(delta_bias, u)
    if cfg.fwd_splits > 1 and launch:
        carry_h = torch.empty((batch, cfg.fwd_splits, dim, state), device=u.device, dtype=torch.float32)
        carry_dt = torch.empty((batch, cfg.fwd_splits, dim), device=u.device, dtype=torch.float32)
        launch_kernel(kernels._fwd_carry_kernel, plan.grid, u, delta, A, B, bias, carry_h, carry_dt,
                      *plan.carry_scalars, **plan.carry_flags)
    if launch:  # B and C as they are: a shared one's group axis (`_grouped`) is a view, of the same address
        launch_kernel(kernels._fwd_kernel, plan.grid, u, delta, A, B, C, _optional(D, u), _optional(z, u), bias,
                      y, states, last, carry_h, carry_dt, *plan.scalars, *y.stride(), **plan.flags)
    if height:
        y = y.view(batch, DIRECTIONS, inner, length).sum(1).to(u.dtype)
    return y, last, states


def scan_backward(dout, dlast, u, delta, A, B, C, D, z, delta_bias, states, delta_softplus: bool,
                  chunk_size: Optional[int] = None, n_splits: Optional[int] = None, height: int = 0,
                  launch: bool = True, separate: bool = True):
    """Launch the backward. Returns du, ddelta, dA, dB, dC, dD, dz, d delta_bias in their inputs' dtypes and
    shapes. With ``height`` > 0 (see `scan_forward`), du sums the four directions' shares, in float32.
    ``launch=False``: as in `scan_forward`. On CUDA the warp-layout backward runs where it applies
    (`_warp_backward_k`), else the Triton one; the outputs' shapes and strides are the same either way.

    The kernels' partial sums come in two buffers of two parts each (dB and dC rows; dD and d delta_bias), each
    reduced in one op (host time: each op costs more of it than its GPU work at MambaVision sizes), so dB and dC, and
    dD and d delta_bias, are views of one result. With `separate` (the custom op, whose outputs may not alias one
    another) each gradient gets a storage of its own, and those of absent optional inputs are empty tensors; without
    (the eager autograd.Function) they stay views, and None."""
    args = (dout, dlast, u, delta, A, B, C, D, z, delta_bias, states, delta_softplus, chunk_size, n_splits, height,
            launch, separate)
    try:
        return _scan_backward(*args)
    except _WarpFailed:  # said once (a warning); from now on the Triton backward
        return _scan_backward(*args)


class _BackwardPlan(NamedTuple):
    """What a backward launches, but for its tensors and its buffers' strides (`_backward_plan`)."""
    cfg: LaunchConfig
    dim: int
    group_channels: int
    warp: int  # K of the warp-layout backward, or 0 (`_warp_backward_k`)
    per_group: int
    programs: int
    splits: int
    carry_grid: Tuple[int, int, int]
    carry_scalars: tuple  # of `_bwd_carry_kernel`
    carry_flags: dict
    grid: Tuple[int, int, int]
    scalars: tuple  # of `_bwd_kernel`, the strides of du, d delta, dz and the partial rows left out
    flags: dict
    warp_scalars: tuple = ()  # of `gluon_kernels._bwd_warp_kernel`, the strides of du and d delta left out
    warp_flags: Optional[dict] = None


def _backward_plan(u, delta, A, B, C, D, z, delta_bias, dout, dlast, delta_softplus, chunk_size, n_splits, height,
                   launch) -> _BackwardPlan:
    """As `_forward_plan`, for a backward, whichever kernel runs it."""
    B, C, dim, state, cfg, group_channels = _layout(u, A, B, C, chunk_size, n_splits, height, launch)
    batch, _, length = u.shape
    # one state: the operands' prefetch would read the adjoint carried between chunks before it is written
    warp = _warp_backward_k(u, z, group_channels, dim, length, cfg, chunk_size, n_splits, launch) if state > 1 else 0
    per_group = math.ceil(group_channels / (WARP_BD * WARP_NW if warp else cfg.bwd_ch_per_program))
    programs = (dim // group_channels) * per_group
    splits = 1 if warp else cfg.bwd_splits
    tiles_per_group = math.ceil(group_channels / cfg.block_d)
    carry_grid, grid = (batch, dim // group_channels * tiles_per_group, splits), (batch, programs, splits)
    if not launch:
        return _BackwardPlan(cfg, dim, group_channels, warp, per_group, programs, splits, carry_grid, (), {}, grid,
                             (), {})
    u_strides = _grouped_strides(u, group_channels, shared=bool(height))
    delta_strides = _grouped_strides(delta, group_channels)
    dout_strides = _grouped_strides(dout, group_channels, shared=bool(height))
    z_strides = _optional(z, u).stride()
    flags = dict(CROSS=bool(height), BD=cfg.block_d, NP=cfg.states_padded, BL=cfg.chunk, num_warps=cfg.num_warps,
                 HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus, **FP_FUSION)
    carry_scalars = (length, dim, dim // C.shape[1], group_channels, tiles_per_group, cfg.bwd_chunks_per_split,
                     splits, state, height, *delta_strides, *A.stride(), *C.stride(), *z_strides, *dout_strides)
    scalars = (length, dim, dim // B.shape[1], dim // C.shape[1], group_channels, cfg.bwd_ch_per_program, per_group,
               cfg.bwd_chunks_per_split, splits, state, height, *u_strides, *delta_strides, *A.stride(),
               *B.stride(), *C.stride(), *z_strides, *dout_strides)
    # the main kernels pin narrow inputs; the carry kernels reduce their per-(token, channel) work over the chunk
    # instead of broadcasting it over the states, and need no pin
    bwd_flags = dict(flags, HAS_D=D is not None, HAS_CARRY=splits > 1, HAS_DLAST=dlast is not None,
                     NARROW=_narrow(u, delta), BD=cfg.bwd_block_d, num_warps=cfg.bwd_num_warps)
    warp_fields = {}
    if warp:
        warp_fields = dict(
            warp_scalars=(length, dim, dim // B.shape[1], dim // C.shape[1], group_channels, per_group, cfg.n_chunks,
                          cfg.chunk, state, *u_strides, *delta_strides, *A.stride(), *_unit_token_strides(B)[:3],
                          *_unit_token_strides(C)[:3], *dout_strides),
            warp_flags=dict(HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
                            HAS_DLAST=dlast is not None, BD=WARP_BD, K=warp, LOGK=warp.bit_length() - 1, NW=WARP_NW,
                            NP=cfg.states_padded, num_warps=WARP_NW, maxnreg=WARP_MAX_REGISTERS, **FP_FUSION))
    return _BackwardPlan(cfg, dim, group_channels, warp, per_group, programs, splits, carry_grid, carry_scalars, flags,
                         grid, scalars, bwd_flags, **warp_fields)


def _scan_backward(dout, dlast, u, delta, A, B, C, D, z, delta_bias, states, delta_softplus: bool,
                   chunk_size: Optional[int], n_splits: Optional[int], height: int, launch: bool, separate: bool):
    D, delta_bias = _unit_stride(D), _unit_stride(delta_bias)
    if launch:
        _check_runnable(u)
    # the kernel choice's switches are part of the key: the choice is planned
    options = (delta_softplus, chunk_size, n_splits, height, dout.stride(), dlast is None,
               os.environ.get('MMMV_SCAN_BACKWARD'), _Warp.failed is None)
    plan = _kept(_backward_plan, _plan_key('bwd', u, delta, A, B, C, D, z, delta_bias, options, launch),
                 u, delta, A, B, C, D, z, delta_bias, dout, dlast, delta_softplus, chunk_size, n_splits, height,
                 launch)
    cfg, dim, warp, programs, splits = plan.cfg, plan.dim, plan.warp, plan.programs, plan.splits
    if cfg.n_chunks != states.shape[1]:
        raise RuntimeError('selective_scan: the saved states do not match this launch configuration '
                           f'({states.shape[1]} chunks saved, {cfg.n_chunks} expected)')
    if height and launch and _cross_in_steps(warp):
        return _cross_backward_in_steps(dout, u, delta, A, _grouped(B), _grouped(C), D, delta_bias, states,
                                        delta_softplus, chunk_size, height, B.shape, C.shape, separate)
    batch, inner, length = u.shape
    state = A.shape[1]
    if height:  # per direction, summed below
        du = _channel_buffer(u, (batch, dim, length), torch.float32)
        ddelta = torch.empty_like(delta)  # the strides of delta (dense views keep theirs)
    else:
        du = torch.empty_like(u, memory_format=torch.contiguous_format)
        ddelta = torch.empty_like(delta, memory_format=torch.contiguous_format)
    dz = torch.empty_like(z, memory_format=torch.contiguous_format) if z is not None else None
    # partial dB and dC rows (batch, programs, N, L), in one buffer (2, batch, programs, N, L); token-major when B's
    # states are contiguous (coalesced stores); the warp-layout backward stores them along the tokens
    if B.stride(-2) == 1 and length > 1 and not warp:
        part = torch.empty((2, batch, programs, length, state), device=u.device, dtype=torch.float32).transpose(3, 4)
    else:
        part = torch.empty((2, batch, programs, state, length), device=u.device, dtype=torch.float32)
    dB_part, dC_part = part.unbind(0)
    # per (batch, split) sums over tokens: dA's, and dD's and d delta_bias's in one buffer (2, batch, splits, D)
    dA_part = torch.empty((batch, splits, dim, state), device=u.device, dtype=torch.float32)
    skip_part = torch.empty((2, batch, splits, dim), device=u.device, dtype=torch.float32)
    dD_part, dbias_part = skip_part.unbind(0)
    ddelta_strides = _grouped_strides(ddelta, plan.group_channels)
    z_or_u, bias = _optional(z, u), _optional(delta_bias, u)
    carry_g = carry_dt = u
    if splits > 1 and launch:
        carry_g = torch.empty((batch, splits, dim, state), device=u.device, dtype=torch.float32)
        carry_dt = torch.empty((batch, splits, dim), device=u.device, dtype=torch.float32)
        launch_kernel(kernels._bwd_carry_kernel, plan.carry_grid, delta, A, C, z_or_u, bias, dout, carry_g, carry_dt,
                      *plan.carry_scalars, **plan.carry_flags)
    if warp:  # the adjoint carried between chunks in a scratch row per (batch, channel, state)
        g_scratch = torch.empty((batch, dim, state), device=u.device, dtype=torch.float32)
        _launch_warp_backward(plan.grid, u, delta, A, _unit_tokens(_grouped(B)), _unit_tokens(_grouped(C)),
                              _optional(D, u), bias, dout, states, _optional(dlast, u), g_scratch, du, ddelta,
                              dB_part, dC_part, dA_part, dD_part, dbias_part, *plan.warp_scalars, *du.stride(),
                              *ddelta_strides, **plan.warp_flags)
    elif launch:  # B and C as they are (see scan_forward)
        dz_or_u = _optional(dz, u)
        launch_kernel(
            kernels._bwd_kernel, plan.grid,
            u, delta, A, B, C, _optional(D, u), z_or_u, bias, dout, states, _optional(dlast, u), carry_g, carry_dt,
            du, ddelta, dz_or_u, dB_part, dC_part, dA_part, dD_part, dbias_part,
            *plan.scalars, *du.stride(), *ddelta_strides, *dz_or_u.stride(), dB_part.stride(2), dB_part.stride(3),
            **plan.flags)

    if height:
        du = du.view(batch, DIRECTIONS, inner, length).sum(1).to(u.dtype)
    dB, dC = _row_sums(part, B, C, separate)
    dA = _cast(dA_part.sum((0, 1)), A.dtype)
    dD, dbias = skip_part.sum((1, 2)).unbind(0)
    if separate:  # dD copied out of the result it shares with d delta_bias
        dD = u.new_empty(0) if D is None else dD.to(D.dtype, copy=True)
        dbias = u.new_empty(0) if delta_bias is None else _cast(dbias, delta_bias.dtype)
        dz = u.new_empty(0) if dz is None else dz
    else:
        dD = None if D is None else _cast(dD, D.dtype)
        dbias = None if delta_bias is None else _cast(dbias, delta_bias.dtype)
    return du, ddelta, dA, dB, dC, dD, dz, dbias


def _unit_stride(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """D or delta_bias as the kernels read them, with unit stride (a strided view is copied; it has D elements)."""
    return t if t is None or t.stride(0) == 1 else t.contiguous()


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t in `dtype` (without calling ``to`` when it is already: host time)."""
    return t if t.dtype == dtype else t.to(dtype)


def _row_sums(part: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
              separate: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """dB and dC, in B's and C's shapes and dtypes, from the partial rows `part` (2, batch, programs, N, L): the
    rows of each group's programs summed, in one reduction when B and C are grouped alike (cast in one op when of
    one dtype, unless `separate`: then dC is copied out of their shared result)."""
    _, batch, programs, state, length = part.shape
    groups, groups_C = _groups(B), _groups(C)
    if groups == groups_C:
        if groups == 1:  # shared B and C (MambaVision): no group axis to split off
            summed = part.sum(2)
        else:
            summed = part.view(2, batch, groups, programs // groups, state, length).sum(3)
        if not separate and B.dtype == C.dtype:
            summed = _cast(summed, B.dtype)
        dB, dC = summed.unbind(0)
        if separate:
            dC = dC.to(C.dtype, copy=True)
    else:
        dB, dC = (rows.view(batch, g, programs // g, state, length).sum(2)
                  for rows, g in zip(part.unbind(0), (groups, groups_C)))
    dB, dC = _cast(dB, B.dtype), _cast(dC, C.dtype)
    return (dB if dB.dim() == B.dim() else dB.view(B.shape)), (dC if dC.dim() == C.dim() else dC.view(C.shape))


def _groups(x: torch.Tensor) -> int:
    """The groups of B or C: 1 when shared, (batch, N, L)."""
    return x.shape[1] if x.dim() == 4 else 1


class _Warp:
    """Whether the warp-layout backward can run here (imported on first use: Gluon is Triton's experimental
    language, absent from old releases) and whether it has failed to compile once."""
    kernels = None
    failed: Optional[str] = None


def _warp_backward_k(u, z, group_channels: int, dim: int, length: int, cfg: LaunchConfig,
                     chunk_size: Optional[int], n_splits: Optional[int], launch: bool) -> int:
    """K (steps per lane) of the warp-layout backward for this call, or 0 for the Triton backward: the CUDA path
    without z, with the forward's chunk dividing the warp's 32 * K steps, 8 to 64 states, enough programs to fill
    the GPU (else the Triton backward's sequence splits do better) and no splits asked for; ``MMMV_SCAN_BACKWARD``
    overrides the size rules."""
    choice = os.environ.get('MMMV_SCAN_BACKWARD', 'auto').strip().lower()
    if choice not in ('auto', 'warp', 'triton'):
        raise ValueError(f"MMMV_SCAN_BACKWARD must be 'auto', 'warp' or 'triton', got {choice!r}")
    if (not launch or choice == 'triton' or u.device.type != 'cuda' or z is not None or n_splits is not None
            or cfg.states_padded > WARP_MAX_STATES):
        return 0
    k = 4 if length > 64 else 2 if length > 32 else 1
    if (32 * k) % cfg.chunk:
        return 0
    if choice == 'auto':
        if cfg.states_padded < WARP_MIN_STATES:
            return 0
        programs = u.shape[0] * (dim // group_channels) * math.ceil(group_channels / (WARP_BD * WARP_NW))
        if programs < WARP_MIN_PROGRAMS * multiprocessors(u.device):
            return 0
    if _Warp.kernels is None and _Warp.failed is None:
        try:
            from . import gluon_kernels
            _Warp.kernels = gluon_kernels
        except ImportError as error:  # a Triton without Gluon: the Triton backward is the path, not an error
            _Warp.failed = f'{type(error).__name__}: {error}'
    return k if _Warp.kernels is not None and _Warp.failed is None else 0


def _launch_warp_backward(grid: Tuple[int, int, int], *args, **flags) -> None:
    """Launch `gluon_kernels._bwd_warp_kernel` into the buffers of a plain `scan_backward` (a four-direction one
    comes as a plain one, `_cross_backward_in_steps`). A failure to compile (a Gluon API this Triton does not have)
    is said once, as a warning, and raises `_WarpFailed`: the call runs again on the Triton backward, and so do all
    later calls (the plans' keys hold `_Warp.failed`)."""
    try:
        launch_kernel(_Warp.kernels._bwd_warp_kernel, grid, *args, **flags)
    except Exception as error:  # noqa: BLE001 - a Gluon API this Triton does not have: said once, then Triton
        _Warp.failed = f'{type(error).__name__}: {error}'
        warnings.warn(f'selective_scan: the warp-layout backward did not compile with this Triton '
                      f'({_Warp.failed[:300]}); the Triton backward runs instead (MMMV_SCAN_BACKWARD=triton '
                      f'chooses it without trying)', RuntimeWarning, stacklevel=2)
        raise _WarpFailed from error


def _cross_in_steps(warp_k: int) -> bool:
    """Whether a four-direction backward runs as a plain grouped one on copies in scan order (with the warp-layout
    backward; a hook for the CPU tests, which run the same rewrite on the Triton backward)."""
    return warp_k > 0


def _cross_backward_in_steps(dout, u, delta, A, B, C, D, delta_bias, states, delta_softplus, chunk_size, height,
                             B_shape, C_shape, separate):
    """The four-direction backward on copies of u, delta, dout, B and C in each direction's scan order, with the
    directions as groups: a plain scan, whose steps are contiguous in memory. The warp-layout backward reads a lane's
    steps along the tokens; in place, the column-major directions and the token-major layouts of VSS would make every
    such read strided (measured on an H200: 0.93x the Triton backward in place at VM-UNet stage 1, 0.76x on these
    copies). Each copy is one gather by `cross_scan`'s cached token orders (u and dout, read by every direction, in
    float32 so that du's four shares are summed in float32 as in place), and each gradient one gather back into
    the buffer the in-place backward would have returned (its shapes and strides: the fake implementation under
    torch.compile describes that one). The forward's chunk states serve as they are (chunks of scan steps, channels
    ordered by direction).

    The token orders are made here on each call, not taken from `direction_indices`' cache: under CUDA graphs
    (``torch.compile(mode='reduce-overhead')``) a tensor this opaque op caches would be allocated in the graph's
    private pool and outlive the call (torch refused VM-UNet's bf16 step: "8 tensor(s) in the cudagraph pool not
    tracked as outputs"), and one the cache later dropped would leave a captured kernel reading freed memory."""
    from ..cross_scan import _gather_tokens, _token_orders

    batch, inner, length = u.shape
    order, inverse = _token_orders(height, length // height, u.device)

    def shared(x):  # u, dout: one (batch, Di, L) tensor read by every direction -> (batch, 4 * Di, L) float32
        return _gather_tokens(x.to(torch.float32).unsqueeze(1).expand(batch, DIRECTIONS, inner, length),
                              order).flatten(1, 2)

    du_s, ddelta_s, dA, dB_s, dC_s, dD, dz, dbias = _scan_backward(
        shared(dout), None, shared(u), _gather_tokens(delta, order).flatten(1, 2), A, _gather_tokens(B, order),
        _gather_tokens(C, order), D, None, delta_bias, states, delta_softplus, chunk_size, None, 0, True, separate)

    def to_raster(x, out):  # (batch, 4, ., L) in scan order -> `out`, raster order
        return torch.gather(x, 3, inverse[None, :, None, :].expand(x.shape), out=out)

    du = _channel_buffer(u, (batch, DIRECTIONS * inner, length), torch.float32).view(batch, DIRECTIONS, inner, length)
    to_raster(du_s.view(batch, DIRECTIONS, inner, length), du)
    ddelta = to_raster(ddelta_s.view(delta.shape), torch.empty_like(delta))
    dB = to_raster(dB_s.view(B.shape), torch.empty(B_shape, device=u.device, dtype=B.dtype).view(B.shape))
    dC = to_raster(dC_s.view(C.shape), torch.empty(C_shape, device=u.device, dtype=C.dtype).view(C.shape))
    return du.sum(1).to(u.dtype), ddelta, dA, dB.view(B_shape), dC.view(C_shape), dD, dz, dbias


class _WarpFailed(Exception):
    """The warp-layout backward failed to compile: `scan_backward` runs again on the Triton backward."""


# ----------------------------------------------------------------------------------------------------
# Custom ops. Optional inputs are passed as None; the backward returns empty tensors for absent ones.
# ----------------------------------------------------------------------------------------------------
@torch.library.custom_op('mmmv::selective_scan_fwd', mutates_args=())
def selective_scan_fwd(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                       D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
                       delta_softplus: bool, return_last_state: bool, chunk_size: Optional[int],
                       n_splits: Optional[int], height: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk_size, n_splits,
                        height)


@selective_scan_fwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk_size, n_splits, height):
    return scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk_size, n_splits,
                        height, launch=False)


@torch.library.custom_op('mmmv::selective_scan_bwd', mutates_args=())
def selective_scan_bwd(dout: torch.Tensor, dlast: Optional[torch.Tensor], u: torch.Tensor, delta: torch.Tensor,
                       A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor],
                       z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor], states: torch.Tensor,
                       delta_softplus: bool, chunk_size: Optional[int], n_splits: Optional[int],
                       height: int) -> List[torch.Tensor]:
    return list(scan_backward(dout, dlast, u, delta, A, B, C, D, z, delta_bias, states, delta_softplus, chunk_size,
                              n_splits, height))


@selective_scan_bwd.register_fake
def _(dout, dlast, u, delta, A, B, C, D, z, delta_bias, states, delta_softplus, chunk_size, n_splits, height):
    return list(scan_backward(dout, dlast, u, delta, A, B, C, D, z, delta_bias, states, delta_softplus, chunk_size,
                              n_splits, height, launch=False))


_FORWARD_INPUTS = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')


def _save(ctx, inputs: tuple, states: torch.Tensor) -> None:
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk_size, n_splits, height = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states)
    ctx.options = (delta_softplus, return_last_state, chunk_size, n_splits, height)


def _setup_context(ctx, inputs, output):
    _save(ctx, inputs, output[2])


def _backward(ctx, dy, dlast, _dstates):
    """The inputs' gradients from the saved tensors, through the backward custom op."""
    u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
    delta_softplus, return_last_state, chunk_size, n_splits, height = ctx.options
    if dy is None:
        dy = torch.zeros_like(u)
    if not return_last_state or dlast is None:
        dlast = None
    grads = selective_scan_bwd(dy, dlast, u, delta, A, B, C, D, z, delta_bias, states, delta_softplus, chunk_size,
                               n_splits, height)
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    return (*(None if t is None else g for t, g in zip(inputs, grads)), None, None, None, None, None)


selective_scan_fwd.register_autograd(_backward, setup_context=_setup_context)


class _EagerScan(torch.autograd.Function):
    """The same forward and backward as the custom ops, for eager calls: it skips the custom-op dispatch, which
    costs more host time than the kernels themselves at small sizes. `torch.compile` and `torch.export` see the
    custom ops instead (`selective_scan_triton` picks).

    Host time: gradients are not materialised (an unused y gets its zeros here; the last state, an empty tensor
    unless asked for and mostly unused, none), and the gradients are views of the backward's reductions. (Returning
    the last state only when asked for measured no faster.)"""

    @staticmethod
    def forward(ctx, *inputs):
        y, last, states = scan_forward(*inputs)
        _save(ctx, inputs, states)
        ctx.set_materialize_grads(False)
        return y, last

    @staticmethod
    def backward(ctx, dy, dlast):
        u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
        delta_softplus, _, chunk_size, n_splits, height = ctx.options
        if dy is None:
            dy = torch.zeros_like(u)
        grads = scan_backward(dy, dlast, u, delta, A, B, C, D, z, delta_bias, states, delta_softplus, chunk_size,
                              n_splits, height, separate=False)
        return (*grads, None, None, None, None, None)


def _traced(tensors) -> bool:
    """Whether this call is being traced (torch.compile, torch.export, fake or functional tensors)."""
    if torch.compiler.is_compiling():
        return True
    for t in tensors:
        if type(t) not in _UNTRACED:
            return True
    return False


_UNTRACED = (torch.Tensor, torch.nn.Parameter, type(None))


def _check_dtypes(tensors: tuple) -> None:
    """`tensors`, in the order of `_FORWARD_INPUTS` (None where absent), in the dtypes the kernels take."""
    for name, t in zip(_FORWARD_INPUTS, tensors):
        if t is not None and t.dtype not in TRITON_DTYPES:
            raise TypeError(f"selective_scan: backend 'triton' computes in float32 and takes float16, bfloat16 or "
                            f"float32 inputs; {name} is {t.dtype} (use backend='torch' for float64)")


def _apply(inputs: tuple) -> Tuple[torch.Tensor, torch.Tensor]:
    """(y, last state) through the custom op when traced, else through `_EagerScan`."""
    if _traced(inputs[:8]):
        y, last, _ = selective_scan_fwd(*inputs)
        return y, last
    return _EagerScan.apply(*inputs)


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False, chunk_size: Optional[int] = None, n_splits: Optional[int] = None):
    """`interface.selective_scan` on the Triton kernels; `chunk_size` (a power of two) and `n_splits` override the
    launch heuristics. Inputs must be float16, bfloat16 or float32 and on a CUDA device (or on the CPU under
    ``TRITON_INTERPRET=1``)."""
    _check_dtypes((u, delta, A, B, C, D, z, delta_bias))
    _check_runnable(u)
    y, last = _apply((u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), bool(return_last_state), chunk_size,
                      n_splits, 0))
    return (y, last) if return_last_state else y


def cross_selective_scan_triton(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, *, height: int,
                                width: int, chunk_size: Optional[int] = None, n_splits: Optional[int] = None):
    """The fused four-direction scan of `mmmv.ops.cross_selective_scan` (which checks the shapes): u (batch, Di, L),
    delta (batch, 4, Di, L), A (4*Di, N), B and C (batch, 4, N, L), D and delta_bias (4*Di,), all in raster order
    of an H x W map -> (batch, Di, L) in u's dtype, the four directions' outputs summed. Each direction's tokens are
    addressed in place (no permuted copies); the merge sums in float32."""
    _check_dtypes((u, delta, A, B, C, D, None, delta_bias))
    _check_runnable(u)
    if height * width != u.shape[2]:
        raise ValueError(f'cross_selective_scan: height * width = {height * width} does not match L = {u.shape[2]}')
    y, _ = _apply((u, delta, A, B, C, D, None, delta_bias, bool(delta_softplus), False, chunk_size, n_splits,
                   int(height)))
    return y
