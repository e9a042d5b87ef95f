"""The detection and segmentation zoo configs: official recipes, official models, official whole checkpoints.

The expected settings below are written out from the official recipes (../shared/ANCHORS.md section 1), independently
of the configs. tests/data/official_layouts/*.json hold the key names, shapes and parameter count of the official model
of each config, dumped from the official code by tools/analysis/official_dense_parity.py (which also compares the
two models' outputs, see docs/model_zoo.md); here synthetic checkpoints in that layout go through the converter and
load strictly.
"""
import json
import os.path as osp
import subprocess
import sys

import pytest
import torch

mmengine = pytest.importorskip('mmengine', reason='the OpenMMLab stack is installed by tools/install.sh')
from mmengine.config import Config  # noqa: E402
from mmmv.engine import toolbox  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
LAYOUTS = osp.join(REPO, 'tests', 'data', 'official_layouts')
CONVERTER = osp.join(REPO, 'tools', 'model_converters', 'mambavision2mmmv.py')

T = dict(depths=(1, 3, 8, 4), dim=80, in_dim=32, num_heads=(2, 4, 8, 16))
S = dict(depths=(3, 3, 7, 5), dim=96, in_dim=64, num_heads=(2, 4, 8, 16))
B = dict(depths=(3, 3, 10, 5), dim=128, in_dim=64, num_heads=(2, 4, 8, 16))
L3 = dict(depths=(3, 3, 20, 10), dim=256, in_dim=64, num_heads=(4, 8, 16, 32))
# config -> (toolbox, backbone, windows, drop path, layer scale, lr, weight decay, AMP)
DENSE = {
    'cascade_mask_rcnn_mambavision_t_3x_coco': ('mmdet', T, (8, 8, 112, 56), 0.2, None, 1e-4, 0.05, True),
    'cascade_mask_rcnn_mambavision_s_3x_coco': ('mmdet', S, (8, 8, 112, 56), 0.3, None, 1e-4, 0.05, True),
    'cascade_mask_rcnn_mambavision_b_3x_coco': ('mmdet', B, (8, 8, 112, 56), 0.5, 1e-5, 2e-4, 0.05, True),
    'upernet_mambavision_t_ade20k': ('mmseg', T, (8, 8, 64, 32), 0.3, None, 5e-5, 0.01, True),
    'upernet_mambavision_s_ade20k': ('mmseg', S, (8, 8, 160, 56), 0.7, None, 6e-5, 0.01, True),
    'upernet_mambavision_b_ade20k': ('mmseg', B, (8, 8, 64, 32), 0.4, 1e-5, 5e-5, 0.01, True),
    'upernet_mambavision_l3_512_21k_ade20k_640': ('mmseg', L3, (8, 8, 64, 32), 0.8, 1e-5, 8e-5, 0.05, False),
}
CASCADE_STDS = [[0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067]]
MULTI_SCALE = [(s, 1333) for s in (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)]


def load(name):
    return Config.fromfile(osp.join(REPO, 'configs', name + '.py'))


