"""tools/analysis/benchmark_selective_scan.py: its host-time measure and its arguments (the GPU tables need CUDA;
the loop section runs in docs/benchmarks.md's CPU command)."""
import time

import pytest
import torch
from tool_loading import load_tool

bench = load_tool('analysis/benchmark_selective_scan.py')


def test_host_time_counts_every_call_and_no_more():
    calls = []

    def two_ms():
        calls.append(1)
        time.sleep(0.002)

    ms = bench.host_ms(two_ms, calls=4, samples=3)
    assert len(calls) == 3 + 4 * 3  # warm-up, then the samples
    assert 1.9 <= ms < 50  # a sleep lasts at least its time; the upper bound only catches a unit mistake


def test_timings_are_chosen_by_name():
    assert bench.parse_args(['--timings', 'host_ms,kernel_ms']).timings == ['host_ms', 'kernel_ms']
    assert bench.parse_args([]).timings == list(bench.TIMINGS)
    with pytest.raises(SystemExit):
        bench.parse_args(['--timings', 'host'])


def test_host_table_has_no_floor_ratio():
    row = dict(case='mv-t-s4', shape=[128, 320, 49, 8], floor_ms={'fwd': 0.01},
               host_ms={'triton fwd': 0.08, 'mamba_ssm fwd': 0.04})
    backends = ('triton', 'mamba_ssm')
    assert bench._gpu_cells(row, row['host_ms'], backends, ['fwd'], floor=False)[-1] == '2.00x'
    assert bench._gpu_cells(row, row['host_ms'], backends, ['fwd'])[-1] == '8.0x'


def test_backends_are_chosen_by_name_and_a_missing_one_leaves_na():
    assert bench.parse_args(['--backends', 'triton,mamba_ssm']).backends == ['triton', 'mamba_ssm']
    assert bench.parse_args([]).backends == list(bench.BACKENDS)
    with pytest.raises(SystemExit):
        bench.parse_args(['--backends', 'cuda'])
    row = dict(case='mv-t-s4', shape=[128, 320, 49, 8], floor_ms={'fwd': 0.01}, ms={'triton fwd': 0.08})
    assert bench._gpu_cells(row, row['ms'], ('triton', ), ['fwd'])[-2:] == ['n/a', '8.0x']


def test_mixer_layout_moves_delta_only_for_mambavision_cases():
    """--layout mixer: the same values, delta a token-major view for MambaVision cases (as the mixer passes it), VSS
    cases unchanged; the arguments accept only the two layouts."""
    assert bench.parse_args([]).layout == 'contiguous' and bench.parse_args(['--layout', 'mixer']).layout == 'mixer'
    with pytest.raises(SystemExit):
        bench.parse_args(['--layout', 'transposed'])
    small = {key: bench.Case(case.name, 2, 6, 10, 4) for key, case in bench.GPU_CASES.items()}
    for key, case in small.items():
        plain = bench.make_inputs(case, torch.float32, 'cpu', True)
        mixer = bench.make_inputs(case, torch.float32, 'cpu', True, layout='mixer')
        assert all(torch.equal(plain[name], mixer[name]) for name in plain)
        moved = case.name.startswith('MambaVision')
        assert mixer['delta'].stride() == ((60, 1, 6) if moved else (60, 10, 1)), key
        assert mixer['delta'].is_leaf and mixer['delta'].requires_grad
        assert all(mixer[name].stride() == plain[name].stride() for name in plain if name != 'delta')


@pytest.mark.parametrize('backend', ['torch', 'triton'])
def test_scan_gives_the_same_on_both_layouts(backend):
    """mmmv reads the mixer's token-major delta in place: output and every gradient as on contiguous inputs."""
    if backend == 'triton':
        pytest.importorskip('triton')
    case = bench.Case('MambaVision-T stage 3 @224', 2, 8, 24, 4)
    scan = bench.mmmv_scan(backend)
    results = []
    for layout in ('contiguous', 'mixer'):
        inputs = bench.make_inputs(case, torch.float32, 'cpu', True, layout=layout)
        y = scan(**inputs, delta_softplus=True)
        grads = torch.autograd.grad(y, [inputs[name] for name in bench.GRAD_INPUTS], torch.ones_like(y))
        results.append([y, *grads])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
