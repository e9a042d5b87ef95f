"""The scan's backward kernels side by side on one GPU: the Triton backward, the warp-layout one (Gluon) and
variants of it, in one process; their gradients against the Triton backward's, their times.

Each row runs the same forward + backward through `selective_scan` (or `cross_selective_scan` for the fused 2D
cases) with one backward forced. Columns: fwd+bwd ms (whole calls, median; `benchmark_selective_scan.gpu_ms`), the
backward kernel's own GPU time (torch.profiler, every kernel whose name holds 'bwd' but not 'carry'), and the
largest error of any gradient relative to that gradient's largest value, against the Triton backward's gradients of
the same call.
(After the first profile CUPTI stays attached and adds host time to later calls: compare the fwd+bwd column only
where the GPU work dominates, as at VSS sizes; the kernel column is unaffected.)

Variants (``--variants``, comma-separated, run in that order after the Triton backward):

    triton            the Triton backward (`triton_kernels._bwd_kernel`), the reference of the error column
    warp              the warp-layout backward as mmmv launches it (`gluon_kernels._bwd_warp_kernel`)
    warp:k=2          ... with 2 (or 1, 4) steps per lane instead of the size's choice
    warp:regs=128     ... with another register cap than `triton_backend.WARP_MAX_REGISTERS`
    PATH.py           a modified copy of mmmv/ops/selective_scan/gluon_kernels.py (same kernel name and
                      parameters), launched as the warp one; named by its file. ``PATH.py:k=2`` also works.

Parts of a kernel can be priced by leaving them out in a copy (the errors column then shows what is missing):
that is how the seventh session found 55% of the warp backward's time in its cross-warp dB / dC sums.

    python tools/analysis/benchmark_scan_backward.py
    python tools/analysis/benchmark_scan_backward.py --cases vss-s1,cross-s1 --variants warp,warp:k=2,my_copy.py
"""
import argparse
import importlib.util
import os
import os.path as osp
import sys
from typing import Callable, Dict, List, NamedTuple, Optional

import torch

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..', '..')))
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from benchmark_selective_scan import gpu_ms, names  # noqa: E402


class Case(NamedTuple):
    name: str
    batch: int
    dim: int  # channels of one direction for the fused 2D cases
    length: int
    state: int
    height: int  # > 0: a fused 2D scan of a square map of this height (and `batch` images)


CASES = {
    'vss-s1': Case('VSS stage 1 @256, 4 directions in batch', 32, 192, 4096, 16, 0),
    'vss-s3': Case('VSS stage 3 @256, 4 directions in batch', 32, 768, 256, 16, 0),
    'cross-s1': Case('VM-UNet fused 2D scan, stage 1 (8 images)', 8, 192, 4096, 16, 64),
    'cross-s3': Case('VM-UNet fused 2D scan, stage 3 (8 images)', 8, 768, 256, 16, 16),
    'mv-t-s3': Case('MambaVision-T stage 3 @224', 128, 160, 196, 8, 0),
    'mv-b-s3': Case('MambaVision-B stage 3 @224', 128, 256, 196, 8, 0),
}
DTYPES = ('float32', 'bfloat16')


class Variant(NamedTuple):
    name: str
    module: Optional[object]  # the kernels' module (None: the Triton backward)
    steps_per_lane: int  # 0: the size's choice
    registers: int  # 0: triton_backend.WARP_MAX_REGISTERS


def parse_variant(text: str) -> Variant:
    """'triton', 'warp' or 'PATH.py', each optionally followed by ':k=K' and / or ':regs=R'."""
    base, *options = text.split(':')
    settings = {}
    for option in options:
        key, _, value = option.partition('=')
        if key not in ('k', 'regs') or not value.isdigit():
            raise argparse.ArgumentTypeError(f"variant option {option!r}: use k=1|2|4 or regs=N")
        settings[key] = int(value)
    if settings.get('k', 4) not in (1, 2, 4):
        raise argparse.ArgumentTypeError(f'k must be 1, 2 or 4, got {settings["k"]}')
    if base == 'triton':
        if settings:
            raise argparse.ArgumentTypeError('the Triton backward takes no options')
        return Variant(text, None, 0, 0)
    if base == 'warp':
        module = 'package'
    elif base.endswith('.py'):
        if not osp.isfile(base):
            raise argparse.ArgumentTypeError(f'no such kernel module: {base}')
        module = base
    else:
        raise argparse.ArgumentTypeError(f"unknown variant {base!r}: use 'triton', 'warp' or a path to a .py copy "
                                         'of gluon_kernels.py')
    return Variant(text, module, settings.get('k', 0), settings.get('regs', 0))


