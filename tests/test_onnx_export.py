"""ONNX export: the 'export' scan backend against the float64 reference, tiny models of both families exported by
tools/deployment/pytorch2onnx.py (dynamic shapes) and run in onnxruntime, and the tool's one-line errors.

Each export runs the tool in a subprocess on a config written to tmp_path, with a checkpoint saved from the model that
config builds (weights moved off their structured init, so that mix-ups show). About 40 s each on 2 CPU cores: the
models are as small as still reach every layer type (window padding, attention, patch merging and expansion with
odd maps, the four-direction scan).
"""
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch

from mmmv.ops import cross_selective_scan, scan_backend, selective_scan, selective_scan_ref
from mmmv.ops.selective_scan.export_backend import selective_scan_export
from tool_loading import load_tool

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOL = osp.join(REPO, 'tools', 'deployment', 'pytorch2onnx.py')
HELPERS = osp.join(REPO, 'tests', 'helpers')
ONNX_ATOL = 1e-4  # |onnxruntime - PyTorch| of the tiny models, float32
# The tiny VM-UNet segmentor, worst of its two input sizes: 6.9e-6 to 9.9e-5 over initialisations seeded 0-6 (9.9e-5
# for seed 0, the one the test exports; outputs up to 0.26-2.1), 1.21e-4 in one unseeded run. It grows with the
# output's scale.
VMUNET_ONNX_ATOL = 2e-4
FLOAT64_ATOL = 1e-10  # export backend vs the float64 reference, in float64
FLOAT32_ATOL = 1e-4  # the same in float32
BFLOAT16_TOLERANCE = dict(rtol=1.6e-2, atol=1e-2)  # a bfloat16 output rounded one way or the other
# Odd maps: 68 x 44 gives 17 x 11 after the stride-4 stem or patch embedding (padding to windows and 2 x 2 merges).
SHAPE = ('68', '44')
TINY_MAMBAVISION = dict(depths=(1, 1, 2, 1), dim=16, in_dim=8, num_heads=(1, 2, 2, 4), window_size=(4, 4, 4, 2))
PERTURBATION = 0.1


# ---------------------------------------------------------------------------------------------------------------------
# The export backend
# ---------------------------------------------------------------------------------------------------------------------
def scan_inputs(batch, dim, state, length, *, groups_B, groups_C, D, z, bias, dtype=torch.float64, seed=0):
    """Arguments of selective_scan; groups None means B or C shared (batch, N, L)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    def bc(groups):
        return randn(batch, state, length) if groups is None else randn(batch, groups, state, length)

    A = -(torch.rand(dim, state, generator=gen, dtype=torch.float64) * 2 + 0.1)
    return dict(u=randn(batch, dim, length), delta=randn(batch, dim, length), A=A, B=bc(groups_B), C=bc(groups_C),
                D=randn(dim) if D else None, z=randn(batch, dim, length) if z else None,
                delta_bias=randn(dim) if bias else None)


BACKEND_CASES = [
    # MambaVision's call: shared B / C, D, bias, softplus
    dict(groups_B=None, groups_C=None, D=True, z=False, bias=True, softplus=True, tokens=None),
    # grouped B and C with different G, the gate, no softplus, one token per step
    dict(groups_B=3, groups_C=2, D=False, z=True, bias=False, softplus=False, tokens=1),
    # a step longer than the sequence
    dict(groups_B=1, groups_C=None, D=True, z=True, bias=True, softplus=True, tokens=64),
]


@pytest.mark.parametrize('case', BACKEND_CASES)
def test_export_backend_matches_the_reference(case):
    case = dict(case)
    softplus, tokens = case.pop('softplus'), case.pop('tokens')
    inputs = scan_inputs(2, 12, 5, 37, **case)  # 37 tokens: the last step is padded
    y, last = selective_scan_export(**inputs, delta_softplus=softplus, return_last_state=True, tokens_per_step=tokens)
    y_ref, last_ref = selective_scan_ref(**inputs, delta_softplus=softplus, return_last_state=True)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=FLOAT64_ATOL)
    torch.testing.assert_close(last, last_ref, rtol=0, atol=FLOAT64_ATOL)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_export_backend_through_the_switch_in_low_precision(dtype):
    """Chosen by scan_backend('export'); y in u's dtype, the last state float32, as the other backends."""
    inputs = scan_inputs(2, 8, 4, 21, groups_B=2, groups_C=None, D=True, z=True, bias=True, dtype=dtype)
    with scan_backend('export'):
        y, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True)
    y_ref, last_ref = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
    assert y.dtype == dtype and last.dtype == torch.float32
    y_tolerance = dict(rtol=0, atol=FLOAT32_ATOL) if dtype == torch.float32 else BFLOAT16_TOLERANCE
    torch.testing.assert_close(y, y_ref, **y_tolerance)
    torch.testing.assert_close(last, last_ref, rtol=0, atol=FLOAT32_ATOL)


