"""The MambaVision backbone: every variant's shapes, parameter counts, options and errors (plain PyTorch)."""
import math

import pytest
import torch

from mmmv.models import ARCH_SETTINGS, MambaVision, MambaVisionClassifier

# Classifier parameter counts of the official models (ANCHORS section 1).
OFFICIAL_PARAMS = {
    'T': 31_794_248,
    'T2': 35_104_008,
    'S': 50_140_584,
    'B': 97_685_288,
    'L': 227_961_048,
    'L2': 241_554_824,
}
ODD_SIZE = (513, 511)


def _expected_hw(size, stride):
    h, w = size
    for _ in range(int(math.log2(stride))):
        h, w = (h + 1) // 2, (w + 1) // 2
    return h, w


@pytest.mark.parametrize('arch', sorted(OFFICIAL_PARAMS))
def test_parameter_count_matches_official(arch):
    with torch.device('meta'):
        model = MambaVisionClassifier(arch)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[arch]


@pytest.mark.parametrize('arch', sorted(ARCH_SETTINGS))
def test_every_variant_shapes_and_strides_at_odd_size(arch):
    """All variants on the meta device (no memory, no compute): NCHW maps with the right channels and strides."""
    with torch.device('meta'):
        model = MambaVision(arch, out_indices=(0, 1, 2, 3))
        outs = model(torch.empty(1, 3, *ODD_SIZE))
    dim = ARCH_SETTINGS[arch]['dim']
    assert model.out_channels == [dim, 2 * dim, 4 * dim, 8 * dim]
    assert model.out_strides == [4, 8, 16, 32]
    for out, channels, stride in zip(outs, model.out_channels, model.out_strides):
        assert out.shape == (1, channels, *_expected_hw(ODD_SIZE, stride))


def tiny_arch(**overrides):
    arch = dict(depths=(1, 1, 3, 2), dim=16, in_dim=8, num_heads=(1, 2, 2, 4), window_size=(4, 4, 3, 2))
    arch.update(overrides)
    return arch


@pytest.mark.parametrize('size', [(67, 45), (32, 32), (33, 95)])
def test_real_forward_backward_at_odd_sizes(size):
    torch.manual_seed(0)
    model = MambaVision(tiny_arch(), out_indices=(0, 1, 2, 3))
    x = torch.randn(2, 3, *size, requires_grad=True)
    outs = model(x)
    for out, stride in zip(outs, model.out_strides):
        assert out.shape[-2:] == _expected_hw(size, stride)
        assert out.is_contiguous()
        assert torch.isfinite(out).all()
    sum(o.square().mean() for o in outs).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None, f'{name} got no gradient'


def test_tiny_real_forward_backward_for_every_variant_layout():
    """Each released variant's depths/heads with tiny widths run for real (depth pattern, attention placement)."""
    layouts = {(s['depths'], s['num_heads']) for s in ARCH_SETTINGS.values()}
    for depths, heads in sorted(layouts):
        custom = dict(depths=depths, dim=8 * heads[0], in_dim=8, num_heads=heads,
                      window_size=(4, 4, 3, 2))
        model = MambaVision(custom, out_indices=(-1,))
        (out,) = model(torch.randn(1, 3, 41, 37))
        assert out.shape == (1, 64 * heads[0], 2, 2), depths


def test_attention_blocks_are_the_last_half():
    with torch.device('meta'):
        model = MambaVision('T')
    kinds = [['attn' if hasattr(b.mixer, 'qkv') else 'mamba' for b in s.blocks] for s in model.stages[2:]]
    assert kinds == [['mamba'] * 4 + ['attn'] * 4, ['mamba'] * 2 + ['attn'] * 2]
    with torch.device('meta'):
        model = MambaVision('S')  # odd depths 7 and 5: the middle block stays Mamba
    kinds = [['attn' if hasattr(b.mixer, 'qkv') else 'mamba' for b in s.blocks] for s in model.stages[2:]]
    assert kinds == [['mamba'] * 4 + ['attn'] * 3, ['mamba'] * 3 + ['attn'] * 2]


def test_out_indices_subset_negative_and_norms():
    model = MambaVision(tiny_arch(), out_indices=(-1, 1))
    assert model.out_indices == (1, 3)
    assert hasattr(model, 'norm1') and hasattr(model, 'norm3') and not hasattr(model, 'norm0')
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [32, 128]
    # a LayerNorm2d output has zero mean / unit variance over channels at init
    assert torch.allclose(outs[0].mean(1), torch.zeros(1), atol=1e-5)
    with pytest.raises(ValueError, match='out of range'):
        MambaVision(tiny_arch(), out_indices=(4,))
    with pytest.raises(ValueError, match='twice'):
        MambaVision(tiny_arch(), out_indices=(3, -1))


def test_drop_path_rate_is_honoured_linearly():
    with torch.device('meta'):
        model = MambaVision('T', drop_path_rate=0.4)
        base = MambaVision('B')
    rates = [b.drop_path.drop_prob for s in model.stages for b in s.blocks]
    assert len(rates) == 16
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.4)
    assert rates == pytest.approx([0.4 * i / 15 for i in range(16)])
    assert base.stages[3].blocks[-1].drop_path.drop_prob == pytest.approx(0.3)


