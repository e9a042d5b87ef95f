"""tools/analysis/benchmark_official.py on the CPU: argument checks, the loss, the parity measure, and one tiny run of the
official MambaVision (mmmv's torch scan standing in for mamba_ssm) against mmmv with its converted weights. The timed
comparisons themselves are GPU measurements (docs/benchmarks.md)."""
import argparse
import gc
import importlib.util
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from tool_loading import load_tool

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SCRIPT = osp.join(REPO, 'tools', 'analysis', 'benchmark_official.py')
benchmark_official = load_tool('analysis/benchmark_official.py')


@pytest.fixture
def imports_restored():
    """main() runs in this process here: the torchvision stand-ins it may install are taken out again afterwards, so
    later tests see this machine's real torchvision (mmengine's Runner reads ``torchvision.__version__``)."""
    yield
    sys.path.insert(0, osp.join(REPO, 'tests', 'helpers'))
    try:
        import torchvision_shim
    finally:
        sys.path.pop(0)
    torchvision_shim.uninstall()


def test_arguments_are_checked():
    args = benchmark_official.parse_args(['mambavision', '--archs', 'T,B', '--impls', 'mmmv,official'])
    assert args.archs == ['T', 'B'] and args.impls == ['mmmv', 'official'] and args.dtypes == ['bfloat16']
    assert not args.gpu_busy  # the profiler would slow every later row (CUPTI stays attached)
    assert benchmark_official.parse_args(['mambavision', '--gpu-busy']).gpu_busy
    assert benchmark_official.parse_args(['mambavision']).compile_mode is None  # torch.compile's default
    assert benchmark_official.parse_args(['mambavision', '--compile-mode', 'reduce-overhead']).compile_mode == \
        'reduce-overhead'
    with pytest.raises(SystemExit):
        benchmark_official.parse_args(['mambavision', '--compile-mode', 'fast'])
    args = benchmark_official.parse_args(['vmunet', '--official-vmunet', 'dir'])
    assert args.dtypes == ['float32', 'bfloat16'] and args.works == ['train', 'infer']
    for bad in (['mambavision', '--archs', 'X'], ['mambavision', '--impls', 'mmmv,fast'],
                ['vmunet', '--official-vmunet', 'd', '--dtypes', 'int8'], ['vmunet'],
                ['mambavision', '--steps', '0']):
        with pytest.raises(SystemExit):
            benchmark_official.parse_args(bad)


def test_busy_share_goes_in_the_note_of_gpu_rows_only():
    assert benchmark_official.busy_note(dict(gpu_busy=0.756)) == 'GPU busy 76%'
    assert benchmark_official.busy_note(dict(median_ms=3.0)) == ''


def test_bce_dice_loss_is_vmunets():
    prob = torch.tensor([[[[0.9, 0.2], [0.6, 0.1]]], [[[0.3, 0.3], [0.8, 0.7]]]])
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]], [[[0.0, 1.0], [1.0, 0.0]]]])
    bce = -(target * prob.log() + (1 - target) * (1 - prob).log()).mean()
    dice = [(2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1) for p, t in zip(prob, target)]
    expected = bce + 1 - sum(dice) / 2
    torch.testing.assert_close(benchmark_official.bce_dice_loss(prob, target), expected)


def test_relative_difference_sees_a_changed_weight():
    torch.manual_seed(0)
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 4)
    assert benchmark_official.relative_difference(a, b, x) == 0
    with torch.no_grad():
        b.bias[0] += 0.5
    assert benchmark_official.relative_difference(a, b, x) > 1e-3


@pytest.mark.skipif(importlib.util.find_spec('mambavision') is None or importlib.util.find_spec('timm') is None,
                    reason='the official model is not installed: pip install --no-deps mambavision==1.2.0 timm==1.0.15')
def test_tiny_official_mambavision_run_and_report(tmp_path):
    out = tmp_path / 'rows.json'
    cmd = [sys.executable, SCRIPT, 'mambavision', '--device', 'cpu', '--standin-scan', '--archs', 'T', '--batch', '2',
           '--size', '32', '--dtypes', 'float32', '--works', 'infer', '--impls', 'official,mmmv', '--steps', '1',
           '--warmup', '0', '--out', str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO,
                          env=dict(os.environ, OMP_NUM_THREADS='2'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads(out.read_text())
    rows = {row['impl']: row for row in saved['rows']}
    assert set(rows) == {'official', 'mmmv'} and all(row['median_ms'] > 0 for row in rows.values())
    assert benchmark_official.STANDIN_NOTE in rows['official']['note']
    difference = float(rows['official']['note'].rsplit(': ', 1)[1])
    assert difference < 1e-5
    report = subprocess.run([sys.executable, SCRIPT, 'report', str(out)], capture_output=True, text=True, cwd=REPO)
    assert report.returncode == 0 and '| MambaVision-T | mmmv | infer | float32 | 2, 32 |' in report.stdout


@pytest.mark.skipif(importlib.util.find_spec('mambavision') is None or importlib.util.find_spec('timm') is None,
                    reason='the official model is not installed: pip install --no-deps mambavision==1.2.0 timm==1.0.15')
def test_nchw_builds_mmmv_without_channels_last(tmp_path, monkeypatch, imports_restored):
    """--nchw: mmmv's MambaVision with channels_last=False (an A/B of the option), said in its rows' note."""
    built = []
    build = benchmark_official.mmmv_mambavision
    monkeypatch.setattr(benchmark_official, 'mmmv_mambavision',
                        lambda *a, **k: built.append(k.get('channels_last')) or build(*a, **k))
    argv = ['mambavision', '--device', 'cpu', '--standin-scan', '--archs', 'T', '--batch', '2', '--size', '32',
            '--dtypes', 'float32', '--works', 'infer', '--impls', 'mmmv', '--steps', '1', '--warmup', '0']
    for nchw in (False, True):
        out = tmp_path / f'{nchw}.json'
        assert benchmark_official.main(argv + ['--out', str(out)] + (['--nchw'] if nchw else [])) == 0
        (row, ) = json.loads(out.read_text())['rows']
        assert ('NCHW' in row['note']) == nchw
    assert built == [True, False]
    with pytest.raises(SystemExit):
        benchmark_official.parse_args(['vmunet', '--official-vmunet', 'x', '--nchw'])


@pytest.mark.parametrize('no_gc', [False, True])
def test_no_gc_turns_the_collector_off_during_the_timed_calls_only(no_gc):
    model = nn.Linear(4, 2)
    seen = []
    model.register_forward_hook(lambda *_: seen.append(gc.isenabled()))
    args = argparse.Namespace(warmup=1, steps=2, gpu_busy=False, no_gc=no_gc)
    assert gc.isenabled()
    row = benchmark_official.time_work(model, 'infer', torch.randn(3, 4), None, None, None, None, args)
    assert seen == [not no_gc] * 3 and gc.isenabled() and row['median_ms'] >= 0
    assert len(row['times_ms']) == 2 and min(row['times_ms']) == pytest.approx(row['min_ms'], abs=1e-3)
    assert benchmark_official.parse_args(['mambavision', '--no-gc']).no_gc
    assert not benchmark_official.parse_args(['mambavision']).no_gc
