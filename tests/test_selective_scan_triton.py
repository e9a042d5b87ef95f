"""The Triton selective scan against the float64 reference, on small odd shapes that cross chunk and split
boundaries: outputs, last states and every gradient with the per-dtype tolerances of test_selective_scan. On a
CPU-only machine the kernels run in triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1); on a GPU they
run compiled. Also: dispatch and its switches, the custom ops under torch.compile / torch.export / autocast,
determinism, fp16 robustness, and the MambaVision mixer on this path. Full sizes: test_selective_scan_gpu.py."""
import functools
import os
import subprocess
import sys
import types

import pytest
import torch

from mmmv.ops import selective_scan, selective_scan_ref
from mmmv.ops.selective_scan import interface, resolve_backend, scan_backend, set_scan_backend
from test_selective_scan import (MIXER_LAYOUTS, assert_layouts_match_reference, assert_matches_reference,
                                 make_inputs)

pytest.importorskip('triton')
import triton  # noqa: E402 - imported after the skip
import triton.language as tl  # noqa: E402

from mmmv.ops.selective_scan import triton_backend  # noqa: E402 - needs triton, imported after the skip
from mmmv.ops.selective_scan.triton_kernels import _flip_tokens  # noqa: E402

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'
if DEVICE == 'cpu' and not triton_backend.interpreting():
    pytest.skip('no CUDA and TRITON_INTERPRET is not set (tests/conftest.py sets it)', allow_module_level=True)


def triton_scan(chunk_size=None, n_splits=None):
    return functools.partial(triton_backend.selective_scan_triton, chunk_size=chunk_size, n_splits=n_splits)


@pytest.mark.parametrize('length,chunk_size,n_splits', [
    (1, None, None),
    (7, 4, None),      # two chunks, the last one partial
    (33, 8, 1),        # five chunks carried in one program
    (33, 8, 3),        # three splits of two chunks (the last one short)
    (50, 4, 13),       # one chunk per split
    (129, None, 2),
])
def test_lengths_chunks_splits(length, chunk_size, n_splits):
    assert_matches_reference(make_inputs(length=length, device=DEVICE), scan=triton_scan(chunk_size, n_splits))


@pytest.mark.parametrize('dim,groups_B,groups_C', [(8, 2, None), (8, None, 4), (12, 3, 3), (8, 2, 4), (6, 6, 6),
                                                   (10, 5, 1)])
def test_groups(dim, groups_B, groups_C):
    inputs = make_inputs(dim=dim, length=21, state=3, groups_B=groups_B, groups_C=groups_C, device=DEVICE)
    assert_matches_reference(inputs, scan=triton_scan(8, 2))


@pytest.mark.parametrize('has_D,has_z,has_bias,softplus', [(False, False, False, False), (True, False, False, True),
                                                           (False, True, True, False), (True, True, True, True)])
def test_optional_inputs(has_D, has_z, has_bias, softplus):
    inputs = make_inputs(length=19, D=has_D, z=has_z, delta_bias=has_bias, device=DEVICE)
    assert_matches_reference(inputs, delta_softplus=softplus, scan=triton_scan(8, 2))


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
def test_dtypes(dtype):
    assert_matches_reference(make_inputs(length=37, dtype=dtype, device=DEVICE), scan=triton_scan(16, 2))


def test_wide_state_and_many_channels():
    """N = 16 (VSS) and more channels than one register tile."""
    inputs = make_inputs(batch=1, dim=40, length=24, state=16, groups_B=2, groups_C=2, device=DEVICE)
    assert_matches_reference(inputs, scan=triton_scan(8, 2))


def test_without_last_state_gradient():
    assert_matches_reference(make_inputs(length=20, device=DEVICE), last_state_grad=False, scan=triton_scan(8, 2))


