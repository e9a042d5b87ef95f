"""Benchmark the selective scan's torch backend against a per-token Python loop.

The loop is the usual PyTorch reference (mamba_ssm's `selective_scan_ref`): float32, vectorised over
batch / channels / states, one Python iteration per token, autograd for the backward (written with
`unbind` so that its backward is linear in L). Inputs follow ANCHORS.md section 3: u, delta, B, C normal
(delta scaled 0.5), A = -(0.5 + uniform), D and delta_bias random, softplus on, z off, B / C shared.

    python tools/analysis/benchmark_selective_scan.py                 # CPU shapes
    python tools/analysis/benchmark_selective_scan.py --device cuda   # the H100 shapes of ANCHORS.md
    python tools/analysis/benchmark_selective_scan.py --dtype bfloat16 --no-loop

Prints a markdown table of median milliseconds (forward without grad, forward + backward).
"""
import argparse
import platform
import statistics
import time
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F

from mmmv.ops import selective_scan
from mmmv.ops.selective_scan.torch_backend import chunk_length

# (case, batch, dim, L, N)
CPU_SHAPES = [
    ('MambaVision-T stage 3 @224, batch 8', 8, 160, 196, 8),
    ('MambaVision-T stage 4, 1344x800, batch 2', 2, 320, 1050, 8),
    ('MambaVision-T stage 3, 1344x800, batch 2', 2, 160, 4200, 8),
    ('VSS stage 1 @256, 1 image (4 directions)', 4, 192, 4096, 16),
]
GPU_SHAPES = [
    ('MambaVision-T stage 3 @224', 128, 160, 196, 8),
    ('MambaVision-T stage 4 @224', 128, 320, 49, 8),
    ('MambaVision-T stage 3, 1344x800 input', 2, 160, 4200, 8),
    ('MambaVision-T stage 4, 1344x800 input', 2, 320, 1050, 8),
    ('MambaVision-B stage 3 @224', 128, 256, 196, 8),
    ('VSS stage 1 @256, 4 directions in batch', 32, 192, 4096, 16),
    ('VSS stage 3 @256, 4 directions in batch', 32, 768, 256, 16),
]


def per_token_loop(u, delta, A, B, C, D, delta_bias, delta_softplus=True):
    """The scan as a Python loop over tokens in float32 (B, C shared): the baseline."""
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


def make_inputs(batch, dim, length, state, dtype, device, requires_grad) -> Dict[str, torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(0)

    def randn(*shape, scale=1.0, dtype=dtype):
        return (scale * torch.randn(*shape, generator=gen, device=device)).to(dtype)

    inputs = dict(
        u=randn(batch, dim, length),
        delta=randn(batch, dim, length, scale=0.5),
        A=-0.5 - torch.rand(dim, state, generator=gen, device=device),
        B=randn(batch, state, length),
        C=randn(batch, state, length),
        D=randn(dim, dtype=torch.float32),
        delta_bias=randn(dim, dtype=torch.float32),
    )
    return {name: t.requires_grad_(requires_grad) for name, t in inputs.items()}


def median_ms(fn: Callable[[], None], device: torch.device, repeats: int, warmup: int = 1) -> float:
    def sync():
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def time_scan(scan: Callable, shape, dtype, device, repeats) -> Dict[str, float]:
    """Median ms of the forward (no grad) and of forward + backward of `scan(**inputs)`."""
    inputs = make_inputs(*shape, dtype, device, requires_grad=False)
    with torch.no_grad():
        forward = median_ms(lambda: scan(**inputs), device, repeats)
    inputs = make_inputs(*shape, dtype, device, requires_grad=True)
    dy = torch.randn(shape[0], shape[1], shape[2], device=device, dtype=dtype)

    def forward_backward():
        torch.autograd.backward(scan(**inputs), dy)

    return dict(fwd=forward, fwd_bwd=median_ms(forward_backward, device, repeats))


def device_name(device: torch.device) -> str:
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            name = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    return f'{name}, {torch.get_num_threads()} threads'


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--dtype', default='float32', choices=['float32', 'float16', 'bfloat16'])
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--no-loop', action='store_true', help='skip the per-token loop baseline')
    parser.add_argument('--max-loop-length', type=int, default=8192, help='skip the loop above this L')
    parser.add_argument('--threads', type=int, default=None, help='CPU threads (torch.set_num_threads)')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    shapes = GPU_SHAPES if device.type == 'cuda' else CPU_SHAPES

    def mmmv_scan(**inputs):
        return selective_scan(**inputs, delta_softplus=True, backend='torch')

    print(f'selective scan, {args.dtype}, device: {device_name(device)}, torch {torch.__version__}; '
          f'median of {args.repeats} runs, ms\n')
    print('| case | (batch, D, L, N) | chunk T | torch fwd | loop fwd | torch fwd+bwd | loop fwd+bwd '
          '| speed-up fwd / fwd+bwd |')
    print('|---|---|---|---|---|---|---|---|')
    for case, *shape in shapes:
        ours = time_scan(mmmv_scan, shape, dtype, device, args.repeats)
        chunk = chunk_length(shape[0], shape[1], shape[3], shape[2], device.type)
        if args.no_loop or shape[2] > args.max_loop_length:
            loop_cells, speedup = ['-', '-'], '-'
        else:
            loop = time_scan(per_token_loop, shape, dtype, device, args.repeats)
            loop_cells = [f'{loop["fwd"]:.1f}', f'{loop["fwd_bwd"]:.1f}']
            speedup = f'{loop["fwd"] / ours["fwd"]:.1f}x / {loop["fwd_bwd"] / ours["fwd_bwd"]:.1f}x'
        print(f'| {case} | {tuple(shape)} | {chunk} | {ours["fwd"]:.2f} | {loop_cells[0]} | {ours["fwd_bwd"]:.2f} | '
              f'{loop_cells[1]} | {speedup} |', flush=True)


if __name__ == '__main__':
    main()