def test_export_backend_on_an_empty_sequence():
    inputs = scan_inputs(2, 4, 3, 0, groups_B=None, groups_C=None, D=True, z=True, bias=True)
    y, last = selective_scan(**inputs, return_last_state=True, backend='export')
    assert y.shape == (2, 4, 0) and torch.equal(last, torch.zeros(2, 4, 3, dtype=torch.float64))


def test_cross_selective_scan_on_the_export_backend_matches_torch():
    batch, inner, state, (height, width) = 2, 6, 4, (5, 3)
    gen = torch.Generator().manual_seed(1)
    length = height * width
    u = torch.randn(batch, inner, length, generator=gen)
    delta = torch.randn(batch, 4, inner, length, generator=gen)
    A = -torch.rand(4 * inner, state, generator=gen) - 0.2
    B, C = (torch.randn(batch, 4, state, length, generator=gen) for _ in range(2))
    args = (u, delta, A, B, C, torch.randn(4 * inner, generator=gen), torch.randn(4 * inner, generator=gen))
    expected = cross_selective_scan(*args, height=height, width=width, backend='torch')
    got = cross_selective_scan(*args, height=height, width=width, backend='export')
    torch.testing.assert_close(got, expected, rtol=0, atol=FLOAT32_ATOL)


# ---------------------------------------------------------------------------------------------------------------------
# The tool
# ---------------------------------------------------------------------------------------------------------------------
def _needs(*packages):
    for package in ('onnx', 'onnxruntime', 'onnxscript', *packages):
        pytest.importorskip(package)


def _config(tmp_path, base: str, model: dict):
    config = tmp_path / f'{osp.splitext(base)[0]}_tiny.py'
    config.write_text(f"_base_ = {osp.join(REPO, 'configs', base)!r}\nmodel = {model!r}\n")
    return config


# In a subprocess: (the torchvision shim where mmpretrain needs it,) build CONFIG's model, move its weights off their
# init, save them as CHECKPOINT, then run the tool with the remaining arguments.
_SAVE_AND_EXPORT = '''
import runpy, sys
import torch
sys.path.insert(0, {helpers!r})
import torchvision_shim
torchvision_shim.install_if_needed()
from mmmv.engine import cli, toolbox
config, checkpoint = sys.argv[1:3]
torch.manual_seed(0)  # the initial weights too: the exported model is the same on every run
model = toolbox.build_model(cli.load_tool_config(config))
gen = torch.Generator().manual_seed(0)
with torch.no_grad():
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=gen) * {scale!r})
torch.save(dict(state_dict=model.state_dict(), meta=dict()), checkpoint)
sys.argv = [{tool!r}, *sys.argv[1:]]
runpy.run_path({tool!r}, run_name='__main__')
'''


def _export(config, tmp_path, *args, timeout=300):
    code = _SAVE_AND_EXPORT.format(helpers=HELPERS, scale=PERTURBATION, tool=TOOL)
    command = [sys.executable, '-c', code, str(config), str(tmp_path / 'model.pth'), '--out',
               str(tmp_path / 'model.onnx'), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _differences(stdout: str) -> dict:
    """{input shape: max |onnxruntime - PyTorch|} from the tool's output."""
    found = re.findall(r'input (\S+): max \|onnxruntime - PyTorch\| = (\S+)', stdout)
    return {shape: float(value) for shape, value in found}


def _run_tool(*args):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, timeout=240, cwd=REPO)


