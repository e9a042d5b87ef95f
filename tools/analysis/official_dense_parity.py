"""Check an mmmv detection / segmentation config against the official MambaVision model side by side.

    python tools/analysis/official_dense_parity.py OFFICIAL_REPO OFFICIAL_CONFIG MMMV_CONFIG
        [--shape H W] [--dump-layout FILE.json] [--seed N]

    python tools/analysis/official_dense_parity.py ~/src/MambaVision \\
        object_detection/configs/mamba_vision/cascade_mask_rcnn_mamba_vision_tiny_3x_coco.py \\
        configs/cascade_mask_rcnn_mambavision_t_3x_coco.py

OFFICIAL_REPO is a checkout of NVlabs/MambaVision (not distributed with mmmv: its licence is non-commercial);
OFFICIAL_CONFIG is relative to it. The official model is built from its own config and code (``MM_mamba_vision`` from
``object_detection/tools/mamba_vision.py`` or ``semantic_segmentation/tools/mamba_vision.py``), with mamba_ssm's scan
replaced by mmmv's float64 reference loop (the specification, so no GPU and no mamba_ssm build are needed) and every
weight and buffer set to random values. Its whole state dict, saved in the official layout, goes through mmmv's
converter and is loaded with ``strict=True`` into the model built from MMMV_CONFIG; both models then run the same image
in eval mode. Printed: parameter counts, key counts, and the largest differences of the backbone maps, the neck / head
outputs and the final predictions.

``--dump-layout`` writes the official state dict's key names and shapes and its parameter count (facts, no weights)
to a JSON file: tests/data/official_layouts/ holds these for every dense zoo config, and the CPU tests build synthetic
official checkpoints from them.

The official detection configs of S and B place ``neck=dict(in_channels=...)`` inside the backbone's dict, where the
official backbone swallows it, so the neck keeps T's input channels and the model cannot run; the released S and B
checkpoints were evidently trained with the neck matching the backbone. This tool moves such a neck entry to where it
belongs and says so.
"""
import argparse
import json
import os
import os.path as osp
import sys
import tempfile

import torch

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
sys.path.insert(0, ROOT)
sys.path.insert(0, osp.join(ROOT, 'tests', 'helpers'))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('official_repo', help='a checkout of NVlabs/MambaVision')
    parser.add_argument('official_config', help='the official config, relative to OFFICIAL_REPO')
    parser.add_argument('mmmv_config', help='the mmmv config that should build the same model')
    parser.add_argument('--shape', type=int, nargs=2, default=(320, 416), metavar=('H', 'W'))
    parser.add_argument('--dump-layout', help='write the official keys, shapes and parameter count to this JSON file')
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args(argv)


def import_official(repo: str, config: str) -> None:
    """Make ``MM_mamba_vision`` importable and registered (in mmdet's and mmseg's registries)."""
    from run_official_mambavision import install_shims
    install_shims()
    task_dir = config.split('/')[0]
    tools = osp.join(repo, task_dir, 'tools')
    if not osp.isfile(osp.join(tools, 'mamba_vision.py')):
        sys.exit(f'{tools}/mamba_vision.py not found: OFFICIAL_REPO must be a checkout of NVlabs/MambaVision')
    sys.path.insert(0, tools)
    import mamba_vision  # noqa: F401  (the official module; registers MM_mamba_vision)


def build(cfg_path: str, fix_neck: bool):
    from mmengine.config import Config
    from mmengine.registry import DefaultScope, MODELS
    cfg = Config.fromfile(cfg_path)
    note = None
    backbone = cfg.model.backbone
    if fix_neck and 'neck' in backbone:
        note = f'moved neck={backbone.neck} from the backbone dict to model.neck'
        cfg.model.neck.update(backbone.pop('neck'))
    if backbone.get('type') == 'MM_mamba_vision':
        backbone.pop('pretrained', None)
    if 'init_cfg' in backbone:
        backbone.init_cfg = None
    scope = cfg.get('default_scope', 'mmdet')
    __import__(f'{scope}.utils', fromlist=['register_all_modules']).register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope(scope):
        model = MODELS.build(cfg.model)
    return model.eval(), scope, note


def data_samples(scope: str, shape):
    height, width = shape
    meta = dict(img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width),
                scale_factor=(1.0, 1.0), batch_input_shape=(height, width))
    if scope == 'mmdet':
        from mmdet.structures import DetDataSample
        return [DetDataSample(metainfo=meta)]
    from mmseg.structures import SegDataSample
    return [SegDataSample(metainfo=meta)]


