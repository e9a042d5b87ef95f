"""The Triton selective scan at full vision sizes on a CUDA GPU (skipped without one; the same kernels are checked
on CPU under the interpreter by test_selective_scan_triton.py). Run before changing the kernels:
``python -m pytest tests/test_selective_scan_gpu.py``.

Sequence lengths, channels and states are those of the benchmark cases (../shared/ANCHORS.md section 3); the batch
is cut to 2 so that the float64 reference loop stays affordable."""
import functools

import pytest
import torch

from mmmv.ops import scan_backend, selective_scan
from test_selective_scan import (MIXER_LAYOUTS, assert_layouts_match_reference, assert_matches_reference,
                                 make_inputs)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')

# (D, L, N, groups of B/C, z): MambaVision-T/B stages at 224 and at a 1344 x 800 detection input, VSS stages with
# the four directions as groups, and a very long sequence.
FULL_SIZES = {
    'mambavision_t_stage3_224': (160, 196, 8, None, True),
    'mambavision_t_stage4_224': (320, 49, 8, None, True),
    'mambavision_t_stage3_det': (160, 4200, 8, None, True),
    'mambavision_t_stage4_det': (320, 1050, 8, None, True),
    'mambavision_b_stage3_224': (256, 196, 8, None, False),
    'vss_stage1_256': (768, 4096, 16, 4, False),
    'vss_stage3_256': (3072, 256, 16, 4, True),
    'long_65536': (32, 65536, 4, None, True),
}


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize('case', sorted(FULL_SIZES))
def test_full_sizes(case, dtype):
    dim, length, state, groups, has_z = FULL_SIZES[case]
    inputs = make_inputs(batch=2, dim=dim, length=length, state=state, groups_B=groups, groups_C=groups, dtype=dtype,
                         z=has_z, device='cuda')
    assert_matches_reference(inputs, scan=lambda **kw: selective_scan(**kw, backend='triton'))


