"""VM-UNet and VSSEncoder speed on one GPU with each way of running the four-direction scan, side by side.

Ways of running SS2D's scan (the same model, weights and input; only `SS2D.scan` changes):

    fused           mmmv's fused Triton 2D scan: the kernels address the four directions in the raster map
    gathers         mmmv's unfused path: four reordered copies by index gathers, the Triton scan, a gather back
    permutes        the official dataflow: u laid out in the four orders with transpose / flip / cat, the
                    projections on the copies, the Triton scan, flips and transposes back
    permutes+mamba  the official dataflow on mamba_ssm's CUDA selective_scan_fn (the original VM-UNet), when
                    mamba_ssm imports
    torch           mmmv's unfused path on the torch scan backend

Each mode is first checked against the first one on one batch (max |difference| / max |value| of the outputs and
of one weight's gradient),
then timed: forward + backward of the whole model (loss: mean square of the outputs) for --steps steps after
--warmup, GPU synchronised around each step; median ms, images / s and peak memory. Then the encoder alone:
forward throughput (no grad) and forward + backward.

    python tools/analysis/benchmark_vmunet.py                       # VM-UNet, batch 32, 256 x 256, float32
    python tools/analysis/benchmark_vmunet.py --dtype bfloat16 --modes fused,permutes
"""
import argparse
import importlib
import os
import statistics
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..')))

from mmmv.models.vmunet_decoder import DECODER_DEPTHS, decode, decoder_dims, decoder_stages  # noqa: E402
from mmmv.models.vss import SS2D, FinalPatchExpand4x, VSSEncoder  # noqa: E402
from mmmv.ops import scan_backend, selective_scan  # noqa: E402

AUTOCAST = {'bfloat16': torch.bfloat16, 'float16': torch.float16, 'float32': None}
MODES = ('fused', 'gathers', 'permutes', 'permutes+mamba', 'torch')


