"""Official VM-UNet and VMamba-v0 checkpoints -> mmmv keys, and loading them into a ``VSSEncoder`` with a report.

mmmv's VSS modules keep the official parameter names (``patch_embed.{proj,norm}``, ``layers.{i}.blocks.{j}.ln_1``,
``...self_attention.{in_proj,conv2d,x_proj_weight,dt_projs_weight,dt_projs_bias,A_logs,Ds,out_norm,out_proj}``,
``layers.{i}.downsample.{norm,reduction}``, ``layers_up.{j}.upsample.{expand,norm}``, ``final_up.{expand,norm}``), so
converting is renaming prefixes:

- ``vmunet``: VM-UNet's ``best.pth`` (the bare state dict of its ``VMUNet`` wrapper) or ``latest.pth`` (the same under
  ``model_state_dict``): ``vmunet.patch_embed.*``, ``vmunet.layers.*`` -> ``backbone.*``; ``vmunet.layers_up.*``,
  ``vmunet.final_up.*`` -> ``decode_head.*``; ``vmunet.final_conv.*`` -> ``decode_head.conv_seg.*``: the keys of an
  mmseg ``EncoderDecoder`` with ``VSSEncoder`` + ``VMUNetHead``.
- ``vmamba-v0``: VMamba v0 ImageNet checkpoints (weights under ``model``: ``patch_embed.*``, ``layers.*`` and the
  classifier's ``norm.*``, ``head.*``, which are dropped) -> ``backbone.*``. Optionally only the first blocks of each
  stage are kept, and VM-UNet's decoder initialisation is added: its ``load_from`` copies encoder stage ``i``'s blocks
  into decoder stage ``n - 1 - i`` (``layers.i`` -> ``layers_up.{n-1-i}``) wherever the decoder has that block.
- ``mmmv``: already converted (``backbone.*`` / ``decode_head.*``).

Every key is matched against the full list of official names; one that matches none is reported, never guessed.
"""
import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .convert import _logger, extract_state_dict, load_state_dict_reported, parse_pretrained_cfg
from .safe_load import register_safe_globals, safe_load

# VMamba's training script saves its yacs config (a dict subclass) next to the weights. The restricted unpickler
# cannot rebuild a dict subclass, but an OrderedDict holds the same data and runs nothing.
register_safe_globals([(OrderedDict, 'yacs.config.CfgNode')])

VMUNET_PREFIX = 'vmunet.'
BACKBONE_PREFIX = 'backbone.'
HEAD_PREFIX = 'decode_head.'
VMUNET_ENCODER_DEPTHS = (2, 2, 2, 2)
VMUNET_DECODER_DEPTHS = (2, 2, 2, 1)

_AFFINE = r'(?:weight|bias)'
_SS2D = (r'(?:in_proj\.weight|conv2d\.' + _AFFINE + r'|x_proj_weight|dt_projs_weight|dt_projs_bias|A_logs|Ds'
         r'|out_norm\.' + _AFFINE + r'|out_proj\.weight)')
_BLOCK = rf'blocks\.\d+\.(?:ln_1\.{_AFFINE}|self_attention\.{_SS2D})'
# Official names, without their prefix. ``norm{i}`` are mmmv's per-output norms (absent from official files).
ENCODER_KEY = re.compile(rf'(?:patch_embed\.(?:proj|norm)\.{_AFFINE}|norm\d+\.{_AFFINE}'
                         rf'|layers\.\d+\.(?:{_BLOCK}|downsample\.(?:norm\.{_AFFINE}|reduction\.weight)))$')
DECODER_KEY = re.compile(rf'(?:layers_up\.\d+\.(?:{_BLOCK}|upsample\.(?:expand\.weight|norm\.{_AFFINE}))'
                         rf'|final_up\.(?:expand\.weight|norm\.{_AFFINE}))$')
FINAL_CONV_KEY = re.compile(rf'final_conv\.({_AFFINE})$')
CLASSIFIER_KEY = re.compile(rf'(?:norm|head)\.{_AFFINE}$')
_BLOCK_INDEX = re.compile(r'layers\.(\d+)\.blocks\.(\d+)\.(.*)$')


