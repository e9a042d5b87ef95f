"""mmmv against the original code on one GPU: the official MambaVision and the official VM-UNet vs mmmv, eager and compiled.

Implementations (``--impls``, comma-separated, each timed in turn with memory freed in between):

    official            the original model code on mamba_ssm's CUDA ``selective_scan_fn``: PyPI ``mambavision``
                        (``mamba_vision_T/S/B``, random init) or JCruan519/VM-UNet's ``models/vmunet`` imported
                        from ``--official-vmunet DIR`` (its ``vmunet.py`` and ``vmamba.py``, unmodified)
    official-compiled   the same under ``torch.compile`` (mamba_ssm's op is no custom op: dynamo breaks the graph
                        there; the graph-break count goes in the note, a failure is reported, not raised)
    mmmv                ``MambaVisionClassifier`` / the VM-UNet of ``benchmark_vmunet.py`` (VSSEncoder + VM-UNet
                        decoder, mmmv's default Triton scan, fused 2D scan)
    mmmv-compiled       the same model under ``torch.compile(model)`` (inductor, default mode); the optimizer
                        step stays eager; ``--compile-mode`` gives torch.compile's ``mode`` (e.g.
                        ``reduce-overhead``: CUDA graphs), noted in the rows. (The config switch
                        ``model.backbone.compile=True`` is timed through ``tools/train.py`` by
                        ``benchmark_train.py`` instead.)

Work (``--works``): ``train``: one optimisation step (forward, loss, backward, AdamW step, zero_grad);
``infer``: a forward pass without grad in eval mode. Time = CUDA events around each whole call after
``--warmup`` calls (host overhead included, GPU synchronised before each call), median of ``--steps``. With
``--gpu-busy`` (on a GPU) the note also gives the share of that time the GPU is busy (its kernel time over three more
calls after three warm-up ones, torch.profiler, as `benchmark_selective_scan.kernel_ms` measures it): below 100%, the
step waits for the host. Off by default: once the profiler has run, CUPTI stays attached to the process
(pytorch/pytorch#144455) and every later row's host time grows, so a side-by-side run must not profile; profile in a
run of its own. (On an H200, MambaVision-T's mmmv train step took 66.6 ms after the official row's profile and 49.1
ms in a process of its own; a later one-process run without the profiler gave 65.7 ms again, so the profiler was not
the whole cause: compare rows from separate processes too, `report`.) ``--no-gc`` turns Python's garbage collector
off during each row's timed calls (after a collection), as ``timeit`` does, so that no collection pause lands in one
implementation's calls and not another's. ``--out`` keeps every timed call's ms (``times_ms``). ``--nchw``
(``mambavision``) builds mmmv's model with ``channels_last=False``, its stem and convolutional stages NCHW as before
the eighth session (its rows say so), for an A/B of that option.

- ``mambavision``: batch 128, 224 x 224, bfloat16 autocast, cross-entropy against random labels.
- ``vmunet``: batch 32, 256 x 256, 1 class, ``--dtypes float32,bfloat16`` (autocast; VM-UNet trains in float32),
  VM-UNet's BCE + Dice loss on the sigmoid output (computed in float32 outside autocast).

Sanity column of the ``official`` rows: the official model's weights converted to mmmv
(``mmmv.checkpoint.convert.convert_official`` / ``mmmv.checkpoint.vmunet.convert_vmunet``), one float32 forward of
both in eval mode on the same input: max |mmmv - official| / max |official| of the outputs.

    python tools/analysis/benchmark_official.py mambavision --impls official,mmmv,mmmv-compiled --archs T
    python tools/analysis/benchmark_official.py vmunet --official-vmunet DIR --impls official,mmmv --out v.json
    python tools/analysis/benchmark_official.py report a.json b.json      # one table per model from saved runs

``--standin-scan`` (CPU checks only) lets the official code import without mamba_ssm by giving it mmmv's torch scan
as ``selective_scan_fn``; its rows say so.
"""
import argparse
import contextlib
import gc
import importlib
import importlib.util
import json
import math
import os
import os.path as osp
import statistics
import sys
import time
import types
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
sys.path.insert(0, ROOT)

