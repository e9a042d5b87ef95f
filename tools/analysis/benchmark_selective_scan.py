"""Benchmark the selective scan backends against mamba_ssm, and the torch backend against a Python loop.

GPU tables (three per dtype): the seven cases of ANCHORS.md section 3, forward and forward + backward, as median
ms per call from `triton.testing.do_bench` (CUDA events when triton is missing; host launch overhead included), as
GPU kernel time per call from torch.profiler (host overhead excluded, as when the GPU has queued work) and as host
time per call (calls launched without synchronising), for `selective_scan(..., backend='triton')`,
`selective_scan(..., backend='torch')` and mamba_ssm's `selective_scan_fn` (when
`mamba_ssm.ops.selective_scan_interface` imports); a backend that raises shows 'n/a'. Then the ratios
triton / mamba_ssm and triton / HBM floor, the floor being the bytes that must move at --bandwidth (or at the
bandwidth of a large device-to-device copy, --measure-bandwidth): u, delta, B, C read and y written forward; the
backward reads them again with dy and writes du, ddelta, dB, dC. Inputs follow ANCHORS.md: u, delta, B, C normal
(delta scaled 0.5), A = -(0.5 + uniform), D and delta_bias normal, softplus on, z off, B and C shared; each timed
call takes the next of --sets input sets, so that the L2 cache does not flatter the small cases. The kernel times
are taken after every wall and host time: torch.profiler leaves CUPTI attached (pytorch/pytorch#144455), which
slows every later launch.

Loop section (--loop, --loop-only): the torch backend against the usual PyTorch reference, a float32 Python loop
over tokens vectorised over batch, channels and states (mamba_ssm's `selective_scan_ref`, written with `unbind`
so that its backward is linear in L), forward + backward at L = 4096, on --device (CPU or GPU).

    python tools/analysis/benchmark_selective_scan.py                           # GPU tables, one GPU
    python tools/analysis/benchmark_selective_scan.py --loop --out scan.json    # ... and the loop section
    python tools/analysis/benchmark_selective_scan.py --cases vss-s1,mv-t-s3 --dtypes bfloat16 --modes fwd
    python tools/analysis/benchmark_selective_scan.py --backends triton,mamba_ssm   # without the (slow) torch backend
    python tools/analysis/benchmark_selective_scan.py --backends triton,mamba_ssm --layout mixer  # delta as passed
    python tools/analysis/benchmark_selective_scan.py --device cpu --loop-only  # CPU: loop section only
"""
import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, NamedTuple, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..')))

from mmmv.ops import selective_scan  # noqa: E402
from mmmv.version import __version__ as mmmv_version  # noqa: E402

try:
    import triton
    import triton.testing
except ImportError:  # the GPU tables then time with CUDA events
    triton = None


class Case(NamedTuple):
    name: str
    batch: int
    dim: int
    length: int
    state: int


# ANCHORS.md section 3, in its order: key -> case.
GPU_CASES = {
    'mv-t-s3': Case('MambaVision-T stage 3 @224', 128, 160, 196, 8),
    'mv-t-s4': Case('MambaVision-T stage 4 @224', 128, 320, 49, 8),
    'mv-t-s3-det': Case('MambaVision-T stage 3, 1344x800 input', 2, 160, 4200, 8),
    'mv-t-s4-det': Case('MambaVision-T stage 4, 1344x800 input', 2, 320, 1050, 8),
    'mv-b-s3': Case('MambaVision-B stage 3 @224', 128, 256, 196, 8),
    'vss-s1': Case('VSS stage 1 @256, 4 directions in batch', 32, 192, 4096, 16),
    'vss-s3': Case('VSS stage 3 @256, 4 directions in batch', 32, 768, 256, 16),
}
# Realistic vision shapes at L = 4096 for the loop section: a detection input, and VSS stage 1 of one image
# (64 x 64 tokens, 192 channels) with one, two or all four scan directions (the four as channels).
LOOP_CASES = [
    Case('MambaVision-T stage 3, detection input', 2, 160, 4096, 8),
    Case('VSS stage 1 @256, one direction', 1, 192, 4096, 16),
    Case('VSS stage 1 @256, two directions in batch', 2, 192, 4096, 16),
    Case('VSS stage 1 @256, four directions as channels', 1, 768, 4096, 16),
]
MODES = ('fwd', 'fwd+bwd')
BACKENDS = ('triton', 'torch', 'mamba_ssm')
DTYPES = ('float32', 'bfloat16')
GRAD_INPUTS = ('u', 'delta', 'A', 'B', 'C', 'D', 'delta_bias')


