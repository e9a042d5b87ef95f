"""Compiled MambaVision with one compile-time choice changed at a time, timed in interleaved rounds in one process.

A compiled MambaVision-T training step's calls spread from 37.7 to 54.6 ms in one run on an H200 (fourteenth session,
docs/benchmarks.md), and one graph timed twice in a process gave 48.0 and 33.4 ms medians: runs made one after the
other cannot tell a few percent apart. Here every variant is compiled first; then each round times every variant in
turn (``--steps`` calls after ``--warmup``), so that a drift of the host or the GPU lands in all of them alike. The
table gives each variant's median and minimum over all rounds, the spread of its round medians, and its ratio to the
first variant's median.

Variants (``--variants``, comma-separated; dynamo guards on the functions swapped in, so each is a graph of its own):

    eager              the model uncompiled
    compiled           ``torch.compile(model)`` as mmmv ships it: flash / memory-efficient / math attention in the
                       graph, the crop back from the windows by ``crop_to`` (a slice for sizes known while tracing, a
                       gather for symbolic ones; ``mmmv.models.backbone_base``)
    cudnn-attention    compiled, SDPA left to torch's choice (cuDNN's kernel at MambaVision's window shapes on H100 /
                       H200; wrong bf16 gradients in compiled graphs there, thirteenth session: for timing only)
    slice-crop         compiled, the crop always a slice (one graph per padding case with symbolic sizes; the
                       shipped crop slices static sizes too, so at a fixed size this equals ``compiled``)
    flash-attention, efficient-attention, math-attention
                       compiled, only that SDPA backend (math as the fallback where the kernel does not apply)
    reduce-overhead    compiled with ``mode='reduce-overhead'`` (CUDA graphs: the step's launches replayed without
                       the host; the compile switch takes it too, ``compile=dict(mode='reduce-overhead')``)
    max-autotune       compiled with ``mode='max-autotune-no-cudagraphs'`` (inductor tries kernel configurations)

    python tools/analysis/benchmark_compile_variants.py --arch T --variants eager,compiled,cudnn-attention --rounds 4
"""
import argparse
import os.path as osp
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import benchmark_official  # noqa: E402  (also puts the repository root on sys.path)

from mmmv.models import mambavision  # noqa: E402

SHIPPED = (mambavision.attention, mambavision.crop_to)


def only(backend: SDPBackend) -> Callable:
    def attention(q, k, v, dropout_p):
        with sdpa_kernel([backend, SDPBackend.MATH]):
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    return attention


def torch_choice(q, k, v, dropout_p):
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)


def slice_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return x[:, :, :height, :width]


# name -> (torch.compile's keyword arguments, None: eager; attention; crop_to)
VARIANTS: Dict[str, Tuple[Optional[dict], Callable, Callable]] = {
    'eager': (None, *SHIPPED),
    'compiled': ({}, *SHIPPED),
    'cudnn-attention': ({}, torch_choice, SHIPPED[1]),
    'slice-crop': ({}, SHIPPED[0], slice_crop),
    'flash-attention': ({}, only(SDPBackend.FLASH_ATTENTION), SHIPPED[1]),
    'efficient-attention': ({}, only(SDPBackend.EFFICIENT_ATTENTION), SHIPPED[1]),
    'math-attention': ({}, only(SDPBackend.MATH), SHIPPED[1]),
    'reduce-overhead': (dict(mode='reduce-overhead'), *SHIPPED),
    'max-autotune': (dict(mode='max-autotune-no-cudagraphs'), *SHIPPED),
}


def use(variant: str) -> None:
    _, mambavision.attention, mambavision.crop_to = VARIANTS[variant]