def test_non_contiguous_inputs_are_read_in_place():
    """delta as MambaVision makes it (a transposed view), u from a slice, B / C with a stride along L."""
    inputs = make_inputs(length=23, device=DEVICE)
    batch, dim, length = inputs['u'].shape
    delta_t = inputs['delta'].detach().transpose(1, 2).contiguous().requires_grad_()
    u_wide = torch.cat([inputs['u'].detach(), inputs['u'].detach()], dim=1).requires_grad_()
    views = dict(inputs, delta=delta_t.transpose(1, 2), u=u_wide[:, :dim],
                 B=inputs['B'].detach().repeat(1, 1, 2)[..., ::2].requires_grad_())
    assert not views['delta'].is_contiguous() and not views['u'].is_contiguous()
    assert_matches_reference(views, scan=triton_scan(8, 2))


def test_strided_skip_and_bias_vectors():
    """D and delta_bias as strided views (every other element of a parameter): the kernels read them with unit
    stride, so the path must hand them over contiguous (their values once came out wrong)."""
    inputs = make_inputs(length=9, device=DEVICE)
    dim = inputs['u'].shape[1]
    views = {}
    for name in ('D', 'delta_bias'):
        wide = torch.stack([inputs[name].detach(), torch.full_like(inputs[name], 50.0)], 1).flatten().requires_grad_()
        views[name] = wide[::2]
        assert views[name].stride() == (2, ) and views[name].shape == (dim, )
    assert_matches_reference(dict(inputs, **views), scan=triton_scan(4))


def test_mixed_dtypes():
    inputs = make_inputs(length=17, dtype=torch.bfloat16, device=DEVICE)
    inputs['delta'] = inputs['delta'].detach().float().requires_grad_()
    y = triton_backend.selective_scan_triton(**inputs, delta_softplus=True)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert inputs['delta'].grad.dtype == torch.float32 and inputs['u'].grad.dtype == torch.bfloat16


def test_long_sequence():
    """L = 65536 (tens of thousands of tokens come from a detection input at stride 4), crossing 64 chunks and
    4 splits; small channels so that the float64 reference stays quick."""
    inputs = make_inputs(batch=1, dim=2, length=65536, state=2, device=DEVICE)
    assert_matches_reference(inputs, scan=triton_scan(1024, 4))


def test_fp16_large_delta_long_sequence_stays_finite():
    """Inputs that overflow a float16 recurrence: large time steps (drives dt * B * u of hundreds, decays that
    underflow) over a long sequence. The math is float32; outputs and gradients stay finite and right."""
    inputs = make_inputs(batch=1, dim=4, length=4096, state=4, dtype=torch.float16, device=DEVICE)
    with torch.no_grad():
        inputs['delta'].mul_(0).add_(30.0)  # softplus(30) = 30: decays exp(30 A) underflow, drives are large
    y, last = triton_backend.selective_scan_triton(**inputs, delta_softplus=True, return_last_state=True,
                                                   chunk_size=512, n_splits=2)
    y.float().square().mean().backward()
    for name, tensor in [('y', y), ('last', last)] + [('d' + k, v.grad) for k, v in inputs.items() if v is not None]:
        assert torch.isfinite(tensor).all(), name
    ref_inputs = {k: v.detach().double() for k, v in inputs.items()}
    y_ref = selective_scan_ref(**ref_inputs, delta_softplus=True)
    torch.testing.assert_close(y.double(), y_ref, rtol=3e-3, atol=5e-3 * y_ref.abs().max().item())


def test_deterministic():
    inputs = make_inputs(length=45, groups_B=2, device=DEVICE)
    results = []
    for _ in range(2):
        y = triton_backend.selective_scan_triton(**inputs, delta_softplus=True, chunk_size=8, n_splits=3)
        grads = torch.autograd.grad(y.square().sum(), [v for v in inputs.values() if v is not None])
        results.append([y, *grads])
    for first, second in zip(*results):
        assert torch.equal(first, second)


