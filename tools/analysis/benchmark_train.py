"""Time a few dozen training iterations of a detection, segmentation or classification config on generated data of
its real size.

    python tools/analysis/benchmark_train.py CONFIG [--gpus N] [--iters 40] [--warmup 10] [--amp]
                                                    [--resume-iters 10] [--work-dir DIR] [--cfg-options ...]

The config itself is trained, through ``tools/train.py`` (one GPU) or ``tools/dist_train.sh`` (N GPUs, torchrun,
NCCL), with only its data and schedule replaced:

- data: generated once under ``data/benchmark/`` in the config's own layout and at its real size: COCO-format
  1333 x 800 images with instance masks for mmdet configs, ADE20K-layout images (683 x 512, or 853 x 640 for 640 crops)
  with 150-class label maps for mmseg configs, ImageNet-layout 500 x 375 JPEGs (``train/<class>/``,
  ``meta/train.txt``, at least one batch of them) for mmpretrain configs. The config's training pipeline (multi-scale
  resize, crops, flips) runs on them unchanged, so the network sees inputs of the sizes it sees on COCO / ADE20K /
  ImageNet;
- the backbone starts from its random initialisation (``init_cfg=None``): no checkpoint is needed;
- schedule: ``--iters`` iterations (an iteration-based loop, the learning-rate warm-up kept, no validation), a
  checkpoint at the end; ``--resume-iters K`` then resumes that checkpoint through ``--resume`` and trains K
  more (the last K // 2 of them timed).

``TrainBenchmarkHook`` (mmmv/engine/hooks.py) times each iteration after ``--warmup`` (device synchronised), records
each process's peak memory and counts the SyncBatchNorm layers of the model as trained (mmengine turns SyncBN into
BN when there is a single process). The table printed at the end comes from WORK_DIR/benchmark.json.
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
sys.path.insert(0, ROOT)

DET_IMAGE_SIZE = (800, 1333)  # (H, W): COCO images are resized to this scale by the test pipeline
ADE_NUM_CLASSES = 150
IMAGENET_SIZE = (375, 500)  # (H, W): about the mean ImageNet image; RandomResizedCrop makes the 224 crops


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='an mmdet, mmseg or mmpretrain config, e.g. configs/mask_rcnn_mambavision_t.py')
    parser.add_argument('--gpus', type=int, default=1, help='processes (GPUs) on this machine; > 1 uses dist_train.sh')
    parser.add_argument('--iters', type=int, default=40, help='training iterations of the first run')
    parser.add_argument('--warmup', type=int, default=10, help='iterations left out of the timing')
    parser.add_argument('--resume-iters', type=int, default=0,
                        help='then resume the first run from its checkpoint and train this many more')
    parser.add_argument('--amp', action='store_true', help='pass --amp to tools/train.py')
    parser.add_argument('--num-images', type=int, default=64, help='generated training images')
    parser.add_argument('--work-dir', help='default: work_dirs/benchmark/CONFIG_NAME_<gpus>gpu')
    parser.add_argument('--cfg-options', nargs='+', default=[], help='passed on to tools/train.py')
    args = parser.parse_args(argv)
    if args.gpus < 1 or args.iters <= args.warmup:
        parser.error('--gpus must be >= 1 and --iters larger than --warmup')
    return args


# ---------------------------------------------------------------------------------------------------------------------
# Generated data
# ---------------------------------------------------------------------------------------------------------------------
def make_coco(root: str, num_images: int) -> dict:
    """COCO-format instance data at 1333 x 800 (mmmv's generated shapes); returns the dataset overrides."""
    from mmmv.datasets import DEMO_CLASSES, generate_demo_coco
    paths = generate_demo_coco(root, num_train=num_images, num_val=1, image_size=DET_IMAGE_SIZE, seed=0)
    return dict(data_root='', ann_file=paths['train_ann_file'], data_prefix=dict(img=paths['train_img_dir'] + '/'),
                metainfo=dict(classes=DEMO_CLASSES), filter_cfg=dict(filter_empty_gt=True, min_size=32))


def make_ade(root: str, num_images: int, size: tuple) -> dict:
    """ADE20K layout (images/training/*.jpg, annotations/training/*.png, labels 1..150, 0 = ignored); returns the
    dataset overrides."""
    import cv2
    height, width = size
    img_dir = osp.join(root, 'images', 'training')
    ann_dir = osp.join(root, 'annotations', 'training')
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(num_images):
        name = f'bench_{index:05d}'
        if osp.exists(osp.join(ann_dir, name + '.png')):
            continue
        label = np.zeros((height, width), np.uint8)
        image = rng.integers(0, 256, (1, 1, 3)) * np.ones((height, width, 3))
        for _ in range(12):  # rectangles and discs of random classes over a random background
            cls = int(rng.integers(1, ADE_NUM_CLASSES + 1))
            y0, x0 = int(rng.integers(0, height - 16)), int(rng.integers(0, width - 16))
            y1, x1 = y0 + int(rng.integers(16, height // 2)), x0 + int(rng.integers(16, width // 2))
            label[y0:y1, x0:x1] = cls
            image[y0:y1, x0:x1] = rng.integers(0, 256, 3)
        image += rng.normal(0, 12, image.shape)
        cv2.imwrite(osp.join(img_dir, name + '.jpg'), np.clip(image, 0, 255).astype(np.uint8))
        cv2.imwrite(osp.join(ann_dir, name + '.png'), label)
    return dict(data_root=root, data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'))


def make_imagenet(root: str, num_images: int, num_classes: int) -> dict:
    """ImageNet layout (train/<class>/*.JPEG listed in meta/train.txt, as mmpretrain's ImageNet dataset reads it);
    returns the dataset overrides."""
    import cv2
    height, width = IMAGENET_SIZE
    rng = np.random.default_rng(0)
    lines = []
    for index in range(num_images):
        label = index % num_classes
        name = f'n{label:08d}/bench_{index:05d}.JPEG'
        path = osp.join(root, 'train', name)
        if not osp.exists(path):
            os.makedirs(osp.dirname(path), exist_ok=True)
            image = rng.integers(0, 256, (1, 1, 3)) + rng.normal(0, 40, (height, width, 3))
            cv2.imwrite(path, np.clip(image, 0, 255).astype(np.uint8))
        lines.append(f'{name} {label}')
    os.makedirs(osp.join(root, 'meta'), exist_ok=True)
    with open(osp.join(root, 'meta', 'train.txt'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return dict(data_root=root, ann_file='meta/train.txt', data_prefix='train')


# ---------------------------------------------------------------------------------------------------------------------
# The benchmark config
# ---------------------------------------------------------------------------------------------------------------------
def write_config(path: str, config: str, dataset: dict, iters: int, warmup: int) -> None:
    """A config inheriting ``config`` with generated data, an iteration-based schedule and no evaluation."""
    lines = [
        f'_base_ = {osp.abspath(config)!r}',
        f'train_dataloader = dict(dataset=dict({_kwargs(dataset)}))',
        # random initialisation: the pretrained backbone file is not needed to time training
        'model = dict(backbone=dict(init_cfg=None))',
        f"train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters={iters}, val_interval={10 ** 9})",
        'val_cfg = None', 'val_dataloader = None', 'val_evaluator = None',
        'test_cfg = None', 'test_dataloader = None', 'test_evaluator = None',
        # keep the warm-up; epoch-based decay steps never come in a few dozen iterations
        "param_scheduler = [dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000)]",
        'log_processor = dict(by_epoch=False)',
        "default_hooks = dict(logger=dict(type='LoggerHook', interval=5), "
        "checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=10 ** 9, save_last=True))",
        f"custom_hooks = [dict(type='TrainBenchmarkHook', warmup={warmup})]",
    ]
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')


def _kwargs(mapping: dict) -> str:
    return ', '.join(f'{key}={value!r}' for key, value in mapping.items())


def crop_size(cfg) -> tuple:
    size = cfg.get('crop_size') or (512, 512)
    return tuple(size)


def run(cmd: list, log_path: str) -> None:
    print('$', ' '.join(cmd), flush=True)
    with open(log_path, 'w') as log:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                              env=dict(os.environ, PYTHON=sys.executable))
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-4000:]
        sys.exit(f'benchmark_train: the run failed (exit {proc.returncode}); end of {log_path}:\n{tail}')


def train_command(config: str, gpus: int, work_dir: str, args, extra: list) -> list:
    options = ['--work-dir', work_dir] + (['--amp'] if args.amp else []) + extra
    if args.cfg_options:
        options += ['--cfg-options', *args.cfg_options]
    if gpus == 1:
        return [sys.executable, 'tools/train.py', config, *options]
    return ['bash', 'tools/dist_train.sh', config, str(gpus), *options]


def report(work_dir: str) -> dict:
    path = osp.join(work_dir, 'benchmark.json')
    if not osp.isfile(path):
        sys.exit(f'benchmark_train: {path} was not written (TrainBenchmarkHook did not run to the end)')
    with open(path) as f:
        return json.load(f)


def main(argv=None) -> None:
    args = parse_args(argv)
    import mmmv  # noqa: F401  (registers TrainBenchmarkHook)
    from mmengine.config import Config
    cfg = Config.fromfile(args.config)
    scope = cfg.get('default_scope')
    name = osp.splitext(osp.basename(args.config))[0]
    work_dir = osp.abspath(args.work_dir or osp.join(ROOT, 'work_dirs', 'benchmark', f'{name}_{args.gpus}gpu'))
    os.makedirs(work_dir, exist_ok=True)
    data_root = osp.join(ROOT, 'data', 'benchmark')
    if scope == 'mmdet':
        dataset = make_coco(osp.join(data_root, 'coco_1333x800'), args.num_images)
        size_text = '1333 x 800 images, multi-scale training pipeline'
    elif scope == 'mmseg':
        crop = crop_size(cfg)
        image_size = (crop[0], int(round(crop[1] * 4 / 3)))
        dataset = make_ade(osp.join(data_root, f'ade_{image_size[1]}x{image_size[0]}'), args.num_images, image_size)
        size_text = f'{image_size[1]} x {image_size[0]} images, {crop[1]} x {crop[0]} crops'
    elif scope == 'mmpretrain':
        classes = min(cfg.model.head.get('num_classes', 1000), 16)
        count = max(args.num_images, cfg.train_dataloader.batch_size)  # full batches, as in training
        dataset = make_imagenet(osp.join(data_root, 'imagenet_500x375'), count, classes)
        size_text = f'{IMAGENET_SIZE[1]} x {IMAGENET_SIZE[0]} images, the training pipeline\'s crops'
    else:
        sys.exit(f'benchmark_train: {args.config} is a {scope!r} config; detection (mmdet), segmentation (mmseg) '
                 'and classification (mmpretrain) configs are supported')
    bench_config = osp.join(work_dir, f'benchmark_{name}.py')
    write_config(bench_config, args.config, dataset, args.iters, args.warmup)

    run(train_command(bench_config, args.gpus, work_dir, args, []), osp.join(work_dir, 'train.log'))
    rows = [('train', report(work_dir))]
    if args.resume_iters:
        total = args.iters + args.resume_iters
        run(train_command(bench_config, args.gpus, work_dir, args,
                          ['--resume', '--cfg-options', f'train_cfg.max_iters={total}',
                           f'custom_hooks.0.warmup={args.resume_iters // 2}']),
            osp.join(work_dir, 'resume.log'))
        rows.append((f'resumed at {args.iters}', report(work_dir)))

    batch = cfg.train_dataloader.get('batch_size')
    print(f'\n{name}: {size_text}, {batch} images per GPU, {"AMP" if args.amp else "as configured"}')
    print('| run | GPUs | device | SyncBN layers | iterations (timed) | s / iteration (median) | first iteration s '
          '| peak memory per GPU, GiB |')
    print('|---|---|---|---|---|---|---|---|')
    for label, rep in rows:
        memory = ', '.join(f"{r['peak_allocated_gib']:.2f}" for r in rep['ranks'])
        timed = rep['ranks'][0]['iterations_timed']
        median = '-' if rep['median_iter_s'] is None else f"{rep['median_iter_s']:.3f}"
        first = '-' if rep.get('first_iter_s') is None else f"{rep['first_iter_s']:.1f}"
        print(f"| {label} | {rep['world_size']} | {rep['device']} | {rep['sync_bn_layers']} | "
              f"{rep['iterations_run']} ({timed}) | {median} | {first} | {memory} |")


if __name__ == '__main__':
    main()
