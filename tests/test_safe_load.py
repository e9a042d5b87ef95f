"""Safe checkpoint loading: real checkpoints load with ``weights_only=True`` plus mmmv's allow-list, through
:func:`safe_load` and through mmengine once patched; anything else is refused before any of it runs.

The mmengine tests need mmengine (and are skipped without it); none needs mmmv's models.
"""
import argparse
import builtins
import importlib
import importlib.util
import io
import os
import pickle
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from mmmv.checkpoint import (CorruptCheckpointError, UnsafeCheckpointError, patch_mmengine, register_safe_globals,
                             safe_load)

# The module (the package's `safe_load` attribute is the function).
safe_load_module = importlib.import_module('mmmv.checkpoint.safe_load')

FORMATS = {'zip': True, 'legacy': False}  # torch.save's _use_new_zipfile_serialization
requires_mmengine = pytest.mark.skipif(importlib.util.find_spec('mmengine') is None, reason='needs mmengine')


def save(obj, path, fmt='zip'):
    torch.save(obj, path, _use_new_zipfile_serialization=FORMATS[fmt])
    return str(path)


def refused_by_plain_torch_load(path):
    """Whether torch.load(weights_only=True) without the allow-list refuses the file (so the allow-list is needed)."""
    try:
        torch.load(path, weights_only=True)
    except pickle.UnpicklingError:
        return True
    return False


def assert_nested_equal(actual, expected):
    assert type(actual) is type(expected)
    if isinstance(expected, dict):
        assert list(actual) == list(expected)
        for key in expected:
            assert_nested_equal(actual[key], expected[key])
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            assert_nested_equal(a, e)
    elif isinstance(expected, argparse.Namespace):
        assert_nested_equal(vars(actual), vars(expected))
    elif type(expected).__name__ == 'HistoryBuffer':  # no __eq__; saving adds statistics_methods to its __dict__
        assert_nested_equal(actual.data, expected.data)
        assert actual.max_length == expected.max_length and actual.mean() == expected.mean()
    elif isinstance(expected, torch.Tensor):
        assert torch.equal(actual, expected)
    elif isinstance(expected, np.ndarray):
        assert actual.dtype == expected.dtype and np.array_equal(actual, expected)
    else:
        assert actual == expected


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints as the toolboxes and timm write them


def toy_state_dict():
    return OrderedDict(weight=torch.randn(3, 2), bias=torch.randn(3), num_batches_tracked=torch.tensor(7))


def mmengine_style_extras():
    """meta/message_hub/optimizer/param_schedulers as mmengine's Runner.save_checkpoint writes them."""
    from mmengine.logging import HistoryBuffer
    loss = HistoryBuffer()
    for value in (0.9, 0.7, 0.4):
        loss.update(value)
    return dict(
        message_hub=dict(log_scalars=OrderedDict({'train/loss': loss}),
                         runtime_info=OrderedDict(epoch=12, iter=1000, max_iters=np.int64(1000),
                                                  best_score=np.float64(0.41)),
                         resumed_keys=OrderedDict({'train/loss': True, 'epoch': True})),
        optimizer=dict(state={0: dict(momentum_buffer=torch.zeros(3, 2))},
                       param_groups=[dict(lr=0.02, momentum=0.9, weight_decay=1e-4, nesterov=False, params=[0])]),
        param_schedulers=[dict(by_epoch=True, begin=0, end=12, last_step=12, milestones={8: 1, 11: 1}, gamma=0.1,
                               base_values=[0.02], _last_value=[0.0002])])


TOOLBOX_META = {
    'mmdet': dict(dataset_meta=dict(classes=('person', 'bicycle', 'car'),
                                    palette=[(220, 20, 60), (119, 11, 32), (0, 0, 142)]),
                  mmdet_version='3.3.0', best_coco_bbox_mAP=np.float64(0.412), seed=np.int64(42)),
    'mmseg': dict(dataset_meta=dict(classes=('road', 'sidewalk'), palette=[[128, 64, 128], [244, 35, 232]],
                                    label_map=None, reduce_zero_label=False),
                  mmseg_version='1.2.2', best_mIoU=np.float32(77.5), palette_array=np.array([[1, 2, 3]], np.uint8)),
    'mmpretrain': dict(dataset_meta=dict(classes=tuple(f'n{i:08d}' for i in range(5))), mmpretrain_version='1.2.0',
                       accuracy_top1=np.float64(82.3), class_counts=np.bincount([0, 1, 1, 4])),
}


