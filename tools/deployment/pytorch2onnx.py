"""Export a config's model to ONNX and check the file in onnxruntime against PyTorch.

    python tools/deployment/pytorch2onnx.py CONFIG CHECKPOINT --out model.onnx [--shape H [W]] [--dynamic]
                                            [--opset N] [--features] [--atol A]
                                            [--benchmark [--runs N] [--threads T]] [--cfg-options KEY=VALUE ...]

The graph takes the normalised image batch (N, 3, H, W): the model's data preprocessor (mean / std, BGR -> RGB,
padding) is not part of it. It returns what the model's ``forward(images, mode='tensor')`` returns:

- mmpretrain classifiers (MambaVision): the class logits (N, num_classes), before softmax;
- mmseg segmentors (VM-UNet, UPerNet on MambaVision or VSS): the decode head's logits (N, C, h, w), before mmseg
  resizes them to the image (VM-UNet: h, w = H, W rounded up to a multiple of 4; UPerNet: H / 4, W / 4);
- with ``--features``: the backbone and neck maps (``extract_feat``) of any config. mmdet detectors are exported only
  this way: their RPN and RoI heads need per-image metadata and end in NMS, which this tool does not export.

The model is built from the config without its ``init_cfg`` checkpoints, and CHECKPOINT is loaded strictly. The
selective scans are written with mmmv's 'export' scan backend, one ONNX ``Scan`` node each (docs/deployment.md).
``--dynamic`` makes the batch, height and width dynamic (MambaVision classifiers, VM-UNet); where the model does not
export so, only the batch, and the reason is printed (UPerNet: its pyramid pooling is exported for the traced size).
Default input size: the config's test crop (classification), crop size (segmentation) or
800 x 1280 (detection), as tools/analysis/get_flops.py.

The exported file is then run in onnxruntime on the input it was traced with (random, seeded), and the largest
absolute difference from PyTorch is printed; with ``--dynamic`` also at a second batch size and input size. The exit
status is 1 if a difference exceeds ``--atol``. ``--benchmark`` prints the median latency of onnxruntime and of
PyTorch eager (the configured scan backend) on the CPU, batch 1.
"""
import argparse
import contextlib
import importlib
import logging
import os
import os.path as osp
import platform
import statistics
import sys
import time
import warnings
from typing import Optional, Tuple

import torch

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..', '..')))

from mmmv.engine import toolbox  # noqa: E402
from mmmv.engine.cli import load_tool_config  # noqa: E402
from mmmv.engine.toolbox import SetupError  # noqa: E402
from mmmv.ops import scan_backend  # noqa: E402
from mmmv.ops.selective_scan import export_backend  # noqa: E402

ONNX_PACKAGES = ('onnx', 'onnxruntime', 'onnxscript')
ONNX_FIX = 'pip install onnx onnxruntime onnxscript (or pip install -e ".[deploy]")'
IN_CHANNELS = 3
# torch.export fixes a dimension of size 1 to 1, so a dynamic export is traced with a batch of 2
DYNAMIC_TRACE_BATCH = 2
# the second input of a dynamic export: batch 1 and (H, W) grown by this much (not multiples of 32: padding runs)
SECOND_SIZE_STEP = (32, 16)
BATCH, HEIGHT, WIDTH = 0, 2, 3
AXIS_NAMES = {BATCH: 'batch', HEIGHT: 'height', WIDTH: 'width'}
DEFAULT_ATOL = 1e-3
OUTPUT_NAMES = {'mmpretrain': 'logits', 'mmseg': 'seg_logits'}
SEED = 0


def parse_args(argv=None) -> argparse.Namespace:
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='config file, e.g. configs/mambavision_t_in1k.py or configs/vmunet_isic17.py')
    parser.add_argument('checkpoint', help='mmmv checkpoint of that model (tools/model_converters/ make them)')
    parser.add_argument('--out', required=True, help='the .onnx file to write')
    parser.add_argument('--shape', type=int, nargs='+', metavar='H W',
                        help='input height and width (one value: square); default per toolbox, see above')
    parser.add_argument('--dynamic', action='store_true',
                        help='dynamic batch, height and width (batch only where the model needs fixed H, W)')
    parser.add_argument('--opset', type=int, help="ONNX opset (default: torch.onnx's)")
    parser.add_argument('--features', action='store_true',
                        help='export the backbone + neck maps (extract_feat) instead of the whole model')
    parser.add_argument('--atol', type=float, default=DEFAULT_ATOL,
                        help=f'largest accepted |onnxruntime - PyTorch| (default {DEFAULT_ATOL}); exit status 1 above')
    parser.add_argument('--benchmark', action='store_true',
                        help='also time onnxruntime and PyTorch eager on the CPU (batch 1, median of --runs)')
    parser.add_argument('--runs', type=int, default=20, help='timed runs per runtime with --benchmark (default 20)')
    parser.add_argument('--threads', type=int,
                        help="CPU threads of both runtimes (default: torch's, usually one per core)")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. "model.backbone.arch=\'S\'"')
    args = parser.parse_args(argv)
    if args.shape is not None and (len(args.shape) not in (1, 2) or min(args.shape) < 1):
        parser.error(f'--shape takes a positive H and W (or one size), got {args.shape}')
    if args.runs < 1:
        parser.error(f'--runs must be at least 1, got {args.runs}')
    if args.threads is not None and args.threads < 1:
        parser.error(f'--threads must be at least 1, got {args.threads}')
    return args