def test_vmunet_segmentor_exports_with_dynamic_batch_height_and_width(tmp_path):
    _needs('mmseg')
    config = _config(tmp_path, 'vmunet_isic17.py', dict(
        backbone=dict(arch=dict(_delete_=True, depths=(0, 1), embed_dim=8), out_indices=(0, 1), init_cfg=None),
        decode_head=dict(in_channels=(8, 16, 16), in_index=(0, 1, 2), decoder_depths=(1, 0), init_cfg=None)))
    proc = _export(config, tmp_path, '--shape', *SHAPE, '--dynamic', '--atol', str(VMUNET_ONNX_ATOL))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'EncoderDecoder (mmseg)' in proc.stdout and 'dynamic axes: batch, height, width' in proc.stdout
    differences = _differences(proc.stdout)
    assert set(differences) == {'2x3x68x44', '1x3x100x60'}, proc.stdout
    assert max(differences.values()) <= VMUNET_ONNX_ATOL


def test_mambavision_classifier_exports_with_dynamic_batch_height_and_width(tmp_path):
    _needs('mmpretrain')
    config = _config(tmp_path, 'mambavision_t_in1k.py', dict(
        backbone=dict(arch=dict(_delete_=True, **TINY_MAMBAVISION)), head=dict(in_channels=128, num_classes=10)))
    proc = _export(config, tmp_path, '--shape', *SHAPE, '--dynamic', '--atol', str(ONNX_ATOL))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'ImageClassifier (mmpretrain)' in proc.stdout and 'outputs logits' in proc.stdout
    assert 'dynamic axes: batch, height, width' in proc.stdout
    differences = _differences(proc.stdout)
    assert set(differences) == {'2x3x68x44', '1x3x100x60'}, proc.stdout
    assert max(differences.values()) <= ONNX_ATOL


def _last_error_line(proc) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 or 'Traceback' not in proc.stderr, proc.stderr
    return lines[-1]


def test_tool_names_a_missing_checkpoint(tmp_path):
    _needs('mmseg')
    line = _last_error_line(_run_tool(osp.join(REPO, 'configs', 'vmunet_isic17.py'), str(tmp_path / 'missing.pth'),
                                      '--out', str(tmp_path / 'model.onnx')))
    assert line.startswith('error: checkpoint') and 'missing.pth' in line and 'does not exist' in line
    assert not (tmp_path / 'model.onnx').exists()


def test_tool_names_a_missing_config(tmp_path):
    _needs()
    line = _last_error_line(_run_tool(str(tmp_path / 'nothing.py'), 'x.pth', '--out', str(tmp_path / 'm.onnx')))
    assert line.startswith('error: config file') and 'nothing.py' in line


def test_tool_refuses_a_whole_detector_and_says_what_exports(tmp_path):
    _needs('mmdet')
    line = _last_error_line(_run_tool(osp.join(REPO, 'configs', 'mask_rcnn_mambavision_t.py'), 'x.pth', '--out',
                                      str(tmp_path / 'model.onnx')))
    assert line.startswith('error: ') and 'detector' in line and '--features' in line


def test_tool_says_how_to_install_onnxruntime(tmp_path):
    """Without onnxruntime (simulated) the tool stops with the pip command, before building anything."""
    code = ('import importlib.abc, runpy, sys\n'
            'class Hidden(importlib.abc.MetaPathFinder):\n'
            '    def find_spec(self, name, path, target=None):\n'
            '        if name.split(".")[0] == "onnxruntime":\n'
            '            raise ModuleNotFoundError("No module named onnxruntime (simulated)", name=name)\n'
            'sys.meta_path.insert(0, Hidden())\n'
            f'sys.argv = [{TOOL!r}, *sys.argv[1:]]\n'
            f'runpy.run_path({TOOL!r}, run_name="__main__")\n')
    proc = subprocess.run([sys.executable, '-c', code, osp.join(REPO, 'configs', 'vmunet_isic17.py'), 'x.pth',
                           '--out', str(tmp_path / 'model.onnx')], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    line = _last_error_line(proc)
    assert line.startswith('error: ONNX export needs onnxruntime')
    assert 'pip install onnx onnxruntime onnxscript' in line



def test_upernet_pyramid_pooling_keeps_height_and_width_fixed():
    """Adaptive pooling to a grid other than 1 x 1 exports for the traced size only: the tool keeps H, W fixed."""
    tool = load_tool('deployment/pytorch2onnx.py')
    pyramid = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.AdaptiveAvgPool2d((2, 2)))
    assert 'AdaptiveAvgPool2d to (2, 2)' in tool.fixed_size_reason(pyramid)
    assert tool.fixed_size_reason(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1))) is None
