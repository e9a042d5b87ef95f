"""Official MambaVision checkpoints -> mmmv keys, and loading pretrained weights into a backbone with a report.

Layouts understood (detected from the keys, see :func:`detect_layout`):

- ``official-cls``: the official classification checkpoints (``*.pth.tar`` from the timm train script, weights under
  ``state_dict``; ``patch_embed.conv_down.*``, ``levels.*``, ``norm.*`` (BatchNorm), ``head.*``);
- ``hf``: the Hugging Face ``model.safetensors`` of the same models (the same keys under ``model.``);
- ``official-dense``: the official detection/segmentation checkpoints (``MM_mamba_vision`` backbone under
  ``backbone.``, with ``backbone.outnorm{i}.*``; neck and heads keep their mmdet/mmseg names);
- ``mmmv``: already converted.

mmmv keys differ from the official ones only where a name says more: ``patch_embed.{conv1,bn1,conv2,bn2}`` for
``patch_embed.conv_down.{0,1,3,4}``, ``stages`` for ``levels``, ``downsample.conv`` for ``downsample.reduction.0``,
``norm{i}`` for ``outnorm{i}`` and ``head.fc`` (mmpretrain's ``LinearClsHead``) for ``head``.
"""
import logging
import os
import os.path as osp
import re
import sys
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from .safe_load import safe_load



def _logger() -> logging.Logger:
    """mmengine's current logger inside a run (so messages reach the work-dir log), else the 'mmmv' logger."""
    try:
        from mmengine.logging import MMLogger
    except ImportError:
        return logging.getLogger('mmmv')
    return MMLogger.get_current_instance()

_BN = r'(weight|bias|running_mean|running_var|num_batches_tracked)'
_LN = r'(weight|bias)'
# (official backbone key pattern, mmmv key template). A key that matches none of them is reported as unmapped.
_BACKBONE_RULES: List[Tuple[str, str]] = [
    (r'patch_embed\.conv_down\.0\.weight', r'patch_embed.conv1.weight'),
    (rf'patch_embed\.conv_down\.1\.{_BN}', r'patch_embed.bn1.\1'),
    (r'patch_embed\.conv_down\.3\.weight', r'patch_embed.conv2.weight'),
    (rf'patch_embed\.conv_down\.4\.{_BN}', r'patch_embed.bn2.\1'),
    # convolutional blocks (stages 0-1)
    (r'levels\.(\d+)\.blocks\.(\d+)\.(conv[12]\.(?:weight|bias)|gamma)', r'stages.\1.blocks.\2.\3'),
    (rf'levels\.(\d+)\.blocks\.(\d+)\.(norm[12])\.{_BN}', r'stages.\1.blocks.\2.\3.\4'),
    # hybrid blocks (stages 2-3): Mamba mixer or attention, MLP, layer scale
    (r'levels\.(\d+)\.blocks\.(\d+)\.(mixer\.(?:A_log|D|(?:in_proj|x_proj|out_proj|conv1d_x|conv1d_z)\.weight|'
     r'dt_proj\.(?:weight|bias)|(?:qkv|proj)\.(?:weight|bias))|mlp\.fc[12]\.(?:weight|bias)|gamma_[12])',
     r'stages.\1.blocks.\2.\3'),
    (r'levels\.(\d+)\.downsample\.reduction\.0\.weight', r'stages.\1.downsample.conv.weight'),
    (rf'outnorm(\d+)\.{_LN}', r'norm\1.\2'),
    (rf'norm\.{_BN}', r'norm.\1'),
]
_COMPILED = [(re.compile(pattern + '$'), template) for pattern, template in _BACKBONE_RULES]
# Hybrid blocks' norms share the name pattern with conv blocks' BN; they are LayerNorms (weight/bias only).
_HEAD_RULE = (re.compile(r'head\.(weight|bias)$'), r'head.fc.\1')