# ---------------------------------------------------------------------------------------------------------------------
# Setup: packages, config, model
# ---------------------------------------------------------------------------------------------------------------------
def check_packages() -> None:
    """The ONNX packages and torch's scan operator import, or a SetupError naming the fix."""
    missing = []
    for name in ONNX_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise SetupError(f'ONNX export needs {", ".join(missing)}, which cannot be imported here; fix: {ONNX_FIX}')
    try:
        export_backend.scan_operator()
    except ValueError as error:  # a torch without the scan operator
        raise SetupError(str(error)) from None


class TensorForward(torch.nn.Module):
    """The model as a module of one input, for torch.export: ``model(images, mode='tensor')``, or with `features`
    ``model.extract_feat(images)``."""

    def __init__(self, model: torch.nn.Module, features: bool):
        super().__init__()
        self.model = model
        self.features = features

    def forward(self, images: torch.Tensor):
        if self.features:
            return tuple(self.model.extract_feat(images))
        return self.model(images, mode='tensor')


def build(cfg, scope: str, args: argparse.Namespace) -> TensorForward:
    if scope == 'mmdet' and not args.features:
        raise SetupError(f'{args.config} is a detector (mmdet): its RPN / RoI heads and NMS are not exported; pass '
                         '--features to export the backbone + neck maps (extract_feat), or export a classification '
                         '(mmpretrain) or segmentation (mmseg) config')
    model = toolbox.build_model(cfg)
    toolbox.load_weights(model, args.checkpoint)
    return TensorForward(model, args.features).eval()


@contextlib.contextmanager
def export_scans(module: torch.nn.Module):
    """Run every selective scan of `module` on the 'export' backend inside the block, also in layers that name their own
    backend (the models' ``scan_backend`` option)."""
    own = {m: m.scan_backend for m in module.modules() if isinstance(getattr(m, 'scan_backend', None), str)}
    for layer in own:
        layer.scan_backend = 'export'
    try:
        with scan_backend('export'):
            yield
    finally:
        for layer, name in own.items():
            layer.scan_backend = name


# ---------------------------------------------------------------------------------------------------------------------
# Export and check
# ---------------------------------------------------------------------------------------------------------------------
def _leaves(output) -> list:
    return [t for t in torch.utils._pytree.tree_leaves(output) if isinstance(t, torch.Tensor)]


def output_names(scope: str, features: bool, count: int) -> list:
    if features or count != 1:
        return [f'feat{i}' for i in range(count)]
    return [OUTPUT_NAMES[scope]]


def export(module: TensorForward, images: torch.Tensor, path: str, *, names: list, axes: tuple, opset):
    """Write the ONNX file of `module` traced on `images`, with `axes` of the input dynamic (none: static)."""
    # torch.onnx makes an axis given by name a Dim.DYNAMIC and gives the ONNX dimension that name
    dynamic_shapes = ({axis: AXIS_NAMES[axis] for axis in axes}, ) if axes else None
    with torch.no_grad(), export_scans(module), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        program = torch.onnx.export(module, (images, ), dynamo=True, input_names=['images'], output_names=names,
                                    dynamic_shapes=dynamic_shapes, opset_version=opset, verbose=False)
    program.save(path)


def fixed_size_reason(module: torch.nn.Module) -> Optional[str]:
    """Why the ONNX graph of `module` cannot take other heights and widths than the traced ones, or None.

    Adaptive pooling to a grid other than 1 x 1 (UPerNet's pyramid pooling) is exported as gathers whose number is
    that of the traced input's windows: at other sizes it runs and gives wrong results."""
    for name, layer in module.named_modules():
        if isinstance(layer, (torch.nn.AdaptiveAvgPool2d, torch.nn.AdaptiveMaxPool2d)):
            size = layer.output_size
            if any(s not in (1, None) for s in ((size, size) if isinstance(size, int) else size)):
                return (f'{name} ({type(layer).__name__} to {size}) is exported for the traced input size only, as '
                        'ONNX has no adaptive pooling')
    return None


def export_dynamic(module, images, path, *, names, opset) -> tuple:
    """Export with a dynamic batch, height and width, else with a dynamic batch only; returns the dynamic axes."""
    reason = fixed_size_reason(module)
    if reason is None:
        try:
            export(module, images, path, names=names, axes=(BATCH, HEIGHT, WIDTH), opset=opset)
            return BATCH, HEIGHT, WIDTH
        except Exception as error:  # noqa: BLE001 - reported, then the export with fixed H, W is tried
            first = str(error).strip().splitlines()[0] if str(error).strip() else ''
            reason = f'the export with dynamic H, W fails ({type(error).__name__}: {first})'
    print(f'height and width stay fixed: {reason}; the batch is dynamic')
    export(module, images, path, names=names, axes=(BATCH, ), opset=opset)
    return (BATCH, )