def test_window_size_override_and_padding():
    model = MambaVision(tiny_arch(), window_size=(4, 4, 5, 3))
    assert [s.window_size for s in model.stages] == [4, 4, 5, 3]
    assert MambaVision(tiny_arch(), window_size=6).window_size == [6, 6, 6, 6]
    with pytest.raises(ValueError, match='window_size'):
        MambaVision(tiny_arch(), window_size=(4, 4, 5))


def test_padding_changes_outputs_like_the_official_model():
    """Padded tokens are not masked, so the window size changes the outputs of a non-multiple map."""
    torch.manual_seed(0)
    a = MambaVision(tiny_arch(window_size=(4, 4, 3, 2)), out_indices=(2,)).eval()
    b = MambaVision(tiny_arch(window_size=(4, 4, 4, 2)), out_indices=(2,)).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 48, 48)  # stage 2 map is 3x3: no padding with window 3, padding with 4
    assert not torch.allclose(a(x)[0], b(x)[0], atol=1e-4)


def test_frozen_stages_and_norm_eval():
    model = MambaVision(tiny_arch(), frozen_stages=2, norm_eval=True)
    model.train()
    frozen = [model.patch_embed, model.stages[0], model.stages[1], model.norm0, model.norm1]
    for module in frozen:
        assert not module.training
        assert all(not p.requires_grad for p in module.parameters())
    assert all(p.requires_grad for p in model.stages[2].parameters())
    assert model.stages[2].training
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    with pytest.raises(ValueError, match='frozen_stages'):
        MambaVision(tiny_arch(), frozen_stages=5)


def test_with_cp_gives_same_gradients():
    torch.manual_seed(0)
    a = MambaVision(tiny_arch(), drop_path_rate=0.0)
    b = MambaVision(tiny_arch(), drop_path_rate=0.0, with_cp=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 40, 40)
    for model in (a, b):
        model.train()
        sum(o.sum() for o in model(x)).backward()
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_channels_last_convolutional_stages():
    """The stem and the convolutional stages run channels-last (weights stored so, a loaded state dict kept so), the
    hybrid stages and the returned maps do not change, and the numbers are those of the NCHW model in float64."""
    torch.manual_seed(0)
    nchw = MambaVision(tiny_arch(), drop_path_rate=0.0, channels_last=False).double()
    ours = MambaVision(tiny_arch(), drop_path_rate=0.0).double()
    ours.load_state_dict(nchw.state_dict())
    convs = ours._convolutions()
    assert len(convs) == 8  # the stem's 2, each convolutional stage's block (2) and downsampling (1)
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert not any(m.weight.is_contiguous(memory_format=torch.channels_last) for m in nchw.modules()
                   if isinstance(m, torch.nn.Conv2d))
    seen = {}
    ours.stages[0].blocks[0].register_forward_hook(lambda m, i, o: seen.setdefault('stage0', o))
    x = torch.randn(2, 3, 37, 45, dtype=torch.float64)
    for model in (nchw, ours):
        model.train()
    outs, ref = ours(x), nchw(x)
    assert seen['stage0'].is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(outs, ref):
        assert a.is_contiguous() and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    sum(o.sum() for o in outs).backward()
    sum(o.sum() for o in ref).backward()
    for (name, pa), (_, pb) in zip(ours.named_parameters(), nchw.named_parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-9, atol=1e-10, msg=name)
    with pytest.raises(TypeError, match='channels_last must be True or False'):
        MambaVision(tiny_arch(), channels_last='yes')


def test_arch_names_and_errors():
    with torch.device('meta'):
        assert MambaVision('tiny').arch_settings['dim'] == 80
        assert MambaVision('mamba_vision_S').arch_settings['dim'] == 96
    with pytest.raises(ValueError, match=r"unknown arch 'X'.*\['B', 'L', 'L2', 'L2-512-21k'"):
        MambaVision('X')
    with pytest.raises(ValueError, match='missing'):
        MambaVision(dict(depths=(1, 1, 1, 1)))
    with pytest.raises(TypeError, match="unknown config keys 'drop_path' \\(did you mean 'drop_path_rate'"):
        MambaVision('T', drop_path=0.1)
    with pytest.raises(ValueError, match='NCHW'):
        MambaVision(tiny_arch())(torch.randn(3, 32, 32))


def test_mixer_calls_selective_scan(monkeypatch):
    import mmmv.models.mambavision as mv
    calls = []
    real = mv.selective_scan

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(mv, 'selective_scan', spy)
    MambaVision(tiny_arch())(torch.randn(1, 3, 32, 32))
    assert calls and all(c['delta_softplus'] for c in calls)


def test_no_weight_decay_names_and_dt_init():
    model = MambaVision(tiny_arch())
    names = model.no_weight_decay()
    assert names and all(n.endswith(('A_log', '.D')) for n in names)
    mixer = model.stages[2].blocks[0].mixer
    dt = torch.nn.functional.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-4 * 0.999 and dt.max() <= 0.1 * 1.001
    assert torch.allclose(mixer.A_log[0].exp(), torch.arange(1, 9, dtype=torch.float32))
