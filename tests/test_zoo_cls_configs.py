"""The ImageNet classification configs of every released MambaVision (configs/mambavision_*_in1k.py) against the
official figures: backbone layout and parameter count as built through mmpretrain's registry, test transform, training
recipe, the header's published numbers and commands, and forward passes through the built classifiers.

The expected values are written out here from the reference facts (ANCHORS section 1, the official default_cfgs and
training configs), independently of mmmv's own variant table.
"""
import importlib.util
import json
import math
import os
import os.path as osp
import subprocess
import sys

import pytest

mmengine = pytest.importorskip('mmengine', reason='the OpenMMLab stack is installed by tools/install.sh')
if importlib.util.find_spec('mmpretrain') is None:
    pytest.skip('mmpretrain is not installed (tools/install.sh installs it)', allow_module_level=True)
from mmengine.config import Config  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
HF = 'https://huggingface.co/nvidia/'

# Official layouts: depths, dim, stem width, heads, windows, drop path, layer scale, classifier parameters.
OFFICIAL_ARCHS = {
    'T': dict(depths=(1, 3, 8, 4), dim=80, in_dim=32, heads=(2, 4, 8, 16), windows=(8, 8, 14, 7),
              drop_path=0.2, layer_scale=None, params=31_794_248),
    'T2': dict(depths=(1, 3, 11, 4), dim=80, in_dim=32, heads=(2, 4, 8, 16), windows=(8, 8, 14, 7),
               drop_path=0.2, layer_scale=None, params=35_104_008),
    'S': dict(depths=(3, 3, 7, 5), dim=96, in_dim=64, heads=(2, 4, 8, 16), windows=(8, 8, 14, 7),
              drop_path=0.2, layer_scale=None, params=50_140_584),
    'B': dict(depths=(3, 3, 10, 5), dim=128, in_dim=64, heads=(2, 4, 8, 16), windows=(8, 8, 14, 7),
              drop_path=0.3, layer_scale=1e-5, params=97_685_288),
    'L': dict(depths=(3, 3, 10, 5), dim=196, in_dim=64, heads=(4, 8, 16, 32), windows=(8, 8, 14, 7),
              drop_path=0.3, layer_scale=1e-5, params=227_961_048),
    'L2': dict(depths=(3, 3, 12, 5), dim=196, in_dim=64, heads=(4, 8, 16, 32), windows=(8, 8, 14, 7),
               drop_path=0.3, layer_scale=1e-5, params=241_554_824),
    # Windows hold no parameters: L2-512-21K has L2's count. No official count is given for L3.
    'L2-512-21k': dict(depths=(3, 3, 12, 5), dim=196, in_dim=64, heads=(4, 8, 16, 32), windows=(8, 8, 32, 16),
                       drop_path=0.3, layer_scale=1e-5, params=241_554_824),
    'L3-256-21k': dict(depths=(3, 3, 20, 10), dim=256, in_dim=64, heads=(4, 8, 16, 32), windows=(8, 8, 16, 8),
                       drop_path=0.5, layer_scale=1e-5, params=None),
    'L3-512-21k': dict(depths=(3, 3, 20, 10), dim=256, in_dim=64, heads=(4, 8, 16, 32), windows=(8, 8, 32, 16),
                       drop_path=0.5, layer_scale=1e-5, params=None),
}

# config name: backbone arch, published top-1, test size and crop_pct (official default_cfgs), weight decay and
# warm-up epochs of the training (official for the 1K models, the base's for the 21K ones), checkpoint URL.
CONFIGS = {
    'mambavision_t_in1k': ('T', 82.3, 224, 1.0, 0.05, 20, 'MambaVision-T-1K/resolve/main/mambavision_tiny_1k.pth.tar'),
    'mambavision_t2_in1k': ('T2', 82.7, 224, 0.98, 0.05, 20,
                            'MambaVision-T2-1K/resolve/main/mambavision_tiny2_1k.pth.tar'),
    'mambavision_s_in1k': ('S', 83.3, 224, 0.93, 0.05, 20,
                           'MambaVision-S-1K/resolve/main/mambavision_small_1k.pth.tar'),
    'mambavision_b_in1k': ('B', 84.2, 224, 1.0, 0.075, 35, 'MambaVision-B-1K/resolve/main/mambavision_base_1k.pth.tar'),
    'mambavision_l_in1k': ('L', 85.0, 224, 1.0, 0.12, 20, 'MambaVision-L-1K/resolve/main/mambavision_large_1k.pth.tar'),
    'mambavision_l2_in1k': ('L2', 85.3, 224, 1.0, 0.12, 20,
                            'MambaVision-L2-1K/resolve/main/mambavision_large2_1k.pth.tar'),
    'mambavision_b_21k_in1k': ('B', 84.9, 224, 1.0, 0.05, 20,
                               'MambaVision-B-21K/resolve/main/mambavision_base_21k.pth.tar'),
    'mambavision_l_21k_in1k': ('L', 86.1, 224, 1.0, 0.05, 20,
                               'MambaVision-L-21K/resolve/main/mambavision_large_21k.pth.tar'),
    'mambavision_l2_512_21k_in1k': ('L2-512-21k', 87.3, 512, 0.93, 0.05, 20,
                                    'MambaVision-L2-512-21K/resolve/main/mambavision_L2_21k_240m_512.pth.tar'),
    'mambavision_l3_256_21k_in1k': ('L3-256-21k', 87.3, 256, 1.0, 0.05, 20,
                                    'MambaVision-L3-256-21K/resolve/main/mambavision_L3_21k_740m_256.pth.tar'),
    'mambavision_l3_512_21k_in1k': ('L3-512-21k', 88.1, 512, 0.93, 0.05, 20,
                                    'MambaVision-L3-512-21K/resolve/main/mambavision_L3_21k_740m_512.pth.tar'),
}
# Built for real and run forward on a (1, 3, 64, 64) input (the others are only constructed, on the meta device); the
# first also through its whole test path (pipeline, data preprocessor, predict). L2-512-21K: about 25 s on 2 CPU cores.
FORWARD_CONFIGS = ('mambavision_t_in1k', 'mambavision_l2_512_21k_in1k')
PREDICT_CONFIG = 'mambavision_t_in1k'
IMAGE_HW = (300, 400)  # the helper's synthetic image


