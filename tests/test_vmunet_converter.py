"""tools/model_converters/vmunet2mmmv.py and pretrained loading of VSS models, on synthetic checkpoints.

The official key names and shapes are written out here from VM-UNet's and VMamba-v0's model definitions
(ANCHORS section 2), independently of mmmv's modules and conversion rules; random tensors fill them.
"""
import contextlib
import io
import math
import os.path as osp
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch

from mmmv.checkpoint.convert import CheckpointMismatchError
from mmmv.checkpoint.vmunet import convert_vmamba_v0, convert_vss_checkpoint, detect_vss_layout
from mmmv.models import VSSEncoder
from tool_loading import load_tool

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOL = osp.join(REPO, 'tools', 'model_converters', 'vmunet2mmmv.py')
D_STATE = 16
TINY_EMBED = 16


# ---------------------------------------------------------------------------------------------------------------------
# The official layouts
# ---------------------------------------------------------------------------------------------------------------------
def official_block(prefix, dim):
    inner, rank, n = 2 * dim, math.ceil(dim / 16), D_STATE
    attn = prefix + '.self_attention.'
    return {
        prefix + '.ln_1.weight': (dim,), prefix + '.ln_1.bias': (dim,),
        attn + 'in_proj.weight': (2 * inner, dim), attn + 'conv2d.weight': (inner, 1, 3, 3),
        attn + 'conv2d.bias': (inner,), attn + 'x_proj_weight': (4, rank + 2 * n, inner),
        attn + 'dt_projs_weight': (4, inner, rank), attn + 'dt_projs_bias': (4, inner),
        attn + 'A_logs': (4 * inner, n), attn + 'Ds': (4 * inner,),
        attn + 'out_norm.weight': (inner,), attn + 'out_norm.bias': (inner,), attn + 'out_proj.weight': (dim, inner),
    }


def official_encoder(embed, depths, prefix=''):
    """VSSM encoder keys: PatchEmbed2D (proj, norm), VSSLayer i = blocks then PatchMerging2D for i < last."""
    shapes = {prefix + 'patch_embed.proj.weight': (embed, 3, 4, 4), prefix + 'patch_embed.proj.bias': (embed,),
              prefix + 'patch_embed.norm.weight': (embed,), prefix + 'patch_embed.norm.bias': (embed,)}
    for i, depth in enumerate(depths):
        dim = embed * 2 ** i
        for j in range(depth):
            shapes.update(official_block(f'{prefix}layers.{i}.blocks.{j}', dim))
        if i < len(depths) - 1:
            shapes[f'{prefix}layers.{i}.downsample.norm.weight'] = (4 * dim,)
            shapes[f'{prefix}layers.{i}.downsample.norm.bias'] = (4 * dim,)
            shapes[f'{prefix}layers.{i}.downsample.reduction.weight'] = (2 * dim, 4 * dim)
    return shapes


