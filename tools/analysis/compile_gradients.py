"""Per-parameter gradient errors of a compiled training step against float64, beside eager's.

``tests/test_compile_gpu.py`` checks one number per model (the worst parameter); when it fails, this says which
parameters are off, by how much, and whether the graph or the code generation is at fault:

    eager           the model as it is, in --dtype (autocast) or float32
    aot_eager       torch.compile with the ``aot_eager`` backend: dynamo's graph and AOT autograd, eager kernels
    inductor        torch.compile (inductor), as the backbone's ``compile=True`` switch runs it
    emulate         inductor with ``emulate_precision_casts`` (intermediates rounded to bf16 / fp16 as eager does)

Each is one training step (loss: the mean square of every output) after a warm-up step, from the same weights and
input as a float64 step on the torch scan backend. The table lists the parameters furthest over the test's bound
(compiled error - 2 x eager error), with the float64 gradient's norm (a parameter whose gradient is tiny is where
low-precision rounding shows first), each run's relative error, and the cosine and norm ratio of the compiled
gradient to eager's.

    python tools/analysis/compile_gradients.py --model MambaVision-T --dtype bfloat16
    python tools/analysis/compile_gradients.py --model VM-UNet --dtype float32 --runs eager,inductor
    TRITON_INTERPRET=1 python tools/analysis/compile_gradients.py --device cpu --runs eager,aot_eager \
        --scan-backend triton                   # on CPU: the Triton scan's custom ops in the interpreter
"""
import argparse
import contextlib
import importlib
import importlib.util
import os.path as osp
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
sys.path.insert(0, ROOT)

RUNS = ('eager', 'aot_eager', 'inductor', 'emulate')
DTYPES = {'float32': None, 'bfloat16': torch.bfloat16, 'float16': torch.float16}