# ----------------------------------------------------------------------------------------------------
# Inputs and the scans being timed.
# ----------------------------------------------------------------------------------------------------
def make_inputs(case: Case, dtype: torch.dtype, device, requires_grad: bool, seed: int = 0,
                layout: str = 'contiguous') -> Dict[str, torch.Tensor]:
    """ANCHORS.md inputs: u, delta, B, C in `dtype`; A, D, delta_bias float32; B and C shared (batch, N, L).

    ``layout='mixer'``: the same values laid out as MambaVision's mixer passes them (`mixer_layout`)."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape, scale=1.0, dtype=dtype):
        return (scale * torch.randn(*shape, generator=gen, device=device)).to(dtype)

    inputs = dict(
        u=randn(case.batch, case.dim, case.length),
        delta=randn(case.batch, case.dim, case.length, scale=0.5),
        A=-0.5 - torch.rand(case.dim, case.state, generator=gen, device=device),
        B=randn(case.batch, case.state, case.length),
        C=randn(case.batch, case.state, case.length),
        D=randn(case.dim, dtype=torch.float32),
        delta_bias=randn(case.dim, dtype=torch.float32),
    )
    if layout == 'mixer':
        inputs = mixer_layout(case, inputs)
    return {name: t.requires_grad_(requires_grad) for name, t in inputs.items()}


def mixer_layout(case: Case, inputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The inputs of a MambaVision case with delta laid out as the MambaVision mixer passes it (mmmv's and the
    official code's alike): a token-major view, (batch, L, D) in memory transposed, as ``dt_proj``'s output is;
    u, B and C stay contiguous (the mixers copy B and C). mamba_ssm's ``selective_scan_fn`` copies such a delta, mmmv
    reads it in place. VSS cases are left as they are: SS2D passes contiguous tensors."""
    if not case.name.startswith('MambaVision'):
        return inputs
    return dict(inputs, delta=inputs['delta'].transpose(1, 2).contiguous().transpose(1, 2))


def per_token_loop(u, delta, A, B, C, D, delta_bias, delta_softplus=True):
    """The scan as a float32 Python loop over tokens (B, C shared): the PyTorch reference being compared to."""
    dt = delta.float() + delta_bias.float()[:, None]
    dt = F.softplus(dt) if delta_softplus else dt
    decay = torch.exp(torch.einsum('bdl,dn->bdln', dt, A.float()))
    drive = torch.einsum('bdl,bnl,bdl->bdln', dt, B.float(), u.float())
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float32)
    ys = []
    for decay_t, drive_t, C_t in zip(decay.unbind(2), drive.unbind(2), C.float().unbind(2)):
        h = decay_t * h + drive_t
        ys.append(torch.einsum('bdn,bn->bd', h, C_t))
    y = torch.stack(ys, dim=2) + D.float()[:, None] * u.float()
    return y.to(u.dtype)


