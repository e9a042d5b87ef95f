"""A CPU proxy of the host time of the Triton selective scan: `selective_scan_triton` forward, and forward +
backward through `_EagerScan`, with every Triton launch stubbed out and every torch op of the real path kept.

At MambaVision sizes an eager forward + backward on a GPU waits on the host (its kernels take 0.1-0.4 ms, its
Python and dispatch ~1 ms), so the host time is what to cut, and it can be measured without a GPU. Two stubs:

- ``--stub kernel`` (default): `triton_backend.launch_kernel` does nothing; `launch.py` is not run.
- ``--stub compiled``: the launches go through `launch.launch`'s shortcut (its key, its cache, the launcher's
  arguments) to stand-in compiled kernels whose launcher does nothing; this adds what `launch.py` costs on a GPU
  but not what the C launcher and the CUDA driver cost there.

`_check_runnable` (which wants CUDA or ``TRITON_INTERPRET``) is bypassed. The tensors are CPU tensors of the
case's D, L and N but of batch ``--batch`` (1 by default): the host path does not depend on the batch, but the CPU
really computes the backward's reductions of its partial buffers, which at the full batch (tens of MB) take ms
and would hide the host time (a meta tensor computes nothing, but its reductions run Python decompositions that cost
10x a CUDA one's dispatch). The launch configuration is the GPU's, for the case's full batch on a device of ``--sms``
multiprocessors (an H200's 132), so that the calls split their sequence (and launch the carry kernels, and allocate
their buffers) as they would there, and the backward is the one it would run: the warp-layout one (`gluon_kernels`)
for 16 states, else the Triton one (``MMMV_SCAN_BACKWARD=triton`` or ``warp`` forces one, as on the GPU).

Inputs as the MambaVision mixer passes them: u (batch, D, L) contiguous, delta a token-major view (transposed
(batch, L, D)), A (D, N), B and C (batch, N, L) contiguous, D and delta_bias, softplus on, z off; u, delta, B, C in
the dtype of the row (A, D, delta_bias float32, as under autocast). Each row prints the median us per call (after
a warm-up) of the forward under ``torch.no_grad``, and of the forward + backward (``torch.autograd.grad`` of all
seven inputs); the floor row does the same with a trivial ``torch.autograd.Function`` of the same inputs (it saves
them and returns two fresh outputs; its backward returns the saved inputs as their gradients).

    python tools/analysis/benchmark_scan_host.py
    python tools/analysis/benchmark_scan_host.py --stub compiled --calls 1000
    python tools/analysis/benchmark_scan_host.py --profile --cases 128x320x196 --dtypes bfloat16
"""
import argparse
import cProfile
import gc
import os
import pstats
import statistics
import sys
import time
import types
from typing import Callable, Dict, List, Tuple

import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..')))

from mmmv.ops.selective_scan import launch as fast  # noqa: E402
from mmmv.ops.selective_scan import triton_backend  # noqa: E402

# (batch, D, L) of the brief's MambaVision-sized calls (N from --state)
CASES = {'128x320x196': (128, 320, 196), '128x640x49': (128, 640, 49), '32x384x4096': (32, 384, 4096)}
DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16}
GRAD_INPUTS = ('u', 'delta', 'A', 'B', 'C', 'D', 'delta_bias')
SCAN_KERNELS = ('_fwd_kernel', '_fwd_carry_kernel', '_bwd_kernel', '_bwd_carry_kernel')


def make_inputs(batch: int, dim: int, length: int, state: int, dtype: torch.dtype) -> Dict[str, torch.Tensor]:
    """The mixer's inputs (see the module docstring), all requiring gradients."""
    gen = torch.Generator().manual_seed(0)

    def tensor(*size, dtype=dtype):
        return torch.randn(*size, generator=gen).to(dtype)

    inputs = dict(u=tensor(batch, dim, length), delta=tensor(batch, length, dim).transpose(1, 2),
                  A=-tensor(dim, state, dtype=torch.float32).abs(), B=tensor(batch, state, length),
                  C=tensor(batch, state, length), D=tensor(dim, dtype=torch.float32),
                  delta_bias=tensor(dim, dtype=torch.float32))
    return {name: t.requires_grad_() for name, t in inputs.items()}


