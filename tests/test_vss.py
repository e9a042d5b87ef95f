"""VSS blocks, VSSEncoder and VMUNetHead: numerics against a float64 per-token loop, shapes at odd sizes, options,
VM-UNet as an mmseg EncoderDecoder (parameter count, wiring, loss, predict) and registry builds."""
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from mmmv.models import SS2D, FinalPatchExpand4x, PatchExpand, PatchMerging2D, VSSBlock, VSSEncoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ODD_SIZE = (65, 47)
TINY = dict(depths=(1, 1, 2, 1), embed_dim=16)
TINY_UNET_CHANNELS = (16, 32, 64, 128, 128)
# VM-UNet with one output channel: about 27.43 M parameters (ANCHORS section 2).
VMUNET_PARAMS_M = 27.43


def ceil_div(size, stride):
    return tuple(math.ceil(s / stride) for s in size)


def perturbed(module, scale=0.3, seed=0):
    """Move every parameter away from its structured init so that mix-ups between them show."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
    return module


# ---------------------------------------------------------------------------------------------------------------------
# SS2D and the blocks
# ---------------------------------------------------------------------------------------------------------------------
def ss2d_per_token_reference(m: SS2D, x: torch.Tensor) -> torch.Tensor:
    """SS2D in float64 written from the description: four token orders visited one token at a time, each with its
    own projections, state matrix, skip and dt bias; outputs summed at each token's raster position."""
    batch, height, width, _ = x.shape
    inner, rank, state_size = m.d_inner, m.dt_rank, m.d_state
    xz = x @ m.in_proj.weight.T
    xi, z = xz[..., :inner], xz[..., inner:]
    u = F.silu(F.conv2d(xi.permute(0, 3, 1, 2), m.conv2d.weight, m.conv2d.bias, padding=1, groups=inner))
    row_major = [(h, w) for h in range(height) for w in range(width)]
    column_major = [(h, w) for w in range(width) for h in range(height)]
    orders = [row_major, column_major, row_major[::-1], column_major[::-1]]
    A = -torch.exp(m.A_logs)
    y = torch.zeros(batch, inner, height, width, dtype=x.dtype)
    for k, order in enumerate(orders):
        channels = slice(k * inner, (k + 1) * inner)
        h_state = torch.zeros(batch, inner, state_size, dtype=x.dtype)
        for (h, w) in order:
            ut = u[:, :, h, w]
            proj = ut @ m.x_proj_weight[k].T
            dt_low, b_t, c_t = proj[:, :rank], proj[:, rank:rank + state_size], proj[:, rank + state_size:]
            delta = F.softplus(dt_low @ m.dt_projs_weight[k].T + m.dt_projs_bias[k])
            decay = torch.exp(delta[..., None] * A[channels])
            h_state = decay * h_state + delta[..., None] * b_t[:, None] * ut[..., None]
            y[:, :, h, w] += (h_state * c_t[:, None]).sum(-1) + m.Ds[channels] * ut
    y = F.layer_norm(y.permute(0, 2, 3, 1), (inner,), m.out_norm.weight, m.out_norm.bias, m.out_norm.eps)
    return (y * F.silu(z)) @ m.out_proj.weight.T


@pytest.mark.parametrize('size', [(3, 5), (4, 1), (1, 6)])
def test_ss2d_matches_a_float64_per_token_loop(size):
    torch.manual_seed(0)
    m = perturbed(SS2D(4, d_state=3).double())
    x = torch.randn(2, *size, 4, dtype=torch.float64)
    from mmmv.ops import scan_backend
    with scan_backend('torch'):
        y = m(x)
    torch.testing.assert_close(y, ss2d_per_token_reference(m, x), rtol=1e-10, atol=1e-12)