@requires_mmengine
@pytest.mark.parametrize('fmt', FORMATS)
@pytest.mark.parametrize('toolbox', TOOLBOX_META)
def test_toolbox_checkpoints_load(tmp_path, toolbox, fmt):
    meta = dict(TOOLBOX_META[toolbox], cfg='model = dict(...)', epoch=12, iter=1000, mmengine_version='0.10.7',
                experiment_name='exp', time='20250101_000000')
    checkpoint = dict(meta=meta, state_dict=toy_state_dict(), **mmengine_style_extras())
    path = save(checkpoint, tmp_path / f'{toolbox}.pth', fmt)
    assert refused_by_plain_torch_load(path)
    assert_nested_equal(safe_load(path), checkpoint)


def test_numpy_1x_spelling_loads(tmp_path):
    """Files written with numpy 1.x name numpy.core.multiarray.* (legacy format: GLOBAL lines are plain text)."""
    path = tmp_path / 'numpy1.pth'
    save(dict(array=np.arange(4, dtype=np.int16), scalar=np.float32(0.5)), path, 'legacy')
    data = path.read_bytes().replace(b'numpy._core.multiarray', b'numpy.core.multiarray')
    assert b'numpy.core.multiarray\n_reconstruct' in data
    path.write_bytes(data)
    assert_nested_equal(safe_load(path), dict(array=np.arange(4, dtype=np.int16), scalar=np.float32(0.5)))


def mambavision_style_checkpoint():
    """What timm's CheckpointSaver writes in the official MambaVision train.py (``model_best.pth.tar``)."""
    model = nn.Linear(2, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 2)).sum().backward()
    optimizer.step()
    args = argparse.Namespace(model='mamba_vision_T', lr=5e-3, opt_betas=[0.9, 0.999], mean=None, input_size=None,
                              scale=[0.08, 1.0], dtype=torch.bfloat16, device='cuda:0', distributed=True,
                              world_size=32, rank=0, aa='rand-m9-mstd0.5-inc1', prefetcher=True, experiment='')
    return dict(epoch=309, arch='mamba_vision_T', state_dict=model.state_dict(), state_dict_ema=model.state_dict(),
                optimizer=optimizer.state_dict(), version=2, args=args, metric=82.3,
                amp_scaler=dict(scale=65536.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000,
                                _growth_tracker=12))


@pytest.mark.parametrize('fmt', FORMATS)
def test_official_mambavision_pth_tar_loads(tmp_path, fmt):
    checkpoint = mambavision_style_checkpoint()
    path = save(checkpoint, tmp_path / 'mambavision_tiny_1k.pth.tar', fmt)
    assert refused_by_plain_torch_load(path)
    assert_nested_equal(safe_load(path), checkpoint)


def test_map_location_is_passed_to_torch(tmp_path):
    path = save(dict(w=torch.ones(2)), tmp_path / 'w.pth')
    seen = []
    loaded = safe_load(path, map_location=lambda storage, location: seen.append(location) or storage)
    assert seen == ['cpu'] and torch.equal(loaded['w'], torch.ones(2))


# ---------------------------------------------------------------------------------------------------------------
# Refusals: nothing from the file runs