def convert_backbone_key(key: str) -> Optional[str]:
    """Official backbone key (no prefix) -> mmmv key, or None if it is not a MambaVision backbone key."""
    for pattern, template in _COMPILED:
        match = pattern.match(key)
        if match:
            return match.expand(template)
    return None


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Name the layout of a state dict: 'official-cls', 'hf', 'official-dense' or 'mmmv'."""
    keys = list(state_dict)

    def has(prefix):
        return any(k.startswith(prefix) for k in keys)

    if has('model.patch_embed.conv_down') or has('model.levels.'):
        return 'hf'
    if has('backbone.patch_embed.conv_down') or has('backbone.levels.'):
        return 'official-dense'
    if has('patch_embed.conv_down') or has('levels.'):
        return 'official-cls'
    if any('patch_embed.conv1' in k or '.stages.' in k or k.startswith('stages.') for k in keys):
        return 'mmmv'
    raise ValueError('the checkpoint holds no MambaVision weights in a layout mmmv knows (no patch_embed/levels/'
                     f'stages keys); first keys: {keys[:5]}')


# Entries of a checkpoint that hold the weights, in the order they are looked for.
WEIGHT_ENTRIES = ('state_dict', 'model', 'module')


def weights_entry(checkpoint) -> Optional[str]:
    """The entry of a loaded checkpoint that holds its weights (see :data:`WEIGHT_ENTRIES`), or None."""
    if not isinstance(checkpoint, Mapping):
        return None
    return next((k for k in WEIGHT_ENTRIES if isinstance(checkpoint.get(k), Mapping)), None)


def extract_state_dict(checkpoint) -> 'OrderedDict[str, torch.Tensor]':
    """The weights of a loaded checkpoint: ``state_dict``, ``model`` or the mapping itself."""
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f'a checkpoint must be a mapping, got {type(checkpoint).__name__}')
    entry = weights_entry(checkpoint)
    if entry is not None:
        return OrderedDict(checkpoint[entry])
    if all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return OrderedDict(checkpoint)
    raise ValueError(f'no weights found in the checkpoint: expected a "state_dict" or "model" entry or a plain '
                     f'state dict, got the keys {list(checkpoint)[:10]}')


def convert_official(state_dict: Mapping[str, torch.Tensor]) -> Tuple['OrderedDict[str, torch.Tensor]', List[str]]:
    """Convert an official (or Hugging Face) MambaVision state dict to mmmv keys.

    Classification weights become ``backbone.*`` and ``head.fc.*`` (the layout of ``configs/mambavision_*_in1k.py``);
    in detection/segmentation checkpoints only ``backbone.*`` is renamed and the other keys are kept.

    Returns:
        ``(converted, unmapped)``: the new state dict and the source keys that could not be mapped (not included).
    """
    layout = detect_layout(state_dict)
    converted: 'OrderedDict[str, torch.Tensor]' = OrderedDict()
    unmapped: List[str] = []
    if layout == 'mmmv':
        return OrderedDict(state_dict), []
    for key, value in state_dict.items():
        if layout == 'official-dense':
            if not key.startswith('backbone.'):
                converted[key] = value
                continue
            source = key[len('backbone.'):]
        else:
            source = key[len('model.'):] if layout == 'hf' and key.startswith('model.') else key
            head = _HEAD_RULE[0].match(source)
            if head:
                converted[head.expand(_HEAD_RULE[1])] = value
                continue
        new = convert_backbone_key(source)
        if new is None:
            unmapped.append(key)
        else:
            converted['backbone.' + new] = value
    return converted, unmapped


def convert_checkpoint(src: str, dst: Optional[str] = None) -> Tuple[Dict, List[str]]:
    """Load an official checkpoint file safely, convert it and optionally save ``{'state_dict', 'meta'}`` to dst.

    The source's own ``meta`` (mmengine's: ``dataset_meta`` with the class names, ``epoch``, ``iter``, the training
    ``cfg`` text, ...) is kept, with mmmv's conversion record added to it. Training state (``optimizer``,
    ``message_hub``, ``param_schedulers``, a timm file's ``args`` ...) is not carried over; its entries are listed in
    ``meta['dropped_entries']``.
    """
    checkpoint = safe_load(src)
    state_dict = extract_state_dict(checkpoint)
    layout = detect_layout(state_dict)
    converted, unmapped = convert_official(state_dict)
    meta = {}
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get('meta'), Mapping):
        meta.update(checkpoint['meta'])
    entry = weights_entry(checkpoint)
    dropped = [k for k in checkpoint if k not in (entry, 'meta')] if entry is not None else []
    meta.update(mmmv_converted_from=str(src), source_layout=layout, unmapped_keys=unmapped,
                dropped_entries=dropped)
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get('arch'), str):
        meta['source_arch'] = checkpoint['arch']
    result = dict(state_dict=converted, meta=meta)
    if dst is not None:
        torch.save(result, dst)
    return result, unmapped


def save_converted(result: Mapping, unmapped: List[str], dst: str, allow_unmapped: bool) -> int:
    """The end of a converter script: list the unmapped keys, then write ``result`` to ``dst`` unless there are some
    and ``allow_unmapped`` is False. Returns the exit status (0 written, 1 refused)."""
    if unmapped:
        print(f'{len(unmapped)} keys could not be mapped:', *unmapped, sep='\n  ')
        if not allow_unmapped:
            print('nothing written; pass --allow-unmapped to drop them', file=sys.stderr)
            return 1
    os.makedirs(osp.dirname(osp.abspath(dst)), exist_ok=True)
    torch.save(result, dst)
    print(f'saved {dst}')
    return 0

# ---------------------------------------------------------------------------------------------------------------------
# Loading pretrained weights into a backbone
# ---------------------------------------------------------------------------------------------------------------------
class CheckpointMismatchError(RuntimeError):
    """The checkpoint does not fit the model: the message lists the missing, unexpected and mis-shaped keys."""


def _not_built(key: str, model: nn.Module) -> bool:
    """Keys of a full checkpoint that the model legitimately lacks: the classifier's final BatchNorm in a
    dense-prediction backbone, and stages after its last output."""
    if key.startswith('norm.') and getattr(model, 'norm', None) is None:
        return True
    skipped = model.skipped_state_prefixes() if hasattr(model, 'skipped_state_prefixes') else []
    return any(key.startswith(prefix) for prefix in skipped)


def _output_norm(key: str) -> bool:
    """Per-output norms are added by the dense-prediction backbone; classification checkpoints do not have them."""
    return re.match(r'norm\d+\.', key) is not None


def load_pretrained(model: nn.Module, init_cfg: Mapping) -> Dict[str, List[str]]:
    """Load ``init_cfg = dict(type='Pretrained', checkpoint=PATH, prefix='backbone.', strict=True)`` into ``model``.

    The file is read with :func:`mmmv.checkpoint.safe_load` (no code from it runs), official layouts are converted on
    the fly, ``prefix`` selects and strips a sub-module's keys. Keys that a classification checkpoint cannot provide to
    a dense-prediction backbone (the per-output norms) and the classifier's final BatchNorm are expected differences and
    logged; any other missing, unexpected or mis-shaped key raises :class:`CheckpointMismatchError` listing them all,
    or with ``strict=False`` is logged as a warning.

    Returns:
        dict with the lists 'missing', 'unexpected', 'mismatched' and 'ignored'.
    """
    path, prefix, strict = parse_pretrained_cfg(model, init_cfg)
    state_dict = extract_state_dict(safe_load(path))
    if detect_layout(state_dict) != 'mmmv':
        state_dict, unmapped = convert_official(state_dict)
        if unmapped:
            _logger().warning('%s: %d keys of %s have no mmmv counterpart and were skipped: %s', type(model).__name__,
                           len(unmapped), path, unmapped)
        _logger().info('converted official MambaVision weights from %s on the fly', path)
        prefix = 'backbone.' if prefix is None else prefix
    return load_state_dict_reported(model, state_dict, path, prefix, strict)


def parse_pretrained_cfg(model: nn.Module, init_cfg: Mapping) -> Tuple[str, Optional[str], bool]:
    """``(checkpoint, prefix, strict)`` of ``dict(type='Pretrained', checkpoint=PATH, prefix=None, strict=True)``;
    ValueError naming ``model``'s class for another type, a missing checkpoint or unknown keys."""
    cfg = dict(init_cfg)
    kind = cfg.pop('type', 'Pretrained')
    if kind != 'Pretrained':
        raise ValueError(f"{type(model).__name__}: init_cfg type must be 'Pretrained', got {kind!r}")
    if 'checkpoint' not in cfg:
        raise ValueError(f"{type(model).__name__}: init_cfg needs checkpoint=PATH, got {init_cfg}")
    path = cfg.pop('checkpoint')
    prefix = cfg.pop('prefix', None)
    strict = cfg.pop('strict', True)
    cfg.pop('map_location', None)
    if cfg:
        raise ValueError(f'{type(model).__name__}: unknown init_cfg keys {sorted(cfg)}; valid keys are '
                         "type, checkpoint, prefix, strict, map_location")
    return path, prefix, strict