def test_ss2d_parameter_names_shapes_and_init():
    m = SS2D(96)
    inner, rank, n = 192, 6, 16  # Di = 2C, R = ceil(C / 16), N = 16
    shapes = {name: tuple(p.shape) for name, p in m.named_parameters()}
    assert shapes == {
        'in_proj.weight': (2 * inner, 96), 'conv2d.weight': (inner, 1, 3, 3), 'conv2d.bias': (inner,),
        'x_proj_weight': (4, rank + 2 * n, inner), 'dt_projs_weight': (4, inner, rank), 'dt_projs_bias': (4, inner),
        'A_logs': (4 * inner, n), 'Ds': (4 * inner,), 'out_norm.weight': (inner,), 'out_norm.bias': (inner,),
        'out_proj.weight': (96, inner)}
    assert torch.equal(m.A_logs, torch.arange(1, 17.).log().expand(4 * inner, n))
    assert torch.equal(m.Ds, torch.ones(4 * inner))
    dt = F.softplus(m.dt_projs_bias)
    assert dt.min() >= 1e-4 and dt.max() <= 0.1 * 1.0001
    assert m.x_proj_weight.abs().max() <= inner ** -0.5 and m.dt_projs_weight.abs().max() <= rank ** -0.5
    assert SS2D(97).dt_rank == 7


