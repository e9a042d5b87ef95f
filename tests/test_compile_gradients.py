"""tools/analysis/compile_gradients.py on the CPU: its arguments, a real eager / aot_eager comparison on an 8-channel
MambaVision against float64, and the ranking of its table (the GPU runs it with inductor; docs/benchmarks.md)."""
import importlib.util
import os.path as osp

import pytest
import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
spec = importlib.util.spec_from_file_location('compile_gradients',
                                              osp.join(REPO, 'tools', 'analysis', 'compile_gradients.py'))
compile_gradients = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compile_gradients)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_arguments_are_checked():
    args = compile_gradients.parse_args(['--runs', 'eager, inductor', '--device', 'cpu'])
    assert args.runs == ['eager', 'inductor'] and args.model == 'MambaVision-T' and args.dtype == 'bfloat16'
    for bad in (['--runs', 'eager,fast'], ['--runs', 'inductor'], ['--model', 'ResNet'], ['--dtype', 'int8'],
                ['--batch', '0'], ['--size', '8']):
        with pytest.raises(SystemExit):
            compile_gradients.parse_args(bad)


@pytest.mark.parametrize('backend', ['torch', 'triton'])
def test_tiny_model_against_float64_on_cpu(backend):
    """float32 eager is within float32 rounding of the float64 step, and aot_eager (the graph inductor compiles, on
    eager kernels; with the Triton scan, through its custom ops' fake implementations) within the same: a gradient
    matched to the wrong parameter or a broken float64 reference would be off by O(1)."""
    if backend == 'triton':
        pytest.importorskip('triton')
    args = compile_gradients.parse_args(['--model', 'MambaVision-tiny', '--device', 'cpu', '--dtype', 'float32',
                                         '--runs', 'eager,aot_eager', '--top', '3', '--scan-backend', backend])
    result = compile_gradients.compare(args)
    names = {name for name, _ in compile_gradients.models()['MambaVision-tiny'][0]().named_parameters()}
    assert set(result['errors']['eager']) == names  # every parameter gets a gradient in this loss
    assert max(result['errors']['eager'].values()) < 1e-4
    assert max(result['errors']['aot_eager'].values()) < 1e-4
    assert abs(result['losses']['eager'] - result['loss64']) < 1e-5 * result['loss64']
    lines = compile_gradients.table(result, 3)
    rows = [line for line in lines if line.startswith('| ') and not line.startswith('| parameter')]
    assert len(rows) == 3 and all(row.split(' | ')[0][2:] in names for row in rows)


def test_table_puts_the_corrupted_gradient_first():
    grads64 = {'a.weight': torch.ones(4, dtype=torch.float64), 'b.weight': torch.full((2,), 1e-3, dtype=torch.float64)}
    eager = {name: g * (1 + 1e-3) for name, g in grads64.items()}
    inductor = dict(eager, **{'a.weight': -grads64['a.weight']})  # the sign flipped: relative error 2
    errors = {run: {name: compile_gradients.relative(g[name], grads64[name]) for name in grads64}
              for run, g in (('eager', eager), ('inductor', inductor))}
    result = dict(loss64=1.0, losses=dict(eager=1.0, inductor=1.0), seconds=dict(eager=0.0, inductor=0.0),
                  errors=errors, grads=dict(eager=eager, inductor=inductor), grads64=grads64)
    lines = compile_gradients.table(result, 2)
    first = next(line for line in lines if line.startswith('| a.weight') or line.startswith('| b.weight'))
    assert first.startswith('| a.weight') and '2.00e+00' in first and '| -1.0000 |' in first
    assert 'inductor 2.00e+00' in lines[1]


def test_cuda_asked_for_without_cuda_is_a_short_error(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert compile_gradients.main(['--device', 'cuda']) == 2
    assert 'CUDA is not available' in capsys.readouterr().err
