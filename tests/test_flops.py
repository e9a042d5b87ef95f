"""FLOPs counting (mmmv.analysis, tools/analysis/get_flops.py): the scan and attention counts against hand formulas.

The hand formulas are written here from the convention of docs/flops.md, not taken from mmmv.analysis: per (batch,
channel, token, state) 5 FLOPs (dt*A, exp, (dt*u)*B, the recurrence multiply-add, the read-out multiply-add); per
(batch, channel, token) dt*u, and one each for delta_bias, softplus and D*u, two for the z gate. Attention: q@k^T and
attn@v, Lq*Lk*head_dim multiply-adds each per head.
"""
import importlib.util
import os.path as osp
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import mmmv.ops
from mmmv.analysis import ExtraFlopCounter
from mmmv.models import MambaVision

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOL = osp.join(REPO, 'tools', 'analysis', 'get_flops.py')
HELPERS = osp.join(REPO, 'tests', 'helpers')
TINY_ARCH = dict(depths=(1, 1, 3, 2), dim=16, in_dim=8, num_heads=(1, 2, 2, 4), window_size=(4, 4, 4, 2))


def hand_scan_flops(batch, channels, length, state, *, D, z, bias, softplus, per_mac=1):
    per_state = 3 + 2 * per_mac  # dt*A, exp, (dt*u)*B + two multiply-adds (h update, y read-out)
    per_token = 1 + bias + softplus + per_mac * D + 2 * z  # dt*u, + bias, softplus, y += D*u, y *= silu(z)
    return batch * channels * length * (per_state * state + per_token)


class OneScan(nn.Module):
    """A linear layer making u, delta, B, C (and z) from (batch, L, F) tokens, then one selective_scan."""

    def __init__(self, features, dim, state, *, D, z, bias, softplus, groups=1):
        super().__init__()
        self.dim, self.state, self.groups, self.with_z, self.softplus = dim, state, groups, z, softplus
        self.proj = nn.Linear(features, dim * (2 + z) + 2 * groups * state, bias=False)
        self.A = nn.Parameter(-torch.rand(dim, state) - 0.5)
        self.D = nn.Parameter(torch.ones(dim)) if D else None
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, tokens):
        batch, length, _ = tokens.shape
        parts = self.proj(tokens).transpose(1, 2).split(
            [self.dim, self.dim, self.groups * self.state, self.groups * self.state] + [self.dim] * self.with_z, dim=1)
        u, delta, B, C = parts[:4]
        grouped = (batch, self.groups, self.state, length)
        return mmmv.ops.selective_scan(u, delta, self.A, B.reshape(grouped), C.reshape(grouped), D=self.D,
                                       z=parts[4] if self.with_z else None, delta_bias=self.bias,
                                       delta_softplus=self.softplus)


FLAG_CASES = [
    dict(D=True, z=False, bias=True, softplus=True),  # MambaVision's call
    dict(D=False, z=True, bias=False, softplus=False, groups=2),
]


@pytest.mark.parametrize('flags', FLAG_CASES)
def test_one_scan_counts_the_hand_formula_and_leaves_results_unchanged(flags):
    batch, length, features, dim, state = 2, 13, 6, 10, 5
    torch.manual_seed(0)
    model = OneScan(features, dim, state, **flags).eval()
    tokens = torch.randn(batch, length, features)
    with torch.no_grad():
        reference = model(tokens)
        with ExtraFlopCounter() as counter:
            counted = model(tokens)
    torch.testing.assert_close(counted, reference, rtol=0, atol=0)
    hand = dict(D=flags['D'], z=flags['z'], bias=flags['bias'], softplus=flags['softplus'])
    assert counter.total.scan_calls == 1 and counter.total.attention_calls == 0
    assert counter.total.scan == hand_scan_flops(batch, dim, length, state, **hand)
    assert counter.total.scan_2mac == hand_scan_flops(batch, dim, length, state, **hand, per_mac=2)


def test_patches_are_undone():
    import mmmv.models.mambavision as mambavision
    import mmmv.models.vss as vss
    functional = torch.nn.functional
    places = [(mambavision, 'selective_scan'), (vss, 'cross_selective_scan'), (mmmv.ops, 'selective_scan'),
              (functional, 'scaled_dot_product_attention')]
    originals = [getattr(module, name) for module, name in places]
    with ExtraFlopCounter():
        assert all(getattr(module, name) is not original for (module, name), original in zip(places, originals))
    assert all(getattr(module, name) is original for (module, name), original in zip(places, originals))