def test_ss2d_calls_cross_selective_scan_with_fp32_inputs(monkeypatch):
    import mmmv.models.vss as vss
    calls = []
    real = vss.cross_selective_scan

    def spy(*args, **kwargs):
        calls.append(([a.dtype for a in args], kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(vss, 'cross_selective_scan', spy)
    block = VSSBlock(8).to(torch.bfloat16)
    out = block(torch.randn(1, 3, 4, 8, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == (1, 3, 4, 8)
    (dtypes, kwargs), = calls
    assert set(dtypes) == {torch.float32}
    assert kwargs['delta_softplus'] and (kwargs['height'], kwargs['width']) == (3, 4)
    assert kwargs['D'].dtype == torch.float32 and kwargs['delta_bias'].shape == (4 * 16,)


def test_vss_block_is_residual_without_mlp():
    block = VSSBlock(8)
    assert sorted(name for name, _ in block.named_children()) == ['drop_path', 'ln_1', 'self_attention']
    with torch.no_grad():
        block.self_attention.out_proj.weight.zero_()
    x = torch.randn(2, 5, 3, 8)
    torch.testing.assert_close(block(x), x)


def test_patch_merging_gathers_cells_in_the_official_order_and_pads_odd_maps():
    merge = PatchMerging2D(2)
    x = torch.arange(2 * 3 * 5 * 2, dtype=torch.float32).view(2, 3, 5, 2)
    seen = []
    merge.norm.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    out = merge(x)
    assert out.shape == (2, 2, 3, 4)
    gathered = seen[0]
    # cell (0, 0): tokens (0,0), (1,0), (0,1), (1,1) as (row, col)
    torch.testing.assert_close(gathered[0, 0, 0], torch.cat([x[0, 0, 0], x[0, 1, 0], x[0, 0, 1], x[0, 1, 1]]))
    # last cell of an odd map: the missing row and column are zeros
    torch.testing.assert_close(gathered[1, 1, 2], torch.cat([x[1, 2, 4], torch.zeros(6)]))


@pytest.mark.parametrize('cls, scale', [(PatchExpand, 2), (FinalPatchExpand4x, 4)])
def test_patch_expand_puts_channel_groups_on_pixels(cls, scale):
    dim = 8
    expand = cls(dim) if cls is FinalPatchExpand4x else cls(dim, scale=scale)
    out_dim = dim // scale
    assert tuple(expand.expand.weight.shape) == (scale * dim, dim) and expand.expand.bias is None
    assert expand.norm.normalized_shape == (out_dim,)
    expand.norm = torch.nn.Identity()
    x = torch.randn(1, 2, 3, dim)
    out = expand(x)
    assert out.shape == (1, 2 * scale, 3 * scale, out_dim)
    full = x @ expand.expand.weight.T  # (1, 2, 3, scale * dim)
    for p1 in range(scale):
        for p2 in range(scale):
            group = full[0, 1, 2, (p1 * scale + p2) * out_dim:(p1 * scale + p2 + 1) * out_dim]
            torch.testing.assert_close(out[0, scale + p1, 2 * scale + p2], group)


# ---------------------------------------------------------------------------------------------------------------------
# VSSEncoder
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('size', [ODD_SIZE, (32, 32), (17, 70)])
def test_encoder_shapes_and_gradients_at_any_size(size):
    torch.manual_seed(0)
    model = VSSEncoder(TINY, out_indices=(0, 1, 2, 3), scan_backend='torch')
    x = torch.randn(2, 3, *size, requires_grad=True)
    outs = model(x)
    assert model.out_channels == [16, 32, 64, 128] and model.out_strides == [4, 8, 16, 32]
    expected = ceil_div(size, 4)
    for out, channels in zip(outs, model.out_channels):
        assert out.shape == (2, channels, *expected) and out.is_contiguous() and torch.isfinite(out).all()
        expected = ceil_div(expected, 2)
    sum(o.square().mean() for o in outs).backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


def test_unet_outputs_are_stage_inputs_and_the_bottleneck():
    torch.manual_seed(0)
    model = VSSEncoder(TINY, out_type='unet', out_norm=None, scan_backend='torch').eval()
    x = torch.randn(1, 3, *ODD_SIZE)
    outs = model(x)
    assert model.out_channels == list(TINY_UNET_CHANNELS) and model.out_strides == [4, 8, 16, 32, 32]
    # the official forward: remember x before each layer (blocks, then merging), then the last layer's output
    with torch.no_grad():
        feat = model.patch_embed(x)
        expected = []
        for layer in model.layers:
            expected.append(feat)
            for block in layer.blocks:
                feat = block(feat)
            if layer.downsample is not None:
                feat = layer.downsample(feat)
        expected.append(feat)
    assert len(outs) == 5
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out, ref.permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match='out_norm=None'):
        VSSEncoder(TINY, out_type='unet')
    with pytest.raises(ValueError, match='out_type'):
        VSSEncoder(TINY, out_type='inputs')


def test_out_indices_build_only_needed_stages_with_norms():
    model = VSSEncoder(TINY, out_indices=(-3, 0), scan_backend='torch')
    assert model.out_indices == (0, 1) and len(model.layers) == 2 and model.layers[1].downsample is None
    assert hasattr(model, 'norm0') and hasattr(model, 'norm1') and not hasattr(model, 'norm2')
    assert model.skipped_state_prefixes() == ['layers.1.downsample.', 'layers.2.', 'layers.3.']
    outs = model(torch.randn(1, 3, 40, 40))
    assert [o.shape[1] for o in outs] == [16, 32]
    torch.testing.assert_close(outs[0].mean(1), torch.zeros(1, 10, 10), atol=1e-5, rtol=0)  # LayerNorm at init
    assert not hasattr(VSSEncoder(TINY, out_norm=None), 'norm0')
    for bad, match in [((4,), 'out of range'), ((1, -3), 'twice'), ((), 'at least one')]:
        with pytest.raises(ValueError, match=match):
            VSSEncoder(TINY, out_indices=bad)


def test_frozen_stages_and_norm_eval():
    model = VSSEncoder(TINY, frozen_stages=2, norm_eval=True)
    model.train()
    for module in (model.patch_embed, model.layers[0], model.layers[1], model.norm0, model.norm1):
        assert not module.training and all(not p.requires_grad for p in module.parameters())
    assert model.layers[2].training and all(p.requires_grad for p in model.layers[2].parameters())
    # frozen parameters get no gradient, the others do
    sum(o.sum() for o in model(torch.randn(1, 3, 32, 32))).backward()
    assert model.layers[1].blocks[0].self_attention.A_logs.grad is None
    assert model.layers[2].blocks[0].self_attention.A_logs.grad is not None
    with pytest.raises(ValueError, match='frozen_stages'):
        VSSEncoder(TINY, frozen_stages=5)
    # norm_eval keeps BatchNorms (e.g. added by a user around it) in eval mode
    model.extra_bn = torch.nn.BatchNorm2d(4)
    model.train()
    assert not model.extra_bn.training


def test_with_cp_gives_the_same_gradients(probe_loss):
    torch.manual_seed(0)
    a = VSSEncoder(TINY, drop_path_rate=0.0, scan_backend='torch')
    b = VSSEncoder(TINY, drop_path_rate=0.0, with_cp=True, scan_backend='torch')
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 36, 28)
    for model in (a, b):
        probe_loss(model(x)).backward()
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_drop_path_schedule_is_linear_over_encoder_blocks():
    with torch.device('meta'):
        model = VSSEncoder('small', drop_path_rate=0.4)
        default = VSSEncoder('base')
    rates = [b.drop_path.drop_prob for layer in model.layers for b in layer.blocks]
    assert len(rates) == 33 and rates == pytest.approx([0.4 * i / 32 for i in range(33)])
    assert default.layers[-1].blocks[-1].drop_path.drop_prob == pytest.approx(0.5)


@pytest.mark.parametrize('arch, depths, dim', [('vmunet', (2, 2, 2, 2), 96), ('T', (2, 2, 9, 2), 96),
                                               ('vmamba-s', (2, 2, 27, 2), 96), ('vssm_base', (2, 2, 27, 2), 128)])
def test_arch_table(arch, depths, dim):
    with torch.device('meta'):
        model = VSSEncoder(arch, out_indices=(0, 1, 2, 3))
    assert tuple(len(layer.blocks) for layer in model.layers) == depths
    assert model.dims == [dim, 2 * dim, 4 * dim, 8 * dim]
    assert model.layers[0].blocks[0].self_attention.d_state == 16


def test_arch_and_input_errors():
    with pytest.raises(ValueError, match=r"unknown arch 'huge'.*\['base', 'small', 'tiny', 'vmunet'\]"):
        VSSEncoder('huge')
    with pytest.raises(ValueError, match='missing'):
        VSSEncoder(dict(depths=(1, 1)))
    with pytest.raises(ValueError, match='unknown'):
        VSSEncoder(dict(depths=(1, 1), embed_dim=8, dims=(8, 16)))
    with pytest.raises(TypeError, match='drop_path'):
        VSSEncoder(TINY, drop_path=0.1)
    model = VSSEncoder(TINY, out_indices=(0,))
    with pytest.raises(ValueError, match='NCHW'):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match='gray_to_rgb'):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match='unknown backend'):
        VSSEncoder(TINY, scan_backend='cuda')