def vmunet() -> nn.Module:
    """VM-UNet as tools/analysis/benchmark_vmunet.py builds it (one class)."""
    spec = importlib.util.spec_from_file_location('benchmark_vmunet', osp.join(ROOT, 'tools', 'analysis',
                                                                               'benchmark_vmunet.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.VMUNet(num_classes=1)


# an 8-channel MambaVision for quick checks of the tool itself (CPU, interpreter)
TINY_MAMBAVISION = dict(depths=(1, 1, 2, 1), dim=8, in_dim=8, num_heads=(1, 1, 2, 2), window_size=(2, 2, 2, 1))


def models() -> Dict[str, Tuple[Callable[[], nn.Module], int]]:
    from mmmv.models import MambaVision, VSSEncoder
    return {
        'MambaVision-T': (lambda: MambaVision('T', out_indices=(0, 1, 2, 3)), 224),
        'MambaVision-tiny': (lambda: MambaVision(TINY_MAMBAVISION, out_indices=(0, 1, 2)), 64),
        'VSSEncoder': (lambda: VSSEncoder('vmunet'), 256),
        'VM-UNet': (vmunet, 256),
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='MambaVision-T', choices=sorted(models()))
    parser.add_argument('--dtype', default='bfloat16', choices=sorted(DTYPES),
                        help='autocast dtype of the compared runs (float32: no autocast)')
    parser.add_argument('--runs', default=','.join(RUNS), help=f'comma-separated, from {", ".join(RUNS)}')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--size', type=int, help="input side (default: the model's training size)")
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--top', type=int, default=8, help='parameters listed')
    parser.add_argument('--unfused', action='store_true', help='VSS models: the unfused 2D scan')
    parser.add_argument('--scan-backend', default='auto', choices=('auto', 'triton', 'torch'),
                        help="the compared runs' scan (auto: Triton on CUDA, torch on CPU; triton on CPU needs "
                             'TRITON_INTERPRET=1); the float64 step always runs the torch backend')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    args.runs = [run.strip() for run in args.runs.split(',') if run.strip()]
    unknown = [run for run in args.runs if run not in RUNS]
    if unknown or 'eager' not in args.runs:
        parser.error(f'--runs takes {", ".join(RUNS)} and must include eager; got {args.runs}')
    if args.batch < 1 or (args.size is not None and args.size < 32) or args.top < 1:
        parser.error('--batch and --top must be >= 1 and --size >= 32')
    return args


def step(model: nn.Module, forward: Callable, images: torch.Tensor,
         dtype: Optional[torch.dtype]) -> Tuple[float, Dict[str, torch.Tensor]]:
    """One training step's loss and gradients (float64 copies), by parameter name."""
    model.zero_grad(set_to_none=True)
    autocast = torch.autocast(images.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with autocast:
        outputs = forward(images)  # every model here returns a tuple of maps
    loss = sum(out.float().square().mean() for out in outputs)
    loss.backward()
    return loss.item(), {name: p.grad.detach().double().clone() for name, p in model.named_parameters()
                         if p.grad is not None}


def compiled(model: nn.Module, run: str) -> Callable:
    """The model's forward for `run` (see the module docstring)."""
    torch._dynamo.reset()
    if run == 'eager':
        return model
    import torch._inductor.config as inductor_config
    inductor_config.emulate_precision_casts = run == 'emulate'
    return torch.compile(model, backend='aot_eager' if run == 'aot_eager' else 'inductor')


def relative(grad: torch.Tensor, reference: torch.Tensor) -> float:
    return ((grad - reference).norm() / reference.norm().clamp_min(1e-30)).item()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.flatten() @ b.flatten() / (a.norm() * b.norm()).clamp_min(1e-30)).item()


def compare(args) -> dict:
    """Run every step; returns losses, per-run relative errors by parameter, and the gradients."""
    from mmmv.ops import scan_backend
    if args.unfused:  # the module (mmmv.ops.cross_scan is also the function)
        importlib.import_module('mmmv.ops.cross_scan').FUSED_BY_DEFAULT = False
    if args.dtype == 'float32' and args.device == 'cuda':
        torch.backends.cudnn.allow_tf32 = False  # as the test: TF32 convolutions under inductor only (compile.md)
    torch.manual_seed(args.seed)
    build, size = models()[args.model]
    model = build().to(args.device).eval()  # eval: no drop path, so every run sees the same network
    images = torch.randn(args.batch, 3, args.size or size, args.size or size, device=args.device)
    loss64, grads64 = step(model.double(), model, images.double(), None)
    model.float()
    losses, grads, seconds = {}, {}, {}
    for run in args.runs:
        start = time.perf_counter()
        forward = compiled(model, run)
        with scan_backend(None if args.scan_backend == 'auto' else args.scan_backend):
            step(model, forward, images, DTYPES[args.dtype])  # warm-up: compiles
            losses[run], grads[run] = step(model, forward, images, DTYPES[args.dtype])
        seconds[run] = time.perf_counter() - start
    errors = {run: {name: relative(g[name], grads64[name]) for name in grads64} for run, g in grads.items()}
    return dict(loss64=loss64, losses=losses, errors=errors, grads=grads, grads64=grads64, seconds=seconds)


def table(result: dict, top: int) -> List[str]:
    errors, grads, grads64 = result['errors'], result['grads'], result['grads64']
    compiled_runs = [run for run in errors if run != 'eager']
    judged = 'inductor' if 'inductor' in errors else (compiled_runs[0] if compiled_runs else 'eager')
    names = sorted(grads64, key=lambda n: errors[judged][n] - 2 * errors['eager'][n], reverse=True)[:top]
    lines = [f'float64 loss {result["loss64"]:.6g}; ' + ', '.join(f'{run} {loss:.6g} ({result["seconds"][run]:.0f} s)'
                                                                   for run, loss in result['losses'].items()),
             'worst relative gradient error vs float64: ' + ', '.join(f'{run} {max(e.values()):.2e}'
                                                                     for run, e in errors.items()),
             '',
             f'| parameter | shape | float64 norm | ' + ' | '.join(errors) + f' | cos({judged}, eager) | '
             f'norm {judged} / eager |',
             '|---|---|---|' + '---|' * (len(errors) + 2)]
    for name in names:
        g, eager = grads[judged][name], grads['eager'][name]
        lines.append(f'| {name} | {tuple(grads64[name].shape)} | {grads64[name].norm().item():.2e} | '
                     + ' | '.join(f'{errors[run][name]:.2e}' for run in errors)
                     + f' | {cosine(g, eager):.4f} | {(g.norm() / eager.norm().clamp_min(1e-30)).item():.3f} |')
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        print('error: --device cuda, but CUDA is not available here; use --device cpu with TRITON_INTERPRET=1',
              file=sys.stderr)
        return 2
    print(f'{args.model}, {args.dtype}, batch {args.batch}, {args.device}'
          + (f' ({torch.cuda.get_device_name()})' if args.device == 'cuda' else ''), flush=True)
    print('\n'.join(table(compare(args), args.top)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