def test_cross_scan_counts_four_directions_and_the_merge_once():
    batch, inner, height, width, state = 2, 6, 3, 5, 4
    length = height * width
    torch.manual_seed(0)
    u, delta = torch.randn(batch, inner, length), torch.randn(batch, 4, inner, length)
    B, C = torch.randn(2, batch, 4, state, length)
    with torch.no_grad(), ExtraFlopCounter() as counter:
        mmmv.ops.cross_selective_scan(u, delta, -torch.rand(4 * inner, state), B, C, D=torch.ones(4 * inner),
                                      delta_bias=torch.zeros(4 * inner), delta_softplus=True, height=height,
                                      width=width, fused=False)
    # one scan over 4 * inner channels (its inner selective_scan is not counted again), then 3 adds per output
    merge = 3 * batch * inner * length
    expected = hand_scan_flops(batch, 4 * inner, length, state, D=1, z=0, bias=1, softplus=1) + merge
    assert counter.total.scan_calls == 1
    assert counter.total.scan == expected


# ---------------------------------------------------------------------------------------------------------------------
# MambaVision: every Mamba mixer and attention block, from the arch
# ---------------------------------------------------------------------------------------------------------------------
SIZE = (72, 88)  # stride 16: 5 x 6 -> padded to 8 x 8 = 4 windows of 4x4; stride 32: 3 x 3 -> 4 windows of 2x2


