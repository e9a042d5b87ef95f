"""The first errors a new user meets (mmmv/engine/preflight.py, tools/train.py, tools/test.py): one line on stderr
naming the missing file and the fix, exit status 2, no traceback, before any model or dataset is built."""
import os
import os.path as osp
import subprocess
import sys

import pytest

pytest.importorskip('mmdet', reason='the OpenMMLab stack is installed by tools/install.sh')
from mmengine.config import Config  # noqa: E402

from mmmv.engine import cli, preflight  # noqa: E402
from mmmv.engine.toolbox import SetupError  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = osp.join(REPO, 'configs')
NO_ACCELERATOR = not preflight.amp_device_available()


def run_tool(tool, args, cwd, prelude=''):
    """Run tools/TOOL with `args` in `cwd` (relative data / checkpoint paths resolve there); the one error line."""
    code = (prelude + 'import runpy, sys\n'
            f'sys.argv = [{tool!r}] + {list(args)!r}\n'
            f'runpy.run_path({osp.join(REPO, "tools", tool)!r}, run_name="__main__")\n')
    proc = subprocess.run([sys.executable, '-c', code], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, 'PYTHONPATH': REPO})
    assert 'Traceback' not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    return proc.returncode, lines[-1] if lines else ''


@pytest.mark.slow
def test_train_without_the_pretrained_checkpoint_names_it_and_the_converter(tmp_path):
    code, line = run_tool('train.py', [osp.join(CONFIGS, 'mask_rcnn_mambavision_t.py')], tmp_path)
    assert code == 2
    assert line.startswith("error: pretrained checkpoint 'checkpoints/mambavision_t_in1k.pth' "
                           '(model.backbone.init_cfg) does not exist')
    assert 'tools/model_converters/mambavision2mmmv.py' in line and 'docs/converting_weights.md' in line
    assert '--cfg-options model.backbone.init_cfg=None' in line


@pytest.mark.slow
def test_train_without_coco_names_the_folder_the_docs_and_the_override(tmp_path):
    code, line = run_tool('train.py', [osp.join(CONFIGS, 'mask_rcnn_mambavision_t.py'), '--cfg-options',
                                       'model.backbone.init_cfg=None'], tmp_path)
    assert code == 2
    assert line.startswith("error: dataset folder 'data/coco/' (train_dataloader.dataset (CocoDataset)) does not "
                           'exist; see docs/model_zoo.md#datasets (COCO 2017)')
    assert '--cfg-options train_dataloader.dataset.data_root=' in line


@pytest.mark.slow
def test_test_tool_without_ade20k_and_with_a_missing_checkpoint(tmp_path):
    config = osp.join(CONFIGS, 'upernet_mambavision_t_ade20k.py')
    code, line = run_tool('test.py', [config, 'nowhere.pth'], tmp_path)
    assert code == 2 and line.startswith("error: checkpoint 'nowhere.pth' does not exist")
    (tmp_path / 'weights.pth').write_bytes(b'')
    code, line = run_tool('test.py', [config, 'weights.pth'], tmp_path)
    assert code == 2
    assert line.startswith("error: dataset folder 'data/ade/ADEChallengeData2016' (test_dataloader.dataset "
                           '(ADE20KDataset)) does not exist; see docs/model_zoo.md#datasets (ADE20K)')


@pytest.mark.slow
def test_classification_without_torchvision_names_the_matching_build(tmp_path):
    broken = ('import importlib.abc, sys\n'
              'class Broken(importlib.abc.MetaPathFinder):\n'
              '    def find_spec(self, name, path, target=None):\n'
              '        if name.split(".")[0] == "torchvision":\n'
              '            raise RuntimeError("operator torchvision::nms does not exist (simulated)")\n'
              'sys.meta_path.insert(0, Broken())\n')
    code, line = run_tool('train.py', [osp.join(CONFIGS, 'mambavision_t_in1k.py')], tmp_path, prelude=broken)
    assert code == 2
    assert line.startswith('error: mmpretrain imports torchvision, but torchvision fails to import (RuntimeError: '
                           'operator torchvision::nms does not exist (simulated)); fix: pip install --no-deps '
                           '"torchvision==0.')


@pytest.mark.skipif(not NO_ACCELERATOR, reason='the AMP refusal is for machines without a GPU')
def test_amp_on_a_machine_without_gpu_is_refused_and_no_amp_trains_in_float32(tmp_path):
    cfg = Config.fromfile(osp.join(CONFIGS, 'cascade_mask_rcnn_mambavision_t_3x_coco.py'))
    with pytest.raises(SetupError, match=r'mixed precision .*add --no-amp to train in float32'):
        preflight.check_amp(cfg, amp_flag=False)
    args = cli.parse_train_args(['x.py', '--no-amp'])
    cli._apply_train_options(cfg, args)
    assert cfg.optim_wrapper.type == 'OptimWrapper' and 'loss_scale' not in cfg.optim_wrapper
    preflight.check_amp(cfg, amp_flag=False)  # float32 now: nothing to refuse

    plain = Config.fromfile(osp.join(CONFIGS, 'mask_rcnn_mambavision_t.py'))
    cli._apply_train_options(plain, cli.parse_train_args(['x.py', '--amp']))
    with pytest.raises(SetupError, match=r"--amp needs a GPU: mmengine's AmpOptimWrapper runs on CUDA"):
        preflight.check_amp(plain, amp_flag=True)


