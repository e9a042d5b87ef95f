"""The VM-UNet demo end to end through tools/train.py and tools/test.py: the generated lesion data is written on first
use, the loss goes down, the pooled metrics are reported and beat chance, and pictures of the predicted masks are saved.
"""
import json
import os
import os.path as osp
import re
import subprocess
import sys

import pytest

pytest.importorskip('mmseg', reason='the OpenMMLab stack is installed by tools/install.sh')

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(REPO, 'configs', 'demo', 'vmunet_demo.py')
EPOCHS = 8  # of the demo's 15: 80 iterations, about half a minute on 2 cores
NUM_VAL = 12


def run(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=REPO, MMMV_SCAN_BACKEND='torch')
    proc = subprocess.run([*args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-5000:])
    return proc.stdout + proc.stderr


def files_under(root, part):
    return [osp.join(folder, name) for folder, _, names in os.walk(root) if part in folder for name in names]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp('vmunet_demo')
    data_root, work_dir = str(tmp_path / 'data') + '/', str(tmp_path / 'work')
    log = run(sys.executable, 'tools/train.py', CONFIG, '--work-dir', work_dir, '--cfg-options',
              f'train_dataloader.dataset.data_root={data_root}', f'val_dataloader.dataset.data_root={data_root}',
              f'test_dataloader.dataset.data_root={data_root}', f'train_cfg.max_epochs={EPOCHS}',
              f'train_cfg.val_interval={EPOCHS}', f'default_hooks.checkpoint.interval={EPOCHS}')
    return data_root, work_dir, log


def test_data_is_generated_on_first_use(trained):
    data_root, _, _ = trained
    assert len(os.listdir(osp.join(data_root, 'img_dir', 'train'))) == 40
    assert len(os.listdir(osp.join(data_root, 'ann_dir', 'val'))) == NUM_VAL


def test_loss_goes_down_and_metrics_are_reported(trained):
    _, work_dir, log = trained
    records = []
    for path in files_under(work_dir, 'vis_data'):
        if path.endswith('scalars.json'):
            with open(path) as f:
                records += [json.loads(line) for line in f]
    losses = [r['loss'] for r in records if 'loss' in r]
    assert len(losses) == EPOCHS * 2  # logged every 5 of the 10 iterations of an epoch
    assert sum(losses[-2:]) < 0.7 * sum(losses[:2]), losses
    metrics = [r for r in records if 'DSC' in r]
    assert len(metrics) == 1 and set(metrics[0]) >= {'DSC', 'mIoU', 'accuracy', 'sensitivity', 'specificity'}
    # lesions cover about 12 % of the pixels: predicting all background scores DSC 0, all lesion about 21
    assert metrics[0]['DSC'] > 60, metrics
    assert re.search(r'pooled over 49152 pixels of 12 images', log)


def test_pictures_of_predicted_masks(trained):
    _, work_dir, _ = trained
    pictures = [p for p in files_under(work_dir, 'vis_image') if p.endswith('.png')]
    assert len(pictures) == NUM_VAL
    from PIL import Image
    assert Image.open(pictures[0]).size == (128, 64)  # ground truth and prediction side by side


def test_test_tool_evaluates_and_draws(trained, tmp_path):
    data_root, work_dir, _ = trained
    log = run(sys.executable, 'tools/test.py', CONFIG, osp.join(work_dir, f'epoch_{EPOCHS}.pth'), '--work-dir',
              str(tmp_path), '--show-dir', 'pictures', '--cfg-options', f'test_dataloader.dataset.data_root={data_root}')
    assert re.search(r'DSC: \d+\.\d+\s+mIoU: \d+\.\d+', log), log[-3000:]
    assert len([p for p in files_under(tmp_path, 'pictures') if p.endswith('.png')]) == NUM_VAL
