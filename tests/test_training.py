"""Real training through tools/train.py: the loss goes down, resume continues, two gloo processes, tools/test.py.

A derived demo config with a tiny MambaVision keeps each run to seconds on a CPU.
"""
import json
import os
import os.path as osp
import re
import subprocess
import sys

import pytest

pytest.importorskip('mmdet', reason='the OpenMMLab stack is installed by tools/install.sh')

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO_CONFIG = osp.join(REPO, 'configs', 'demo', 'mask_rcnn_mambavision_t_demo.py')

CONFIG_TEMPLATE = '''
_base_ = {base!r}
data_root = {data_root!r}
model = dict(
    backbone=dict(arch=dict(_delete_=True, depths=(1, 1, 2, 2), dim=16, in_dim=8, num_heads=(1, 2, 2, 4),
                            window_size=(8, 8, 8, 4))),
    neck=dict(in_channels=[16, 32, 64, 128]))
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root))
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
train_cfg = dict(max_epochs={epochs}, val_interval={val_interval})
optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=5)]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1, max_keep_ckpts=3))
randomness = dict(seed=0)
'''


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    from mmmv.datasets import generate_demo_coco
    root = tmp_path_factory.mktemp('demo_coco')
    generate_demo_coco(str(root), num_train=8, num_val=4, image_size=(96, 96), seed=0)
    return str(root) + '/'


def write_config(tmp_path, data_root, epochs, val_interval=100):
    path = tmp_path / 'tiny_demo.py'
    path.write_text(CONFIG_TEMPLATE.format(base=DEMO_CONFIG, data_root=data_root, epochs=epochs,
                                           val_interval=val_interval))
    return str(path)


def run(*args, timeout=900):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1')
    proc = subprocess.run([*args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-5000:])
    return proc.stdout + proc.stderr


def scalars(work_dir):
    """The per-iteration training records mmengine writes to vis_data/scalars.json."""
    records = []
    for run_dir in sorted(os.listdir(work_dir)):
        path = osp.join(work_dir, run_dir, 'vis_data', 'scalars.json')
        if osp.isfile(path):
            with open(path) as f:
                records += [json.loads(line) for line in f if '"loss"' in line]
    return records


@pytest.fixture(scope='module')
def trained(tmp_path_factory, data_root):
    """Five epochs of the tiny demo model (20 iterations); the config allows six, for the resume test."""
    tmp_path = tmp_path_factory.mktemp('trained')
    work_dir = str(tmp_path / 'work')
    config = write_config(tmp_path, data_root, epochs=6)
    run(sys.executable, 'tools/train.py', config, '--work-dir', work_dir, '--cfg-options', 'train_cfg.max_epochs=5')
    return config, work_dir


def test_loss_goes_down(trained):
    _, work_dir = trained
    losses = [r['loss'] for r in scalars(work_dir)]
    assert len(losses) == 20  # 8 images / batch 2 = 4 iterations per epoch, 5 epochs
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.8 * first, losses


def test_test_tool_evaluates_draws_and_dumps(trained, tmp_path):
    config, work_dir = trained
    # score_thr 0: a 20-iteration model is unsure of everything; the tool, not the model, is under test here
    log = run(sys.executable, 'tools/test.py', config, osp.join(work_dir, 'epoch_5.pth'), '--work-dir', str(tmp_path),
              '--show-dir', 'pictures', '--out', str(tmp_path / 'preds.pkl'),
              '--cfg-options', 'model.test_cfg.rcnn.score_thr=0.0')
    assert re.search(r'coco/bbox_mAP: \d', log) and re.search(r'coco/segm_mAP: \d', log), log[-3000:]
    pictures = [osp.join(root, f) for root, _, files in os.walk(tmp_path) if 'pictures' in root for f in files]
    assert len(pictures) == 4 and all(p.endswith(('.png', '.jpg')) for p in pictures)
    assert osp.getsize(tmp_path / 'preds.pkl') > 0


def test_resume_continues_from_the_latest_checkpoint(trained):
    """--resume without a path takes the work dir's latest checkpoint and continues at epoch 6 with its state."""
    config, work_dir = trained
    log = run(sys.executable, 'tools/train.py', config, '--work-dir', work_dir, '--resume')
    assert re.search(r'resumed epoch: 5, iter: 20', log), log[-3000:]
    assert [r['iter'] for r in scalars(work_dir)][-4:] == [21, 22, 23, 24]
    assert osp.isfile(osp.join(work_dir, 'epoch_6.pth'))


def test_two_gloo_processes_through_dist_train(tmp_path, data_root):
    work_dir = str(tmp_path / 'work')
    config = write_config(tmp_path, data_root, epochs=1)
    env_port = str(29500 + os.getpid() % 1000)
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1', PORT=env_port)
    proc = subprocess.run(['bash', 'tools/dist_train.sh', config, '2', '--work-dir', work_dir], capture_output=True,
                          text=True, timeout=900, cwd=REPO, env=env)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    assert 'Distributed training: True' in log and 'GPU number: 2' in log and "'backend': 'gloo'" in log
    # 8 images over 2 processes x batch 2: 2 iterations per epoch
    assert [r['iter'] for r in scalars(work_dir)] == [1, 2]
    assert osp.isfile(osp.join(work_dir, 'epoch_1.pth'))


@pytest.mark.parametrize('ending', ['returns', 'raises'])
def test_run_tool_destroys_the_process_group_it_leaves(tmp_path, ending):
    """The tools' `run_tool` destroys a default process group left initialised by the run (as mmengine's Runner
    leaves it), whether the tool returns or raises, so that gloo's threads do not outlive the interpreter."""
    import torch.distributed as dist
    from mmmv.engine.toolbox import run_tool

    def main():
        dist.init_process_group('gloo', init_method=f'file://{tmp_path / "store"}', rank=0, world_size=1)
        assert dist.is_initialized()
        if ending == 'raises':
            raise RuntimeError('the run failed')
        return 0

    if ending == 'raises':
        with pytest.raises(RuntimeError, match='the run failed'):
            run_tool(main)
    else:
        assert run_tool(main) == 0
    assert not dist.is_initialized()


TOOL_SCRIPT = '''
import atexit, logging
import torch.distributed as dist
from mmmv.engine.toolbox import exit_tool


def main():
    if {distributed}:
        dist.init_process_group('gloo', init_method={store!r}, rank=0, world_size=1)
    atexit.register(lambda: print('teardown ran', flush=True))
    logger = logging.getLogger('tool')
    logger.addHandler(logging.FileHandler({log!r}))
    logger.warning('logged')
    print('printed', end='')  # no newline: stdout to a pipe is block-buffered
    return 3


exit_tool(main)
'''


@pytest.mark.parametrize('distributed', [True, False], ids=['process-group', 'single-process'])
def test_exit_tool_skips_the_teardown_after_a_distributed_run(tmp_path, distributed):
    """After a run that left a process group, the tools end without the interpreter's teardown (where gloo's threads
    aborted finished two-process runs), keeping `main`'s status and what it printed and logged; otherwise they exit
    as ``sys.exit`` does, teardown included."""
    script = tmp_path / 'tool.py'
    script.write_text(TOOL_SCRIPT.format(distributed=distributed, store=f'file://{tmp_path / "store"}',
                                         log=str(tmp_path / 'log.txt')))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert proc.stdout.startswith('printed')
    assert ('teardown ran' in proc.stdout) is not distributed
    assert (tmp_path / 'log.txt').read_text() == 'logged\n'
