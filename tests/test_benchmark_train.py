"""TrainBenchmarkHook in a real mmengine run, and the pieces of tools/analysis/benchmark_train.py (generated data and
the derived config); the script's full runs are GPU measurements (docs/model_zoo.md)."""
import json
import os.path as osp

import numpy as np
import pytest
import torch
import torch.nn as nn

mmengine = pytest.importorskip('mmengine', reason='the OpenMMLab stack is installed by tools/install.sh')
from mmengine.config import Config  # noqa: E402
from mmengine.model import BaseModel  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

import mmmv  # noqa: E402,F401  (registers the hook)
from mmmv.engine.hooks import TrainBenchmarkHook, count_sync_batchnorm  # noqa: E402
from tool_loading import load_tool  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
benchmark_train = load_tool('analysis/benchmark_train.py')


class ToyModel(BaseModel):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.bn = nn.SyncBatchNorm(1)

    def forward(self, inputs, labels=None, mode='loss'):
        return dict(loss=((self.linear(inputs) - labels) ** 2).mean())


class ToyData(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, index):
        return dict(inputs=torch.full((4,), float(index)), labels=torch.tensor([1.0]))


def test_hook_times_iterations_after_warmup_and_writes_its_report(tmp_path, capsys):
    runner = Runner(
        model=ToyModel(), work_dir=str(tmp_path),
        train_dataloader=dict(dataset=ToyData(), sampler=dict(type='DefaultSampler', shuffle=False), batch_size=2,
                              collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=False, max_iters=7),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        custom_hooks=[dict(type='TrainBenchmarkHook', warmup=3)],
        default_hooks=dict(checkpoint=None), default_scope='mmengine')
    runner.train()
    with open(tmp_path / 'benchmark.json') as f:
        report = json.load(f)
    assert report['iterations_run'] == 7 and report['world_size'] == 1 and report['warmup'] == 3
    assert report['ranks'][0]['iterations_timed'] == 4 and report['median_iter_s'] > 0
    # the first iteration (compilation) and the warm-up: their times, and a log line per warm-up iteration
    assert 0 < report['first_iter_s'] <= report['warmup_s']
    logged = capsys.readouterr().out
    assert [f'warm-up iteration {i} of 3' in logged for i in (1, 2, 3, 4)] == [True, True, True, False]
    # one process: mmengine turns SyncBN into BN, and the report says so
    assert report['sync_bn_layers'] == 0


def test_sync_batchnorm_count_and_bad_warmup():
    model = nn.Sequential(nn.SyncBatchNorm(3), nn.BatchNorm2d(3), nn.Sequential(nn.SyncBatchNorm(2)))
    assert count_sync_batchnorm(model) == 2
    with pytest.raises(ValueError, match='warmup'):
        TrainBenchmarkHook(warmup=-1)


def test_generated_ade_layout(tmp_path):
    overrides = benchmark_train.make_ade(str(tmp_path / 'ade'), 3, (48, 64))
    labels = [np.array(__import__('PIL.Image', fromlist=['Image']).open(p))
              for p in sorted((tmp_path / 'ade' / 'annotations' / 'training').glob('*.png'))]
    assert len(labels) == 3 and labels[0].shape == (48, 64)
    values = np.unique(np.concatenate([x.ravel() for x in labels]))
    assert values.min() >= 0 and values.max() <= 150 and len(values) > 3
    assert len(list((tmp_path / 'ade' / 'images' / 'training').glob('*.jpg'))) == 3
    assert overrides['data_prefix'] == dict(img_path='images/training', seg_map_path='annotations/training')


def test_derived_config_replaces_data_schedule_and_evaluation(tmp_path):
    path = tmp_path / 'bench.py'
    config = osp.join(REPO, 'configs', 'upernet_mambavision_t_ade20k.py')
    benchmark_train.write_config(str(path), config, dict(data_root='/data/x'), iters=30, warmup=5)
    cfg = Config.fromfile(str(path))
    assert cfg.train_cfg == dict(type='IterBasedTrainLoop', max_iters=30, val_interval=10 ** 9)
    assert cfg.val_cfg is None and cfg.val_dataloader is None and cfg.test_evaluator is None
    assert cfg.train_dataloader.dataset.data_root == '/data/x'
    assert cfg.model.backbone.init_cfg is None and cfg.model.backbone.arch == 'T'
    assert cfg.custom_hooks == [dict(type='TrainBenchmarkHook', warmup=5)]
    # the recipe itself is untouched
    assert cfg.optim_wrapper.optimizer.lr == 5e-5 and cfg.model.backbone.window_size == (8, 8, 64, 32)


def test_generated_imagenet_layout(tmp_path):
    """mmpretrain configs: ImageNet layout, every listed file present with its class folder's label."""
    overrides = benchmark_train.make_imagenet(str(tmp_path / 'in'), 5, 2)
    assert overrides == dict(data_root=str(tmp_path / 'in'), ann_file='meta/train.txt', data_prefix='train')
    lines = (tmp_path / 'in' / 'meta' / 'train.txt').read_text().split('\n')
    entries = [line.split() for line in lines if line]
    assert len(entries) == 5 and {label for _, label in entries} == {'0', '1'}
    for name, label in entries:
        image = np.array(__import__('PIL.Image', fromlist=['Image']).open(tmp_path / 'in' / 'train' / name))
        assert image.shape == (*benchmark_train.IMAGENET_SIZE, 3)
        assert name.startswith(f'n{int(label):08d}/')


def test_derived_config_for_a_classifier(tmp_path):
    path = tmp_path / 'bench.py'
    config = osp.join(REPO, 'configs', 'mambavision_t_in1k.py')
    benchmark_train.write_config(str(path), config, dict(data_root='/data/in', ann_file='meta/train.txt',
                                                         data_prefix='train'), iters=30, warmup=5)
    cfg = Config.fromfile(str(path))
    dataset = cfg.train_dataloader.dataset
    assert (dataset.type, dataset.data_root, dataset.ann_file, dataset.split) == ('ImageNet', '/data/in',
                                                                                  'meta/train.txt', 'train')
    assert cfg.default_scope == 'mmpretrain' and cfg.custom_hooks == [dict(type='TrainBenchmarkHook', warmup=5)]