def test_gradient_of_the_last_state_alone():
    """y unused: its gradient reaches the eager backward as None (gradients are not materialised) and counts as
    zeros; the last state's is the reference's."""
    inputs = make_inputs(length=21, device=DEVICE)
    names = [n for n, t in inputs.items() if t is not None and n not in ('C', 'D', 'z')]  # what the state depends on
    _, last = triton_backend.selective_scan_triton(**inputs, delta_softplus=True, return_last_state=True,
                                                   chunk_size=8, n_splits=2)
    ref_inputs = {n: None if t is None else t.detach().double().requires_grad_() for n, t in inputs.items()}
    _, last_ref = selective_scan_ref(**ref_inputs, delta_softplus=True, return_last_state=True)
    grads = torch.autograd.grad(last.square().sum(), [inputs[n] for n in names])
    grads_ref = torch.autograd.grad(last_ref.square().sum(), [ref_inputs[n] for n in names])
    for name, grad, grad_ref in zip(names, grads, grads_ref):
        torch.testing.assert_close(grad.double(), grad_ref, rtol=1e-4, atol=1e-4, msg=lambda m: f'{name}: {m}')


def test_gradients_accumulate_into_leaves():
    """The eager backward returns dA, dD and d delta_bias as views of one reduction, dB and dC of another:
    accumulated into the leaves' .grad over two backward passes, each is twice one pass's."""
    inputs = make_inputs(length=13, device=DEVICE)
    leaves = {n: t for n, t in inputs.items() if t is not None}

    def loss():
        return triton_backend.selective_scan_triton(**inputs, delta_softplus=True, chunk_size=8).square().sum()

    once = torch.autograd.grad(loss(), list(leaves.values()))
    for _ in range(2):
        loss().backward()
    for (name, leaf), grad in zip(leaves.items(), once):
        torch.testing.assert_close(leaf.grad, 2 * grad, msg=lambda m: f'{name}: {m}')


def _token_major(t):
    """t's values in memory with the channels (or states) contiguous: other strides, same sizes."""
    return t.detach().movedim(-1, 1).contiguous().movedim(1, -1).requires_grad_(t.requires_grad)


def test_plans_are_kept_per_strides_dtypes_and_options(monkeypatch):
    """A call's plan (launch configuration, scalar arguments, constexprs) is kept per sizes, strides, dtypes and
    options: calls of one size that differ only in those, made in turn in one process, each match the reference
    (a plan reused across them would address their inputs through the wrong strides), and the gradients do not
    depend on dy's layout."""
    monkeypatch.setattr(triton_backend, '_CONFIGS', {})
    plain = make_inputs(length=19, device=DEVICE)
    wide_u = torch.cat([plain['u'].detach(), plain['u'].detach()], dim=1)[:, 8:].requires_grad_()
    cases = [(plain, {}), (dict(plain, u=wide_u), {}), (plain, dict(last_state_grad=False)),
             (make_inputs(length=19, dtype=torch.bfloat16, device=DEVICE), {}),
             (dict(plain, D=None), {}), (dict(plain, delta_bias=None), {})]
    cases[2:2] = [(dict(plain, **{name: _token_major(plain[name])}), {}) for name in ('delta', 'B', 'C', 'z')]
    for inputs, options in cases:  # each differs from the first in one thing
        assert_matches_reference(inputs, scan=triton_scan(8, 2), **options)
    assert sum(key[0] == 'fwd' for key in triton_backend._CONFIGS) == len(cases) - 1  # all but the last-state one

    y = triton_backend.selective_scan_triton(**plain, delta_softplus=True, chunk_size=8, n_splits=2)
    leaves = [t for t in plain.values() if t is not None]
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, leaves, dy, retain_graph=True)
    for got, want in zip(torch.autograd.grad(y, leaves, _token_major(dy)), grads):
        torch.testing.assert_close(got, want)