AUTOCAST = {'bfloat16': torch.bfloat16, 'float16': torch.float16, 'float32': None}
IMPLS = ('official', 'official-compiled', 'mmmv', 'mmmv-compiled')
WORKS = ('train', 'infer')
COMPILE_MODES = ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')
MAMBAVISION_ARCHS = ('T', 'T2', 'S', 'B', 'L', 'L2')
# VM-UNet as its ISIC configs build it (configs/config_setting.py of the original repository)
VMUNET_KWARGS = dict(num_classes=1, input_channels=3, depths=[2, 2, 2, 2], depths_decoder=[2, 2, 2, 1],
                     drop_path_rate=0.2)
PARITY_BATCH = 2
STANDIN_NOTE = 'scan stand-in: mmmv torch backend, not mamba_ssm'


# ---------------------------------------------------------------------------------------------------------------------
# Importing the original code
# ---------------------------------------------------------------------------------------------------------------------
def install_torchvision_shim() -> None:
    """timm imports torchvision at module level; where none works, the names it imports are stubbed (the models
    timed here use none of them; see tests/helpers/torchvision_shim.py)."""
    sys.path.insert(0, osp.join(ROOT, 'tests', 'helpers'))
    try:
        import torchvision_shim
        torchvision_shim.install_if_needed()
    finally:
        sys.path.pop(0)


def mamba_ssm_status(standin: bool, official_runs: bool = True) -> str:
    """Make ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` importable; returns a description.

    Without ``standin`` a missing or broken mamba_ssm raises (the official rows would not be the original code).
    Without ``official_runs`` the official model is only built (it gives every implementation its weights), never
    run: mamba_ssm is not imported (it may still be building) and a stub that raises if called takes its place."""
    if not official_runs:
        def never_called(*args, **kwargs):
            raise RuntimeError('the official model was built for its weights only; it cannot run here')

        install_scan_module(never_called)
        return ''
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: F401
        import mamba_ssm
        return f'mamba_ssm {getattr(mamba_ssm, "__version__", "?")}'
    except Exception as error:  # noqa: BLE001 - re-raised below unless a stand-in was asked for
        if not standin:
            raise RuntimeError(f'mamba_ssm does not import ({type(error).__name__}: {error}); build it '
                               '(.whl/official/build_mamba.sh) or pass --standin-scan for a CPU check') from error
    from mmmv.ops import selective_scan

    def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False):
        return selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                              return_last_state=return_last_state, backend='torch')

    install_scan_module(selective_scan_fn)
    return STANDIN_NOTE


def install_scan_module(selective_scan_fn: Callable) -> None:
    """A module ``mamba_ssm.ops.selective_scan_interface`` holding only ``selective_scan_fn``."""
    for name in [n for n in sys.modules if n == 'mamba_ssm' or n.startswith('mamba_ssm.')]:
        del sys.modules[name]
    interface = types.ModuleType('mamba_ssm.ops.selective_scan_interface')
    interface.selective_scan_fn = selective_scan_fn
    sys.modules['mamba_ssm'] = types.ModuleType('mamba_ssm')
    sys.modules['mamba_ssm.ops'] = types.ModuleType('mamba_ssm.ops')
    sys.modules['mamba_ssm.ops.selective_scan_interface'] = interface


def official_mambavision(arch: str) -> nn.Module:
    """PyPI ``mambavision``'s ``mamba_vision_<arch>(pretrained=False)``: the official variant table, random init."""
    install_torchvision_shim()
    from mambavision.models import mamba_vision
    return getattr(mamba_vision, f'mamba_vision_{arch}')(pretrained=False)


def official_vmunet(directory: str) -> nn.Module:
    """``VMUNet`` of the original repository's ``models/vmunet`` (``vmunet.py`` + ``vmamba.py``) in ``directory``,
    imported as a package (``vmunet.py`` imports ``.vmamba``)."""
    install_torchvision_shim()
    if not osp.isfile(osp.join(directory, 'vmunet.py')) or not osp.isfile(osp.join(directory, 'vmamba.py')):
        raise FileNotFoundError(f'{directory} must hold the original vmunet.py and vmamba.py')
    package = 'official_vmunet'
    if package not in sys.modules:
        spec = importlib.util.spec_from_file_location(package, osp.join(directory, '__init__.py'),
                                                      submodule_search_locations=[directory])
        module = importlib.util.module_from_spec(spec)
        sys.modules[package] = module  # no __init__.py runs: the package is only a namespace for the two files
    vmamba = importlib.import_module(f'{package}.vmamba')
    if not hasattr(vmamba, 'selective_scan_fn'):
        # vmamba.py wraps its mamba_ssm import in a bare `except: pass`, so a failure would surface as NameError
        # at the first forward; take the function from where mamba_ssm_status() put it
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        vmamba.selective_scan_fn = selective_scan_fn
    return importlib.import_module(f'{package}.vmunet').VMUNet(**VMUNET_KWARGS)