@pytest.mark.parametrize('name', sorted(DENSE))
def test_recipe_is_the_official_one(name):
    scope, arch, windows, drop_path, layer_scale, lr, wd, amp = DENSE[name]
    cfg = load(name)
    assert cfg.default_scope == scope
    assert cfg.custom_imports == dict(imports=['mmmv'], allow_failed_imports=False)
    backbone = cfg.model.backbone
    assert backbone.type == 'MambaVision' and tuple(backbone.out_indices) == (0, 1, 2, 3)
    assert tuple(backbone.window_size) == windows and backbone.drop_path_rate == drop_path
    assert backbone.init_cfg.type == 'Pretrained' and backbone.init_cfg.prefix == 'backbone.'
    optim = cfg.optim_wrapper
    assert optim.type == ('AmpOptimWrapper' if amp else 'OptimWrapper')
    assert optim.optimizer.type == 'AdamW' and optim.optimizer.lr == lr and optim.optimizer.weight_decay == wd
    assert tuple(optim.optimizer.betas) == (0.9, 0.999)
    assert optim.paramwise_cfg.custom_keys == {'norm': dict(decay_mult=0.0)}
    channels = [arch['dim'] * 2 ** i for i in range(4)]
    if scope == 'mmdet':
        assert cfg.model.type == 'CascadeRCNN' and cfg.model.neck.in_channels == channels
        assert cfg.train_cfg.max_epochs == 36 and cfg.train_dataloader.batch_size == 2
        warmup, steps = cfg.param_scheduler
        assert (warmup.type, warmup.start_factor, warmup.end, warmup.by_epoch) == ('LinearLR', 0.001, 1000, False)
        assert (steps.type, steps.milestones, steps.gamma, steps.end) == ('MultiStepLR', [27, 33], 0.1, 36)
        heads = cfg.model.roi_head.bbox_head
        assert len(heads) == 3
        for head, stds in zip(heads, CASCADE_STDS):
            assert (head.type, head.num_shared_convs, head.num_shared_fcs) == ('ConvFCBBoxHead', 4, 1)
            assert (head.conv_out_channels, head.fc_out_channels, head.roi_feat_size) == (256, 1024, 7)
            assert head.norm_cfg.type == 'SyncBN' and head.reg_decoded_bbox and not head.reg_class_agnostic
            assert head.loss_bbox == dict(type='GIoULoss', loss_weight=10.0)
            assert head.bbox_coder.target_stds == stds
        pipeline = cfg.train_dataloader.dataset.pipeline
        assert [t.type for t in pipeline] == ['LoadImageFromFile', 'LoadAnnotations', 'RandomFlip', 'RandomChoice',
                                               'PackDetInputs']
        assert pipeline[1].with_mask and pipeline[2].prob == 0.5
        plain, cropped = pipeline[3].transforms
        assert [tuple(s) for s in plain[0].scales] == MULTI_SCALE
        assert [tuple(s) for s in cropped[0].scales] == [(400, 1333), (500, 1333), (600, 1333)]
        assert (cropped[1].type, cropped[1].crop_type, tuple(cropped[1].crop_size)) == \
            ('RandomCrop', 'absolute_range', (384, 600))
        assert [tuple(s) for s in cropped[2].scales] == MULTI_SCALE
    else:
        crop = 640 if 'l3' in name else 512
        assert cfg.model.type == 'EncoderDecoder' and cfg.model.decode_head.type == 'UPerHead'
        assert cfg.model.decode_head.in_channels == channels and cfg.model.auxiliary_head.in_channels == channels[2]
        assert cfg.model.decode_head.num_classes == cfg.model.auxiliary_head.num_classes == 150
        assert tuple(cfg.crop_size) == (crop, crop) and tuple(cfg.model.data_preprocessor.size) == (crop, crop)
        crops = [t for t in cfg.train_dataloader.dataset.pipeline if t.type == 'RandomCrop']
        assert tuple(crops[0].crop_size) == (crop, crop)
        warmup, poly = cfg.param_scheduler
        assert (warmup.type, warmup.start_factor, warmup.end) == ('LinearLR', 1e-6, 1500)
        assert (poly.type, poly.power, poly.eta_min, poly.begin, poly.end) == ('PolyLR', 1.0, 0.0, 1500, 160000)
        assert cfg.train_cfg.max_iters == 160000
        # 16 images per step: 8 GPUs x 2 (the official runs: 16 x 1, S 8 x 2)
        assert cfg.train_dataloader.batch_size == 2


def build(cfg):
    return toolbox.build_model(cfg, revert_sync_bn=False)


def synthetic_official_checkpoint(layout, path, seed=0):
    """Random tensors under the official model's keys and shapes, saved as an official mmengine checkpoint."""
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for key, shape in layout['keys'].items():
        if key.endswith('num_batches_tracked'):
            state_dict[key] = torch.tensor(7)
        elif key.endswith('running_var'):
            state_dict[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            state_dict[key] = torch.randn(shape, generator=generator) * 0.02
    meta = dict(epoch=36, iter=123, dataset_meta=dict(classes=('thing',)), mmengine_version='0.10.1')
    torch.save(dict(meta=meta, state_dict=state_dict), path)
    return state_dict


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(DENSE))
def test_builds_the_official_model_and_loads_its_whole_checkpoint(name, tmp_path):
    """Same parameter count as the official model; an official whole checkpoint converts and loads strictly; the model
    runs a forward pass."""
    from mmengine.runner import load_checkpoint
    from mmmv.checkpoint.convert import convert_checkpoint
    scope, arch, windows, drop_path, layer_scale, *_ = DENSE[name]
    with open(osp.join(LAYOUTS, name + '.json')) as f:
        layout = json.load(f)
    model = build(load(name))
    backbone = model.backbone
    settings = backbone.arch_settings
    assert (tuple(settings['depths']), settings['dim'], settings['in_dim'], tuple(settings['num_heads'])) == \
        (arch['depths'], arch['dim'], arch['in_dim'], arch['num_heads'])
    assert tuple(backbone.window_size) == windows
    last = backbone.stages[-1].blocks[-1]
    assert last.drop_path.drop_prob == pytest.approx(drop_path)
    gammas = [p for n, p in backbone.named_parameters() if n.endswith('gamma_1')]
    assert (len(gammas) > 0) == (layer_scale is not None)
    assert all(torch.all(g == layer_scale) for g in gammas)
    assert sum(p.numel() for p in model.parameters()) == layout['param_count']

    src, dst = tmp_path / 'official.pth', tmp_path / 'converted.pth'
    official = synthetic_official_checkpoint(layout, src)
    result, unmapped = convert_checkpoint(str(src), str(dst))
    assert unmapped == [] and result['meta']['epoch'] == 36 and result['meta']['dataset_meta']['classes'] == ('thing',)
    load_checkpoint(model, str(dst), map_location='cpu', strict=True)  # raises on any missing / unexpected key
    # the values arrived where the official names put them
    state = model.state_dict()
    head_key = 'neck.lateral_convs.0.conv.weight' if scope == 'mmdet' else 'decode_head.lateral_convs.0.conv.weight'
    for official_key, mmmv_key in (('backbone.levels.2.blocks.0.mixer.A_log', 'backbone.stages.2.blocks.0.mixer.A_log'),
                                   ('backbone.outnorm3.weight', 'backbone.norm3.weight'),
                                   (head_key, head_key)):
        assert torch.equal(state[mmmv_key], official[official_key])

    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = model.extract_feat(x)
    assert len(feats) == (5 if scope == 'mmdet' else 4) and all(torch.isfinite(f).all() for f in feats)
    del model, official, result