class _Floor(torch.autograd.Function):
    """The least a scan-shaped autograd.Function costs: it saves its inputs, returns two fresh outputs, and its
    backward returns the saved inputs as their own gradients (no allocation, no op)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, *options):
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        return torch.empty_like(u), u.new_empty(0)

    @staticmethod
    def backward(ctx, dy, dlast):
        return (*ctx.saved_tensors, *(None, ) * 5)


def floor_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
    y, _ = _Floor.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), bool(return_last_state), None,
                        None, 0)
    return y


class _StandInCompiled:
    """A compiled kernel whose launcher does nothing (`launch.launch` calls these attributes)."""
    function, packed_metadata = 'function', 'packed_metadata'

    def launch_metadata(self, grid, stream, *args):
        return None

    def run(self, *args):
        pass


class _StandInKernel:
    """A JIT kernel with the real one's parameters whose launch compiles to `_StandInCompiled`."""

    def __init__(self, kernel):
        self.params = [types.SimpleNamespace(name=p.name, default=p.default) for p in kernel.params]

    def __getitem__(self, grid):
        return lambda *args, **constexprs: _StandInCompiled()


_launch_config = triton_backend.launch_config
_warp_backward_k = triton_backend._warp_backward_k


def emulate_gpu(batch: int, multiprocessors: int) -> None:
    """Make every later launch configuration, and the choice of the backward kernel, those of a GPU of
    `multiprocessors` for `batch` (the case's full batch); the configurations kept so far are forgotten."""
    triton_backend.multiprocessors = lambda device: multiprocessors
    gpu = torch.device('cuda', 0)

    def launch_config(_batch, dim, length, state, group_channels, device, *options):
        return _launch_config(batch, dim, length, state, group_channels, gpu, *options)

    def warp_backward_k(u, *args):
        return _warp_backward_k(types.SimpleNamespace(device=gpu, shape=(batch, *u.shape[1:])), *args)

    triton_backend.launch_config, triton_backend._warp_backward_k = launch_config, warp_backward_k
    triton_backend._CONFIGS.clear()


def stub_launches(stub: str) -> None:
    """Stub the Triton launches of `triton_backend` (for the rest of the process); see the module docstring."""
    triton_backend._check_runnable = lambda u: None
    if stub == 'kernel':
        triton_backend.launch_kernel = lambda kernel, grid, *args, **constexprs: None
        return
    import triton
    triton_backend.kernels = types.SimpleNamespace(
        **{name: _StandInKernel(getattr(triton_backend.kernels, name)) for name in SCAN_KERNELS})
    from mmmv.ops.selective_scan import gluon_kernels
    triton_backend._Warp.kernels = types.SimpleNamespace(
        _bwd_warp_kernel=_StandInKernel(gluon_kernels._bwd_warp_kernel))
    fast.clear_cache()
    fast._state.enabled, fast._state.jit_type, fast._state.knobs = True, _StandInKernel, triton.knobs
    fast._state.driver = types.SimpleNamespace(get_current_device=lambda: 0, get_current_stream=lambda device: 0)


def calls_of(scan: Callable, inputs: Dict[str, torch.Tensor]) -> Dict[str, Callable[[], object]]:
    """The timed calls: the forward under no_grad, and the forward + backward."""
    leaves = [inputs[name] for name in GRAD_INPUTS]
    dy = torch.empty_like(inputs['u'])

    def forward():
        with torch.no_grad():
            return scan(**inputs, delta_softplus=True)

    def forward_backward():
        return torch.autograd.grad(scan(**inputs, delta_softplus=True), leaves, dy)

    return {'fwd': forward, 'fwd+bwd': forward_backward}