# ---------------------------------------------------------------------------------------------------------------------
# mmmv's models, with the official weights
# ---------------------------------------------------------------------------------------------------------------------
def mmmv_mambavision(arch: str, drop_path_rate: float, channels_last: bool = True) -> nn.Module:
    from mmmv.models import MambaVisionClassifier
    return MambaVisionClassifier(arch, drop_path_rate=drop_path_rate, channels_last=channels_last)


def _tool_module(name: str) -> types.ModuleType:
    """Another script of tools/analysis, imported as a module."""
    sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def mmmv_vmunet() -> nn.Module:
    """The VM-UNet of benchmark_vmunet.py with a sigmoid, as the original ``VMUNet`` returns for one class."""
    VMUNet = _tool_module('benchmark_vmunet').VMUNet

    class SigmoidVMUNet(VMUNet):
        def logits(self, x):
            return super().forward(x)[0]

        def forward(self, x):
            return torch.sigmoid(self.logits(x))

    return SigmoidVMUNet(num_classes=VMUNET_KWARGS['num_classes'])


def mambavision_weights(official: nn.Module) -> Dict[str, torch.Tensor]:
    from mmmv.checkpoint.convert import convert_official
    converted, unmapped = convert_official(official.state_dict())
    if unmapped:
        raise RuntimeError(f'official MambaVision keys with no mmmv name: {unmapped[:5]}')
    return converted


def vmunet_weights(official: nn.Module) -> Dict[str, torch.Tensor]:
    from mmmv.checkpoint.vmunet import HEAD_PREFIX, convert_vmunet
    converted, unmapped = convert_vmunet(official.state_dict())
    if unmapped:
        raise RuntimeError(f'official VM-UNet keys with no mmmv name: {unmapped[:5]}')
    # the plain model holds the head's modules at the top level
    return {key[len(HEAD_PREFIX):] if key.startswith(HEAD_PREFIX) else key: value for key, value in converted.items()}


def relative_difference(official: Callable, ours: Callable, images: torch.Tensor) -> float:
    """max |ours - official| / max |official| of one float32 forward (both models in eval mode)."""
    with torch.no_grad():
        reference = official(images).float()
        output = ours(images).float()
    return ((output - reference).abs().max() / reference.abs().max().clamp_min(1e-30)).item()


def parity(family: str, official: nn.Module, ours: nn.Module, weights: Dict[str, torch.Tensor],
           images: torch.Tensor) -> float:
    """Relative output difference of mmmv's model holding the official weights; VM-UNet compared before its
    sigmoid (the logits)."""
    ours.load_state_dict(weights, strict=True)
    official.eval()
    ours.eval()
    try:
        if family == 'mambavision':
            return relative_difference(official, ours, images)
        return relative_difference(official.vmunet, ours.logits, images)
    finally:
        official.train()


# ---------------------------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------------------------
class Timer:
    """CUDA events around a whole call on a GPU (after synchronising), wall clock on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == 'cuda'

    def __call__(self, fn: Callable[[], None]) -> float:
        if not self.cuda:
            start = time.perf_counter()
            fn()
            return 1e3 * (time.perf_counter() - start)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)


def bce_dice_loss(prob: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """VM-UNet's BceDiceLoss (weights 1, 1) on probabilities: BCE plus 1 - the mean per-image Dice."""
    prob, target = prob.float(), target.float()
    bce = F.binary_cross_entropy(prob.flatten(), target.flatten())
    intersection = (prob.flatten(1) * target.flatten(1)).sum(1)
    dice = (2 * intersection + smooth) / (prob.flatten(1).sum(1) + target.flatten(1).sum(1) + smooth)
    return bce + 1 - dice.mean()