def _path(name):
    return osp.join(REPO, 'configs', f'{name}.py')


@pytest.fixture(scope='module')
def built():
    """One subprocess builds every classifier and runs the forward passes (tests/helpers/check_zoo_cls_configs.py)."""
    helper = osp.join(REPO, 'tests', 'helpers', 'check_zoo_cls_configs.py')
    command = [sys.executable, helper, *map(_path, CONFIGS), '--forward', *map(_path, FORWARD_CONFIGS),
               '--predict', _path(PREDICT_CONFIG)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900, env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    by_name = {section: {osp.basename(path)[:-3]: facts for path, facts in report[section].items()}
               for section in ('configs', 'forward')}
    return by_name['configs'], by_name['forward']


def test_every_classification_config_is_covered():
    names = {f[:-3] for f in os.listdir(osp.join(REPO, 'configs'))
             if f.startswith('mambavision_') and f.endswith('_in1k.py')}
    assert names == set(CONFIGS)


@pytest.mark.parametrize('name', CONFIGS)
def test_header_gives_published_top1_weights_and_commands(name):
    arch, top1, size, *_, url = CONFIGS[name]
    with open(_path(name)) as f:
        text = f.read()
    header = text.split('_base_ =')[0]
    prose = ' '.join(line.lstrip('#').strip() for line in header.splitlines())  # wrapped comment lines joined
    assert f'Published top-1: {top1} at {size} x {size}' in prose
    assert HF + url in header
    commands = header.replace(' \\\n#       ', ' ')  # join continued command lines
    src = url.rsplit('/', 1)[1]
    assert f'#   python tools/model_converters/mambavision2mmmv.py {src} checkpoints/{name}.pth\n' in commands
    assert f'#   python tools/test.py configs/{name}.py checkpoints/{name}.pth\n' in commands
    crop_pct = CONFIGS[name][3]
    assert f'floor({size} / {crop_pct}) = {math.floor(size / crop_pct)}' in text  # the formula, where it is applied
    if '21k' in name:
        assert 'pre-training and ImageNet-1K fine-tuning recipes of this model are not published' in prose


@pytest.mark.parametrize('name', CONFIGS)
def test_test_transform_is_the_official_one(name):
    _, _, size, crop_pct, *_ = CONFIGS[name]
    cfg = Config.fromfile(_path(name))
    assert cfg.val_dataloader.dataset.pipeline == cfg.test_dataloader.dataset.pipeline
    load, resize, crop, pack = cfg.test_dataloader.dataset.pipeline
    assert (load.type, pack.type) == ('LoadImageFromFile', 'PackInputs')
    assert resize == dict(type='ResizeEdge', scale=math.floor(size / crop_pct), edge='short', backend='pillow',
                          interpolation='bicubic')
    assert crop == dict(type='CenterCrop', crop_size=size)
    assert cfg.val_dataloader.dataset.split == 'val' and cfg.test_evaluator == dict(type='Accuracy', topk=(1, 5))


@pytest.mark.parametrize('name', CONFIGS)
def test_training_recipe(name):
    arch, _, size, _, weight_decay, warmup, _ = CONFIGS[name]
    cfg = Config.fromfile(_path(name))
    backbone = cfg.model.backbone
    assert backbone == dict(type='MambaVision', arch=arch, out_indices=(3,), out_norm=None, final_norm=True,
                            drop_path_rate=OFFICIAL_ARCHS[arch]['drop_path'])
    assert cfg.model.head.in_channels == 8 * OFFICIAL_ARCHS[arch]['dim']
    assert cfg.model.head.loss == dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original')
    assert cfg.model.train_cfg.augments == [dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]

    optim = cfg.optim_wrapper
    assert optim.type == 'AmpOptimWrapper' and optim.clip_grad == dict(max_norm=5.0)
    assert optim.optimizer == dict(type='Lamb', lr=5e-3, weight_decay=weight_decay, betas=(0.9, 0.999), eps=1e-8)
    assert optim.paramwise_cfg.norm_decay_mult == 0 and optim.paramwise_cfg.bias_decay_mult == 0
    assert set(optim.paramwise_cfg.custom_keys) == {'.A_log', '.D'}
    warm, cosine = cfg.param_scheduler
    assert (warm.type, warm.begin, warm.end) == ('LinearLR', 0, warmup)
    assert warm.start_factor * optim.optimizer.lr == pytest.approx(1e-6)
    assert (cosine.type, cosine.begin, cosine.end, cosine.T_max, cosine.eta_min) == (
        'CosineAnnealingLR', warmup, 310, 310 - warmup, 5e-6)
    assert cfg.train_cfg.max_epochs == 310 and cfg.auto_scale_lr.base_batch_size == 4096
    assert cfg.train_dataloader.batch_size * 32 == 4096
    assert cfg.custom_hooks == [dict(type='EMAHook', momentum=2e-4, priority='ABOVE_NORMAL')]

    steps = {step.type: step for step in cfg.train_dataloader.dataset.pipeline}
    assert steps['RandomResizedCrop'].scale == size and steps['RandomResizedCrop'].interpolation == 'bicubic'
    assert (steps['RandAugment'].magnitude_level, steps['RandAugment'].magnitude_std) == (9, 0.5)
    assert steps['RandAugment'].policies == 'timm_increasing' and steps['RandAugment'].num_policies == 2
    assert (steps['RandomErasing'].erase_prob, steps['RandomErasing'].mode) == (0.25, 'rand')


@pytest.mark.parametrize('name', CONFIGS)
def test_built_backbone_and_parameter_count_are_official(name, built):
    layouts, _ = built
    arch = OFFICIAL_ARCHS[CONFIGS[name][0]]
    got = layouts[name]
    assert got['depths'] == list(arch['depths'])
    assert (got['dim'], got['in_dim']) == (arch['dim'], arch['in_dim'])
    assert got['hybrid_heads'] == list(arch['heads'][2:])  # stages 0-1 are convolutional: no heads
    assert got['windows'] == list(arch['windows'])
    # The last half of each hybrid stage is attention; the middle block of an odd depth is Mamba.
    assert got['attention_blocks'] == [list(range(d // 2 + d % 2, d)) for d in arch['depths'][2:]]
    assert got['layer_scale_params'] == [arch['layer_scale'] is not None]
    assert got['layer_scale'] == arch['layer_scale'] and not got['conv_layer_scale_params']
    # Drop path rises linearly from 0 over all blocks, the convolutional ones included.
    assert got['drop_path'] == pytest.approx([arch['drop_path'] * i / (sum(arch['depths']) - 1)
                                              for i in range(sum(arch['depths']))], abs=1e-6)
    assert got['final_norm'] and (got['head_in_channels'], got['num_classes']) == (8 * arch['dim'], 1000)
    if arch['params'] is not None:
        assert got['params'] == arch['params']


def test_l3_models_differ_only_in_windows(built):
    layouts, _ = built
    l3_256, l3_512 = layouts['mambavision_l3_256_21k_in1k'], layouts['mambavision_l3_512_21k_in1k']
    assert {k for k in l3_256 if l3_256[k] != l3_512[k]} == {'windows', 'test_shapes'}


@pytest.mark.parametrize('name', CONFIGS)
def test_test_pipeline_resizes_the_short_side_then_crops(name, built):
    layouts, _ = built
    _, _, size, crop_pct, *_ = CONFIGS[name]
    short = math.floor(size / crop_pct)
    shapes = layouts[name]['test_shapes']
    assert shapes['ResizeEdge'][0] == short and abs(shapes['ResizeEdge'][1] - short * IMAGE_HW[1] / IMAGE_HW[0]) <= 1
    assert shapes['CenterCrop'] == [size, size] and shapes['packed'] == [3, size, size]


@pytest.mark.parametrize('name', FORWARD_CONFIGS)
def test_forward_through_the_built_classifier(name, built):
    _, outputs = built
    assert outputs[name]['tensor_shape'] == [1, 1000] and outputs[name]['tensor_finite']


def test_test_path_from_image_file_to_scores(built):
    _, outputs = built
    got = outputs[PREDICT_CONFIG]
    size = CONFIGS[PREDICT_CONFIG][2]
    assert got['predict_input_shape'] == [1, 3, size, size]
    assert got['score_shape'] == [1000] and got['score_sum'] == pytest.approx(1.0, abs=1e-4)