def hand_mambavision_counts():
    """TINY_ARCH at SIZE, batch 1. Stage 2: dim 64, depth 3 (blocks 0, 1 Mamba, block 2 attention), 4 windows of
    16 tokens; stage 3: dim 128, depth 2 (block 0 Mamba, block 1 attention), 4 windows of 4 tokens."""
    state = 8
    stages = [dict(dim=64, mamba=2, attention=1, windows=4, tokens=16),
              dict(dim=128, mamba=1, attention=1, windows=4, tokens=4)]
    scan = scan_2mac = attention = 0
    for s in stages:
        # one scan per mixer: batch = windows, channels = dim / 2, D, delta_bias and softplus, no z
        args = (s['windows'], s['dim'] // 2, s['tokens'], state)
        scan += s['mamba'] * hand_scan_flops(*args, D=1, z=0, bias=1, softplus=1)
        scan_2mac += s['mamba'] * hand_scan_flops(*args, D=1, z=0, bias=1, softplus=1, per_mac=2)
        # per window and head: q@k^T and attn@v, tokens^2 * head_dim each; summed over heads: tokens^2 * dim
        attention += s['attention'] * s['windows'] * 2 * s['tokens'] ** 2 * s['dim']
    return scan, scan_2mac, attention


def test_mambavision_scan_and_attention_equal_the_arch_by_hand():
    model = MambaVision(TINY_ARCH).eval()
    with torch.no_grad(), ExtraFlopCounter() as counter:
        model(torch.randn(1, 3, *SIZE))
    scan, scan_2mac, attention = hand_mambavision_counts()
    assert (counter.total.scan_calls, counter.total.attention_calls) == (3, 2)
    assert (counter.total.scan, counter.total.scan_2mac, counter.total.attention) == (scan, scan_2mac, attention)


class Detector(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = MambaVision(TINY_ARCH, out_indices=(3, ))
        self.head = nn.Conv2d(128, 7, 1)

    def forward(self, x):
        return self.head(self.backbone(x)[0])


def test_count_complexity_total_is_usual_plus_extras_and_parts_add_up():
    pytest.importorskip('mmengine.analysis')
    from mmmv.analysis import count_complexity
    torch.manual_seed(0)
    model = Detector().eval()
    images = torch.randn(1, 3, *SIZE)
    report = count_complexity(model, images, parts={'backbone': ['backbone']})
    whole, backbone = report.model, report.parts['backbone']
    scan, scan_2mac, attention = hand_mambavision_counts()
    # mmengine has no handle for aten::scaled_dot_product_attention: the attention is added, not in "usual"
    assert not whole.attention_in_usual
    assert (whole.scan, whole.scan_2mac, whole.attention) == (scan, scan_2mac, attention)
    assert whole.total == whole.usual + whole.scan + whole.attention
    assert (backbone.scan, backbone.attention) == (scan, attention)
    head_macs = 128 * 7 * 3 * 3  # the 1x1 head conv on the 3 x 3 stride-32 map
    assert whole.usual == backbone.usual + head_macs
    assert whole.params == sum(p.numel() for p in model.parameters())
    assert backbone.params == sum(p.numel() for p in model.backbone.parameters())


def test_one_scan_usual_count_is_the_linear_only():
    pytest.importorskip('mmengine.analysis')
    from mmmv.analysis import count_complexity
    batch, length, features, dim, state = 2, 13, 6, 10, 5
    model = OneScan(features, dim, state, **FLAG_CASES[0]).eval()
    report = count_complexity(model, torch.randn(batch, length, features))
    assert report.model.usual == batch * length * features * (2 * dim + 2 * state)
    assert report.model.scan == hand_scan_flops(batch, dim, length, state, D=1, z=0, bias=1, softplus=1)


# ---------------------------------------------------------------------------------------------------------------------
# tools/analysis/get_flops.py
# ---------------------------------------------------------------------------------------------------------------------
def _table_value(output: str, label: str) -> float:
    """The whole-model (last) column of a table row."""
    line = next(line for line in output.splitlines() if line.startswith(label))
    return float(line.split()[-1])


def _run(args, code=None, timeout=240):
    command = [sys.executable, TOOL, *args] if code is None else [sys.executable, '-c', code, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _tiny_config(tmp_path, toolbox: str, base: str, backbone=None, **model_fields):
    """A config inheriting configs/``base`` with TINY_ARCH's backbone and the given model fields (skips without the
    toolbox)."""
    if importlib.util.find_spec(toolbox) is None:
        pytest.skip(f'{toolbox} is not installed')
    backbone = dict(_delete_=True, type='MambaVision', arch=TINY_ARCH, **(backbone or {}))
    config = tmp_path / f'{osp.splitext(base)[0]}_tiny.py'
    config.write_text(f"_base_ = {osp.join(REPO, 'configs', base)!r}\n"
                      f"model = {dict(backbone=backbone, **model_fields)!r}\n")
    return config


def test_tool_on_a_tiny_upernet_config(tmp_path):
    # a checkpoint that does not exist: the tool must not load init_cfg
    missing = dict(init_cfg=dict(type='Pretrained', checkpoint='missing.pth', prefix='backbone.'))
    config = _tiny_config(tmp_path, 'mmseg', 'upernet_mambavision_t_ade20k.py', backbone=missing,
                          decode_head=dict(in_channels=[16, 32, 64, 128], channels=32),
                          auxiliary_head=dict(in_channels=64, channels=16))
    proc = _run([str(config), '--shape', '64', '64'])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert 'input 1x3x64x64' in out and "mode='tensor'" in out
    usual, scan, attention, total = (_table_value(out, label) for label in (
        'FLOPs as the usual counters', '+ selective scan', '+ attention', '= total'))
    assert scan > 0 and attention > 0
    assert total == pytest.approx(usual + scan + attention, rel=1e-2)
    assert out.strip().splitlines()[-1].startswith('| upernet_mambavision_t_ade20k_tiny | 64x64 |')


def test_tool_on_a_tiny_mask_rcnn_config_counts_backbone_neck_and_whole(tmp_path):
    config = _tiny_config(
        tmp_path, 'mmdet', 'mask_rcnn_mambavision_t.py', neck=dict(in_channels=[16, 32, 64, 128], out_channels=32),
        rpn_head=dict(in_channels=32, feat_channels=32),
        roi_head=dict(bbox_roi_extractor=dict(out_channels=32), bbox_head=dict(in_channels=32, fc_out_channels=64),
                      mask_roi_extractor=dict(out_channels=32), mask_head=dict(in_channels=32, conv_out_channels=32)))
    proc = _run([str(config), '--shape', '128', '160'])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    header = next(line for line in proc.stdout.splitlines() if 'backbone + neck' in line)
    assert header.split() == ['backbone', '+', 'neck', 'whole', 'model']
    usual_row = next(line for line in proc.stdout.splitlines() if line.startswith('FLOPs as the usual'))
    backbone_neck, whole = (float(v) for v in usual_row.split()[-2:])
    assert 0 < backbone_neck < whole  # the RPN and RoI heads ran
    assert 'the RoI heads ran on' in proc.stdout and _table_value(proc.stdout, '+ selective scan') > 0


def test_tool_on_a_tiny_classifier_with_the_torchvision_shim(tmp_path):
    """mmpretrain imports torchvision (no CPU wheel): run under tests/helpers/torchvision_shim.py where needed."""
    config = _tiny_config(tmp_path, 'mmpretrain', 'mambavision_t_in1k.py',
                          backbone=dict(out_indices=(3, ), out_norm=None, final_norm=True),
                          head=dict(in_channels=128))
    code = (f'import runpy, sys; sys.path.insert(0, {HELPERS!r}); import torchvision_shim; '
            'torchvision_shim.install_if_needed(); '
            f'runpy.run_path({TOOL!r}, run_name="__main__")')
    proc = _run([str(config), '--shape', '64'], code=code)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'input 1x3x64x64' in proc.stdout and _table_value(proc.stdout, '+ selective scan') > 0


def test_tool_says_how_to_fix_a_broken_torchvision(tmp_path):
    """Without the shim, a torchvision that fails to import ends the tool with one line naming the fix."""
    if importlib.util.find_spec('mmpretrain') is None:
        pytest.skip('mmpretrain is not installed')
    code = ('import importlib.abc, runpy, sys\n'
            'class Broken(importlib.abc.MetaPathFinder):\n'
            '    def find_spec(self, name, path, target=None):\n'
            '        if name.split(".")[0] == "torchvision":\n'
            '            raise RuntimeError("operator torchvision::nms does not exist (simulated)")\n'
            'sys.meta_path.insert(0, Broken())\n'
            f'runpy.run_path({TOOL!r}, run_name="__main__")\n')
    proc = _run([osp.join(REPO, 'configs', 'mambavision_t_in1k.py')], code=code)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('error: mmpretrain imports torchvision, but torchvision fails to import')
    assert 'fix: pip install --no-deps "torchvision==' in last