def time_work(model: nn.Module, work: str, images: torch.Tensor, target: torch.Tensor,
              loss_fn: Callable, autocast: Optional[torch.dtype], optimizer_fn: Callable, args) -> dict:
    """Median / min ms, images / s and peak GiB of ``args.steps`` calls after ``args.warmup``."""
    device = images.device
    timer = Timer(device)
    amp = (lambda: torch.autocast(device.type, dtype=autocast)) if autocast is not None else contextlib.nullcontext
    if work == 'train':
        model.train()
        optimizer = optimizer_fn(model.parameters())

        def call():
            with amp():
                output = model(images)
            loss = loss_fn(output, target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    else:
        model.eval()
        optimizer = None

        def call():
            with torch.no_grad(), amp():
                model(images)

    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    if args.no_gc:  # as timeit does: no collection pauses inside the timed calls, for every implementation alike
        gc.collect()
        gc.disable()
    try:
        all_times = [timer(call) for _ in range(args.warmup + args.steps)]
    finally:
        if args.no_gc:
            gc.enable()
    times = all_times[args.warmup:]
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == 'cuda' else float('nan')
    median = statistics.median(times)
    result = dict(median_ms=median, min_ms=min(times), images_per_s=images.shape[0] / median * 1e3, peak_gib=peak,
                  first_call_ms=all_times[0], times_ms=[round(t, 3) for t in times])  # in the JSON: spikes show
    if device.type == 'cuda' and args.gpu_busy:
        # the scan benchmark's GPU kernel time: every kernel, copy and fill of a call (torch.profiler), without the
        # gaps between them; over the wall time, the share of the step the GPU is busy (the rest it waits for the host)
        result['gpu_busy'] = _tool_module('benchmark_selective_scan').kernel_ms(call, calls=3) / median
    del optimizer
    return result


def busy_note(row: dict) -> str:
    """'GPU busy NN%' for a row timed on a GPU, else ''."""
    return f"GPU busy {row['gpu_busy']:.0%}" if row.get('gpu_busy') is not None else ''


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def graph_breaks() -> int:
    from torch._dynamo.utils import counters
    return sum(counters['graph_break'].values())


# ---------------------------------------------------------------------------------------------------------------------
# One model family
# ---------------------------------------------------------------------------------------------------------------------
def run_family(family: str, variants: List[str], args, device: torch.device, scan_note: str) -> List[dict]:
    """Rows of every (variant, impl, work) of one model family, printed as they come."""
    rows = []
    for variant in variants:
        if family == 'mambavision':
            size, batch = args.size or 224, args.batch or 128
            build_official = lambda: official_mambavision(variant)  # noqa: E731
            build_mmmv = lambda official: mmmv_mambavision(  # noqa: E731
                variant, official_drop_path(official), channels_last=not args.nchw)
            weights_of = mambavision_weights
            dtype = args.dtypes[0]
            target_fn = lambda: torch.randint(0, 1000, (batch,), device=device)  # noqa: E731
            loss_fn = F.cross_entropy
            optimizer_fn = lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)  # noqa: E731
            settings = [(dtype, work) for work in args.works]
            label = f'MambaVision-{variant}'
            mmmv_note = 'NCHW convolutional stages (channels_last=False)' if args.nchw else ''
        else:
            size, batch = args.size or 256, args.batch or 32
            build_official = lambda: official_vmunet(args.official_vmunet)  # noqa: E731
            build_mmmv = lambda official: mmmv_vmunet()  # noqa: E731
            weights_of = vmunet_weights
            target_fn = lambda: (torch.rand(batch, 1, size, size, device=device) > 0.5).float()  # noqa: E731
            loss_fn = bce_dice_loss
            optimizer_fn = lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)  # noqa: E731
            settings = [(dtype, work) for dtype in args.dtypes for work in args.works]
            label = 'VM-UNet'
            mmmv_note = ''
        torch.manual_seed(0)
        images = torch.randn(batch, 3, size, size, device=device)
        target = target_fn()
        # the official model defines the weights (and the drop-path rate) of every implementation
        official = build_official().to(device)
        weights = {key: value.detach().clone() for key, value in weights_of(official).items()}
        for impl in args.impls:
            note = scan_note if impl.startswith('official') else mmmv_note
            if impl.startswith('official'):
                model = official
                if impl == 'official':
                    parity_model = build_mmmv(official).to(device)
                    diff = parity(family, official, parity_model, weights, images[:PARITY_BATCH])
                    del parity_model
                    note = '; '.join(filter(None, [note, f'mmmv vs official (fp32, eval): {diff:.1e}']))
            else:
                model = build_mmmv(official).to(device)
                model.load_state_dict(weights, strict=True)
            compiled = impl.endswith('-compiled')
            for dtype, work in settings:
                row = dict(model=label, variant=variant, impl=impl, work=work, dtype=dtype, batch=batch, size=size,
                           note=note)
                timed = model
                if compiled:
                    torch._dynamo.reset()
                    breaks_before = graph_breaks()
                    timed = torch.compile(model, mode=args.compile_mode)
                try:
                    row.update(time_work(timed, work, images, target, loss_fn, AUTOCAST[dtype], optimizer_fn, args))
                    breaks = f'{graph_breaks() - breaks_before} graph breaks' if compiled else ''
                    if compiled and args.compile_mode:
                        breaks += f', mode {args.compile_mode}'
                    row['note'] = '; '.join(filter(None, [note, breaks, busy_note(row)]))
                except Exception as error:  # noqa: BLE001 - a failing implementation is a result, reported as such
                    message = str(error).strip().splitlines()[0][:300] if str(error).strip() else ''
                    row.update(median_ms=None, error=f'{type(error).__name__}: {message}')
                    print(f'{label} {impl} {work} {dtype}: failed: {row["error"]}', flush=True)
                finally:
                    if compiled:
                        del timed
                        torch._dynamo.reset()
                    model.zero_grad(set_to_none=True)
                    free_memory()
                rows.append(row)
                print_row(row)
            if not impl.startswith('official'):
                del model
            free_memory()
        del official, weights
        free_memory()
    return rows