def compare(official, mine, scope, shape, seed):
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(1, 3, *shape, generator=generator)
    rows = []
    with torch.no_grad():
        feats = [official.backbone(x), mine.backbone(x)]
        for i, (a, b) in enumerate(zip(*feats)):
            rows.append((f'backbone map {i} {tuple(a.shape)}', a, b))
        if scope == 'mmdet':
            necks = [official.neck(feats[0]), mine.neck(feats[1])]
            rows += [(f'FPN level {i}', a, b) for i, (a, b) in enumerate(zip(*necks))]
            preds = [m.predict(x, data_samples(scope, shape))[0].pred_instances for m in (official, mine)]
            a, b = preds
            if len(a) and len(b):
                # scores of randomly initialised heads tie (many are 1.0), so the order of equal-score detections is
                # arbitrary: match each official box to the nearest mmmv box of the same class instead of by index
                same = a.labels[:, None] == b.labels[None, :]
                dist = torch.cdist(a.bboxes.double(), b.bboxes.double()).masked_fill(~same, float('inf'))
                nearest = dist.argmin(1)
                rows.append((f'predicted boxes ({len(a)} vs {len(b)}), nearest same-class match', a.bboxes,
                             b.bboxes[nearest]))
                rows.append(('scores of the matched boxes', a.scores, b.scores[nearest]))
                rows.append(('masks of the matched boxes (share of pixels that differ)',
                             (a.masks != b.masks[nearest]).float(), torch.zeros(a.masks.shape)))
        else:
            logits = [m._forward(x, data_samples(scope, shape)) for m in (official, mine)]
            rows.append((f'decode-head logits {tuple(logits[0].shape)}', logits[0], logits[1]))
            preds = [m.predict(x, data_samples(scope, shape))[0].pred_sem_seg.data for m in (official, mine)]
            rows.append(('predicted labels (share of pixels that differ)', (preds[0] != preds[1]).float(),
                         torch.zeros_like(preds[0], dtype=torch.float)))
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    import mmmv  # noqa: F401
    from mmmv.checkpoint.convert import convert_checkpoint
    official_config = osp.join(args.official_repo, args.official_config)
    import_official(args.official_repo, args.official_config)
    from run_official_mambavision import randomise_
    official, scope, note = build(official_config, fix_neck=True)
    randomise_(official, args.seed, scale=0.05, norm_weights_around_one=True)
    state_dict = official.state_dict()
    official_params = sum(p.numel() for p in official.parameters())
    if args.dump_layout:
        os.makedirs(osp.dirname(osp.abspath(args.dump_layout)), exist_ok=True)
        with open(args.dump_layout, 'w') as f:
            json.dump(dict(official_config=args.official_config, note=note, param_count=official_params,
                           keys={k: list(v.shape) for k, v in state_dict.items()}), f, indent=0)

    with tempfile.TemporaryDirectory() as tmp:
        src = osp.join(tmp, 'official.pth')
        torch.save(dict(state_dict=state_dict, meta=dict(dataset_meta=dict(classes=('a',)))), src)
        result, unmapped = convert_checkpoint(src)
    if unmapped:
        print('unmapped official keys:', unmapped)
        return 1
    mine, _, _ = build(osp.join(ROOT, args.mmmv_config) if not osp.isabs(args.mmmv_config) else args.mmmv_config,
                       fix_neck=False)
    mine.load_state_dict(result['state_dict'], strict=True)
    mine_params = sum(p.numel() for p in mine.parameters())

    print(f'official: {args.official_config}' + (f' ({note})' if note else ''))
    print(f'mmmv:     {args.mmmv_config}')
    print(f'parameters: official {official_params:,}  mmmv {mine_params:,}  '
          f'{"equal" if official_params == mine_params else "DIFFERENT"}')
    print(f'state-dict keys: official {len(state_dict)}, converted and loaded strictly into mmmv\'s model')
    print(f'| output (input 1 x 3 x {args.shape[0]} x {args.shape[1]}) | max abs diff | mean abs diff | '
          'max abs value |')
    print('|---|---|---|---|')
    for name, a, b in compare(official, mine, scope, tuple(args.shape), args.seed):
        diff = (a.double() - b.double()).abs() if a.numel() else torch.zeros(1)
        print(f'| {name} | {diff.max().item():.3g} | {diff.mean().item():.3g} | {a.abs().max().item():.3g} |')
    return 0 if official_params == mine_params else 1


if __name__ == '__main__':
    sys.exit(main())