def test_gray_input_is_repeated_to_rgb():
    model = VSSEncoder(TINY, out_indices=(0,), gray_to_rgb=True).eval()
    gray = torch.randn(1, 1, 24, 20)
    torch.testing.assert_close(model(gray)[0], model(gray.repeat(1, 3, 1, 1))[0])


def test_no_weight_decay_names():
    names = VSSEncoder(TINY, out_indices=(0,)).no_weight_decay()
    assert names == {'layers.0.blocks.0.self_attention.A_logs', 'layers.0.blocks.0.self_attention.Ds'}


# ---------------------------------------------------------------------------------------------------------------------
# VM-UNet in mmseg
# ---------------------------------------------------------------------------------------------------------------------
def vmunet_cfg(arch='vmunet', in_channels=(96, 192, 384, 768, 768), size=(64, 64), **head):
    from mmengine.config import ConfigDict
    losses = [dict(type='CrossEntropyLoss', use_sigmoid=True, loss_name='loss_bce'),
              dict(type='DiceLoss', loss_name='loss_dice')]
    head = dict(type='VMUNetHead', in_channels=in_channels, num_classes=2, out_channels=1, threshold=0.5,
                scan_backend='torch', loss_decode=losses, **head)
    return dict(
        type='EncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                               bgr_to_rgb=True, pad_val=0, seg_pad_val=255, size=size),
        backbone=dict(type='VSSEncoder', arch=arch, out_type='unet', out_norm=None, scan_backend='torch'),
        decode_head=head, train_cfg=ConfigDict(), test_cfg=ConfigDict(mode='whole'))


@pytest.fixture(scope='module')
def mmseg_models():
    pytest.importorskip('mmseg')
    import mmmv  # noqa: F401
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    return MODELS