def official_vmunet(embed=96, depths=(2, 2, 2, 2), decoder_depths=(2, 2, 2, 1), num_classes=1):
    """VM-UNet's ``VMUNet`` state dict: VSSM under ``vmunet.``; VSSLayer_up j = PatchExpand2D(dim=dims_decoder[j])
    (expand Linear(2d, 4d), norm LN(d)) for j > 0, then blocks; Final_PatchExpand2D(96, 4); final_conv."""
    shapes = official_encoder(embed, depths, prefix='vmunet.')
    dims = [embed * 2 ** (len(depths) - 1 - j) for j in range(len(depths))]
    for j, (dim, depth) in enumerate(zip(dims, decoder_depths)):
        if j > 0:
            shapes[f'vmunet.layers_up.{j}.upsample.expand.weight'] = (4 * dim, 2 * dim)
            shapes[f'vmunet.layers_up.{j}.upsample.norm.weight'] = (dim,)
            shapes[f'vmunet.layers_up.{j}.upsample.norm.bias'] = (dim,)
        for b in range(depth):
            shapes.update(official_block(f'vmunet.layers_up.{j}.blocks.{b}', dim))
    shapes['vmunet.final_up.expand.weight'] = (4 * embed, embed)
    shapes['vmunet.final_up.norm.weight'] = (embed // 4,)
    shapes['vmunet.final_up.norm.bias'] = (embed // 4,)
    shapes['vmunet.final_conv.weight'] = (num_classes, embed // 4, 1, 1)
    shapes['vmunet.final_conv.bias'] = (num_classes,)
    return shapes


def official_vmamba_v0(embed, depths, num_classes=1000):
    shapes = official_encoder(embed, depths)
    last = embed * 2 ** (len(depths) - 1)
    shapes.update({'norm.weight': (last,), 'norm.bias': (last,), 'head.weight': (num_classes, last),
                   'head.bias': (num_classes,)})
    return shapes


def random_state(shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return OrderedDict((k, torch.randn(shape, generator=gen)) for k, shape in shapes.items())


def vmunet_load_from(pretrained, model_keys):
    """VM-UNet's ``load_from`` as its source describes it: the encoder takes the keys it has; then every key holding
    'layers.i' is renamed 'layers_up.{3-i}' (first match of i = 0, 1, 2, 3) and taken where the model has it."""
    loaded = {k: v for k, v in pretrained.items() if k in model_keys}
    mirrored = {}
    for key, value in pretrained.items():
        for i in range(4):
            if f'layers.{i}' in key:
                mirrored[key.replace(f'layers.{i}', f'layers_up.{3 - i}')] = value
                break
    loaded.update({k: v for k, v in mirrored.items() if k in model_keys})
    return loaded


def run_script(*args):
    """The converter as a script, in a fresh interpreter."""
    return subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True, text=True, timeout=300)


def run_tool(*args):
    """The converter's main() in this process (a fresh interpreter costs seconds of imports): exit code and output."""
    tool = load_tool('model_converters/vmunet2mmmv.py')
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = tool.main([str(a) for a in args])
        except SystemExit as exit_:  # argparse errors
            code = exit_.code
    return subprocess.CompletedProcess(args, code, stdout.getvalue(), stderr.getvalue())


@pytest.fixture(scope='module')
def seg_models():
    pytest.importorskip('mmseg')
    import mmmv  # noqa: F401
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    return MODELS


def build_vmunet(models, embed=96, num_classes=1):
    channels = [embed * 2 ** i for i in range(4)] + [embed * 8]
    out = dict(num_classes=2, out_channels=1, threshold=0.5) if num_classes == 1 else dict(num_classes=num_classes)
    return models.build(dict(
        type='EncoderDecoder',
        backbone=dict(type='VSSEncoder', arch=dict(depths=(2, 2, 2, 2), embed_dim=embed), out_type='unet',
                      out_norm=None),
        decode_head=dict(type='VMUNetHead', in_channels=channels, **out)))


# ---------------------------------------------------------------------------------------------------------------------
# VM-UNet checkpoints
# ---------------------------------------------------------------------------------------------------------------------
def test_vmunet_best_pth_round_trip_at_full_size(seg_models, tmp_path):
    official = random_state(official_vmunet())
    src = tmp_path / 'best.pth'
    torch.save(official, src)
    proc = run_script(src, tmp_path / 'out.pth')
    assert proc.returncode == 0, proc.stderr
    assert 'vmunet layout' in proc.stdout
    converted = torch.load(tmp_path / 'out.pth', weights_only=True)
    assert converted['meta']['unmapped_keys'] == [] and converted['meta']['dropped_keys'] == []
    model = build_vmunet(seg_models)
    model.load_state_dict(converted['state_dict'], strict=True)
    own = model.state_dict()
    for key, value in official.items():
        name = key[len('vmunet.'):]
        if name.startswith(('patch_embed.', 'layers.')):
            new = 'backbone.' + name
        elif name.startswith('final_conv.'):
            new = 'decode_head.conv_seg.' + name[len('final_conv.'):]
        else:
            new = 'decode_head.' + name
        assert torch.equal(own[new], value), key


def test_vmunet_latest_pth_with_training_state(seg_models, tmp_path):
    official = random_state(official_vmunet(embed=TINY_EMBED, num_classes=9), seed=1)
    src = tmp_path / 'latest.pth'
    torch.save(dict(epoch=300, min_loss=0.1, min_epoch=250, loss=0.2, model_state_dict=official,
                    optimizer_state_dict=dict(state={}, param_groups=[dict(lr=1e-3, params=[0, 1])]),
                    scheduler_state_dict=dict(T_max=50, eta_min=1e-5, last_epoch=300)), src)
    result, unmapped = convert_vss_checkpoint(str(src))
    assert unmapped == [] and result['meta']['source_layout'] == 'vmunet'
    model = build_vmunet(seg_models, embed=TINY_EMBED, num_classes=9)
    model.load_state_dict(result['state_dict'], strict=True)
    assert torch.equal(model.decode_head.conv_seg.weight, official['vmunet.final_conv.weight'])
    assert torch.equal(model.decode_head.layers_up[2].upsample.expand.weight,
                       official['vmunet.layers_up.2.upsample.expand.weight'])


def test_encoder_loads_a_vmunet_checkpoint_on_the_fly(tmp_path):
    official = random_state(official_vmunet(embed=TINY_EMBED), seed=2)
    src = tmp_path / 'best.pth'
    torch.save(official, src)
    model = VSSEncoder(dict(depths=(2, 2, 2, 2), embed_dim=TINY_EMBED), out_type='unet', out_norm=None,
                       init_cfg=dict(type='Pretrained', checkpoint=str(src)))
    model.init_weights()
    torch.testing.assert_close(model.layers[3].blocks[1].self_attention.A_logs,
                               official['vmunet.layers.3.blocks.1.self_attention.A_logs'])
    wrong = VSSEncoder(dict(depths=(2, 2, 3, 2), embed_dim=TINY_EMBED),
                       init_cfg=dict(type='Pretrained', checkpoint=str(src)))
    with pytest.raises(CheckpointMismatchError, match=r'missing \(13\).*layers\.2\.blocks\.2\.ln_1\.weight'):
        wrong.init_weights()


# ---------------------------------------------------------------------------------------------------------------------
# VMamba-v0 ImageNet weights
# ---------------------------------------------------------------------------------------------------------------------
V0_DEPTHS = (2, 2, 5, 2)  # VMamba-S's layout (27 blocks in stage 2) shortened


@pytest.fixture(scope='module')
def vmamba_file(tmp_path_factory):
    path = tmp_path_factory.mktemp('v0') / 'vmamba_small_e238_ema.pth'
    official = random_state(official_vmamba_v0(TINY_EMBED, V0_DEPTHS), seed=3)
    torch.save(dict(model=official), path)
    return path, official


def test_vmamba_v0_backbone_conversion_and_loading(vmamba_file, tmp_path):
    src, official = vmamba_file
    proc = run_tool(src, tmp_path / 'backbone.pth')
    assert proc.returncode == 0, proc.stderr
    assert 'vmamba-v0 layout' in proc.stdout and '4 keys left out' in proc.stdout and 'head.weight' in proc.stdout
    converted = torch.load(tmp_path / 'backbone.pth', weights_only=True)
    assert converted['meta']['dropped_keys'] == ['norm.weight', 'norm.bias', 'head.weight', 'head.bias']
    arch = dict(depths=V0_DEPTHS, embed_dim=TINY_EMBED)
    for checkpoint in (tmp_path / 'backbone.pth', src):  # converted, and official converted on the fly
        model = VSSEncoder(arch, out_norm=None,
                           init_cfg=dict(type='Pretrained', checkpoint=str(checkpoint), prefix='backbone.'))
        model.init_weights()
        for key, value in model.state_dict().items():
            assert torch.equal(value, official[key]), key
    # per-output norms are not in an ImageNet checkpoint: left at their init, not an error
    model = VSSEncoder(arch, out_indices=(1, 2), init_cfg=dict(type='Pretrained', checkpoint=str(src)))
    model.init_weights()
    assert torch.equal(model.norm2.weight, torch.ones(4 * TINY_EMBED))
    assert torch.equal(model.layers[2].blocks[4].ln_1.weight, official['layers.2.blocks.4.ln_1.weight'])


def test_mirrored_decoder_init_equals_vmunet_load_from(seg_models, vmamba_file, tmp_path):
    src, official = vmamba_file
    proc = run_tool(src, tmp_path / 'init.pth', '--mirror-decoder')
    assert proc.returncode == 0, proc.stderr
    converted = torch.load(tmp_path / 'init.pth', weights_only=True)['state_dict']
    model = build_vmunet(seg_models, embed=TINY_EMBED)
    # VM-UNet's load_from on its own names, mapped to mmmv's prefixes (names are VM-UNet's otherwise)
    official_names = {k[len('vmunet.'):] for k in official_vmunet(embed=TINY_EMBED)}
    expected = vmunet_load_from(official, official_names)
    expected = {('decode_head.' if k.startswith('layers_up') else 'backbone.') + k: v for k, v in expected.items()}
    assert set(converted) == set(expected)
    for key, value in expected.items():
        assert torch.equal(converted[key], value), key
    missing, unexpected = model.load_state_dict(converted, strict=False)
    assert unexpected == []
    assert sorted({k.split('.')[1] if 'layers_up' not in k else 'upsample' for k in missing}) == [
        'conv_seg', 'final_up', 'upsample']
    assert all('.upsample.' in k for k in missing if 'layers_up' in k)
    torch.testing.assert_close(model.decode_head.layers_up[0].blocks[1].self_attention.x_proj_weight,
                               official['layers.3.blocks.1.self_attention.x_proj_weight'])
    torch.testing.assert_close(model.decode_head.layers_up[3].blocks[0].ln_1.bias,
                               official['layers.0.blocks.0.ln_1.bias'])


def test_depth_options_are_checked(vmamba_file, tmp_path):
    src, official = vmamba_file
    with pytest.raises(ValueError, match='one entry per encoder stage'):
        convert_vmamba_v0(official, decoder_depths=(2, 2, 1))
    converted, dropped, _ = convert_vmamba_v0(official, encoder_depths=(1, 2, 2, 2))
    assert 'layers.0.blocks.1.ln_1.weight' in dropped and 'backbone.layers.0.blocks.1.ln_1.weight' not in converted
    proc = run_tool(src, tmp_path / 'x.pth', '--decoder-depths', 2, 2, 2, 1)
    assert proc.returncode == 2 and '--decoder-depths needs --mirror-decoder' in proc.stderr
    best = tmp_path / 'best.pth'
    torch.save(random_state(official_vmunet(embed=TINY_EMBED)), best)
    proc = run_tool(best, tmp_path / 'x.pth', '--mirror-decoder')
    assert proc.returncode == 2 and 'VMamba-v0 ImageNet weights only' in proc.stderr
    assert not (tmp_path / 'x.pth').exists()


# ---------------------------------------------------------------------------------------------------------------------
# Errors and safety
# ---------------------------------------------------------------------------------------------------------------------
def test_unmapped_keys_are_reported_and_refused(tmp_path):
    official = random_state(official_vmunet(embed=TINY_EMBED))
    official['vmunet.layers.0.blocks.0.self_attention.x_proj_bias'] = torch.zeros(4, 34)
    official['vmunet.absolute_pos_embed'] = torch.zeros(1, 4, 4, TINY_EMBED)
    src = tmp_path / 'best.pth'
    torch.save(official, src)
    proc = run_tool(src, tmp_path / 'out.pth')
    assert proc.returncode == 1 and not (tmp_path / 'out.pth').exists()
    assert '2 keys could not be mapped' in proc.stdout and 'x_proj_bias' in proc.stdout
    proc = run_tool(src, tmp_path / 'out.pth', '--allow-unmapped')
    assert proc.returncode == 0 and (tmp_path / 'out.pth').exists()


def test_layout_detection_errors():
    with pytest.raises(ValueError, match='VMamba v1/v2'):
        detect_vss_layout({'layers.0.blocks.0.op.A_logs': torch.zeros(1), 'patch_embed.0.weight': torch.zeros(1)})
    with pytest.raises(ValueError, match='DataParallel'):
        detect_vss_layout({'module.vmunet.layers.0.blocks.0.ln_1.weight': torch.zeros(1)})
    assert detect_vss_layout({'backbone.layers.0.blocks.0.ln_1.weight': torch.zeros(1)}) == 'mmmv'


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / 'pwned'
    src = tmp_path / 'evil.pth'
    code = ('import os, torch\n'
            'class Evil:\n'
            f'    def __reduce__(self): return (os.system, ("touch {marker}",))\n'
            f'torch.save({{"model": {{"layers.0.blocks.0.ln_1.weight": torch.ones(2)}}, "x": Evil()}}, "{src}")\n')
    subprocess.run([sys.executable, '-c', code], check=True, timeout=120)
    proc = run_tool(src, tmp_path / 'out.pth')
    assert proc.returncode == 2 and 'Refused to load' in proc.stderr and 'system' in proc.stderr
    assert not marker.exists() and not (tmp_path / 'out.pth').exists()


def test_vmamba_training_checkpoint_with_its_yacs_config_loads(tmp_path):
    """VMamba's training script saves its yacs CfgNode next to the weights; it is read back as plain data."""
    fake = tmp_path / 'fake_yacs'
    (fake / 'yacs').mkdir(parents=True)
    (fake / 'yacs' / '__init__.py').write_text('')
    (fake / 'yacs' / 'config.py').write_text(
        'class CfgNode(dict):\n'
        '    def __init__(self, d=None):\n'
        '        super().__init__(d or {})\n'
        "        self.__dict__['__immutable__'] = False\n")
    src = tmp_path / 'ckpt_epoch_238.pth'
    state = random_state(official_vmamba_v0(TINY_EMBED, (1, 1, 1, 1)))
    torch.save(state, tmp_path / 'state.pth')
    code = ('import sys, torch\n'
            f'sys.path.insert(0, {str(fake)!r})\n'
            'from yacs.config import CfgNode\n'
            f'model = torch.load({str(tmp_path / "state.pth")!r})\n'
            "cfg = CfgNode({'MODEL': CfgNode({'TYPE': 'vssm', 'DEPTHS': [2, 2, 27, 2]})})\n"
            f'torch.save(dict(model=model, config=cfg, epoch=238, max_accuracy=83.5), {str(src)!r})\n')
    subprocess.run([sys.executable, '-c', code], check=True, timeout=120)
    proc = run_tool(src, tmp_path / 'out.pth')
    assert proc.returncode == 0, proc.stderr
    converted = torch.load(tmp_path / 'out.pth', weights_only=True)['state_dict']
    assert torch.equal(converted['backbone.layers.3.blocks.0.ln_1.weight'], state['layers.3.blocks.0.ln_1.weight'])