def extract_vss_state_dict(checkpoint) -> 'OrderedDict[str, torch.Tensor]':
    """The weights of a loaded checkpoint: VM-UNet's ``model_state_dict``, else ``state_dict``/``model``/bare."""
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get('model_state_dict'), Mapping):
        return OrderedDict(checkpoint['model_state_dict'])
    return extract_state_dict(checkpoint)


def detect_vss_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """'vmunet', 'vmamba-v0' or 'mmmv'; ValueError for anything else, naming what it looks like."""
    keys = list(state_dict)
    if any(k.startswith(VMUNET_PREFIX) for k in keys):
        return 'vmunet'
    if any(k.startswith((BACKBONE_PREFIX + 'layers.', BACKBONE_PREFIX + 'patch_embed.', HEAD_PREFIX + 'layers_up.'))
           for k in keys):
        return 'mmmv'
    if any('.self_attention.' in k for k in keys) and any(k.startswith('layers.') for k in keys):
        return 'vmamba-v0'
    if any(re.match(r'layers\.\d+\.blocks\.\d+\.op\.', k) for k in keys):
        raise ValueError('this is a VMamba v1/v2 checkpoint (blocks named "op"); mmmv implements the v0 VSS block '
                         '(VMamba-T/S/B v0, VM-UNet), whose blocks are named "self_attention"')
    module_prefixed = [k for k in keys if k.startswith('module.')]
    hint = ' (keys start with "module.": strip the DataParallel prefix first)' if module_prefixed else ''
    raise ValueError(f'the checkpoint holds no VM-UNet or VMamba-v0 weights{hint}; first keys: {keys[:5]}')


def convert_vmunet(state_dict: Mapping[str, torch.Tensor]) -> Tuple['OrderedDict[str, torch.Tensor]', List[str]]:
    """VM-UNet ``vmunet.*`` keys -> an mmseg EncoderDecoder's ``backbone.*`` / ``decode_head.*``.

    Returns:
        ``(converted, unmapped)``: the new state dict and the source keys matching no official name (not included).
    """
    converted: 'OrderedDict[str, torch.Tensor]' = OrderedDict()
    unmapped = []
    for key, value in state_dict.items():
        name = key[len(VMUNET_PREFIX):] if key.startswith(VMUNET_PREFIX) else None
        final_conv = FINAL_CONV_KEY.match(name) if name is not None else None
        if name is not None and ENCODER_KEY.match(name):
            converted[BACKBONE_PREFIX + name] = value
        elif name is not None and DECODER_KEY.match(name):
            converted[HEAD_PREFIX + name] = value
        elif final_conv:
            converted[f'{HEAD_PREFIX}conv_seg.{final_conv.group(1)}'] = value
        else:
            unmapped.append(key)
    return converted, unmapped


def convert_vmamba_v0(state_dict: Mapping[str, torch.Tensor],
                      encoder_depths: Optional[Sequence[int]] = None,
                      decoder_depths: Optional[Sequence[int]] = None
                      ) -> Tuple['OrderedDict[str, torch.Tensor]', List[str], List[str]]:
    """VMamba-v0 ImageNet weights -> ``backbone.*``, optionally with VM-UNet's mirrored ``decode_head.*`` init.

    Args:
        state_dict: the ``model`` entry of the checkpoint (``patch_embed.*``, ``layers.*``, ``norm.*``, ``head.*``).
        encoder_depths: keep only blocks ``j < encoder_depths[i]`` of stage ``i`` (VM-UNet: 2, 2, 2, 2); None keeps
            all of them.
        decoder_depths: also copy encoder stage ``i``'s blocks ``j < decoder_depths[n-1-i]`` to
            ``decode_head.layers_up.{n-1-i}.blocks.j`` (VM-UNet: 2, 2, 2, 1), as VM-UNet's ``load_from``; None adds
            no decoder weights.

    Returns:
        ``(converted, dropped, unmapped)``: the new state dict, the source keys left out on purpose (the classifier,
        blocks beyond ``encoder_depths``) and those matching no official name.
    """
    converted: 'OrderedDict[str, torch.Tensor]' = OrderedDict()
    dropped, unmapped = [], []
    num_stages = 1 + max((int(m.group(1)) for m in map(_BLOCK_INDEX.match, state_dict) if m), default=-1)
    if decoder_depths is not None and len(decoder_depths) != num_stages:
        raise ValueError(f'decoder_depths {tuple(decoder_depths)} must have one entry per encoder stage '
                         f'({num_stages} in the checkpoint)')
    if encoder_depths is not None and len(encoder_depths) != num_stages:
        raise ValueError(f'encoder_depths {tuple(encoder_depths)} must have one entry per encoder stage '
                         f'({num_stages} in the checkpoint)')
    for key, value in state_dict.items():
        if CLASSIFIER_KEY.match(key):
            dropped.append(key)
            continue
        if not ENCODER_KEY.match(key):
            unmapped.append(key)
            continue
        block = _BLOCK_INDEX.match(key)
        if block is None:
            converted[BACKBONE_PREFIX + key] = value
            continue
        stage, index, rest = int(block.group(1)), int(block.group(2)), block.group(3)
        if encoder_depths is None or index < encoder_depths[stage]:
            converted[BACKBONE_PREFIX + key] = value
        else:
            dropped.append(key)
        if decoder_depths is not None and index < decoder_depths[num_stages - 1 - stage]:
            converted[f'{HEAD_PREFIX}layers_up.{num_stages - 1 - stage}.blocks.{index}.{rest}'] = value.clone()
    return converted, dropped, unmapped