def official_drop_path(official: nn.Module) -> float:
    """The official model's drop-path rate: the largest DropPath probability it holds (the last block's)."""
    rates = [float(getattr(m, 'drop_prob', 0.0)) for m in official.modules()]
    return round(max(rates, default=0.0), 6)


# ---------------------------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------------------------
HEADER = ('| model | implementation | work | dtype | batch, size | median ms | min ms | images / s | peak GiB | '
          'x official | note |')
SEPARATOR = '|---' * (HEADER.count('|') - 1) + '|'


def print_row(row: dict, official_ms: Optional[float] = None) -> None:
    if row.get('median_ms') is None:
        cells = ['-'] * 5 + [row.get('error', 'failed')]
    else:
        ratio = '-' if not official_ms else f"{row['median_ms'] / official_ms:.2f}x"
        cells = [f"{row['median_ms']:.1f}", f"{row['min_ms']:.1f}", f"{row['images_per_s']:.0f}",
                 f"{row['peak_gib']:.2f}", ratio, row.get('note', '')]
    print(f"| {row['model']} | {row['impl']} | {row['work']} | {row['dtype']} | {row['batch']}, {row['size']} | "
          + ' | '.join(cells) + ' |', flush=True)


def print_tables(rows: List[dict], environment: Optional[dict] = None) -> None:
    if environment:
        print('\n' + ', '.join(f'{k} {v}' for k, v in environment.items()))
    for model in dict.fromkeys(row['model'] for row in rows):
        print(f'\n{model}\n\n{HEADER}\n{SEPARATOR}')
        official = {(r['work'], r['dtype']): r['median_ms'] for r in rows
                    if r['model'] == model and r['impl'] == 'official' and r.get('median_ms')}
        for row in sorted((r for r in rows if r['model'] == model),
                          key=lambda r: (r['dtype'], WORKS.index(r['work']), IMPLS.index(r['impl']))):
            print_row(row, official.get((row['work'], row['dtype'])))