@pytest.mark.parametrize('via', ['eager', 'custom-ops'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('layouts', sorted(MIXER_LAYOUTS))
@pytest.mark.parametrize('case', ['mambavision_t_stage3_224', 'mambavision_t_stage4_224'])
def test_mixer_layouts(case, layouts, dtype, via):
    """MambaVision-T's scans (batch 2) with u, delta, B, C and d y laid out as the mixer and torch.compile pass them
    (compiled bf16 MambaVision-T trains off from eager: issue 11), on the eager path and through the custom ops:
    the output and every gradient against float64, relative to its norm (bf16: its rounding, 2**-8)."""
    dim, length, state, _, _ = FULL_SIZES[case]
    inputs = make_inputs(batch=2, dim=dim, length=length, state=state, dtype=dtype, z=False, device='cuda')
    scan = functools.partial(selective_scan, backend='triton')
    if via == 'custom-ops':
        torch._dynamo.reset()
        scan = torch.compile(scan, backend='aot_eager')
    assert_layouts_match_reference(inputs, MIXER_LAYOUTS[layouts], scan,
                                   tolerance=1e-2 if dtype is torch.bfloat16 else 1e-4)


def test_auto_dispatch_uses_triton_on_cuda():
    inputs = make_inputs(length=64, device='cuda')
    y = selective_scan(**inputs, delta_softplus=True)
    torch.testing.assert_close(y, selective_scan(**inputs, delta_softplus=True, backend='triton'), rtol=0, atol=0)


def test_inductor_compile():
    inputs = make_inputs(batch=4, dim=64, length=300, state=8, device='cuda')

    def step(u, delta, A, B, C, D, z, delta_bias):
        return selective_scan(torch.tanh(u), delta, A, B, C, D, z, delta_bias, delta_softplus=True).square().sum()

    loss = torch.compile(step, fullgraph=True)(**inputs)
    torch.testing.assert_close(loss, step(**inputs), rtol=1e-5, atol=1e-5)
    loss.backward()
    assert torch.isfinite(inputs['A'].grad).all()


def assert_model_triton_matches_torch(model, x, grad_of, probe_loss):
    """Outputs, and the gradient of the parameter `grad_of(model)` (for `probe_loss`: the outputs' mean square is
    constant behind their LayerNorms), equal on the two scan backends, the gradient relative to its norm."""
    results = {}
    for backend in ('triton', 'torch'):
        model.zero_grad()
        with scan_backend(backend):
            outs = model(x)
            probe_loss(outs).backward()
        results[backend] = ([o.detach() for o in outs], grad_of(model).grad.clone())
    for out_triton, out_torch in zip(results['triton'][0], results['torch'][0]):
        torch.testing.assert_close(out_triton, out_torch, rtol=1e-3, atol=1e-3)
    grad, reference = results['triton'][1], results['torch'][1]
    assert reference.norm() > 0 and (grad - reference).norm() <= 1e-3 * reference.norm()


def test_mambavision_t_triton_matches_torch_backend(probe_loss):
    from mmmv.models.mambavision import MambaVision

    torch.manual_seed(0)
    model = MambaVision('T', drop_path_rate=0.0).cuda()
    assert_model_triton_matches_torch(model, torch.randn(2, 3, 224, 224, device='cuda'),
                                      lambda m: m.stages[2].blocks[0].mixer.A_log, probe_loss)


# ----------------------------------------------------------------------------------------------------
# The fused four-direction 2D scan (mmmv.ops.cross_selective_scan) at full VSS sizes.
# ----------------------------------------------------------------------------------------------------
# (Di, H, W, N): VM-UNet's encoder stages 1 and 4 at 256 x 256, VMamba-T v0 stage 3 at a 1344 x 800 detection input
# (84 x 50 tokens: not square, not a power of two).
CROSS_SIZES = {
    'vmunet_stage1_256': (192, 64, 64, 16),
    'vmunet_stage4_256': (1536, 8, 8, 16),
    'vmamba_t_stage3_det': (768, 84, 50, 16),
}


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('case', sorted(CROSS_SIZES))
def test_fused_cross_scan_full_sizes(case, dtype):
    """The fused path against the unfused path on the torch backend in float64 (itself checked against a
    per-direction loop in test_cross_scan.py): output and every gradient."""
    check_fused_cross_scan(case, dtype)


def check_fused_cross_scan(case, dtype):
    from mmmv.ops import cross_selective_scan
    from test_cross_scan import GRAD_TOLERANCE_FACTORS, TOLERANCES
    from test_cross_scan import make_inputs as make_cross_inputs

    inner, height, width, state = CROSS_SIZES[case]
    inputs = {n: t.detach().cuda().requires_grad_()
              for n, t in make_cross_inputs(height, width, batch=2, inner=inner, state=state, dtype=dtype).items()}
    ref = {n: t.detach().double().requires_grad_() for n, t in inputs.items()}
    y = cross_selective_scan(**inputs, height=height, width=width, backend='triton', fused=True)
    y_ref = cross_selective_scan(**ref, height=height, width=width, backend='torch')
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(y.double(), y_ref, rtol=rtol, atol=atol, msg=lambda m: f'y: {m}')
    dy = torch.randn_like(y_ref).to(dtype).double()  # the same incoming gradient for both (rounded to dtype)
    names = sorted(inputs)
    grads = torch.autograd.grad(y, [inputs[n] for n in names], dy.to(dtype))
    grads_ref = torch.autograd.grad(y_ref, [ref[n] for n in names], dy)
    for name, grad, grad_ref in zip(names, grads, grads_ref):
        rtol_factor, atol_factor = GRAD_TOLERANCE_FACTORS.get(name, (1, 1))
        # sums over the batch and tokens (dA, dD, d delta_bias) grow with L: compare relative to their size
        scale = max(1.0, grad_ref.abs().max().item()) if name in ('A', 'D', 'delta_bias') else 1.0
        torch.testing.assert_close(grad.double() / scale, grad_ref / scale, rtol=rtol * rtol_factor,
                                   atol=atol * atol_factor, msg=lambda m, name=name: f'd{name}: {m}')


def test_fused_cross_scan_compiles():
    from mmmv.ops import cross_selective_scan
    from test_cross_scan import make_inputs as make_cross_inputs

    inputs = {n: t.detach().cuda().requires_grad_() for n, t in make_cross_inputs(12, 10, inner=32, state=16).items()}

    def step(u, delta, A, B, C, D, delta_bias):
        y = cross_selective_scan(torch.tanh(u), delta, A, B, C, D, delta_bias, height=12, width=10)
        return y.square().sum()

    loss = torch.compile(step, fullgraph=True)(**inputs)
    torch.testing.assert_close(loss, step(**inputs), rtol=1e-5, atol=1e-5)
    loss.backward()
    assert torch.isfinite(inputs['A'].grad).all()


def test_vss_encoder_triton_matches_torch_backend(probe_loss):
    from mmmv.models.vss import VSSEncoder

    torch.manual_seed(0)
    model = VSSEncoder('vmunet', drop_path_rate=0.0).cuda()
    assert_model_triton_matches_torch(model, torch.randn(2, 3, 200, 264, device='cuda'),
                                      lambda m: m.layers[1].blocks[0].self_attention.A_logs, probe_loss)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason='needs two CUDA GPUs')
def test_runs_on_the_inputs_device_not_the_current_one():
    """Inputs on cuda:1 while cuda:0 is current (``model.to('cuda:1')`` without ``torch.cuda.set_device``): Triton
    launches on the current device, the op must launch on the inputs'. Forward and backward equal those on cuda:0."""
    results = []
    for device in ('cuda:0', 'cuda:1'):
        inputs = {name: None if t is None else t.to(device).requires_grad_(t.is_floating_point())
                  for name, t in make_inputs(length=300, dim=64, state=8).items()}
        with torch.cuda.device(0):
            y = selective_scan(**inputs, delta_softplus=True, backend='triton')
            grads = torch.autograd.grad(y.square().sum(), [inputs['u'], inputs['delta'], inputs['B']])
        results.append([t.cpu() for t in (y, *grads)])
    for on_1, on_0 in zip(*results[::-1]):
        torch.testing.assert_close(on_1, on_0, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------
# The warp-layout backward (mmmv/ops/selective_scan/gluon_kernels.py), forced with MMMV_SCAN_BACKWARD=warp: at
# batch 2 the default picks the Triton backward (too few programs for the warp one). Everything it covers: plain
# and grouped B / C, the fused four directions, float32 and the narrow dtypes, the last state's gradient.
# ----------------------------------------------------------------------------------------------------
@pytest.fixture
def warp_backward(monkeypatch):
    """Forces the warp-layout backward and counts its launches (a fallback to the Triton one would pass the
    reference checks unnoticed)."""
    from mmmv.ops.selective_scan import triton_backend

    monkeypatch.setenv('MMMV_SCAN_BACKWARD', 'warp')
    launches = []
    launch = triton_backend._launch_warp_backward
    monkeypatch.setattr(triton_backend, '_launch_warp_backward', lambda *a, **k: launches.append(1) or launch(*a, **k))
    yield launches
    assert triton_backend._Warp.failed is None, triton_backend._Warp.failed


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize('case', sorted(set(FULL_SIZES) - {'long_65536'}))
def test_warp_backward_full_sizes(case, dtype, warp_backward):
    dim, length, state, groups, _ = FULL_SIZES[case]
    inputs = make_inputs(batch=2, dim=dim, length=length, state=state, groups_B=groups, groups_C=groups, dtype=dtype,
                         z=False, device='cuda')
    assert_matches_reference(inputs, scan=lambda **kw: selective_scan(**kw, backend='triton'))
    assert warp_backward


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('case', sorted(CROSS_SIZES))
def test_warp_backward_fused_cross_scan(case, dtype, warp_backward):
    check_fused_cross_scan(case, dtype)
    assert warp_backward


@pytest.mark.parametrize('length', [1, 31, 33, 64, 65, 129, 300])
def test_warp_backward_lengths(length, warp_backward):
    """Every steps-per-lane choice (K = 1, 2, 4) and chunk ends that cut a lane, a warp and a sequence."""
    inputs = make_inputs(batch=2, dim=12, length=length, state=16, device='cuda', z=False)
    assert_matches_reference(inputs, scan=lambda **kw: selective_scan(**kw, backend='triton'))
    assert warp_backward


@pytest.mark.parametrize('state', [5, 6, 12, 24, 64])
def test_warp_backward_state_counts(state, warp_backward):
    """State counts that leave a partial block of the dB / dC rows kept in shared memory (4 states per block), and
    the largest count whose dA sums fit its shared memory."""
    inputs = make_inputs(batch=2, dim=12, length=100, state=state, device='cuda', z=False)
    assert_matches_reference(inputs, scan=lambda **kw: selective_scan(**kw, backend='triton'))
    assert warp_backward


@pytest.mark.parametrize('state', [1, 80])
def test_warp_backward_leaves_one_or_more_than_64_states_to_the_triton_backward(state, warp_backward):
    """More than 64: its shared memory; one: the operands' prefetch would read the adjoint carried between chunks
    before it is written."""
    inputs = make_inputs(batch=2, dim=12, length=300, state=state, device='cuda', z=False)
    assert_matches_reference(inputs, scan=lambda **kw: selective_scan(**kw, backend='triton'))
    assert not warp_backward


def test_warp_backward_is_the_default_at_training_sizes():
    from mmmv.ops.selective_scan import triton_backend

    def k(batch, dim, length, state=16):
        u = torch.empty(batch, dim, length, device='cuda')
        B = torch.empty(batch, state, length, device='cuda')
        cfg = triton_backend._config_for(u, B.unsqueeze(1), B.unsqueeze(1), None, None, 0)
        return triton_backend._warp_backward_k(u, None, dim, dim, length, cfg, None, None, True)

    assert k(32, 192, 4096) == 4 and k(128, 320, 49) == 2 and k(128, 320, 20) == 1
    assert k(2, 160, 4200) == 0  # a detection input: too few programs, the Triton backward splits the sequence
    assert k(128, 160, 196, state=8) == 4  # MambaVision
    assert k(128, 160, 196, state=4) == 0 and k(128, 160, 196, state=128) == 0  # untried; too little shared memory