def convert_vss_checkpoint(src: str,
                           encoder_depths: Optional[Sequence[int]] = None,
                           decoder_depths: Optional[Sequence[int]] = None) -> Tuple[Dict, List[str]]:
    """Load an official VM-UNet or VMamba-v0 file safely and convert it to ``{'state_dict', 'meta'}``.

    ``encoder_depths`` / ``decoder_depths`` apply to VMamba-v0 sources (see :func:`convert_vmamba_v0`); a VM-UNet
    checkpoint already holds its decoder, so they are refused for it.

    Returns:
        ``(result, unmapped)``; ``result['meta']`` names the source, its layout, and the dropped and unmapped keys.
    """
    state_dict = extract_vss_state_dict(safe_load(src))
    layout = detect_vss_layout(state_dict)
    dropped: List[str] = []
    if layout == 'vmamba-v0':
        converted, dropped, unmapped = convert_vmamba_v0(state_dict, encoder_depths, decoder_depths)
    elif encoder_depths is not None or decoder_depths is not None:
        raise ValueError(f'{src} is a {layout} checkpoint: encoder/decoder depths select and mirror the blocks of '
                         'VMamba-v0 ImageNet weights only')
    elif layout == 'vmunet':
        converted, unmapped = convert_vmunet(state_dict)
    else:
        converted, unmapped = OrderedDict(state_dict), []
    meta = dict(mmmv_converted_from=str(src), source_layout=layout, dropped_keys=dropped, unmapped_keys=unmapped)
    return dict(state_dict=converted, meta=meta), unmapped


def load_vss_pretrained(model: nn.Module, init_cfg: Mapping) -> Dict[str, List[str]]:
    """Load ``dict(type='Pretrained', checkpoint=PATH, prefix='backbone.', strict=True)`` into a VSS model.

    PATH may hold converted mmmv weights, VMamba-v0 ImageNet weights or a VM-UNet checkpoint (both converted on the
    fly; their prefix defaults to ``'backbone.'``). The file is read with :func:`mmmv.checkpoint.safe_load`. Missing,
    unexpected and mis-shaped keys raise :class:`~mmmv.checkpoint.convert.CheckpointMismatchError` listing them all
    (with ``strict=False``: a warning), as for MambaVision.
    """
    path, prefix, strict = parse_pretrained_cfg(model, init_cfg)
    state_dict = extract_vss_state_dict(safe_load(path))
    layout = detect_vss_layout(state_dict)
    if layout != 'mmmv':
        if layout == 'vmunet':
            state_dict, unmapped = convert_vmunet(state_dict)
        else:
            state_dict, dropped, unmapped = convert_vmamba_v0(state_dict)
            _logger().info('%s: left out the classifier keys of %s: %s', type(model).__name__, path, dropped)
        if unmapped:
            _logger().warning('%s: %d keys of %s match no official VSS name and were skipped: %s',
                              type(model).__name__, len(unmapped), path, unmapped)
        _logger().info('converted official %s weights from %s on the fly', layout, path)
        prefix = BACKBONE_PREFIX if prefix is None else prefix
    return load_state_dict_reported(model, state_dict, path, prefix, strict)
