"""tools/model_converters/mambavision2mmmv.py on synthetic checkpoints in every official layout, and pretrained loading.

The official key names are written out here by hand (ANCHORS section 1), independently of mmmv's conversion rules.
"""
import argparse
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch

from mmmv.checkpoint.convert import CheckpointMismatchError, load_pretrained
from mmmv.models import MambaVision, MambaVisionClassifier

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOL = osp.join(REPO, 'tools', 'model_converters', 'mambavision2mmmv.py')
ARCH = dict(depths=(1, 2, 3, 2), dim=16, in_dim=8, num_heads=(1, 2, 2, 4), window_size=(4, 4, 3, 2),
            layer_scale=1e-5)

# mmmv name -> official name, applied in order
TO_OFFICIAL = [
    (r'^backbone\.patch_embed\.conv1\.', 'patch_embed.conv_down.0.'),
    (r'^backbone\.patch_embed\.bn1\.', 'patch_embed.conv_down.1.'),
    (r'^backbone\.patch_embed\.conv2\.', 'patch_embed.conv_down.3.'),
    (r'^backbone\.patch_embed\.bn2\.', 'patch_embed.conv_down.4.'),
    (r'^backbone\.stages\.(\d+)\.downsample\.conv\.', r'levels.\1.downsample.reduction.0.'),
    (r'^backbone\.stages\.', 'levels.'),
    (r'^backbone\.norm(\d)\.', r'outnorm\1.'),
    (r'^backbone\.norm\.', 'norm.'),
    (r'^head\.fc\.', 'head.'),
]


def to_official(state_dict):
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in TO_OFFICIAL:
            new = re.sub(pattern, repl, key)
            if new != key:
                key = new
                break
        out[key] = value.clone()
    return out


def run_tool(*args):
    return subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope='module')
def classifier():
    torch.manual_seed(0)
    model = MambaVisionClassifier(ARCH, num_classes=7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def test_classification_pth_tar_round_trip(classifier, tmp_path):
    official = to_official(classifier.state_dict())
    assert 'patch_embed.conv_down.0.weight' in official and 'levels.2.blocks.0.gamma_1' in official
    src = tmp_path / 'mambavision_tiny_1k.pth.tar'
    torch.save(dict(state_dict=official, state_dict_ema=official, epoch=309, arch='mamba_vision_T',
                    args=argparse.Namespace(lr=5e-3, model='mamba_vision_T'), version=2, metric=82.3), src)
    proc = run_tool(src, tmp_path / 'out.pth')
    assert proc.returncode == 0, proc.stderr
    assert 'official-cls layout' in proc.stdout
    converted = torch.load(tmp_path / 'out.pth', weights_only=True)
    assert converted['meta']['unmapped_keys'] == []
    fresh = MambaVisionClassifier(ARCH, num_classes=7)
    fresh.load_state_dict(converted['state_dict'], strict=True)
    for key, value in classifier.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, msg=key)


def test_hugging_face_safetensors_round_trip(classifier, tmp_path):
    safetensors_torch = pytest.importorskip('safetensors.torch')
    official = {'model.' + k: v.contiguous() for k, v in to_official(classifier.state_dict()).items()}
    src = tmp_path / 'model.safetensors'
    safetensors_torch.save_file(official, str(src))
    proc = run_tool(src, tmp_path / 'out.pth')
    assert proc.returncode == 0, proc.stderr
    assert 'hf layout' in proc.stdout
    converted = torch.load(tmp_path / 'out.pth', weights_only=True)['state_dict']
    assert set(converted) == set(classifier.state_dict())


def test_detection_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    backbone = MambaVision(ARCH, out_indices=(0, 1, 2, 3))
    official = {'backbone.' + k: v for k, v in to_official(
        {'backbone.' + k: v for k, v in backbone.state_dict().items()}).items()}
    assert 'backbone.outnorm3.weight' in official
    official['neck.lateral_convs.0.conv.weight'] = torch.randn(256, 16, 1, 1)
    src = tmp_path / 'cascade_mask_rcnn_mamba_vision_tiny_3x_coco.pth'
    torch.save(dict(state_dict=official, meta=dict(epoch=36)), src)
    proc = run_tool(src, tmp_path / 'out.pth')
    assert proc.returncode == 0, proc.stderr
    converted = torch.load(tmp_path / 'out.pth', weights_only=True)['state_dict']
    assert 'neck.lateral_convs.0.conv.weight' in converted and 'backbone.norm3.weight' in converted
    fresh = MambaVision(ARCH, out_indices=(0, 1, 2, 3),
                        init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'out.pth'), prefix='backbone.'))
    fresh.init_weights()
    for key, value in backbone.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, msg=key)


