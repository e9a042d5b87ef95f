"""Per-parameter gradient errors of a compiled training step against float64, beside eager's.

``tests/test_compile_gpu.py`` checks one number per model (the worst parameter); when it fails, this says which
parameters are off, by how much, and whether the graph or the code generation is at fault:

    eager           the model as it is, in --dtype (autocast) or float32
    aot_eager       torch.compile with the ``aot_eager`` backend: dynamo's graph and AOT autograd, eager kernels
    inductor        torch.compile (inductor), as the backbone's ``compile=True`` switch runs it
    emulate         inductor with ``emulate_precision_casts`` (intermediates rounded to bf16 / fp16 as eager does)

Each is one training step (loss: `probe_loss`, each output against a fixed random map) after a warm-up step, from
the same weights and input as a float64 step on the torch scan backend. The table lists the parameters furthest over
the test's bound (compiled error - 2 x eager error), with the float64 gradient's norm (a parameter whose gradient is
tiny is where low-precision rounding shows first), each run's relative error, and the cosine and norm ratio of the
compiled gradient to eager's.

    python tools/analysis/compile_gradients.py --model MambaVision-T --dtype bfloat16
    python tools/analysis/compile_gradients.py --model VM-UNet --dtype float32 --runs eager,inductor
    TRITON_INTERPRET=1 python tools/analysis/compile_gradients.py --device cpu --runs eager,aot_eager \
        --scan-backend triton                   # on CPU: the Triton scan's custom ops in the interpreter
    python tools/analysis/compile_gradients.py --runs eager,inductor --check-scan
    python tools/analysis/compile_gradients.py --runs eager,inductor --compile-only 'stages[.]2[.]blocks[.][4-7]'

``--check-scan`` checks every Triton scan call of each run against the float64 loop reference on the same inputs
(the forward's y; the backward's gradients for its dout), and lists per call the inputs' dtypes and strides and the
worst relative error: whether a compiled run's gradients go wrong inside the scan (the inputs that inductor lays
out differently from eager) or outside it.
"""
import argparse
import contextlib
import importlib
import importlib.util
import inspect
import os.path as osp
import re
import sys
import threading
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
    parser.add_argument('--check-scan', action='store_true',
                        help='check each Triton scan call against the float64 reference (plain scans; slow)')
    parser.add_argument('--compile-only', metavar='REGEX',
                        help="compile only the submodules whose qualified names match (each its own graph), e.g. "
                             "'stages\\.2\\.blocks\\.[0-3]' (MambaVision-T stage 2's mixer blocks): bisects a compiled "
                             "run's error")
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    args.runs = [run.strip() for run in args.runs.split(',') if run.strip()]
    unknown = [run for run in args.runs if run not in RUNS]
    if unknown or 'eager' not in args.runs:
        parser.error(f'--runs takes {", ".join(RUNS)} and must include eager; got {args.runs}')
    if args.batch < 1 or (args.size is not None and args.size < 32) or args.top < 1:
        parser.error('--batch and --top must be >= 1 and --size >= 32')
    return args


def probes(outputs, seed: int = 0) -> List[torch.Tensor]:
    """A fixed random map (float64, from `seed`) of each output's shape, on its device."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(out.shape, generator=generator, dtype=torch.float64).to(out.device) for out in outputs]


def probe_loss(outputs, seed: int = 0, maps: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
    """Each output's mean against its probe map (`maps`, or ``probes(outputs, seed)``), summed (float32, float64 for
    float64 outputs).

    Not the outputs' mean square: the backbones end their outputs in a LayerNorm, whose output's mean square is 1
    whatever the input, so that loss's gradient behind the norms is rounding noise (float64 norms 1e-11..1e-7), and
    comparing it between runs compares noise. A random direction has a gradient everywhere."""
    terms = []
    for out, probe in zip(outputs, probes(outputs, seed) if maps is None else maps):
        out = out if out.dtype == torch.float64 else out.float()
        terms.append((out * probe.to(out.dtype)).mean())
    return sum(terms)


def step(model: nn.Module, forward: Callable, images: torch.Tensor,
         dtype: Optional[torch.dtype]) -> Tuple[float, Dict[str, torch.Tensor]]:
    """One training step's loss and gradients (float64 copies), by parameter name."""
    model.zero_grad(set_to_none=True)
    autocast = torch.autocast(images.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with autocast:
        outputs = forward(images)  # every model here returns a tuple of maps
    loss = probe_loss(outputs)
    loss.backward()
    return loss.item(), {name: p.grad.detach().double().clone() for name, p in model.named_parameters()
                         if p.grad is not None}


def compiled(model: nn.Module, run: str, only: Optional[str] = None) -> Callable:
    """The model's forward for `run` (see the module docstring): the whole model compiled, or with `only` (a regular
    expression) each submodule whose qualified name matches it, in place, each its own graph, and the rest eager
    (`uncompiled` undoes that)."""
    torch._dynamo.reset()
    if run == 'eager':
        return model
    import torch._inductor.config as inductor_config
    inductor_config.emulate_precision_casts = run == 'emulate'
    backend = 'aot_eager' if run == 'aot_eager' else 'inductor'
    if only is None:
        return torch.compile(model, backend=backend)
    for module in matching(model, only):
        module.compile(backend=backend)
    return model


def matching(model: nn.Module, only: str) -> List[nn.Module]:
    """The submodules whose qualified names match `only`; a ValueError when none does."""
    matched = [module for name, module in model.named_modules() if re.fullmatch(only, name)]
    if not matched:
        raise ValueError(f'--compile-only {only!r} matches no submodule of the model (its top-level ones: '
                         f'{", ".join(name for name, _ in model.named_children())}; qualified names join them '
                         "with '.', e.g. stages.2.blocks.0)")
    return matched


def uncompiled(model: nn.Module) -> None:
    """Every submodule back to eager after `compiled(..., only=...)`."""
    for module in model.modules():
        module._compiled_call_impl = None


def relative(grad: torch.Tensor, reference: torch.Tensor) -> float:
    return ((grad - reference).norm() / reference.norm().clamp_min(1e-30)).item()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.flatten() @ b.flatten() / (a.norm() * b.norm()).clamp_min(1e-30)).item()