def mamba_ssm_scan() -> Optional[Callable]:
    """mamba_ssm's `selective_scan_fn`, or None (the reason is printed) when it does not import."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as error:  # noqa: BLE001 - an ImportError, or the CUDA extension failing to load
        print(f'mamba_ssm: not timed ({type(error).__name__}: {error})')
        return None
    return selective_scan_fn


def mmmv_scan(backend: str) -> Callable:
    return lambda **inputs: selective_scan(**inputs, backend=backend)


def make_call(scan: Callable, inputs: Dict[str, torch.Tensor], mode: str) -> Callable[[], object]:
    """A call of `scan` on `inputs` (softplus on, z off): forward only, or forward and backward (through
    torch.autograd.grad, so that nothing accumulates into .grad)."""
    if mode == 'fwd':
        def forward():
            with torch.no_grad():
                return scan(**inputs, delta_softplus=True)
        return forward
    dy = torch.randn_like(inputs['u'])
    leaves = [inputs[name] for name in GRAD_INPUTS]

    def forward_backward():
        return torch.autograd.grad(scan(**inputs, delta_softplus=True), leaves, dy)
    return forward_backward


def rotating(calls: List[Callable]) -> Callable:
    """One call after another, in turn: each timed run reads a different input set."""
    turn = itertools.cycle(calls)
    return lambda: next(turn)()


# ----------------------------------------------------------------------------------------------------
# Timing.
# ----------------------------------------------------------------------------------------------------
def gpu_ms(fn: Callable, runs: int = 50) -> float:
    """Median ms of fn on the GPU: triton.testing.do_bench, else CUDA events."""
    if triton is not None:
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode='median')
    for _ in range(5):
        fn()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measured_bandwidth(device) -> float:
    """Bytes per second of a 1 GiB device-to-device copy (read + write)."""
    src = torch.empty(1 << 28, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = gpu_ms(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def floor_bytes(case: Case, element_size: int, mode: str) -> int:
    """Bytes that must move: u, delta, B, C read and y written; backward reads u, delta, B, C, dy again and
    writes du, ddelta, dB, dC (ANCHORS.md's HBM floor)."""
    sequence = case.batch * case.dim * case.length * element_size  # u, delta, y, dy, du, ddelta
    states = case.batch * case.state * case.length * element_size  # B, C, dB, dC (shared)
    forward = 3 * sequence + 2 * states
    return forward if mode == 'fwd' else forward + 5 * sequence + 4 * states


def wall_ms(fn: Callable, device) -> float:
    """ms of one call of fn, with the device synchronised."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return 1e3 * (time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------------
# Sections.
# ----------------------------------------------------------------------------------------------------
def kernel_ms(fn: Callable, calls: int = 10) -> float:
    """ms of GPU work per call of fn: the device time of every kernel, copy and fill it launches (torch.profiler),
    without the host time between launches. Host overhead is hidden when the GPU has queued work, as in
    training; `gpu_ms` shows it when it is not."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    device_us = sum(event.self_device_time_total for event in prof.key_averages()
                    if event.device_type == torch.autograd.DeviceType.CUDA)
    return device_us / calls / 1e3


# calls per host-time sample: few enough that their launches never fill the GPU's queue (about a thousand)
HOST_CALLS = 20


def host_ms(fn: Callable, calls: int = HOST_CALLS, samples: int = 5) -> float:
    """Median ms of host time per call of fn: `calls` calls launched back to back without synchronising, so the
    host never waits for the GPU (its queue is not full). This is what an eager step waits on between kernels when
    they are shorter than their launches (MambaVision's small stages)."""
    def synchronize():
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    for _ in range(3):
        fn()
    synchronize()
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append(1e3 * (time.perf_counter() - start) / calls)
        synchronize()
    return statistics.median(times)


TIMINGS = {
    'ms': ('median ms per call (triton.testing.do_bench: host launch overhead included)', gpu_ms),
    'kernel_ms': ('GPU kernel time per call, ms (torch.profiler: host overhead excluded)', kernel_ms),
    'host_ms': ('host time per call, ms (calls launched without synchronising; not compared with the HBM floor)',
                host_ms),
}