def test_vmunet_parameter_count_and_official_wiring(mmseg_models):
    torch.manual_seed(0)
    model = mmseg_models.build(vmunet_cfg()).eval()
    total = sum(p.numel() for p in model.parameters())
    assert abs(total / 1e6 - VMUNET_PARAMS_M) <= 0.01, total
    head = model.decode_head
    assert [len(s.blocks) for s in head.layers_up] == [2, 2, 2, 1] and head.layers_up[0].upsample is None
    assert tuple(head.conv_seg.weight.shape) == (1, 24, 1, 1)
    assert [b.drop_path.drop_prob for s in head.layers_up for b in s.blocks] == pytest.approx(
        [0.2 * i / 6 for i in range(6, -1, -1)])
    # VM-UNet's forward from its modules: decoder stage j > 0 takes x + skip_list[-j], upsamples, runs its blocks
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        logits = model(x, mode='tensor')
        skip_list, feat = [], model.backbone.patch_embed(x)
        for layer in model.backbone.layers:
            skip_list.append(feat)
            feat, merged = layer(feat)
            feat = merged if merged is not None else feat
        for j, stage in enumerate(head.layers_up):
            if j > 0:
                feat = stage.upsample(feat + skip_list[-j])
            for block in stage.blocks:
                feat = block(feat)
        expected = head.conv_seg(head.final_up(feat).permute(0, 3, 1, 2))
    assert logits.shape == (1, 1, 64, 64)
    torch.testing.assert_close(logits, expected)


