"""Parity with the official MambaVision: its weights, converted, give its logits and its dense features.

The official model (PyPI ``mambavision`` 1.2.0, installed with ``--no-deps`` by ``tools/install.sh --dev``) runs in a
subprocess (tests/helpers/run_official_mambavision.py) with random weights; mmmv loads them through the converter.
"""
import importlib.util
import json
import os.path as osp
import subprocess
import sys

import pytest
import torch

from mmmv.checkpoint.convert import convert_official, load_pretrained
from mmmv.models import MambaVision, MambaVisionClassifier
from mmmv.models.mambavision import LayerNorm2d

HELPER = osp.join(osp.dirname(__file__), 'helpers', 'run_official_mambavision.py')
REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
OFFICIAL_T = dict(dim=80, in_dim=32, depths=[1, 3, 8, 4], window_size=[8, 8, 14, 7], num_heads=[2, 4, 8, 16],
                  drop_path_rate=0.2)
# B-like layout with layer scale, tiny widths: covers gamma_1/gamma_2 and odd stage depths.
OFFICIAL_TINY_LS = dict(dim=16, in_dim=8, depths=[3, 3, 5, 3], window_size=[8, 8, 4, 3], num_heads=[1, 2, 4, 8],
                        layer_scale=1e-5)
ATOL, RTOL = 2e-4, 1e-4

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec('mambavision') is None or importlib.util.find_spec('timm') is None,
    reason='the official model is not installed: pip install --no-deps mambavision==1.2.0 timm==1.0.15 einops')


def run_official(tmp_path, arch, sizes, seed=0):
    out = tmp_path / 'official.pt'
    env = dict(**__import__('os').environ, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, HELPER, str(out), json.dumps(arch), json.dumps(sizes), '--seed',
                           str(seed)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out, weights_only=True)


def mmmv_arch(official):
    arch = {k: official[k] for k in ('dim', 'in_dim', 'depths', 'window_size', 'num_heads')}
    arch['layer_scale'] = official.get('layer_scale')
    return arch


@pytest.fixture(scope='module')
def official_t(tmp_path_factory):
    return run_official(tmp_path_factory.mktemp('official_t'), OFFICIAL_T, [[224, 224], [200, 264]])


@pytest.mark.parametrize('size', [(224, 224), (200, 264)])
def test_classifier_logits_equal_official(official_t, size):
    converted, unmapped = convert_official(official_t['state_dict'])
    assert unmapped == []
    model = MambaVisionClassifier('T').eval()
    model.load_state_dict(converted, strict=True)
    with torch.no_grad():
        logits = model(official_t['inputs'][size])
    torch.testing.assert_close(logits, official_t['logits'][size], atol=ATOL, rtol=RTOL)


def test_dense_features_equal_official_backbone(official_t, tmp_path):
    """The official detection backbone = classifier levels, output before downsampling, then a channels-first
    LayerNorm with nn.LayerNorm's default eps (1e-5; checked against the official detection code itself by
    tools/analysis/official_dense_parity.py)."""
    converted, _ = convert_official(official_t['state_dict'])
    path = tmp_path / 'cls.pth'
    torch.save(dict(state_dict=converted), path)
    model = MambaVision('T', out_indices=(0, 1, 2, 3), init_cfg=dict(type='Pretrained', checkpoint=str(path),
                                                                      prefix='backbone.'))
    model.init_weights()
    model.eval()
    size = (200, 264)
    with torch.no_grad():
        outs = model(official_t['inputs'][size])
        for i, (ours, theirs) in enumerate(zip(outs, official_t['features'][size])):
            norm = getattr(model, f'norm{i}')
            assert isinstance(norm, LayerNorm2d)
            expected = torch.nn.functional.layer_norm(theirs.permute(0, 2, 3, 1), norm.normalized_shape,
                                                      norm.weight, norm.bias, eps=1e-5).permute(0, 3, 1, 2)
            torch.testing.assert_close(ours, expected, atol=ATOL, rtol=RTOL)


def test_layer_scale_layout_equals_official(tmp_path):
    official = run_official(tmp_path, OFFICIAL_TINY_LS, [[97, 131]], seed=3)
    converted, unmapped = convert_official(official['state_dict'])
    assert unmapped == []
    assert any(k.endswith('gamma_1') for k in converted)
    model = MambaVisionClassifier(mmmv_arch(OFFICIAL_TINY_LS)).eval()
    model.load_state_dict(converted, strict=True)
    with torch.no_grad():
        logits = model(official['inputs'][(97, 131)])
    torch.testing.assert_close(logits, official['logits'][(97, 131)], atol=ATOL, rtol=RTOL)


def test_official_checkpoint_file_loads_directly_as_pretrained(official_t, tmp_path):
    """init_cfg can point at an official .pth.tar: it is converted on the fly, the classifier keys are reported."""
    path = tmp_path / 'mambavision_tiny_1k.pth.tar'
    torch.save(dict(state_dict=official_t['state_dict'], epoch=310, arch='mamba_vision_T'), path)
    model = MambaVision('T', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    report = load_pretrained(model, model.init_cfg)
    assert report['missing'] == [] and report['unexpected'] == [] and report['mismatched'] == []
    assert any(k.startswith('norm.') for k in report['ignored'])  # the classifier's BatchNorm
    torch.testing.assert_close(model.stages[2].blocks[0].mixer.A_log,
                               official_t['state_dict']['levels.2.blocks.0.mixer.A_log'])