def test_converter_cli_keeps_meta_and_drops_training_state(tmp_path):
    """tools/model_converters/mambavision2mmmv.py on an official whole detection checkpoint (with training state)."""
    with open(osp.join(LAYOUTS, 'cascade_mask_rcnn_mambavision_t_3x_coco.json')) as f:
        layout = json.load(f)
    src, dst = tmp_path / 'cascade.pth', tmp_path / 'out' / 'cascade_mmmv.pth'
    state_dict = synthetic_official_checkpoint(layout, src)
    checkpoint = torch.load(src, weights_only=True)
    checkpoint['optimizer'] = dict(state={}, param_groups=[dict(lr=1e-4, params=[0])])
    torch.save(checkpoint, src)
    proc = subprocess.run([sys.executable, CONVERTER, str(src), str(dst)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert 'official-dense layout' in proc.stdout
    out = torch.load(dst, weights_only=True)
    assert set(out) == {'state_dict', 'meta'}
    assert out['meta']['dropped_entries'] == ['optimizer'] and out['meta']['iter'] == 123
    assert len(out['state_dict']) == len(state_dict)
    assert not any('levels.' in k or 'outnorm' in k for k in out['state_dict'])
    assert all(k in out['state_dict'] for k in state_dict if not k.startswith('backbone.'))


def _tiny_coco(root):
    """One 64 x 96 image with one box, under the 80 COCO categories (the config's classes)."""
    import cv2
    import numpy as np
    from mmdet.datasets import CocoDataset
    (root / 'img').mkdir()
    cv2.imwrite(str(root / 'img' / 'a.jpg'), np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8))
    categories = [dict(id=i + 1, name=name) for i, name in enumerate(CocoDataset.METAINFO['classes'])]
    ann = dict(images=[dict(id=1, file_name='a.jpg', height=64, width=96)], categories=categories,
               annotations=[dict(id=1, image_id=1, category_id=1, bbox=[10, 10, 30, 20], area=600, iscrowd=0,
                                 segmentation=[[10, 10, 40, 10, 40, 30, 10, 30]])])
    (root / 'ann.json').write_text(json.dumps(ann))
    # random weights score every class about equally (~1/81): keep all detections so that COCO AP is computed
    return ['model.test_cfg.rcnn.score_thr=0.0', f'test_dataloader.dataset.data_root={root}', 'test_dataloader.dataset.ann_file=ann.json',
            'test_dataloader.dataset.data_prefix.img=img/', f'test_evaluator.ann_file={root / "ann.json"}']


@pytest.mark.slow
def test_tools_test_runs_a_converted_official_checkpoint_strictly(tmp_path):
    """The documented commands: convert an official whole Cascade checkpoint, then tools/test.py with the zoo config;
    a checkpoint that lacks a key is refused with the key named instead of being tested half-random."""
    with open(osp.join(LAYOUTS, 'cascade_mask_rcnn_mambavision_t_3x_coco.json')) as f:
        layout = json.load(f)
    src, dst = tmp_path / 'official.pth', tmp_path / 'converted.pth'
    synthetic_official_checkpoint(layout, src)
    proc = subprocess.run([sys.executable, CONVERTER, str(src), str(dst)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    options = _tiny_coco(tmp_path)
    config = osp.join(REPO, 'configs', 'cascade_mask_rcnn_mambavision_t_3x_coco.py')
    test_cmd = [sys.executable, osp.join(REPO, 'tools', 'test.py'), config]
    common = ['--work-dir', str(tmp_path / 'work'), '--cfg-options', *options]
    proc = subprocess.run([*test_cmd, str(dst), *common], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'coco/bbox_mAP' in proc.stdout + proc.stderr and 'missing keys' not in proc.stdout + proc.stderr

    checkpoint = torch.load(dst, weights_only=True)
    del checkpoint['state_dict']['roi_head.bbox_head.2.fc_cls.weight']
    torch.save(checkpoint, tmp_path / 'incomplete.pth')
    proc = subprocess.run([*test_cmd, str(tmp_path / 'incomplete.pth'), *common], capture_output=True, text=True,
                          timeout=900, cwd=REPO)
    assert proc.returncode != 0
    assert 'missing keys in source state_dict: roi_head.bbox_head.2.fc_cls.weight' in proc.stderr