def _seg_batch(size, num=2):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    samples = []
    for i in range(num):
        sample = SegDataSample(metainfo=dict(img_shape=size, ori_shape=size, pad_shape=size))
        mask = torch.zeros(1, *size, dtype=torch.long)
        mask[:, size[0] // 4:size[0] // 2 + i, 5:size[1] // 2] = 1
        sample.gt_sem_seg = PixelData(data=mask)
        samples.append(sample)
    return dict(inputs=[torch.randint(0, 255, (3, *size), dtype=torch.uint8) for _ in range(num)],
                data_samples=samples)


def test_tiny_vmunet_loss_gradients_and_predict_at_an_odd_size(mmseg_models):
    torch.manual_seed(0)
    model = mmseg_models.build(vmunet_cfg(arch=TINY, in_channels=TINY_UNET_CHANNELS, size=ODD_SIZE))
    model.init_weights()
    model.train()
    batch = _seg_batch(ODD_SIZE)
    data = model.data_preprocessor(batch, training=True)
    assert data['inputs'].shape == (2, 3, *ODD_SIZE)
    losses = model(**data, mode='loss')
    assert set(losses) == {'decode.loss_bce', 'decode.loss_dice', 'decode.acc_seg'}
    total = losses['decode.loss_bce'] + losses['decode.loss_dice']
    assert torch.isfinite(total)
    total.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    model.eval()
    with torch.no_grad():
        logits = model(data['inputs'], mode='tensor')
        preds = model(**model.data_preprocessor(batch, training=False), mode='predict')
    assert logits.shape == (2, 1, 68, 48)  # the input padded to a multiple of the patch size
    assert preds[0].seg_logits.data.shape == (1, *ODD_SIZE)
    # cropped, not resized: the prediction is the top-left of the padded logits (mmseg applies the sigmoid)
    torch.testing.assert_close(preds[0].seg_logits.data, logits[0, :, :ODD_SIZE[0], :ODD_SIZE[1]].sigmoid())
    assert set(preds[0].pred_sem_seg.data.unique().tolist()) <= {0, 1}


def test_decoder_uses_the_stride4_map_only_for_its_size(mmseg_models):
    from mmmv.models import VMUNetHead
    torch.manual_seed(0)
    head = VMUNetHead(in_channels=TINY_UNET_CHANNELS, num_classes=3, scan_backend='torch').eval()
    maps = [torch.randn(1, c, *ceil_div(ODD_SIZE, s)) for c, s in zip(TINY_UNET_CHANNELS, (4, 8, 16, 32, 32))]
    with torch.no_grad():
        out = head(maps)
        assert out.shape == (1, 3, 68, 48)
        torch.testing.assert_close(head([torch.zeros_like(maps[0])] + maps[1:]), out)
        for i in (1, 2, 3, 4):  # every other map changes the logits
            changed = list(maps)
            changed[i] = changed[i] + 1
            assert not torch.allclose(head(changed), out, atol=1e-4)


def test_head_config_errors(mmseg_models):
    from mmmv.models import VMUNetHead
    with pytest.raises(ValueError, match=r'expected \[64, 128, 256, 512, 512\], got \[96, 192, 384, 768, 512\]'):
        VMUNetHead(in_channels=(96, 192, 384, 768, 512), num_classes=2)
    with pytest.raises(ValueError, match='take 5 maps'):
        VMUNetHead(in_channels=(192, 384, 768, 768), num_classes=2)
    with pytest.raises(ValueError, match='channels is fixed'):
        VMUNetHead(num_classes=2, channels=96)
    with pytest.raises(TypeError, match='norm_cfg'):
        mmseg_models.build(dict(type='VMUNetHead', num_classes=2, norm_cfg=dict(type='BN')))


# ---------------------------------------------------------------------------------------------------------------------
# Registries
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_vss_encoder_builds_from_each_toolbox_config(scope, tmp_path):
    pytest.importorskip(scope)
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    cfg_file = tmp_path / 'cfg.py'
    cfg_file.write_text("custom_imports = dict(imports=['mmmv'], allow_failed_imports=False)\n"
                        f"backbone = dict(type='VSSEncoder', arch={TINY!r}, out_indices=(1, 3), frozen_stages=1)\n")
    cfg = Config.fromfile(str(cfg_file))
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    with DefaultScope.overwrite_default_scope(scope):
        backbone = registry.build(cfg.backbone)
        with pytest.raises(ValueError, match='valid names'):
            registry.build(dict(type='VSSEncoder', arch='VMamba-XL'))
    assert isinstance(backbone, VSSEncoder) and backbone.frozen_stages == 1
    outs = backbone(torch.randn(1, 3, 50, 70))
    assert [o.shape for o in outs] == [(1, 32, 7, 9), (1, 128, 2, 3)]


def test_import_mmmv_needs_no_mmseg_and_the_head_says_how_to_get_it():
    code = ("import sys; sys.modules['mmseg'] = None\n"
            "import mmmv\n"
            "from mmengine.registry import MODELS\n"
            "assert MODELS.get('VSSEncoder') is not None\n"
            "try:\n"
            "    MODELS.build(dict(type='VMUNetHead', num_classes=2))\n"
            "except ImportError as error:\n"
            "    print('IMPORT-ERROR', error)\n")
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'IMPORT-ERROR' in proc.stdout and "pip install 'mmmv[seg]'" in proc.stdout


@pytest.mark.parametrize('scope, config', [('mmdet', 'mask_rcnn_vssm_t.py'), ('mmseg', 'upernet_vssm_t_ade20k.py')])
def test_vssm_toolbox_configs_build_and_run(scope, config):
    """The shipped VMamba-T detection and segmentation configs build through the toolbox registries (with their
    recipes) and the whole model runs on a small image: VSSEncoder under the toolboxes' own necks and heads."""
    pytest.importorskip(scope)
    import mmmv  # noqa: F401
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(os.path.join(REPO, 'configs', config))
    cfg.merge_from_dict({'model.backbone.init_cfg': None})
    assert cfg.model.backbone.type == 'VSSEncoder' and cfg.model.backbone.arch == 'tiny'
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys['.A_logs'] == dict(decay_mult=0.0)
    assert cfg.optim_wrapper.optimizer.lr == (1e-4 if scope == 'mmdet' else 6e-5)
    init_default_scope(cfg.default_scope)
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    model = registry.build(cfg.model).eval()
    assert isinstance(model.backbone, VSSEncoder) and hasattr(model.backbone, 'norm3')  # out_norm='ln'
    with torch.no_grad():
        if scope == 'mmdet':
            features = model.extract_feat(torch.randn(1, 3, 96, 128))
            assert [f.shape[1:] for f in features] == [(256, 24, 32), (256, 12, 16), (256, 6, 8), (256, 3, 4),
                                                       (256, 2, 2)]
        else:
            logits = model._forward(torch.randn(1, 3, 64, 96))
            assert logits.shape == (1, 150, 16, 24)