class Payload:
    """Unpickling calls ``function(*args)``: what a malicious checkpoint does."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


PAYLOADS = {
    'posix.system': lambda marker: Payload(os.system, f'touch {marker}'),
    'builtins.exec': lambda marker: Payload(builtins.exec, f'open({str(marker)!r}, "w").close()'),
    'subprocess.call': lambda marker: Payload(subprocess.call, ['touch', str(marker)]),
}
WRITERS = {
    'zip': lambda obj, path: save(obj, path, 'zip'),
    'legacy': lambda obj, path: save(obj, path, 'legacy'),
    'raw-pickle': lambda obj, path: path.write_bytes(pickle.dumps(obj, protocol=2)),
}


def write_malicious(tmp_path, payload, writer, marker):
    path = tmp_path / f'malicious-{writer}.pth'
    # The payload first: a raw pickle's tensors would be refused (torch.storage._load_from_bytes) before it.
    WRITERS[writer](dict(meta=PAYLOADS[payload](marker), state_dict=toy_state_dict()), path)
    return str(path)


def test_payloads_are_live(tmp_path):
    """Control: loaded unsafely, each payload does write its marker, so the refusal tests below can see a run."""
    for payload in PAYLOADS:
        marker = tmp_path / f'control-{payload}'
        path = write_malicious(tmp_path, payload, 'zip', marker)
        torch.load(path, weights_only=False)
        assert marker.exists(), payload


def assert_refused(err, path, payload):
    message = str(err.value)
    assert err.value.offending[0] == payload
    for needed in (path, payload, 'Nothing from the file was executed', 'register_safe_globals', 'state dict'):
        assert needed in message


@pytest.mark.parametrize('writer', WRITERS)
@pytest.mark.parametrize('payload', PAYLOADS)
def test_malicious_checkpoint_is_refused_unrun(tmp_path, payload, writer):
    marker = tmp_path / 'marker'
    path = write_malicious(tmp_path, payload, writer, marker)
    with pytest.raises(UnsafeCheckpointError) as err:
        safe_load(path)
    assert_refused(err, path, payload)
    assert isinstance(err.value, pickle.UnpicklingError)
    assert not marker.exists()


class Reviewed:
    """A plain data class: rebuilt from its ``__dict__``, no code runs."""

    def __init__(self, value):
        self.value = value


def test_all_refused_globals_are_named_for_zip_files(tmp_path):
    path = save(dict(a=Payload(os.system, 'true'), b=Payload(builtins.eval, '1'), c=Reviewed(1)), tmp_path / '3.pth')
    with pytest.raises(UnsafeCheckpointError) as err:
        safe_load(path)
    assert set(err.value.offending) == {'posix.system', 'builtins.eval', f'{__name__}.Reviewed'}


def test_register_safe_globals_extends_the_allow_list(tmp_path, monkeypatch):
    monkeypatch.setattr(safe_load_module, '_registered_globals', [])
    path = save(dict(extra=Reviewed(3)), tmp_path / 'extra.pth')
    with pytest.raises(UnsafeCheckpointError, match=f'{__name__}.Reviewed'):
        safe_load(path)
    register_safe_globals([Reviewed])
    register_safe_globals([Reviewed])  # twice is harmless
    assert safe_load(path)['extra'].value == 3
    with pytest.raises(TypeError):
        register_safe_globals(['not a class'])


def saved_bytes(fmt):
    buffer = io.BytesIO()
    torch.save(dict(state_dict=toy_state_dict(), meta=dict(score=np.float64(1.0))), buffer,
               _use_new_zipfile_serialization=FORMATS[fmt])
    return buffer.getvalue()


@pytest.mark.parametrize('case', ['zip-truncated', 'zip-header-only', 'legacy-truncated', 'legacy-tail-cut',
                                  'garbage', 'text', 'empty'])
def test_corrupt_files_get_their_own_error(tmp_path, case):
    zip_bytes, legacy_bytes = saved_bytes('zip'), saved_bytes('legacy')
    data = {'zip-truncated': zip_bytes[:len(zip_bytes) // 2], 'zip-header-only': zip_bytes[:40],
            'legacy-truncated': legacy_bytes[:len(legacy_bytes) // 3], 'legacy-tail-cut': legacy_bytes[:-10],
            'garbage': b'\x80\x02' + bytes(range(256)) * 4, 'text': b'<html>404 Not Found</html>\n',
            'empty': b''}[case]
    path = tmp_path / f'{case}.pth'
    path.write_bytes(data)
    with pytest.raises(CorruptCheckpointError, match=str(path)):
        safe_load(path)


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / 'nowhere' / 'epoch_12.pth'
    with pytest.raises(FileNotFoundError, match=str(path)):
        safe_load(path)
    with pytest.raises(FileNotFoundError, match='directory'):
        safe_load(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# safetensors


def test_safetensors_round_trip(tmp_path):
    safetensors_torch = pytest.importorskip('safetensors.torch', reason='safetensors is in the dev extras')
    tensors = {'model.patch_embed.conv_down.0.weight': torch.randn(8, 3, 3, 3), 'model.head.bias': torch.zeros(5)}
    path = tmp_path / 'model.safetensors'
    safetensors_torch.save_file(tensors, str(path), metadata={'format': 'pt'})
    assert_nested_equal(dict(sorted(safe_load(path).items())), dict(sorted(tensors.items())))
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(CorruptCheckpointError, match=str(path)):
        safe_load(path)


def test_safetensors_without_the_package_says_how_to_install(tmp_path, monkeypatch):
    path = tmp_path / 'model.safetensors'
    path.write_bytes(b'\x00' * 16)
    monkeypatch.setitem(sys.modules, 'safetensors', None)
    with pytest.raises(ImportError, match='pip install safetensors'):
        safe_load(path)


# ---------------------------------------------------------------------------------------------------------------
# mmengine, patched


@pytest.fixture
def mm_checkpoint():
    """mmengine.runner.checkpoint, patched."""
    from mmengine.runner import checkpoint
    assert patch_mmengine() is True
    return checkpoint


@requires_mmengine
def test_patch_is_idempotent_and_covers_every_loader(mm_checkpoint):
    loader_cls = mm_checkpoint.CheckpointLoader
    schemes = dict(loader_cls._schemes)
    assert patch_mmengine() is True and patch_mmengine() is True
    assert loader_cls._schemes == schemes
    for prefix, loader in loader_cls._schemes.items():
        # mmengine's torchvision:// and mmcls:// loaders only call the module's (patched) load_from_http
        assert loader.__module__ == safe_load_module.__name__ or loader.__name__ in (
            'load_from_torchvision', 'load_from_mmcls'), prefix
    assert mm_checkpoint.load_from_http is safe_load_module.load_from_http
    assert mm_checkpoint.load_from_local is safe_load_module.load_from_local


def test_patch_without_mmengine_returns_false(monkeypatch):
    monkeypatch.setitem(sys.modules, 'mmengine', None)
    monkeypatch.setitem(sys.modules, 'mmengine.runner', None)
    assert patch_mmengine() is False


@requires_mmengine
@pytest.mark.parametrize('load', ['load_checkpoint', '_load_checkpoint', 'CheckpointLoader'])
@pytest.mark.parametrize('payload', PAYLOADS)
def test_mmengine_refuses_malicious_checkpoint_unrun(tmp_path, mm_checkpoint, payload, load):
    marker = tmp_path / 'marker'
    path = write_malicious(tmp_path, payload, 'zip', marker)
    with pytest.raises(UnsafeCheckpointError) as err:
        if load == 'load_checkpoint':
            mm_checkpoint.load_checkpoint(nn.Linear(2, 3), path)
        elif load == '_load_checkpoint':
            mm_checkpoint._load_checkpoint(path)
        else:
            mm_checkpoint.CheckpointLoader.load_checkpoint(path)
    assert_refused(err, path, payload)
    assert not marker.exists()


@requires_mmengine
def test_getattr_is_only_allowed_for_history_buffer_statistics(tmp_path):
    """HistoryBuffer pickles hold getattr(HistoryBuffer, 'min'); any other getattr is refused."""
    from mmengine.logging import HistoryBuffer
    for target, name in [(HistoryBuffer, '__init__'), (np.ndarray, 'tofile'), (argparse.Namespace, '__init__')]:
        path = save(dict(meta=Payload(getattr, target, name)), tmp_path / f'getattr-{name}.pth')
        with pytest.raises(UnsafeCheckpointError, match='Can only getattr HistoryBuffer'):
            safe_load(path)
    path = save(dict(meta=Payload(getattr, HistoryBuffer, 'mean')), tmp_path / 'getattr-mean.pth')
    assert safe_load(path)['meta'] is HistoryBuffer.mean


@requires_mmengine
@pytest.mark.parametrize('scheme', ['https', 's3', 'open-mmlab'])
def test_mmengine_remote_schemes_load_safely(tmp_path, monkeypatch, mm_checkpoint, scheme):
    """No network or object store: each scheme's transport is replaced by reading local files."""
    sources = {'good.pth': save(dict(state_dict=toy_state_dict(), meta=dict(s=np.float64(1))), tmp_path / 'good'),
               'evil.pth': write_malicious(tmp_path, 'posix.system', 'zip', tmp_path / 'marker')}
    if scheme == 'https':  # downloaded once into torch.hub's cache, like mmengine
        monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
        monkeypatch.setattr(torch.hub, 'download_url_to_file',
                            lambda url, dst, *args, **kwargs: os.link(sources[os.path.basename(url)], dst))
        uri = 'https://example.com/models/{}.pth'
    elif scheme == 's3':  # read into memory through mmengine's file backend
        backend = argparse.Namespace(get=lambda uri: Path(sources[os.path.basename(uri)]).read_bytes())
        monkeypatch.setattr('mmengine.fileio.get_file_backend', lambda *args, **kwargs: backend)
        uri = 's3://bucket/models/{}.pth'
    else:  # a model-zoo name that $MMENGINE_HOME/open_mmlab.json maps to a file there
        home = tmp_path / 'mmengine_home'
        home.mkdir()
        (home / 'open_mmlab.json').write_text('{"good": "good.pth", "evil": "evil.pth"}')
        for name, source in sources.items():
            os.link(source, home / name)
        monkeypatch.setenv('MMENGINE_HOME', str(home))
        uri = 'open-mmlab://{}'
    assert mm_checkpoint._load_checkpoint(uri.format('good'), map_location='cpu')['meta']['s'] == 1.0
    with pytest.raises(UnsafeCheckpointError, match='evil'):
        mm_checkpoint.load_checkpoint(nn.Linear(2, 3), uri.format('evil'))
    assert not (tmp_path / 'marker').exists()
    if scheme == 'https':
        assert os.path.isfile(tmp_path / 'torch_home' / 'hub' / 'checkpoints' / 'good.pth')


