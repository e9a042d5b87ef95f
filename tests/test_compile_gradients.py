"""tools/analysis/compile_gradients.py on the CPU: its arguments, a real eager / aot_eager comparison on an 8-channel
MambaVision against float64, and the ranking of its table (the GPU runs it with inductor; docs/benchmarks.md)."""
import functools

import pytest
import torch
from tool_loading import load_tool

compile_gradients = load_tool('analysis/compile_gradients.py')


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


def scan_inputs(dtype=torch.float32):
    torch.manual_seed(0)
    batch, dim, length, state = 2, 6, 19, 4
    u, delta, z = (torch.randn(batch, dim, length) for _ in range(3))
    A = -torch.rand(dim, state) - 0.5
    B, C = torch.randn(batch, state, length), torch.randn(batch, state, length)
    D, bias = torch.randn(dim), torch.randn(dim)
    tensors = [t.to(dtype) if t.dim() == 3 else t for t in (u, delta, A, B, C, D, z, bias)]
    return [t.requires_grad_() for t in tensors]


def test_scan_check_passes_the_scan_and_catches_a_wrong_gradient(monkeypatch):
    """--check-scan: each Triton scan call's forward and backward against the float64 loop on the same inputs, on
    the eager path and through the custom ops (torch.compile's route); a backward whose dB is doubled is caught as
    dB's error, 1, with the inputs' strides listed."""
    pytest.importorskip('triton')
    from mmmv.ops import selective_scan
    from mmmv.ops.selective_scan import triton_backend
    monkeypatch.setenv('TRITON_INTERPRET', '1')

    def run(via_custom_op):
        inputs = scan_inputs()
        scan = torch.compile(selective_scan, backend='aot_eager') if via_custom_op else selective_scan
        with compile_gradients.checking_scan([]) as calls:
            y = scan(*inputs, delta_softplus=True, backend='triton')
            y.square().sum().backward()
        return calls

    for via_custom_op in (False, True):
        calls = run(via_custom_op)
        assert [kind for kind, *_ in calls] == ['forward', 'backward']
        assert all(call[2] < 1e-5 and call[4] == '' for call in calls), calls  # right, and laid out as the fake
        assert calls[1][1].startswith('dout float32 (114, 19, 1), u float32 (114, 19, 1)')
    backward = triton_backend.scan_backward

    @functools.wraps(backward)  # its signature, which the check binds the call's arguments by
    def doubled_dB(*args, **kwargs):
        grads = list(backward(*args, **kwargs))
        grads[3] = grads[3] * 2  # du, d delta, dA, dB, ...
        return grads

    monkeypatch.setattr(triton_backend, 'scan_backward', doubled_dB)
    calls = run(False)
    assert calls[0][2] < 1e-5 and calls[1][3] == 'dB' and abs(calls[1][2] - 1) < 1e-5
    lines = compile_gradients.scan_table(dict(scan_calls=dict(eager=calls)))
    assert any(line.startswith('| 1 | backward | 1.00e+00 (dB) | dout float32') for line in lines), lines


def test_scan_check_catches_outputs_laid_out_unlike_the_fake(monkeypatch):
    """torch.compile's code reads a custom op's outputs by its fake implementation's strides: --check-scan compares
    them with the real outputs' on each call's own inputs (here dB made column-major by the real backward only)."""
    pytest.importorskip('triton')
    from mmmv.ops import selective_scan
    from mmmv.ops.selective_scan import triton_backend
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    backward = triton_backend.scan_backward

    @functools.wraps(backward)
    def transposed_dB(*args, **kwargs):
        grads = list(backward(*args, **kwargs))
        if kwargs.get('launch', True):
            grads[3] = grads[3].transpose(-1, -2).contiguous().transpose(-1, -2)
        return grads

    monkeypatch.setattr(triton_backend, 'scan_backward', transposed_dB)
    with compile_gradients.checking_scan([]) as calls:
        y = torch.compile(selective_scan, backend='aot_eager')(*scan_inputs(), backend='triton')
        y.sum().backward()
    assert calls[1][2] < 1e-5  # the values are right
    assert calls[1][4] == 'output 3: (2, 4, 19) (76, 1, 4) torch.float32 vs fake (2, 4, 19) (76, 19, 1) torch.float32'
    lines = compile_gradients.scan_table(dict(scan_calls=dict(inductor=calls)))
    assert '1 unlike the fake implementation' in lines[1] and lines[-1].endswith(f'| inductor: {calls[1][4]} |')


def test_compile_only_compiles_the_matching_submodules_and_undoes_it(capsys):
    """--compile-only: the matching submodules compiled in place (each its own graph), the rest eager; the gradients
    as eager's (aot_eager, float32, torch scan backend); afterwards no submodule is left compiled; a pattern that
    matches nothing is a short error naming some of the model's submodules."""
    from torch._dynamo.utils import counters
    build, size = compile_gradients.models()['MambaVision-tiny']
    model = build().eval()
    forward = compile_gradients.compiled(model, 'aot_eager', r'stages[.]2[.]blocks[.]\d+')
    assert forward is model
    compiled = [name for name, m in model.named_modules() if m._compiled_call_impl is not None]
    assert compiled == ['stages.2.blocks.0', 'stages.2.blocks.1']
    counters.clear()
    images = torch.randn(2, 3, size, size)
    loss, grads = compile_gradients.step(model, forward, images, None)
    assert counters['stats']['unique_graphs'] >= 2  # a graph per block
    compile_gradients.uncompiled(model)
    assert all(m._compiled_call_impl is None for m in model.modules())
    loss_eager, grads_eager = compile_gradients.step(model, model, images, None)
    assert abs(loss - loss_eager) < 1e-6 and all(compile_gradients.relative(grads[n], grads_eager[n]) < 1e-4
                                                  for n in grads_eager)
    with pytest.raises(ValueError, match="matches no submodule .*top-level ones: patch_embed.*stages"):
        compile_gradients.compiled(model, 'aot_eager', 'decoder')
    # from the command line: said before any run, exit status 2
    assert compile_gradients.main(['--model', 'MambaVision-tiny', '--device', 'cpu', '--compile-only', 'x']) == 2
    assert "error: --compile-only 'x' matches no submodule" in capsys.readouterr().err