def gpu_tables(args, device) -> List[dict]:
    """Time every backend, case, dtype and mode (per call, and GPU kernel time); print markdown tables."""
    bandwidth = measured_bandwidth(device) if args.measure_bandwidth else args.bandwidth
    print(f'HBM floor at {bandwidth / 1e12:.2f} TB/s ({"measured" if args.measure_bandwidth else "given"}); '
          f'input layout: {args.layout}\n')
    makers = {'triton': lambda: mmmv_scan('triton'), 'torch': lambda: mmmv_scan('torch'), 'mamba_ssm': mamba_ssm_scan}
    backends = {name: makers[name]() for name in args.backends}
    table = {(dtype_name, key): dict(case=key, shape=list(GPU_CASES[key][1:]), dtype=dtype_name, floor_ms={},
                                     **{t: {} for t in TIMINGS})
             for dtype_name in args.dtypes for key in args.cases}
    errors = {dtype_name: {} for dtype_name in args.dtypes}
    # torch.profiler leaves CUPTI attached (pytorch/pytorch#144455), which adds host time to every later launch:
    # every wall and host time is taken first, the profiled kernel times after them
    for timings in ([t for t in args.timings if t != 'kernel_ms'], [t for t in args.timings if t == 'kernel_ms']):
        if not timings:
            continue
        for (dtype_name, key), row in table.items():
            dtype, case = getattr(torch, dtype_name), GPU_CASES[key]
            for mode in args.modes:
                sets = [make_inputs(case, dtype, device, mode != 'fwd', seed, args.layout) for seed in range(args.sets)]
                row['floor_ms'][mode] = 1e3 * floor_bytes(case, sets[0]['u'].element_size(), mode) / bandwidth
                for backend, scan in backends.items():
                    for timing in timings:
                        ms = None
                        if scan is not None:
                            try:
                                ms = TIMINGS[timing][1](rotating([make_call(scan, inputs, mode) for inputs in sets]))
                            except Exception as error:  # noqa: BLE001 - reported under the table as 'n/a'
                                errors[dtype_name].setdefault(backend, f'{type(error).__name__}: {error}')
                        row[timing][f'{backend} {mode}'] = ms
                del sets
                torch.cuda.empty_cache()
            print(f'  timed {key} {dtype_name} ({", ".join(timings)})', file=sys.stderr, flush=True)
    rows = []
    for dtype_name in args.dtypes:
        dtype_rows = [table[dtype_name, key] for key in args.cases]
        for timing in args.timings:
            header = ['case', '(batch, D, L, N)']
            header += [f'{backend} {mode}' for mode in args.modes for backend in backends]
            header += [f'triton/mamba_ssm {mode}' for mode in args.modes]
            if timing != 'host_ms':
                header += [f'triton/floor {mode}' for mode in args.modes]
            print(f'### {dtype_name}, {TIMINGS[timing][0]}\n')
            print('| ' + ' | '.join(header) + ' |')
            print('|' + '---|' * len(header))
            for row in dtype_rows:
                print('| ' + ' | '.join(_gpu_cells(row, row[timing], backends, args.modes, timing != 'host_ms')) + ' |')
            print()
        for backend, error in errors[dtype_name].items():
            print(f'{backend} n/a: {error.splitlines()[0][:300]}\n')
        rows += dtype_rows
    return rows


def _gpu_cells(row: dict, ms: dict, backends, modes, floor: bool = True) -> List[str]:
    def cell(value, digits=3, suffix=''):
        return 'n/a' if value is None else f'{value:.{digits}f}{suffix}'

    def ratio(numerator, denominator):
        return None if numerator is None or denominator is None else numerator / denominator

    cells = [GPU_CASES[row['case']].name, str(tuple(row['shape']))]
    cells += [cell(ms[f'{backend} {mode}']) for mode in modes for backend in backends]
    cells += [cell(ratio(ms.get(f'triton {mode}'), ms.get(f'mamba_ssm {mode}')), 2, 'x') for mode in modes]
    if floor:
        cells += [cell(ratio(ms.get(f'triton {mode}'), row['floor_ms'][mode]), 1, 'x') for mode in modes]
    return cells


def loop_section(args, device) -> List[dict]:
    """The torch backend against the per-token loop, forward + backward in float32, runs interleaved."""
    print(f'### torch backend vs a per-token Python loop, L = 4096, float32 forward + backward, {device}, '
          f'median of {args.loop_repeats} interleaved runs, ms\n')
    print('| case | (batch, D, L, N) | loop | torch backend | loop / torch |')
    print('|---|---|---|---|---|')
    scans = {'loop': per_token_loop, 'torch': mmmv_scan('torch')}
    rows = []
    for case in LOOP_CASES:
        inputs = make_inputs(case, torch.float32, device, requires_grad=True)
        calls = {name: make_call(scan, inputs, 'fwd+bwd') for name, scan in scans.items()}
        times = {name: [] for name in calls}
        for name, call in calls.items():  # warm-up
            call()
        for _ in range(args.loop_repeats):
            for name, call in calls.items():
                times[name].append(wall_ms(call, device))
        ms = {name: statistics.median(runs) for name, runs in times.items()}
        rows.append(dict(case=case.name, shape=list(case[1:]), ms=ms, runs=times, ratio=ms['loop'] / ms['torch']))
        print(f'| {case.name} | {tuple(case[1:])} | {ms["loop"]:.0f} | {ms["torch"]:.1f} | '
              f'{ms["loop"] / ms["torch"]:.1f}x |', flush=True)
    print()
    return rows