@requires_mmengine
def test_mmengine_missing_and_corrupt_files(tmp_path, mm_checkpoint):
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        mm_checkpoint.load_checkpoint(nn.Linear(2, 3), str(tmp_path / 'missing.pth'))
    corrupt = tmp_path / 'corrupt.pth'
    corrupt.write_bytes(saved_bytes('zip')[:100])
    with pytest.raises(CorruptCheckpointError, match='corrupt.pth'):
        mm_checkpoint.load_checkpoint(nn.Linear(2, 3), str(corrupt))


@requires_mmengine
def test_mmengine_loads_official_mambavision_checkpoint(tmp_path, mm_checkpoint):
    path = save(mambavision_style_checkpoint(), tmp_path / 'mambavision_tiny_1k.pth.tar')
    model = nn.Linear(2, 3)
    checkpoint = mm_checkpoint.load_checkpoint(model, path, strict=True)
    assert checkpoint['args'].model == 'mamba_vision_T'
    assert torch.equal(model.weight, checkpoint['state_dict']['weight'])


# A real Runner writes a resume checkpoint; another Runner resumes from it, a third loads it.


class ToyDataset(torch.utils.data.Dataset):
    metainfo = dict(classes=('background', 'thing'), palette=[(0, 0, 0), (255, 0, 0)])

    def __len__(self):
        return 8

    def __getitem__(self, index):
        inputs = torch.randn(2, generator=torch.Generator().manual_seed(index))
        return dict(inputs=inputs, labels=inputs.sum(0, keepdim=True))