SCAN_INPUTS = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')  # in the order of the backward's gradients


def _layouts(arguments: dict, names: Tuple[str, ...]) -> str:
    """'u bf16 (a, b, c)' per tensor: dtype and strides, what inductor may choose differently from eager."""
    return ', '.join(f'{name} {str(arguments[name].dtype)[6:]} {tuple(arguments[name].stride())}' for name in names)


@contextlib.contextmanager
def checking_scan(calls: list):
    """While active, every launched plain Triton scan call (the custom ops' and the eager path's; not the fake
    implementations, nor four-direction scans) is checked against `selective_scan_ref` in float64 on the same
    inputs: the forward's y, and the backward's gradients for its dout (and d last state); and the outputs' shapes,
    strides and dtypes against the fake implementation's on the same inputs. Appends to `calls` one (kind, inputs'
    layouts, worst relative error, the output it is of, where the outputs differ from the fake's or '') per call."""
    from mmmv.ops.selective_scan import selective_scan_ref, triton_backend
    forward, backward = triton_backend.scan_forward, triton_backend.scan_backward
    signatures = {forward: inspect.signature(forward), backward: inspect.signature(backward)}

    def arguments(function, args, kwargs) -> Optional[dict]:
        bound = signatures[function].bind(*args, **kwargs)
        bound.apply_defaults()
        return bound.arguments if bound.arguments['launch'] and not bound.arguments['height'] else None

    def leaves(a: dict, device=None) -> dict:
        return {name: None if a[name] is None else a[name].detach().to(device, torch.float64).requires_grad_()
                for name in SCAN_INPUTS}

    def unlike_fake(function, a: dict, outputs) -> str:
        """Where the real outputs' shapes, strides or dtypes differ from the fake implementation's on these inputs
        (torch.compile's code reads the real buffers by the fake's strides)."""
        fake = function(**dict(a, launch=False))
        return '; '.join(f'output {i}: {tuple(r.shape)} {tuple(r.stride())} {r.dtype} vs fake {tuple(f.shape)} '
                         f'{tuple(f.stride())} {f.dtype}' for i, (r, f) in enumerate(zip(outputs, fake))
                         if r is not None and (r.shape, r.stride(), r.dtype) != (f.shape, f.stride(), f.dtype))

    def checked_forward(*args, **kwargs):
        out = forward(*args, **kwargs)
        a = arguments(forward, args, kwargs)
        if a is not None:
            with torch.no_grad():
                y64 = selective_scan_ref(**leaves(a), delta_softplus=a['delta_softplus'])
            calls.append(('forward', _layouts(a, ('u', 'delta', 'B', 'C')), relative(out[0].double(), y64), 'y',
                          unlike_fake(forward, a, out)))
        return out

    def checked_backward(*args, **kwargs):
        grads = backward(*args, **kwargs)
        a = arguments(backward, args, kwargs)
        if a is not None:
            inputs = leaves(a, 'cpu')  # see below

            def reference():
                y64, last64 = selective_scan_ref(**inputs, delta_softplus=a['delta_softplus'], return_last_state=True)
                outputs, seeds = [y64], [a['dout'].cpu().double()]
                if a['dlast'] is not None:
                    outputs.append(last64)
                    seeds.append(a['dlast'].cpu().double())
                torch.autograd.backward(outputs, seeds)

            # in a thread of its own: a custom op's implementation runs below autograd (its dispatch keys are
            # excluded in this thread), so the reference's autograd would record nothing here. On CPU: a backward of
            # CUDA tensors would queue its work on the device's autograd thread, which is the one running this
            # backward and waiting for the join (the GPU run hung until its time limit)
            thread = threading.Thread(target=reference)
            thread.start()
            thread.join()
            error, name = max((relative(grad.cpu().double(), inputs[name].grad), 'd' + name)
                              for name, grad in zip(SCAN_INPUTS, grads) if inputs[name] is not None)
            # the fake's outputs are those of the custom op (separate gradients), the eager path's may be views
            unlike = unlike_fake(backward, a, grads) if a['separate'] else ''
            calls.append(('backward', _layouts(a, ('dout', 'u', 'delta', 'B', 'C')), error, name, unlike))
        return grads

    triton_backend.scan_forward, triton_backend.scan_backward = checked_forward, checked_backward
    try:
        yield calls
    finally:
        triton_backend.scan_forward, triton_backend.scan_backward = forward, backward


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
    if args.compile_only is not None:
        matching(model, args.compile_only)  # before the runs: a pattern that matches nothing is said at once
    images = torch.randn(args.batch, 3, args.size or size, args.size or size, device=args.device)
    loss64, grads64 = step(model.double(), model, images.double(), None)
    model.float()
    losses, grads, seconds, scan_calls = {}, {}, {}, {}
    for run in args.runs:
        start = time.perf_counter()
        forward = compiled(model, run, args.compile_only)
        with scan_backend(None if args.scan_backend == 'auto' else args.scan_backend):
            step(model, forward, images, DTYPES[args.dtype])  # warm-up: compiles
            with checking_scan([]) if args.check_scan else contextlib.nullcontext() as calls:
                losses[run], grads[run] = step(model, forward, images, DTYPES[args.dtype])
            if calls is not None:
                scan_calls[run] = calls
        uncompiled(model)
        seconds[run] = time.perf_counter() - start
    errors = {run: {name: relative(g[name], grads64[name]) for name in grads64} for run, g in grads.items()}
    return dict(loss64=loss64, losses=losses, errors=errors, grads=grads, grads64=grads64, seconds=seconds,
                scan_calls=scan_calls)


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