def run(model: torch.nn.Module, images: torch.Tensor, target: torch.Tensor, variants: List[str], args) -> List[dict]:
    """Compile (first calls of) every variant, then ``args.rounds`` interleaved rounds; one row per variant."""
    autocast = benchmark_official.AUTOCAST[args.dtype]
    # one compiled wrapper per set of compile arguments; dynamo keeps each variant's graphs apart by its guards
    wrappers = {}
    timed = {}
    for name in variants:
        kwargs = VARIANTS[name][0]
        if kwargs is None:
            timed[name] = model
        else:
            key = tuple(sorted(kwargs.items()))
            if key not in wrappers:
                wrappers[key] = torch.compile(model, backend=args.backend, **kwargs)
            timed[name] = wrappers[key]
    times = {name: [] for name in variants}
    round_medians = {name: [] for name in variants}
    optimizer_fn = lambda params: torch.optim.AdamW(params, lr=1e-4)  # noqa: E731
    first = argparse.Namespace(**{**vars(args), 'steps': 1, 'warmup': 1, 'gpu_busy': False})  # the compiling calls
    try:
        for name in variants:  # compiles, outside the timing
            use(name)
            start = time.perf_counter()
            benchmark_official.time_work(timed[name], args.work, images, target, F.cross_entropy, autocast,
                                         optimizer_fn, first)
            print(f'{name}: first calls {time.perf_counter() - start:.0f} s', flush=True)
        for _ in range(args.rounds):
            for name in variants:
                use(name)
                row = benchmark_official.time_work(timed[name], args.work, images, target, F.cross_entropy,
                                                   autocast, optimizer_fn, args)
                times[name] += row['times_ms']
                round_medians[name].append(row['median_ms'])
                model.zero_grad(set_to_none=True)
    finally:
        use('compiled')
    base = statistics.median(times[variants[0]])
    return [dict(variant=name, median_ms=statistics.median(times[name]), min_ms=min(times[name]),
                 round_medians=round_medians[name], ratio=statistics.median(times[name]) / base)
            for name in variants]


def print_table(rows: List[dict], first: str) -> None:
    print(f'| variant | median ms | min ms | round medians ms | x {first} |')
    print('|---|---|---|---|---|')
    for row in rows:
        rounds = ', '.join(f'{t:.1f}' for t in row['round_medians'])
        print(f"| {row['variant']} | {row['median_ms']:.1f} | {row['min_ms']:.1f} | {rounds} | {row['ratio']:.2f}x |")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--arch', default='T', help=f'one of {benchmark_official.MAMBAVISION_ARCHS}')
    parser.add_argument('--variants', default='eager,compiled,cudnn-attention,slice-crop',
                        help=f'comma-separated, from {list(VARIANTS)}; ratios are to the first')
    parser.add_argument('--work', default='train', choices=benchmark_official.WORKS)
    parser.add_argument('--dtype', default='bfloat16', choices=list(benchmark_official.AUTOCAST))
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--rounds', type=int, default=4)
    parser.add_argument('--steps', type=int, default=10, help='timed calls per variant and round')
    parser.add_argument('--warmup', type=int, default=3, help='untimed calls before them')
    parser.add_argument('--backend', default='inductor', help="torch.compile's backend ('aot_eager' for CPU checks)")
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = parser.parse_args(argv)
    args.variants = [v for v in args.variants.split(',') if v]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        parser.error(f'unknown variants {unknown}; choose from {list(VARIANTS)}')
    with_mode = [v for v in args.variants if (VARIANTS[v][0] or {}).get('mode')]
    if with_mode and args.backend != 'inductor':
        parser.error(f'variants {with_mode} set a compile mode, which only the inductor backend takes')
    if args.arch not in benchmark_official.MAMBAVISION_ARCHS:
        parser.error(f'unknown arch {args.arch!r}; choose from {benchmark_official.MAMBAVISION_ARCHS}')
    for name in ('rounds', 'steps', 'batch', 'size'):
        if getattr(args, name) < 1:
            parser.error(f'--{name} must be at least 1')
    args.no_gc, args.gpu_busy = True, False  # time_work's other settings: no collections inside timed calls
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    model = benchmark_official.mmmv_mambavision(args.arch, drop_path_rate=0.2).to(device)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    target = torch.randint(0, 1000, (args.batch,), device=device)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'
    print(f'device {name}, torch {torch.__version__}; MambaVision-{args.arch}, {args.work}, batch {args.batch}, '
          f'{args.size}, {args.dtype}; {args.rounds} rounds of {args.steps} calls after {args.warmup}')
    print_table(run(model, images, target, args.variants, args), args.variants[0])
    return 0


if __name__ == '__main__':
    sys.exit(main())