def make_runner(work_dir, max_iters, custom_hooks=(dict(type='EMAHook'), ), **kwargs):
    """A Runner training a one-layer model; EMAHook adds ``ema_state_dict`` to its checkpoints."""
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class ToyModel(BaseModel):

        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 1)

        def forward(self, inputs, labels, mode='tensor'):
            outputs = self.linear(inputs)
            return dict(loss=((outputs - labels)**2).mean()) if mode == 'loss' else outputs

    return Runner(
        model=ToyModel(),
        work_dir=str(work_dir),
        experiment_name=f'{work_dir.parent.name}-{work_dir.name}',  # instance names must be unique per process
        train_dataloader=dict(dataset=ToyDataset(), sampler=dict(type='DefaultSampler', shuffle=False),
                              batch_size=2, num_workers=0, collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
        param_scheduler=dict(type='MultiStepLR', by_epoch=False, milestones=[2]),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1, by_epoch=False)),
        custom_hooks=list(custom_hooks),
        default_scope='mmengine',
        **kwargs)


@requires_mmengine
def test_runner_resumes_from_its_own_checkpoint(tmp_path, mm_checkpoint):
    first = make_runner(tmp_path / 'first', max_iters=3)
    first.train()
    path = str(tmp_path / 'first' / 'iter_3.pth')
    assert refused_by_plain_torch_load(path)  # numpy values and HistoryBuffer: the allow-list is what loads it
    assert mm_checkpoint.CheckpointLoader._get_checkpoint_loader(path) is safe_load_module.load_from_local

    second = make_runner(tmp_path / 'second', max_iters=3, resume=True, load_from=path)
    second.train()  # resumes at iteration 3 of 3: nothing left to train
    assert second.iter == 3
    assert 'train/loss' in first.message_hub.log_scalars
    for key, expected in first.message_hub.log_scalars.items():  # the message hub's history is back
        assert_nested_equal(second.message_hub.get_scalar(key), expected)
    for name, param in second.model.state_dict().items():
        assert torch.equal(param, first.model.state_dict()[name])
    assert second.optim_wrapper.get_lr() == first.optim_wrapper.get_lr()

    third = make_runner(tmp_path / 'third', max_iters=3, custom_hooks=())  # EMAHook cannot load before running
    checkpoint = third.load_checkpoint(path)
    assert checkpoint['meta']['dataset_meta'] == ToyDataset.metainfo and 'ema_state_dict' in checkpoint
    assert torch.equal(third.model.linear.weight, checkpoint['state_dict']['linear.weight'])