def load_module(path: str):
    name = '_variant_' + osp.splitext(osp.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def use(variant: Variant, backend, default_k: Callable, default_registers: int) -> None:
    """Make `backend` (triton_backend) run `variant`'s backward on the next calls."""
    backend._CONFIGS.clear()  # the plans hold the backward's choice
    if variant.module is None:
        os.environ['MMMV_SCAN_BACKWARD'] = 'triton'
        return
    os.environ['MMMV_SCAN_BACKWARD'] = 'warp'
    if variant.module == 'package':
        from mmmv.ops.selective_scan import gluon_kernels
        backend._Warp.kernels = gluon_kernels
    else:
        backend._Warp.kernels = load_module(variant.module)
    backend._Warp.failed = None
    backend.WARP_MAX_REGISTERS = variant.registers or default_registers
    k = variant.steps_per_lane
    backend._warp_backward_k = (lambda *a, **kw: k if default_k(*a, **kw) else 0) if k else default_k


def make_inputs(case: Case, dtype: torch.dtype, seed: int = 0) -> Dict[str, torch.Tensor]:
    """As `benchmark_selective_scan.make_inputs` (ANCHORS.md), with the fused 2D layout for `height` > 0."""
    gen = torch.Generator(device='cuda').manual_seed(seed)
    directions = 4 if case.height else 1

    def randn(*shape, scale=1.0, dtype=dtype):
        return (scale * torch.randn(*shape, generator=gen, device='cuda')).to(dtype).requires_grad_()

    per = (case.batch, directions) if case.height else (case.batch, )
    return dict(u=randn(case.batch, case.dim, case.length), delta=randn(*per, case.dim, case.length, scale=0.5),
                A=(-0.5 - torch.rand(directions * case.dim, case.state, generator=gen, device='cuda')).requires_grad_(),
                B=randn(*per, case.state, case.length), C=randn(*per, case.state, case.length),
                D=randn(directions * case.dim, dtype=torch.float32),
                delta_bias=randn(directions * case.dim, dtype=torch.float32))


def scan_call(case: Case, inputs: Dict[str, torch.Tensor]) -> Callable[[], tuple]:
    from mmmv.ops import cross_selective_scan, selective_scan
    dy = torch.randn_like(inputs['u'])
    leaves = list(inputs.values())
    if case.height:
        def run():
            return cross_selective_scan(**inputs, height=case.height, width=case.length // case.height,
                                        backend='triton', fused=True)
    else:
        def run():
            return selective_scan(**inputs, delta_softplus=True, backend='triton')
    return lambda: torch.autograd.grad(run(), leaves, dy)


def backward_kernel_ms(call: Callable, calls: int = 5) -> float:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            call()
        torch.cuda.synchronize()
    return sum(event.self_device_time_total for event in prof.key_averages()
               if 'bwd' in event.key and 'carry' not in event.key) / calls / 1e3


def relative_error(grads, reference) -> float:
    return max(((g.float() - r.float()).abs().max() / r.float().abs().max().clamp_min(1e-30)).item()
               for g, r in zip(grads, reference))


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    def variants(text):
        return [parse_variant(name.strip()) for name in text.split(',') if name.strip()]

    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--cases', type=names(list(CASES)), default=list(CASES))
    parser.add_argument('--dtypes', type=names(DTYPES), default=['float32'])
    parser.add_argument('--variants', type=variants, default=variants('warp'),
                        help="comma-separated: triton (always run first), warp[:k=K][:regs=R], PATH.py[:...]")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print('benchmark_scan_backward: needs a CUDA GPU (the warp-layout backward is Gluon, compiled for CUDA only)',
              file=sys.stderr)
        return 2
    from mmmv.ops.selective_scan import triton_backend as backend
    default_k, default_registers = backend._warp_backward_k, backend.WARP_MAX_REGISTERS
    saved = os.environ.get('MMMV_SCAN_BACKWARD'), backend._Warp.kernels, backend._Warp.failed
    order = [parse_variant('triton')] + [v for v in args.variants if v.name != 'triton']
    print(f'device {torch.cuda.get_device_name()}, torch {torch.__version__}\n')
    print('| case | dtype | variant | fwd+bwd ms | backward kernel ms | max rel. error vs triton |')
    print('|---|---|---|---|---|---|')
    try:
        for key in args.cases:
            case = CASES[key]
            for dtype_name in args.dtypes:
                call = scan_call(case, make_inputs(case, getattr(torch, dtype_name)))
                reference = None
                for variant in order:
                    use(variant, backend, default_k, default_registers)
                    try:
                        grads = call()
                    except Exception as error:  # noqa: BLE001 - a broken variant is a row, not the end of the run
                        print(f'| {key} | {dtype_name} | {variant.name} | failed: {type(error).__name__}: '
                              f'{str(error)[:200]} | | |', flush=True)
                        continue
                    reference = grads if variant.module is None else reference
                    error = 'n/a' if reference is None else f'{relative_error(grads, reference):.1e}'
                    print(f'| {key} | {dtype_name} | {variant.name} | {gpu_ms(call):.3f} | '
                          f'{backward_kernel_ms(call):.3f} | {error} |', flush=True)
                del call
                torch.cuda.empty_cache()
    finally:
        backend._warp_backward_k, backend.WARP_MAX_REGISTERS = default_k, default_registers
        backend._Warp.kernels, backend._Warp.failed = saved[1:]
        backend._CONFIGS.clear()
        if saved[0] is None:
            os.environ.pop('MMMV_SCAN_BACKWARD', None)
        else:
            os.environ['MMMV_SCAN_BACKWARD'] = saved[0]
    return 0


if __name__ == '__main__':
    sys.exit(main())