def test_amp_and_no_amp_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        cli.parse_train_args(['x.py', '--amp', '--no-amp'])
    assert 'not allowed with argument' in capsys.readouterr().err


def _coco_config(root: str, **dataset) -> Config:
    def loader(split):
        return dict(dataset=dict(type='CocoDataset', data_root=root, ann_file=f'annotations/{split}.json',
                                 data_prefix=dict(img=f'{split}/'), **dataset))
    return Config(dict(train_dataloader=loader('train'), val_dataloader=loader('val'), val_cfg=dict(),
                       val_evaluator=dict(type='CocoMetric', ann_file=osp.join(root, 'annotations/val.json')),
                       test_dataloader=loader('val'), test_evaluator=dict(type='CocoMetric')))


def _make_coco(root, splits=('train', 'val')):
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    for split in splits:
        os.makedirs(osp.join(root, split), exist_ok=True)
        open(osp.join(root, 'annotations', f'{split}.json'), 'w').close()


def test_data_check_passes_on_a_complete_layout_and_names_each_missing_piece(tmp_path):
    root = str(tmp_path / 'coco') + '/'
    _make_coco(root)
    preflight.check_data(_coco_config(root), 'train')
    preflight.check_data(_coco_config(root), 'test')

    os.remove(osp.join(root, 'annotations', 'train.json'))
    with pytest.raises(SetupError, match=r"dataset file '.*coco/annotations/train.json' \(train_dataloader"):
        preflight.check_data(_coco_config(root), 'train')
    preflight.check_data(_coco_config(root), 'test')  # testing reads only the val split

    _make_coco(root)
    os.rmdir(osp.join(root, 'val'))
    with pytest.raises(SetupError, match=r"dataset folder '.*coco/val/' \(val_dataloader"):
        preflight.check_data(_coco_config(root), 'train')
    cfg = _coco_config(root)
    cfg.val_cfg = None  # no validation during training: the val split is not needed
    preflight.check_data(cfg, 'train')


def test_data_check_follows_wrappers_and_the_evaluator(tmp_path):
    root = str(tmp_path / 'coco') + '/'
    _make_coco(root)
    cfg = _coco_config(root)
    inner = cfg.train_dataloader.dataset
    cfg.train_dataloader.dataset = dict(type='RepeatDataset', times=2,
                                        dataset=dict(type='ConcatDataset', datasets=[inner, dict(inner, ann_file='x.json')]))
    with pytest.raises(SetupError, match=r"'.*coco/x.json' \(train_dataloader"):
        preflight.check_data(cfg, 'train')

    cfg = _coco_config(root)
    cfg.val_evaluator.ann_file = osp.join(root, 'annotations', 'missing.json')
    with pytest.raises(SetupError, match=r"dataset file '.*missing.json' \(val_evaluator\)"):
        preflight.check_data(cfg, 'train')


def test_data_check_skips_remote_and_self_writing_datasets_and_helps_with_the_demo(tmp_path):
    cfg = _coco_config('s3://bucket/coco/')
    preflight.check_data(cfg, 'train')
    lesions = Config(dict(train_dataloader=dict(dataset=dict(type='DemoLesionDataset',
                                                             data_root=str(tmp_path / 'none')))))
    preflight.check_data(lesions, 'train')
    demo = _coco_config('data/demo_coco/')
    with pytest.raises(SetupError, match=r'docs/getting_started.md#2-the-demo: python tools/misc/make_demo_data.py'):
        preflight.check_data(demo, 'train')


def test_pretrained_check_reads_every_init_cfg_and_skips_remote_ones(tmp_path):
    present = tmp_path / 'present.pth'
    present.write_bytes(b'')
    cfg = Config(dict(model=dict(
        type='EncoderDecoder',
        backbone=dict(type='VSSEncoder', init_cfg=dict(type='Pretrained', checkpoint=str(present))),
        decode_head=dict(type='VMUNetHead', init_cfg=[dict(type='Normal'),
                                                      dict(type='Pretrained', checkpoint='torchvision://x'),
                                                      dict(type='Pretrained', checkpoint='gone.pth')]))))
    with pytest.raises(SetupError, match=r"pretrained checkpoint 'gone.pth' \(model.decode_head.init_cfg\) does not "
                                         r'exist; download or convert it'):
        preflight.check_pretrained(cfg)
    cfg.model.decode_head.init_cfg = None
    preflight.check_pretrained(cfg)
    cfg.model.backbone.init_cfg.checkpoint = 'missing.pth'
    with pytest.raises(SetupError, match=r'tools/model_converters/vmunet2mmmv.py OFFICIAL.pth missing.pth'):
        preflight.check_pretrained(cfg)


def test_missing_config_and_config_of_no_toolbox(tmp_path):
    args = cli.parse_train_args([str(tmp_path / 'nothing.py')])
    with pytest.raises(SetupError, match=r"config file '.*nothing.py' does not exist"):
        cli.load_config(args)
    plain = tmp_path / 'plain.py'
    plain.write_text('model = dict(type="X")\n')
    with pytest.raises(SetupError, match=r"default_scope is None; .* inherit a toolbox base"):
        cli.load_config(cli.parse_train_args([str(plain)]))