def scan_table(result: dict) -> List[str]:
    """The checked scan calls (``--check-scan``) side by side, a row per call in the order the runs made them: each
    run's worst relative error against float64 (and of which output), eager's input layouts, and a compiled run's
    where they differ from eager's."""
    calls = result['scan_calls']
    if not calls:
        return []
    runs = list(calls)
    lines = ['', 'Triton scan calls against float64 on their own inputs (--check-scan): ' + ', '.join(
                 f'{run} {len(c)} calls, worst {max((call[2] for call in c), default=0.0):.2e}, '
                 f'{sum(bool(call[4]) for call in c)} unlike the fake implementation' for run, c in calls.items()), '',
             '| call | kind | ' + ' | '.join(runs) + ' | inputs (eager) | inputs where other runs differ | '
             'outputs unlike the fake |', '|---|---|' + '---|' * (len(runs) + 3)]
    for i in range(max(len(c) for c in calls.values())):
        row = [c[i] if i < len(c) else None for c in calls.values()]
        first = next(r for r in row if r is not None)
        others = '; '.join(f'{run}: {r[1]}' for run, r in zip(runs[1:], row[1:]) if r is not None and r[1] != first[1])
        unlike = '; '.join(f'{run}: {r[4]}' for run, r in zip(runs, row) if r is not None and r[4])
        lines.append(f'| {i} | {first[0]} | ' + ' | '.join('-' if r is None else f'{r[2]:.2e} ({r[3]})' for r in row)
                     + f' | {first[1]} | {others or "-"} | {unlike or "-"} |')
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        print('error: --device cuda, but CUDA is not available here; use --device cpu with TRITON_INTERPRET=1',
              file=sys.stderr)
        return 2
    print(f'{args.model}, {args.dtype}, batch {args.batch}, {args.device}'
          + (f' ({torch.cuda.get_device_name()})' if args.device == 'cuda' else ''), flush=True)
    try:
        result = compare(args)
    except ValueError as error:  # an argument that the model does not fit (--compile-only)
        print(f'error: {error}', file=sys.stderr)
        return 2
    print('\n'.join(table(result, args.top) + scan_table(result)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