def environment(device) -> Dict[str, str]:
    def version(module: str) -> str:
        try:
            return __import__(module).__version__
        except Exception as error:  # noqa: BLE001 - reported as the version
            return f'not available ({type(error).__name__})'

    if device.type == 'cuda':
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open('/proc/cpuinfo', encoding='utf-8') as f:
                name = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
        except (OSError, StopIteration):
            pass
        name = f'{name}, {torch.get_num_threads()} threads'
    return dict(device=name, torch=torch.__version__, cuda=str(torch.version.cuda), triton=version('triton'),
                mamba_ssm=version('mamba_ssm'), mmmv=mmmv_version)


def names(valid) -> Callable[[str], List[str]]:
    """An argparse type: a comma-separated list of names from `valid`."""
    def parse(text):
        chosen = [name.strip() for name in text.split(',') if name.strip()]
        unknown = [name for name in chosen if name not in valid]
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(f'unknown {unknown}; choose from {", ".join(valid)}')
        return chosen
    return parse


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--cases', type=names(list(GPU_CASES)), default=list(GPU_CASES),
                        help=f'comma-separated subset of {",".join(GPU_CASES)}')
    parser.add_argument('--dtypes', type=names(DTYPES), default=list(DTYPES))
    parser.add_argument('--backends', type=names(BACKENDS), default=list(BACKENDS),
                        help='comma-separated; the torch backend (the CPU path) is slow on these sizes')
    parser.add_argument('--modes', type=names(MODES), default=list(MODES))
    parser.add_argument('--timings', type=names(list(TIMINGS)), default=list(TIMINGS),
                        help='ms: per call as a user sees it; kernel_ms: GPU work only; host_ms: host work only')
    parser.add_argument('--sets', type=int, default=3, help='input sets rotated through by the timed calls')
    parser.add_argument('--layout', choices=('contiguous', 'mixer'), default='contiguous',
                        help="contiguous inputs (ANCHORS), or delta of the MambaVision cases as the mixer passes it, a "
                             "token-major view (mamba_ssm copies it, mmmv reads it in place)")
    parser.add_argument('--bandwidth', type=float, default=3.0e12, help='HBM bytes per second for the floor')
    parser.add_argument('--measure-bandwidth', action='store_true', help='use a device-to-device copy instead')
    parser.add_argument('--loop', action='store_true', help='also compare with the per-token loop')
    parser.add_argument('--loop-only', action='store_true', help='only the loop comparison (runs on CPU)')
    parser.add_argument('--loop-repeats', type=int, default=3)
    parser.add_argument('--threads', type=int, help='CPU threads (torch.set_num_threads)')
    parser.add_argument('--out', help='write the results to this JSON file')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gpu_wanted = not args.loop_only
    if device.type == 'cuda' and not torch.cuda.is_available():
        print('error: --device cuda, but CUDA is not available here; use --device cpu --loop-only', file=sys.stderr)
        return 2
    if gpu_wanted and device.type != 'cuda':
        print(f'error: the backend tables need a CUDA GPU (device is {device}); '
              'for the CPU comparison with the per-token loop use --device cpu --loop-only', file=sys.stderr)
        return 2
    env = environment(device)
    print(', '.join(f'{key}: {value}' for key, value in env.items()) + '\n')
    results = dict(environment=env, layout=args.layout, gpu=[], loop=[])
    if gpu_wanted:
        results['gpu'] = gpu_tables(args, device)
    if args.loop or args.loop_only:
        results['loop'] = loop_section(args, device)
    if args.out:
        with open(args.out, 'w', encoding='utf-8') as f:
            json.dump(results, f, indent=1)
        print(f'results written to {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
