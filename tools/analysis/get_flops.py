"""Parameters and FLOPs of an mmdet / mmseg / mmpretrain config's model, counting what the usual counters miss.

    python tools/analysis/get_flops.py CONFIG [--shape H [W]] [--cfg-options KEY=VALUE ...] [--device cpu|cuda]

Builds the config's model with its toolbox's registry (the config's ``default_scope``), without loading any
``init_cfg`` checkpoint (the weights are random: FLOPs do not depend on them), puts it in eval mode and counts one
forward of a random (1, 3, H, W) input, with no data preprocessing:

- detection (mmdet): ``_forward`` (``mode='tensor'``): backbone, neck, the RPN and its proposals, the RoI heads on
  those proposals (their number after NMS depends on the input); no box post-processing. Also the backbone + neck
  alone. Default input 800 x 1280 (H x W), as mmdet's own get_flops.
- segmentation (mmseg): ``_forward`` (``mode='tensor'``): backbone, neck, decode head (auxiliary heads run only in
  training). Default input: the config's crop size.
- classification (mmpretrain): ``mode='tensor'``: backbone, neck, head. Default input: the config's test crop (224).

Each column gives the parameters (all of the model's, auxiliary heads included, or those of the named parts), the
FLOPs the usual counters (mmengine / fvcore, and mmdet's and mmseg's get_flops) report, the selective scan and the
attention matmuls they miss, and the total; 1 multiply-add = 1 FLOP. Conventions: docs/flops.md and
``mmmv/analysis/flops.py``. The last line is a markdown row for the table in docs/flops.md.
"""
import argparse
import os.path as osp
import sys
import time

import torch

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..', '..')))

from mmmv.analysis import count_complexity, format_table, giga, summary_row  # noqa: E402
from mmmv.engine import toolbox  # noqa: E402

IN_CHANNELS = 3

# What the forward counts, and which of the model's children are also reported together, per toolbox.
COUNTED = {
    'mmdet': ("the detector's _forward (mode='tensor'): backbone, neck, RPN + proposals, RoI heads on those "
              'proposals; no box post-processing', {'backbone + neck': ('backbone', 'neck')}),
    'mmseg': ("the segmentor's _forward (mode='tensor'): backbone, neck, decode head; auxiliary heads do not run "
              '(their parameters are counted)', {'backbone': ('backbone', )}),
    'mmpretrain': ("the classifier's forward (mode='tensor'): backbone, neck, head", {'backbone': ('backbone', )}),
}


def parse_args(argv=None) -> argparse.Namespace:
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='config file, e.g. configs/upernet_mambavision_t_ade20k.py')
    parser.add_argument('--shape', type=int, nargs='+', metavar='H W',
                        help='input height and width (one value: square); default per toolbox, see above')
    parser.add_argument('--device', default='cpu', help='cpu (default) or cuda')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. "model.backbone.arch=\'S\'"')
    args = parser.parse_args(argv)
    if args.shape is not None and len(args.shape) not in (1, 2):
        parser.error(f'--shape takes H and W (or one size), got {args.shape}')
    return args


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------
def build_model(cfg) -> torch.nn.Module:
    """The config's model in its toolbox, eval mode, random weights (no init_cfg checkpoint is read), SyncBN reverted."""
    return toolbox.build_model(cfg)


def _tensors(output) -> tuple:
    """The tensors of a nested output (tuples, lists, dicts), in order: what a jit trace may return."""
    if isinstance(output, torch.Tensor):
        return (output, )
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return tuple(t for item in output for t in _tensors(item))
    return ()


def bind_forward(model: torch.nn.Module, scope: str, shape: tuple) -> list:
    """Make ``model(images)`` run the counted pass (an instance attribute shadows the class's forward).

    Returns a list that receives, for a two-stage detector, the number of proposals its RoI heads run on.
    """
    forward = model.forward
    proposals = []
    if scope != 'mmdet':
        model.forward = lambda images: _tensors(forward(images, mode='tensor'))
        return proposals
    from mmdet.structures import DetDataSample
    meta = dict(img_shape=shape, ori_shape=shape, pad_shape=shape, batch_input_shape=shape, scale_factor=(1.0, 1.0))
    samples = [DetDataSample(metainfo=meta)]
    model.forward = lambda images: _tensors(forward(images, samples, mode='tensor'))
    rpn_head = getattr(model, 'rpn_head', None)
    if rpn_head is not None:
        predict = rpn_head.predict

        def predict_and_count(*args, **kwargs):
            results = predict(*args, **kwargs)
            proposals.append(sum(len(result) for result in results))
            return results
        rpn_head.predict = predict_and_count
    return proposals


# ---------------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    args = parse_args(argv)
    from mmmv.engine.cli import load_tool_config
    cfg = load_tool_config(args.config, args.cfg_options)
    scope = cfg.default_scope
    shape = (tuple(args.shape) * 2)[:2] if args.shape else toolbox.default_shape(cfg, scope)
    counted, parts = COUNTED[scope]

    model = build_model(cfg).to(args.device)
    parts = {label: names for label, names in parts.items() if all(hasattr(model, n) for n in names)}
    proposals = bind_forward(model, scope, shape)
    images = torch.randn(1, IN_CHANNELS, *shape, device=args.device)
    start = time.perf_counter()
    report = count_complexity(model, images, parts=parts)
    seconds = time.perf_counter() - start

    columns = {**report.parts, 'whole model': report.model}
    name = osp.splitext(osp.basename(args.config))[0]
    print(f'config: {args.config} ({scope} {type(model).__name__}), input 1x{IN_CHANNELS}x{shape[0]}x{shape[1]}, '
          f'eval mode, random weights (init_cfg checkpoints not loaded), counted in {seconds:.1f} s on {args.device}')
    print(f'counted: {counted}' + (f'; the RoI heads ran on {proposals[0]} proposals' if proposals else ''))
    print('convention: 1 FLOP = 1 multiply-add, as mmengine / fvcore and mmdet / mmseg get_flops count convolutions, '
          'linears and matmuls; elementwise ops are not counted, except inside the selective scan (docs/flops.md)')
    print()
    print(format_table(columns))
    print()
    whole = report.model
    print(f'"usual" is what mmengine\'s get_model_complexity_info counts; it misses the {giga(whole.scan)} G of '
          'selective scan' + (f' and the {giga(whole.attention)} G of attention matmuls inside '
                              'F.scaled_dot_product_attention' if whole.attention else '') + '.')
    print(f'with 2 FLOPs per multiply-add the scan is {giga(whole.scan_2mac)} G; the attention doubles, and so does '
          'the usual count up to its norms and interpolations.')
    others = sorted(op for op in report.unsupported_ops if not op.startswith('aten::'))
    if others:
        print(f'also left at 0 by the usual counter: {", ".join(others)}')
    print('docs row (| config | input | params M | usual G | scan G | attention G | total G |):')
    print(summary_row(name, shape, whole))
    return 0


if __name__ == '__main__':
    toolbox.exit_tool(main)
