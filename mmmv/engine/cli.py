"""The ``tools/train.py`` / ``tools/test.py`` command lines: mmdetection 3.3's CLI for every toolbox.

The toolbox is told by the config's ``default_scope`` ('mmdet', 'mmseg' or 'mmpretrain'); the only toolbox-specific
parts are how predictions are drawn (``--show``, ``--show-dir``) and dumped (``--out``).
"""
import argparse
import os
import os.path as osp

from . import preflight
from .toolbox import TOOLBOXES, SetupError

# AmpOptimWrapper arguments that OptimWrapper does not take
AMP_ONLY_KEYS = ('loss_scale', 'dtype', 'use_fsdp')


def _common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--work-dir', help='the folder for logs and checkpoints (default: ./work_dirs/CONFIG_NAME)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=_dict_action(),
        help='override config entries, e.g. train_dataloader.batch_size=4 "model.backbone.arch=\'S\'"')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher (tools/dist_train.sh uses pytorch, tools/slurm_train.sh slurm)')
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK instead
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0, help=argparse.SUPPRESS)


def _dict_action():
    from mmengine.config import DictAction
    return DictAction


def parse_train_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a model from an OpenMMLab config (mmdet, mmseg, mmpretrain)')
    parser.add_argument('config', help='config file, e.g. configs/mask_rcnn_mambavision_t.py')
    amp = parser.add_mutually_exclusive_group()
    amp.add_argument('--amp', action='store_true', help='mixed-precision training (AmpOptimWrapper; needs a GPU)')
    amp.add_argument('--no-amp', action='store_true',
                     help='float32 training of a config that uses AmpOptimWrapper (e.g. on a CPU)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate by the real batch size / auto_scale_lr.base_batch_size')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from CKPT, or from the latest checkpoint in the work dir if no path is given')
    _common_args(parser)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def parse_test_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test a checkpoint with an OpenMMLab config')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file (loaded safely: no code in it runs)')
    parser.add_argument('--out', help='dump the raw predictions to this pickle file')
    parser.add_argument('--show', action='store_true', help='show predictions in a window')
    parser.add_argument('--show-dir', help='save pictures of the predictions in WORK_DIR/TIMESTAMP/SHOW_DIR')
    parser.add_argument('--wait-time', type=float, default=2, help='seconds each shown picture stays up')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation (needs tta_model/tta_pipeline)')
    _common_args(parser)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def load_config(args: argparse.Namespace):
    """Read the config, apply the CLI options and pick the work dir; fails clearly on a config of no toolbox."""
    import mmmv  # noqa: F401  (registers mmmv's models, makes mmengine's checkpoint loading safe on torch >= 2.6)
    from mmengine.config import Config

    if not osp.isfile(args.config):
        raise SetupError(f'config file {args.config!r} does not exist (the configs are in configs/, docs/configs.md)')
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    scope = cfg.get('default_scope')
    if scope not in TOOLBOXES:
        raise SetupError(f'{args.config}: default_scope is {scope!r}; tools/train.py and tools/test.py need one of '
                         f'{TOOLBOXES}: inherit a toolbox base such as "mmdet::_base_/default_runtime.py"')
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg


def load_tool_config(config: str, cfg_options=None):
    """`load_config` for the tools that run a model without a Runner (no launcher, no work dir), with the backbones'
    ``compile`` option switched off: FLOPs counting and ONNX export trace the eager model themselves, and inference
    on a few pictures would spend its time compiling (docs/compile.md)."""
    cfg = load_config(argparse.Namespace(config=config, cfg_options=cfg_options, launcher='none', work_dir=None))
    if switch_off_compile(cfg.get('model')):
        print('[mmmv] the backbone compile option is off in this tool: it runs the model eagerly')
    return cfg


def switch_off_compile(model_cfg) -> bool:
    """Set every ``compile`` entry of a model config (the mmmv backbones' option) to False; whether one was on."""
    found = False
    if isinstance(model_cfg, dict):
        for key, value in model_cfg.items():
            if key == 'compile' and value not in (None, False):
                model_cfg[key] = False
                found = True
            else:
                found = switch_off_compile(value) or found
    elif isinstance(model_cfg, (list, tuple)):
        for item in model_cfg:
            found = switch_off_compile(item) or found
    return found