def time_calls(fn: Callable[[], object], calls: int) -> List[float]:
    """Host seconds of each of `calls` calls of fn, with the garbage collector off."""
    times = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(calls):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    finally:
        gc.enable()
    return times


def profile(fn: Callable[[], object], calls: int, top: int = 25) -> None:
    """cProfile of `calls` calls of fn, the `top` functions by their own time."""
    fn()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    profiler.disable()
    pstats.Stats(profiler).sort_stats('tottime').print_stats(top)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--cases', default=','.join(CASES), help=f'comma-separated, of {", ".join(CASES)}')
    parser.add_argument('--dtypes', default=','.join(DTYPES), help='comma-separated, of float32, bfloat16')
    parser.add_argument('--state', type=int, default=16, help='N (default 16)')
    parser.add_argument('--batch', type=int, default=1, help="the tensors' batch (default 1; 0: the case's)")
    parser.add_argument('--sms', type=int, default=132, help='multiprocessors of the emulated GPU (default 132)')
    parser.add_argument('--stub', default='kernel', choices=('kernel', 'compiled'))
    parser.add_argument('--calls', type=int, default=300, help='timed calls per cell (default 300)')
    parser.add_argument('--rounds', type=int, default=10, help='the calls of a cell are timed in this many turns')
    parser.add_argument('--warmup', type=int, default=30)
    parser.add_argument('--profile', action='store_true', help='print a cProfile top-25 (tottime) per row instead')
    args = parser.parse_args(argv)
    args.cases, args.dtypes = args.cases.split(','), args.dtypes.split(',')
    return args


def main(argv=None) -> List[dict]:
    args = parse_args(argv)
    torch.set_num_threads(1)  # the host side of a GPU call runs on one thread
    # the partial buffers that the stubbed kernels would have written hold whatever memory held: summing denormals
    # costs the CPU 10-100x (a noise that changes with the allocations, not with the host code being measured)
    torch.set_flush_denormal(True)
    stub_launches(args.stub)
    print(f'host us per call, median of {args.calls} (CPU tensors of batch {args.batch or "as the case"}, '
          f'launch configuration of a {args.sms}-SM GPU, stub {args.stub}, N={args.state}, torch {torch.__version__})')
    print(f'| {"case":<12} | {"dtype":<8} | {"scan":<7} | {"fwd":>7} | {"fwd+bwd":>8} |')
    print(f'|{"-" * 14}|{"-" * 10}|{"-" * 9}|{"-" * 8}:|{"-" * 9}:|')
    rows = []
    for case in args.cases:
        for dtype in args.dtypes:
            batch, dim, length = CASES[case]
            emulate_gpu(batch, args.sms)
            inputs = make_inputs(args.batch or batch, dim, length, args.state, DTYPES[dtype])
            scans = {'triton': calls_of(triton_backend.selective_scan_triton, inputs),
                     'floor': calls_of(floor_scan, inputs)}
            if args.profile:
                for name, calls in scans.items():
                    print(f'\n## {case} {dtype} {name} fwd+bwd')
                    profile(calls['fwd+bwd'], args.calls)
                continue
            # the cells take turns, a round at a time, so that a slow spell of the machine spreads over all of them
            times = {(name, mode): [] for name, calls in scans.items() for mode in calls}
            for name, mode in times:
                time_calls(scans[name][mode], args.warmup)
            for _ in range(args.rounds):
                for (name, mode), cell in times.items():
                    cell += time_calls(scans[name][mode], max(1, args.calls // args.rounds))
            for name in scans:
                row = dict(case=case, dtype=dtype, scan=name,
                           **{mode: 1e6 * statistics.median(times[name, mode]) for mode in scans[name]})
                rows.append(row)
                print(f'| {case:<12} | {dtype:<8} | {name:<7} | {row["fwd"]:7.1f} | {row["fwd+bwd"]:8.1f} |',
                      flush=True)
    return rows


if __name__ == '__main__':
    main()