def environment_of(device: torch.device, scan_note: str) -> dict:
    def version(name):
        try:
            return importlib.import_module(name).__version__
        except Exception:  # noqa: BLE001 - absent packages are reported as such
            return 'not installed'

    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'
    return dict(device=name, torch=torch.__version__, triton=version('triton'), scan=scan_note,
                mmmv=version('mmmv'))


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    sub = parser.add_subparsers(dest='family', required=True)
    for family in ('mambavision', 'vmunet'):
        p = sub.add_parser(family)
        p.add_argument('--impls', default='official,mmmv,mmmv-compiled', help=f'comma-separated, from {IMPLS}')
        p.add_argument('--works', default='train,infer', help=f'comma-separated, from {WORKS}')
        p.add_argument('--batch', type=int, help='default: 128 (MambaVision), 32 (VM-UNet)')
        p.add_argument('--size', type=int, help='default: 224 (MambaVision), 256 (VM-UNet)')
        p.add_argument('--steps', type=int, default=20)
        p.add_argument('--warmup', type=int, default=10)
        p.add_argument('--device', default='cuda', help="'cpu' only for checking the script")
        p.add_argument('--standin-scan', action='store_true',
                       help='without mamba_ssm, give the official code mmmv\'s torch scan (CPU checks only)')
        p.add_argument('--out', help='write the rows (with every timed call, times_ms) and the environment as JSON')
        p.add_argument('--no-gc', action='store_true',
                       help="Python's garbage collector off during the timed calls (collected before them)")
        p.add_argument('--gpu-busy', action='store_true',
                       help='note the share of each step the GPU is busy (torch.profiler; slows the rows after it)')
        p.add_argument('--compile-mode', choices=COMPILE_MODES,
                       help="torch.compile's mode for the -compiled rows (default: its default); e.g. reduce-overhead "
                            '(CUDA graphs), which the backbones\' compile switch also takes')
        if family == 'mambavision':
            p.add_argument('--archs', default='T,S,B', help=f'comma-separated, from {MAMBAVISION_ARCHS}')
            p.add_argument('--dtypes', default='bfloat16', help='autocast dtype')
            p.add_argument('--nchw', action='store_true',
                           help="mmmv's model with channels_last=False: its stem and convolutional stages in NCHW")
        else:
            p.add_argument('--official-vmunet', required=True,
                           help="folder with the original repository's models/vmunet/{vmunet,vmamba}.py")
            p.add_argument('--dtypes', default='float32,bfloat16', help='comma-separated autocast dtypes')
    p = sub.add_parser('report', help='print the tables of saved --out files together')
    p.add_argument('files', nargs='+')
    args = parser.parse_args(argv)
    if args.family == 'report':
        return args
    for name, allowed in (('impls', IMPLS), ('works', WORKS), ('dtypes', tuple(AUTOCAST))):
        values = [v.strip() for v in getattr(args, name).split(',') if v.strip()]
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            parser.error(f'--{name}: {bad or "empty"}; choose from {allowed}')
        setattr(args, name, values)
    if args.family == 'mambavision':
        args.archs = [a.strip() for a in args.archs.split(',') if a.strip()]
        bad = [a for a in args.archs if a not in MAMBAVISION_ARCHS]
        if bad or not args.archs:
            parser.error(f'--archs: {bad or "empty"}; choose from {MAMBAVISION_ARCHS}')
    if args.steps < 1 or args.warmup < 0:
        parser.error('--steps must be >= 1 and --warmup >= 0')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.family == 'report':
        rows, environment = [], None
        for path in args.files:
            with open(path) as f:
                saved = json.load(f)
            rows += saved['rows']
            environment = environment or saved['environment']
        print_tables(rows, environment)
        return 0
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        print('error: no CUDA GPU (pass --device cpu to check the script on the CPU)', file=sys.stderr)
        return 2
    # every run builds the official model (it defines the weights of all implementations); only runs with an
    # official implementation need its scan
    scan_note = mamba_ssm_status(args.standin_scan, any(impl.startswith('official') for impl in args.impls))
    environment = environment_of(device, scan_note)
    print(', '.join(f'{k} {v}' for k, v in environment.items()), flush=True)
    print(f'\n{HEADER}\n{SEPARATOR}')
    variants = args.archs if args.family == 'mambavision' else ['']
    rows = run_family(args.family, variants, args, device, scan_note)
    print_tables(rows, environment)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(environment=environment, rows=rows), f, indent=1)
    return 0 if all(row.get('median_ms') is not None for row in rows) else 1


if __name__ == '__main__':
    sys.exit(main())