def _apply_train_options(cfg, args) -> None:
    if args.amp:
        wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if wrapper == 'AmpOptimWrapper':
            print('[mmmv] AMP is already enabled in the config')
        elif wrapper != 'OptimWrapper':
            raise SetupError(f'--amp needs optim_wrapper.type "OptimWrapper" or "AmpOptimWrapper", got {wrapper!r}')
        else:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if getattr(args, 'no_amp', False) and cfg.optim_wrapper.get('type') == 'AmpOptimWrapper':
        cfg.optim_wrapper.type = 'OptimWrapper'
        for key in AMP_ONLY_KEYS:
            cfg.optim_wrapper.pop(key, None)
    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise SetupError('--auto-scale-lr needs auto_scale_lr = dict(base_batch_size=N) in the config')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        if not osp.isfile(args.resume):
            raise SetupError(f'--resume: checkpoint {args.resume!r} does not exist (without a path, --resume takes '
                             'the latest checkpoint of the work dir)')
        cfg.resume = True
        cfg.load_from = args.resume


def _apply_show_options(cfg, args) -> None:
    """--show: the toolbox's visualisation hook shows each picture in a window. --show-dir: mmmv's
    PredictionPicturesHook saves them to WORK_DIR/TIMESTAMP/SHOW_DIR/NAME.png in every toolbox and prints the folder
    (mmmv/engine/picture_hook.py); the toolbox's hook then draws nothing more, unless it also shows."""
    hooks = cfg.default_hooks
    if 'visualization' not in hooks:
        raise SetupError('--show/--show-dir need a "visualization" entry in default_hooks (the toolbox\'s '
                         'default_runtime.py has one)')
    hook = hooks.visualization
    scope = cfg.default_scope
    hook['enable' if scope == 'mmpretrain' else 'draw'] = bool(args.show)
    if args.show:
        hook.show = True
        hook.wait_time = args.wait_time
    if args.show_dir:
        draw_args = dict(pred_score_thr=hook.get('score_thr', 0.3)) if scope == 'mmdet' else {}
        cfg.custom_hooks = [*cfg.get('custom_hooks', []),
                            dict(type='PredictionPicturesHook', out_dir=args.show_dir, draw_args=draw_args)]


def _apply_tta(cfg) -> None:
    if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
        raise SetupError('--tta needs tta_model and tta_pipeline in the config')
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model
    for loader in ('test_dataloader',):
        dataset = cfg[loader].dataset
        while 'dataset' in dataset:
            dataset = dataset.dataset
        dataset.pipeline = cfg.tta_pipeline


def _dump_metric(scope: str, out: str):
    if not out.endswith(('.pkl', '.pickle')):
        raise SetupError(f'--out must end with .pkl or .pickle, got {out!r}')
    if scope == 'mmdet':
        from mmdet.evaluation import DumpDetResults
        return DumpDetResults(out_file_path=out)
    from mmengine.evaluator import DumpResults
    return DumpResults(out_file_path=out)


def _setup_cpu_distributed(cfg) -> None:
    """Many CPU processes (torchrun without CUDA, e.g. CI): gloo, and DDP without device ids.

    mmengine 0.10 assumes CUDA for ``--launcher pytorch`` (it calls ``torch.cuda.set_device`` and defaults to NCCL).
    The Runner does not initialise a process group that already exists, so one is created here with gloo.
    """
    import torch
    import torch.distributed as dist
    if cfg.launcher == 'none' or torch.cuda.is_available():
        return
    if cfg.launcher != 'pytorch':
        raise SetupError(f'--launcher {cfg.launcher} needs CUDA; on CPU use --launcher pytorch (tools/dist_train.sh)')
    cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
    wrapper = cfg.get('model_wrapper_cfg') or dict(type='MMDistributedDataParallel', broadcast_buffers=False,
                                                    find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')


def build_runner(args: argparse.Namespace, mode: str):
    """The mmengine Runner for ``mode`` 'train' or 'test', configured from the command line."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    cfg = load_config(args)
    if mode == 'train':
        _apply_train_options(cfg, args)
    else:
        if not osp.isfile(args.checkpoint):
            raise SetupError(f'checkpoint {args.checkpoint!r} does not exist; convert an official one with '
                             'tools/model_converters/ (docs/converting_weights.md)')
        cfg.load_from = args.checkpoint
        if args.show or args.show_dir:
            _apply_show_options(cfg, args)
        if args.tta:
            _apply_tta(cfg)
    preflight.run_all(cfg, mode, amp=getattr(args, 'amp', False))
    _setup_cpu_distributed(cfg)
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    if mode == 'test':
        _load_strictly(runner)
        if args.out:
            runner.test_evaluator.metrics.append(_dump_metric(cfg.default_scope, args.out))
    return runner


def _load_strictly(runner) -> None:
    """Make the runner's loading of the tested checkpoint strict: a key that is missing from the checkpoint or that
    the model lacks fails with mmengine's list of them, instead of a warning followed by testing half-random weights."""
    load = runner.load_checkpoint

    def load_checkpoint(filename, map_location='cpu', strict=True, revise_keys=((r'^module\.', ''),)):
        return load(filename, map_location=map_location, strict=True, revise_keys=list(revise_keys))

    runner.load_checkpoint = load_checkpoint