def load_state_dict_reported(model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: str,
                             prefix: Optional[str], strict: bool) -> Dict[str, List[str]]:
    """Load the ``prefix`` part of a state dict in mmmv keys into ``model`` with the report of :func:`load_pretrained`
    (``path`` names the source in messages)."""
    if prefix:
        selected = OrderedDict((k[len(prefix):], v) for k, v in state_dict.items() if k.startswith(prefix))
        if not selected:
            raise CheckpointMismatchError(f'no key of {path} starts with prefix {prefix!r}; first keys: '
                                          f'{list(state_dict)[:5]}')
        state_dict = selected

    own = model.state_dict()
    ignored = [k for k in state_dict if k not in own and _not_built(k, model)]
    unexpected = [k for k in state_dict if k not in own and k not in ignored]
    missing_all = [k for k in own if k not in state_dict]
    left_at_init = [k for k in missing_all if _output_norm(k)]
    missing = [k for k in missing_all if k not in left_at_init]
    mismatched = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
                  for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
    report = dict(missing=missing, unexpected=unexpected, mismatched=mismatched, ignored=ignored + left_at_init)
    problems = [f'{name} ({len(keys)}): {keys}' for name, keys in
                (('missing', missing), ('unexpected', unexpected), ('shape mismatch', mismatched)) if keys]
    if problems and strict:
        raise CheckpointMismatchError(
            f'{path} does not fit {type(model).__name__} ({", ".join(p.split(":")[0] for p in problems)}):\n  '
            + '\n  '.join(problems)
            + '\nCheck that arch matches the checkpoint, that prefix is right (e.g. "backbone."), or pass '
              'strict=False in init_cfg to load what fits.')
    if problems:
        _logger().warning('%s: loaded %s with strict=False; %s', type(model).__name__, path, '; '.join(problems))
    loadable = OrderedDict((k, v) for k, v in state_dict.items()
                           if k in own and v.shape == own[k].shape)
    model.load_state_dict(loadable, strict=False)
    if ignored:
        _logger().info('%s: ignored keys of %s for parts it does not build: %s', type(model).__name__, path, ignored)
    if left_at_init:
        _logger().info('%s: %s not in %s, left at their initialisation', type(model).__name__, left_at_init, path)
    return report