def test_unmapped_keys_are_reported_and_refused(classifier, tmp_path):
    official = to_official(classifier.state_dict())
    official['levels.2.blocks.0.mixer.rpb'] = torch.zeros(3)
    src = tmp_path / 'odd.pth.tar'
    torch.save(dict(state_dict=official), src)
    proc = run_tool(src, tmp_path / 'out.pth')
    assert proc.returncode == 1
    assert 'levels.2.blocks.0.mixer.rpb' in proc.stdout and not (tmp_path / 'out.pth').exists()
    proc = run_tool(src, tmp_path / 'out.pth', '--allow-unmapped')
    assert proc.returncode == 0 and (tmp_path / 'out.pth').exists()


def test_converter_refuses_missing_and_corrupt_files(tmp_path):
    proc = run_tool(tmp_path / 'nope.pth', tmp_path / 'out.pth')
    assert proc.returncode != 0 and 'does not exist' in proc.stderr
    bad = tmp_path / 'bad.pth'
    bad.write_bytes(b'not a checkpoint at all')
    proc = run_tool(bad, tmp_path / 'out.pth')
    # one line naming the file and the problem, no traceback
    assert proc.returncode == 2 and 'bad.pth' in proc.stderr and 'Traceback' not in proc.stderr
    assert 'not a checkpoint written by torch.save' in proc.stderr.strip().splitlines()[-1]
    no_weights = tmp_path / 'no_weights.pth'
    torch.save({'epoch': 3}, no_weights)
    proc = run_tool(no_weights, tmp_path / 'out.pth')
    assert proc.returncode == 2 and 'no weights found' in proc.stderr and 'Traceback' not in proc.stderr


def test_mismatched_checkpoint_raises_with_the_key_lists(classifier, tmp_path):
    path = tmp_path / 'cls.pth'
    torch.save(dict(state_dict=classifier.state_dict()), path)
    other = dict(ARCH, dim=24)
    model = MambaVision(other, init_cfg=dict(type='Pretrained', checkpoint=str(path), prefix='backbone.'))
    with pytest.raises(CheckpointMismatchError, match=r'shape mismatch \(\d+\).*patch_embed\.conv2\.weight'):
        model.init_weights()
    deeper = dict(ARCH, depths=(1, 2, 4, 2))
    model = MambaVision(deeper, init_cfg=dict(type='Pretrained', checkpoint=str(path), prefix='backbone.'))
    with pytest.raises(CheckpointMismatchError, match=r'missing \(\d+\).*stages\.2\.blocks\.3'):
        model.init_weights()
    report = load_pretrained(model, dict(type='Pretrained', checkpoint=str(path), prefix='backbone.', strict=False))
    assert report['missing'] and not report['unexpected']
    with pytest.raises(CheckpointMismatchError, match="prefix 'neck.'"):
        load_pretrained(model, dict(type='Pretrained', checkpoint=str(path), prefix='neck.'))
    with pytest.raises(ValueError, match='unknown init_cfg keys'):
        load_pretrained(model, dict(type='Pretrained', checkpoint=str(path), prefx='backbone.'))


def test_backbone_without_last_stages_loads_a_full_checkpoint(classifier, tmp_path):
    """out_indices=(0, 1, 2) builds three stages; the fourth stage's keys are reported as ignored, not unexpected."""
    path = tmp_path / 'cls.pth'
    torch.save(dict(state_dict=classifier.state_dict()), path)
    model = MambaVision(ARCH, out_indices=(0, 1, 2))
    assert len(model.stages) == 3 and model.stages[2].downsample is None
    report = load_pretrained(model, dict(type='Pretrained', checkpoint=str(path), prefix='backbone.'))
    assert not report['missing'] and not report['unexpected']
    assert 'stages.3.blocks.0.mixer.A_log' in report['ignored'] and 'norm.running_mean' in report['ignored']
    assert 'stages.2.downsample.conv.weight' in report['ignored']
    with pytest.raises(ValueError, match='final_norm'):
        MambaVision(ARCH, out_indices=(2,), final_norm=True)