# ----------------------------------------------------------------------------------------------------
# The custom ops in graphs, autocast.
# ----------------------------------------------------------------------------------------------------
def test_custom_op_registration():
    inputs = make_inputs(length=9, device=DEVICE)
    args = (*(inputs[k] for k in ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')), True, True, 4, 2, 0)
    torch.library.opcheck(torch.ops.mmmv.selective_scan_fwd.default, args,
                          test_utils=('test_schema', 'test_faketensor', 'test_autograd_registration'))
    # the fused 2D scan (height 3 of a 3 x 4 map): u (batch, Di, L), delta (batch, 4, Di, L), B / C per direction
    from test_cross_scan import make_inputs as make_cross_inputs
    cross = make_cross_inputs(3, 4, batch=1, inner=2, state=4)
    args = (*(cross[k].to(DEVICE) for k in ('u', 'delta', 'A', 'B', 'C', 'D')), None, cross['delta_bias'].to(DEVICE),
            True, False, 4, 2, 3)
    torch.library.opcheck(torch.ops.mmmv.selective_scan_fwd.default, args,
                          test_utils=('test_schema', 'test_faketensor', 'test_autograd_registration'))


@pytest.mark.parametrize('layout', ['contiguous', 'token-major'])
def test_fake_implementations_give_the_real_strides(layout):
    """torch.compile plans its buffers from the fake implementations: their outputs must have the real outputs'
    shapes and strides, for both ops, plain and fused 2D, whatever the inputs' layouts (VM-UNet's delta and u come
    token-major from its projections; a contiguous-only fake made compiled VM-UNet training fail)."""
    from test_cross_scan import make_inputs as make_cross_inputs

    def arrange(t):
        if t is None or layout == 'contiguous' or t.dim() < 3:
            return t
        return t.detach().movedim(-1, 1).contiguous().movedim(1, -1)  # same values, token-major memory

    plain = {n: arrange(t) for n, t in make_inputs(length=9, device=DEVICE).items()}
    cross = {n: arrange(None if t is None else t.detach().to(DEVICE))
             for n, t in make_cross_inputs(3, 4, batch=1, inner=2, state=4).items()}
    cases = [((*(plain[k] for k in ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')), True, True, 4, 2, 0)),
             ((*(cross[k] for k in ('u', 'delta', 'A', 'B', 'C', 'D')), None, cross['delta_bias'], True, False, 4, 2,
               3))]
    for args in cases:
        fwd_args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        torch.library.opcheck(torch.ops.mmmv.selective_scan_fwd.default, fwd_args, test_utils=('test_faketensor', ))
        y, last, states = torch.ops.mmmv.selective_scan_fwd(*fwd_args)
        u, delta, A, B, C, D, z, bias, softplus, _, chunk, splits, height = fwd_args
        dout = arrange(torch.randn_like(y))
        dlast = torch.randn_like(last) if last.numel() else None
        bwd_args = (dout, dlast, u, delta, A, B, C, D, z, bias, states, softplus, chunk, splits, height)
        torch.library.opcheck(torch.ops.mmmv.selective_scan_bwd.default, bwd_args, test_utils=('test_faketensor', ))


def test_torch_compile_keeps_one_graph():
    inputs = make_inputs(length=12, device=DEVICE)

    def step(u, delta, A, B, C, D, z, delta_bias):
        y = selective_scan(u * 2, delta, A, B, C, D, z, delta_bias, delta_softplus=True, backend='triton')
        return y.float().square().sum()

    compiled = torch.compile(step, fullgraph=True, backend='aot_eager' if DEVICE == 'cpu' else 'inductor')
    loss = compiled(**inputs)
    grads = torch.autograd.grad(loss, [inputs['u'], inputs['A']])
    expected = step(**inputs)
    grads_expected = torch.autograd.grad(expected, [inputs['u'], inputs['A']])
    torch.testing.assert_close(loss, expected)
    for got, want in zip(grads, grads_expected):
        torch.testing.assert_close(got, want)


def test_torch_export_records_the_op():

    class Mixer(torch.nn.Module):

        def __init__(self, A):
            super().__init__()
            self.A = torch.nn.Parameter(A.detach())

        def forward(self, u, delta, B, C):
            return selective_scan(u, delta, self.A, B, C, delta_softplus=True, backend='triton')

    inputs = make_inputs(length=10, device=DEVICE)
    tensors = tuple(inputs[k].detach() for k in ('u', 'delta', 'B', 'C'))
    program = torch.export.export(Mixer(inputs['A']), tensors)
    targets = {str(node.target) for node in program.graph.nodes if node.op == 'call_function'}
    assert 'mmmv.selective_scan_fwd.default' in targets, targets
    torch.testing.assert_close(program.module()(*tensors), Mixer(inputs['A'])(*tensors))


def test_autocast_inputs():
    """Under autocast the projections feeding the scan give bfloat16; the scan takes them as they are, computes in
    float32 and returns bfloat16, matching the reference on the same values."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 11, 8, generator=gen).to(DEVICE)
    proj = torch.nn.Linear(8, 8 + 8 + 4 + 4).to(DEVICE)
    A = -(0.5 + torch.rand(8, 4, generator=gen)).to(DEVICE)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        u, delta, B, C = proj(x).transpose(1, 2).split([8, 8, 4, 4], dim=1)
        y = selective_scan(u, delta, A, B, C, delta_softplus=True, backend='triton')
    assert u.dtype == torch.bfloat16 and y.dtype == torch.bfloat16
    y_ref = selective_scan_ref(u.double(), delta.double(), A.double(), B.double(), C.double(), delta_softplus=True)
    torch.testing.assert_close(y.double(), y_ref, rtol=3e-2, atol=5e-2)
    y.float().sum().backward()
    assert proj.weight.grad is not None and torch.isfinite(proj.weight.grad).all()


# ----------------------------------------------------------------------------------------------------
# Dispatch.
# ----------------------------------------------------------------------------------------------------
def _fake(is_cuda, dtype=torch.float32):
    return types.SimpleNamespace(is_cuda=is_cuda, dtype=dtype)


def test_auto_dispatch(monkeypatch):
    monkeypatch.delenv(interface.ENV_BACKEND, raising=False)
    assert resolve_backend(None, _fake(True)) == 'triton'
    assert resolve_backend('auto', _fake(True, torch.bfloat16)) == 'triton'
    assert resolve_backend(None, _fake(True, torch.float64)) == 'torch'
    assert resolve_backend(None, _fake(False)) == 'torch'
    monkeypatch.setattr(interface, 'triton_available', lambda: False)
    assert resolve_backend(None, _fake(True)) == 'torch'


def test_switches_and_their_order(monkeypatch):
    monkeypatch.setenv(interface.ENV_BACKEND, 'triton')
    assert resolve_backend(None, _fake(False)) == 'triton'
    with scan_backend('torch'):
        assert resolve_backend(None, _fake(True)) == 'torch'  # a context wins over the variable
        with scan_backend('triton'):
            assert resolve_backend(None, _fake(False)) == 'triton'
        assert resolve_backend('triton', _fake(True)) == 'triton'  # an explicit argument wins over a context
        assert resolve_backend(None, _fake(True)) == 'torch'
    set_scan_backend('torch')
    try:
        assert resolve_backend(None, _fake(True)) == 'torch'
    finally:
        set_scan_backend(None)
    assert resolve_backend(None, _fake(True)) == 'triton'
    with pytest.raises(ValueError, match="unknown backend 'cuda' \\(from scan_backend\\)"):
        with scan_backend('cuda'):
            pass


def test_triton_rejects_float64():
    inputs = make_inputs(length=5, dtype=torch.float64, device=DEVICE)
    with pytest.raises(TypeError, match=r"backend 'triton' .* u is torch.float64 \(use backend='torch'"):
        selective_scan(**inputs, backend='triton')


def test_triton_on_cpu_without_interpreter_fails_clearly():
    code = ('import os, torch; os.environ.pop("TRITON_INTERPRET", None)\n'
            'from mmmv.ops import selective_scan\n'
            'u = torch.randn(1, 2, 3); A = -torch.ones(2, 2); B = torch.randn(1, 2, 3)\n'
            'selective_scan(u, u, A, B, B, backend="triton")\n')
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode != 0
    assert "backend 'triton' runs on CUDA tensors, got a tensor on cpu; set TRITON_INTERPRET=1" in result.stderr


def test_missing_triton_fails_clearly(monkeypatch):
    monkeypatch.setattr(interface.importlib.util, 'find_spec', lambda name: None)
    monkeypatch.setattr(interface, '_loaded', {})
    with pytest.raises(ValueError, match=r"backend 'triton' needs the triton package: pip install triton"):
        interface.BACKENDS['triton']()


def test_bad_chunk_size():
    with pytest.raises(ValueError, match='chunk_size must be a power of two'):
        triton_backend.selective_scan_triton(**make_inputs(length=5, device=DEVICE), chunk_size=12)


# ----------------------------------------------------------------------------------------------------
# The MambaVision mixer on this path.
# ----------------------------------------------------------------------------------------------------
def test_mambavision_runs_on_the_triton_path(monkeypatch, probe_loss):
    from mmmv.models.mambavision import MambaVision

    calls = []
    original = triton_backend.selective_scan_triton

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(triton_backend, 'selective_scan_triton', counting)
    monkeypatch.setitem(interface._loaded, 'triton', counting)  # the dispatcher keeps the imported function
    torch.manual_seed(0)
    model = MambaVision(arch=dict(dim=16, in_dim=8, depths=(1, 1, 2, 1), num_heads=(1, 1, 2, 2),
                                  window_size=(4, 4, 2, 2)), out_indices=(2, 3), drop_path_rate=0.0,
                        scan_backend='triton').to(DEVICE)
    x = torch.randn(1, 3, 64, 64, device=DEVICE)
    outs = model(x)
    probe_loss(outs).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert calls, 'the mixer did not call the Triton scan'
    model.zero_grad()
    model.scan_backend = None
    with scan_backend('torch'):
        outs_torch = model(x)
        probe_loss(outs_torch).backward()
    for out, out_torch in zip(outs, outs_torch):
        torch.testing.assert_close(out, out_torch, rtol=1e-4, atol=1e-4)
    for name, param in model.named_parameters():
        if name in grads:
            torch.testing.assert_close(grads[name], param.grad, rtol=1e-3, atol=1e-4, msg=lambda m: f'{name}: {m}')
            if '.mixer.' in name:  # relative to its norm: at this initialisation a mixer's is 1e-12 to 1e-2 in size
                error = ((grads[name] - param.grad).norm() / param.grad.norm()).item()
                assert error < 1e-4, (name, error)


@triton.jit
def _flip_kernel(x_ptr, y_ptr, BL: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr):
    """Stores `_flip_tokens` of a (BL, BD, NP) tile."""
    rows = tl.arange(0, BL)[:, None, None] * BD + tl.arange(0, BD)[None, :, None]
    offsets = rows * NP + tl.arange(0, NP)[None, None, :]
    tl.store(y_ptr + offsets, _flip_tokens(tl.load(x_ptr + offsets)))


def test_flip_tokens_is_a_bit_exact_reversal():
    """`_flip_tokens` (the backward's adjoint scan runs over flipped tiles): every bit pattern comes back reversed
    along the tokens, NaN, -0.0 and values whose int32 sums overflow included, at the backward's tile lengths."""
    for tokens in (2, 8, 32):
        x = torch.randn(tokens, 4, 2, device=DEVICE) * 1e30
        x[0, 0, 0], x[-1, 1, 1], x[tokens // 2, 2, 0] = float('nan'), -0.0, float('inf')
        y = torch.empty_like(x)
        _flip_kernel[(1, )](x, y, tokens, 4, 2)
        assert torch.equal(y.view(torch.int32), x.flip(0).view(torch.int32)), tokens


def test_backward_choice_is_checked(monkeypatch):
    """MMMV_SCAN_BACKWARD picks the backward kernel on CUDA (tests/test_selective_scan_gpu.py runs both); a value
    that is not a choice is an error that names them, not a silent default."""
    inputs = make_inputs(length=8)
    monkeypatch.setenv('MMMV_SCAN_BACKWARD', 'fastest')
    y = selective_scan(**inputs, delta_softplus=True, backend='triton')
    with pytest.raises(ValueError, match="MMMV_SCAN_BACKWARD must be 'auto', 'warp' or 'triton'"):
        y.sum().backward()
    monkeypatch.setenv('MMMV_SCAN_BACKWARD', 'warp')  # on the CPU the Triton backward runs (Gluon has no interpreter)
    selective_scan(**inputs, delta_softplus=True, backend='triton').sum().backward()
    assert torch.isfinite(inputs['u'].grad).all()


def test_warp_backward_gets_its_buffers_and_they_are_summed(monkeypatch):
    """What the warp-layout backward (CUDA only; here a stand-in that fills its buffers) is handed, as
    gluon_kernels addresses it: contiguous partial rows (batch, programs, N, L) for dB and for dC, (batch, 1, D, N)
    for dA, (batch, 1, D) for dD and for d delta_bias; and every gradient is the sum of its buffer, whichever
    buffer it shares with another gradient, for the custom op (separate storages) and the eager Function (views)."""
    handed = {}

    class StandIn:
        def __getitem__(self, grid):
            def fill(*args, **constexprs):
                parts = dict(zip(('dB', 'dC', 'dA', 'dD', 'dbias'), args[13:18]))
                for value, part in enumerate(parts.values(), 1):
                    part.fill_(value)
                handed.update(parts)
            return fill

    monkeypatch.setattr(triton_backend, '_CONFIGS', {})  # the plans made here choose the stand-in
    monkeypatch.setattr(triton_backend, '_warp_backward_k', lambda *args: 4)
    monkeypatch.setattr(triton_backend._Warp, 'kernels', types.SimpleNamespace(_bwd_warp_kernel=StandIn()))
    monkeypatch.setattr(triton_backend._Warp, 'failed', None)
    batch, dim, length, state = 2, 16, 12, 4
    x = {n: None if t is None else t.detach()
         for n, t in make_inputs(batch=batch, dim=dim, length=length, state=state, z=False, device=DEVICE).items()}
    args = tuple(x[n] for n in ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias'))
    _, _, states = triton_backend.scan_forward(*args, True, False, launch=False)
    for separate in (True, False):
        du, ddelta, dA, dB, dC, dD, dz, dbias = triton_backend.scan_backward(
            torch.randn_like(x['u']), None, *args, states, True, separate=separate)
        programs = handed['dB'].shape[1]
        assert handed['dB'].shape == (batch, programs, state, length)
        assert handed['dA'].shape == (batch, 1, dim, state) and handed['dD'].shape == (batch, 1, dim)
        for name, part in handed.items():
            assert part.is_contiguous(), name
        for grad, value in ((dB, programs), (dC, 2 * programs), (dA, 3 * batch), (dD, 4 * batch), (dbias, 5 * batch)):
            assert torch.equal(grad, torch.full_like(grad, value))
        assert dB.shape == x['B'].shape and dA.shape == x['A'].shape and dD.shape == (dim, )
        assert (dz is None) != separate


@pytest.mark.parametrize('via', ['eager', 'custom-ops'])
@pytest.mark.parametrize('layouts', sorted(MIXER_LAYOUTS))
def test_mixer_layouts(layouts, via):
    """u, delta, B, C and d y in the layouts the MambaVision mixer and torch.compile pass, on the eager path and
    through the custom ops (what a compiled model calls): output and gradients against float64."""
    inputs = make_inputs(batch=2, dim=6, length=19, state=4, z=False, device=DEVICE)
    scan = functools.partial(selective_scan, backend='triton')
    if via == 'custom-ops':
        torch._dynamo.reset()
        scan = torch.compile(scan, backend='aot_eager')
    assert_layouts_match_reference(inputs, MIXER_LAYOUTS[layouts], scan, tolerance=1e-5)
