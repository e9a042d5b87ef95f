"""Training-step speed of an mmmv backbone on one GPU with each selective-scan backend, side by side.

Times forward + backward of the backbone alone (the loss is the mean square of its outputs) under autocast, the
median of --steps steps after --warmup, with the GPU synchronised around each step, and reports the peak memory.
The scan backend is switched with `mmmv.ops.scan_backend`, so everything else is the same model and input.

    python tools/analysis/benchmark_backbone.py                          # MambaVision-T, batch 64, 224, bf16
    python tools/analysis/benchmark_backbone.py --arch B --batch 32 --dtype float16 --backends triton
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..')))

from mmmv.models.mambavision import MambaVision  # noqa: E402
from mmmv.ops import scan_backend  # noqa: E402

AUTOCAST = {'bfloat16': torch.bfloat16, 'float16': torch.float16, 'float32': None}


def step_ms(model, images, dtype, steps: int, warmup: int) -> list:
    """Wall ms of each timed training step (forward, backward), GPU synchronised."""
    times = []
    for index in range(warmup + steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast('cuda', dtype=dtype, enabled=dtype is not None):
            outputs = model(images)
            loss = sum(out.float().square().mean() for out in outputs)
        loss.backward()
        torch.cuda.synchronize()
        if index >= warmup:
            times.append(1e3 * (time.perf_counter() - start))
        model.zero_grad(set_to_none=True)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--arch', default='T')
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--dtype', choices=list(AUTOCAST), default='bfloat16')
    parser.add_argument('--backends', default='torch,triton', help='comma-separated, timed in this order')
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=3)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print('error: this benchmark needs a CUDA GPU', file=sys.stderr)
        return 2
    torch.manual_seed(0)
    model = MambaVision(args.arch, drop_path_rate=0.0).cuda().train()
    images = torch.randn(args.batch, 3, args.size, args.size, device='cuda')
    print(f'device: {torch.cuda.get_device_name()}, torch {torch.__version__}; MambaVision-{args.arch}, '
          f'batch {args.batch}, {args.size}x{args.size}, autocast {args.dtype}, forward + backward\n')
    print('| scan backend | median ms / step | min ms | images / s | peak memory GiB |')
    print('|---|---|---|---|---|')
    results = {}
    for backend in args.backends.split(','):
        torch.cuda.reset_peak_memory_stats()
        with scan_backend(backend):
            times = step_ms(model, images, AUTOCAST[args.dtype], args.steps, args.warmup)
        median = statistics.median(times)
        results[backend] = median
        print(f'| {backend} | {median:.1f} | {min(times):.1f} | {args.batch / median * 1e3:.0f} | '
              f'{torch.cuda.max_memory_allocated() / 2**30:.2f} |', flush=True)
    if 'torch' in results and 'triton' in results:
        print(f'\ntriton backend speed-up over the torch backend: {results["torch"] / results["triton"]:.2f}x')
    return 0


if __name__ == '__main__':
    sys.exit(main())