class VMUNet(nn.Module):
    """VM-UNet as plain torch: VSSEncoder + the decoder stages of VMUNetHead + a 1x1 classifier (no mmseg). `arch`
    (an arch name or dict) and `decoder_depths` default to VM-UNet's ('vmunet', DECODER_DEPTHS); tests build it
    small."""

    def __init__(self, num_classes: int = 1, arch='vmunet', decoder_depths=DECODER_DEPTHS,
                 drop_path_rate: float = 0.2):
        super().__init__()
        self.backbone = VSSEncoder(arch, out_type='unet', out_indices=(0, 1, 2, 3), out_norm=None)
        dims = decoder_dims(self.backbone.out_channels, decoder_depths)
        self.layers_up = decoder_stages(dims, decoder_depths, drop_path_rate, 0.0, False)
        self.final_up = FinalPatchExpand4x(dims[-1])
        self.conv_seg = nn.Conv2d(dims[-1] // 4, num_classes, 1)

    def forward(self, x):
        return (self.conv_seg(decode(self.layers_up, self.final_up, self.backbone(x))), )


def official_order_scan(scan_fn):
    """An `SS2D.scan` that follows the official VMamba-v0 / VM-UNet dataflow (copies in the four orders, the
    projections on them, one scan, flips and transposes back) with `scan_fn` as the selective scan."""

    def scan(self, u, height, width):
        batch, inner, length = u.shape
        transposed = u.view(batch, inner, height, width).transpose(2, 3).contiguous().view(batch, inner, length)
        two = torch.stack([u, transposed], dim=1)
        xs = torch.cat([two, torch.flip(two, dims=[-1])], dim=1)  # (B, 4, Di, L) in scan order
        x_dbl = torch.einsum('bkdl,kcd->bkcl', xs, self.x_proj_weight)
        dts, B, C = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum('bkrl,kdr->bkdl', dts, self.dt_projs_weight)
        y = scan_fn(xs.float().reshape(batch, -1, length), dts.float().reshape(batch, -1, length),
                    -torch.exp(self.A_logs.float()), B.float(), C.float(), self.Ds.float(),
                    delta_bias=self.dt_projs_bias.float().view(-1), delta_softplus=True).view(batch, 4, inner, length)
        reversed_ = torch.flip(y[:, 2:4], dims=[-1])

        def to_raster(column_major):
            return column_major.view(batch, inner, width, height).transpose(2, 3).contiguous().view(batch, inner,
                                                                                                    length)

        return y[:, 0] + reversed_[:, 0] + to_raster(y[:, 1]) + to_raster(reversed_[:, 1])

    return scan


def mmmv_scan(fused: bool):
    """`SS2D.scan` on mmmv's cross_selective_scan with the fused path forced on or off."""
    original = SS2D.scan

    def scan(self, u, height, width):
        module = importlib.import_module('mmmv.ops.cross_scan')
        saved = module.FUSED_BY_DEFAULT
        module.FUSED_BY_DEFAULT = fused
        try:
            return original(self, u, height, width)
        finally:
            module.FUSED_BY_DEFAULT = saved

    return scan


def mode_setup(mode: str):
    """(SS2D.scan replacement, scan backend) of a mode; None if it cannot run here (with the reason printed)."""
    if mode == 'fused':
        return mmmv_scan(True), 'triton'
    if mode == 'gathers':
        return mmmv_scan(False), 'triton'
    if mode == 'torch':
        return mmmv_scan(False), 'torch'
    if mode == 'permutes':
        return official_order_scan(lambda *a, **k: selective_scan(*a, backend='triton', **k)), 'triton'
    if mode == 'permutes+mamba':
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        except Exception as error:  # noqa: BLE001 - the mode is reported as skipped, with the reason
            print(f'skipping permutes+mamba: mamba_ssm does not import ({type(error).__name__}: {error})')
            return None
        return official_order_scan(selective_scan_fn), 'triton'
    raise ValueError(f'unknown mode {mode!r}; choose from {MODES}')


def outputs_of(model, images, autocast):
    with torch.autocast('cuda', dtype=autocast, enabled=autocast is not None):
        outputs = model(images)
        return outputs, sum(out.float().square().mean() for out in outputs)


def step_ms(model, images, autocast, steps: int, warmup: int, train: bool) -> list:
    times = []
    for index in range(warmup + steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        if train:
            _, loss = outputs_of(model, images, autocast)
            loss.backward()
        else:
            with torch.no_grad():
                outputs_of(model, images, autocast)
        torch.cuda.synchronize()
        if index >= warmup:
            times.append(1e3 * (time.perf_counter() - start))
        model.zero_grad(set_to_none=True)
    return times


def check(model, images, autocast, probe: nn.Parameter):
    """Logits and the gradient of `probe` of one step (compared between modes), in eval mode: stochastic depth
    would make every call differ."""
    model.eval()
    try:
        outputs, loss = outputs_of(model, images, autocast)
        grad, = torch.autograd.grad(loss, [probe])
    finally:
        model.train()
    return outputs[0].detach().float(), grad.float()


def _relative(x: torch.Tensor, ref: torch.Tensor) -> float:
    """max |x - ref| / max |ref|."""
    return ((x - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def run_table(title, model, images, modes, autocast, args, train, probe):
    print(f'\n{title}\n')
    print('| scan | median ms | min ms | images / s | peak GiB | max rel. diff vs first (out / grad) |')
    print('|---|---|---|---|---|---|')
    results, reference = {}, None
    original = SS2D.scan
    for mode in modes:
        setup = mode_setup(mode)
        if setup is None:
            continue
        SS2D.scan, backend = setup
        try:
            with scan_backend(backend):
                out, grad = check(model, images, autocast, probe)
                if reference is None:
                    reference = (out, grad)
                diff = f'{_relative(out, reference[0]):.1e} / {_relative(grad, reference[1]):.1e}'
                torch.cuda.reset_peak_memory_stats()
                times = step_ms(model, images, autocast, args.steps, args.warmup, train)
        finally:
            SS2D.scan = original
        median = statistics.median(times)
        results[mode] = median
        print(f'| {mode} | {median:.1f} | {min(times):.1f} | {images.shape[0] / median * 1e3:.0f} | '
              f'{torch.cuda.max_memory_allocated() / 2**30:.2f} | {diff} |', flush=True)
    if 'fused' in results:
        ratios = ', '.join(f'{m} {results[m] / results["fused"]:.2f}x' for m in results if m != 'fused')
        print(f'\ntime relative to fused: {ratios}')
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--size', type=int, default=256)
    parser.add_argument('--dtype', choices=list(AUTOCAST), default='float32',
                        help='autocast dtype (VM-UNet trains in float32; the scan itself is float32 in every mode)')
    parser.add_argument('--modes', default=','.join(m for m in MODES if m != 'torch'),
                        help=f'comma-separated, from {MODES}; the first is the reference of the diff column')
    parser.add_argument('--encoder-arch', default='tiny', help="VSSEncoder arch of the encoder tables ('' skips)")
    parser.add_argument('--encoder-batch', type=int, default=64)
    parser.add_argument('--encoder-size', type=int, default=224)
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=3)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print('error: this benchmark needs a CUDA GPU', file=sys.stderr)
        return 2
    modes = [m.strip() for m in args.modes.split(',') if m.strip()]
    for mode in modes:
        if mode not in MODES:
            parser.error(f'unknown mode {mode!r}; choose from {MODES}')
    autocast = AUTOCAST[args.dtype]
    torch.manual_seed(0)
    model = VMUNet().cuda().train()
    params = sum(p.numel() for p in model.parameters())
    images = torch.randn(args.batch, 3, args.size, args.size, device='cuda')
    print(f'device: {torch.cuda.get_device_name()}, torch {torch.__version__}; autocast {args.dtype}')
    run_table(f'VM-UNet ({params / 1e6:.2f} M parameters, 1 class), batch {args.batch}, {args.size}x{args.size}, '
              'forward + backward', model, images, modes, autocast, args, True,
              model.backbone.layers[0].blocks[0].self_attention.x_proj_weight)
    if args.encoder_arch:
        del model
        encoder = VSSEncoder(args.encoder_arch, out_indices=(0, 1, 2, 3)).cuda().train()
        images = torch.randn(args.encoder_batch, 3, args.encoder_size, args.encoder_size, device='cuda')
        probe = encoder.layers[0].blocks[0].self_attention.x_proj_weight
        shape = f'batch {args.encoder_batch}, {args.encoder_size}x{args.encoder_size}'
        run_table(f'VSSEncoder {args.encoder_arch}, {shape}, forward + backward', encoder, images, modes, autocast,
                  args, True, probe)
        run_table(f'VSSEncoder {args.encoder_arch}, {shape}, forward only (no grad): throughput', encoder, images,
                  modes, autocast, args, False, probe)
    return 0


if __name__ == '__main__':
    sys.exit(main())