def onnx_session(path: str, threads: int):
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def largest_difference(session, module: TensorForward, images: torch.Tensor) -> Tuple[float, float]:
    """max |onnxruntime - PyTorch| over all outputs, and max |PyTorch| for scale; PyTorch on its configured scan
    backend."""
    with torch.no_grad():
        expected = _leaves(module(images))
    got = [torch.from_numpy(out) for out in session.run(None, {'images': images.numpy()})]
    if len(got) != len(expected):
        raise RuntimeError(f'the ONNX graph returns {len(got)} outputs, PyTorch {len(expected)}')
    for onnx_out, torch_out in zip(got, expected):
        if onnx_out.shape != torch_out.shape:
            raise RuntimeError(f'output shape {tuple(onnx_out.shape)} from onnxruntime, {tuple(torch_out.shape)} '
                               'from PyTorch')
    difference = max(float((o - t.float()).abs().max()) for o, t in zip(got, expected))
    return difference, max(float(t.abs().max()) for t in expected)


def median_times_ms(runs: int, warmup: int = 2, **functions) -> dict:
    """{name: median ms} of each function over `runs` rounds, each round calling every function once (alternating, so
    that a load that comes and goes on the machine falls on all of them alike)."""
    for _ in range(warmup):
        for run in functions.values():
            run()
    times = {name: [] for name in functions}
    for _ in range(runs):
        for name, run in functions.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}


def cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as cpuinfo:
            for line in cpuinfo:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def benchmark(session, module: TensorForward, images: torch.Tensor, runs: int, threads: int) -> None:
    import onnxruntime
    with torch.no_grad():
        times = median_times_ms(runs, eager=lambda: module(images),
                                onnx=lambda: session.run(None, {'images': images.numpy()}))
    eager, onnx = times['eager'], times['onnx']
    shape = 'x'.join(map(str, images.shape))
    plural = 's' if threads > 1 else ''
    print(f'\nlatency, input {shape}, median of {runs} runs (alternating) after 2 warm-up runs, {threads} '
          f'thread{plural}, CPU: {cpu_name()} ({os.cpu_count()} cores), torch {torch.__version__}, onnxruntime '
          f'{onnxruntime.__version__}:')
    print('| runtime | median ms |\n|---|---|')
    print(f'| PyTorch eager | {eager:.1f} |\n| onnxruntime (CPUExecutionProvider) | {onnx:.1f} |')
    print(f'onnxruntime / PyTorch: {onnx / eager:.2f}')


# ---------------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------------
def verify(session, module: TensorForward, inputs: list) -> float:
    """Print max |onnxruntime - PyTorch| for each input; returns the largest."""
    worst = 0.0
    for images in inputs:
        difference, scale = largest_difference(session, module, images)
        worst = max(worst, difference)
        print(f'input {"x".join(map(str, images.shape))}: max |onnxruntime - PyTorch| = {difference:.3g} '
              f'(max |PyTorch| = {scale:.3g})')
    return worst


def main(argv=None) -> int:
    args = parse_args(argv)
    check_packages()
    cfg = load_tool_config(args.config, args.cfg_options)
    scope = cfg.default_scope
    module = build(cfg, scope, args)
    height, width = (tuple(args.shape) * 2)[:2] if args.shape else toolbox.default_shape(cfg, scope)
    logging.getLogger('torch.onnx').setLevel(logging.ERROR)  # e.g. 'torchvision is not installed. Skipping ...'

    generator = torch.Generator().manual_seed(SEED)
    images = torch.randn(DYNAMIC_TRACE_BATCH if args.dynamic else 1, IN_CHANNELS, height, width, generator=generator)
    with torch.no_grad():
        names = output_names(scope, args.features, len(_leaves(module(images))))
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    start = time.perf_counter()
    if args.dynamic:
        axes = export_dynamic(module, images, args.out, names=names, opset=args.opset)
    else:
        axes = ()
        export(module, images, args.out, names=names, axes=axes, opset=args.opset)
    seconds = time.perf_counter() - start
    dynamic = ', '.join(AXIS_NAMES[axis] for axis in axes)
    print(f'wrote {osp.abspath(args.out)} ({osp.getsize(args.out) / 2**20:.1f} MiB) in {seconds:.0f} s: '
          f'{type(module.model).__name__} ({scope}{", features" if args.features else ""}), input images '
          f'(N, {IN_CHANNELS}, H, W), outputs {", ".join(names)}; dynamic axes: {dynamic or "none"}')

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    session = onnx_session(args.out, threads)
    inputs = [images]
    if args.dynamic:
        size = (height + SECOND_SIZE_STEP[0], width + SECOND_SIZE_STEP[1]) if HEIGHT in axes else (height, width)
        inputs.append(torch.randn(1, IN_CHANNELS, *size, generator=generator))
    worst = verify(session, module, inputs)
    if args.benchmark:
        benchmark(session, module, images[:1], args.runs, threads)
    if worst > args.atol:
        print(f'error: the ONNX outputs differ from PyTorch by {worst:.3g} > --atol {args.atol:g}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    toolbox.exit_tool(main)
