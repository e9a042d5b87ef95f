"""Generate the demo shapes dataset (COCO format) used by the demo configs.

    python tools/misc/make_demo_data.py                       # data/demo_coco, 200 train / 40 val, 128x128
    python tools/misc/make_demo_data.py --size 160 --num-train 400 --seed 1

Nothing is written when the folder already holds data made with the same parameters (see --overwrite).
"""
import argparse
import os
import os.path as osp

from mmmv.datasets import DEMO_CLASSES, generate_demo_coco
from mmmv.datasets.demo_shapes import DEFAULT_IMAGE_SIZE, DEFAULT_NUM_TRAIN, DEFAULT_NUM_VAL


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--root', default='data/demo_coco', help='output folder')
    parser.add_argument('--num-train', type=int, default=DEFAULT_NUM_TRAIN, help='training images')
    parser.add_argument('--num-val', type=int, default=DEFAULT_NUM_VAL, help='validation images')
    parser.add_argument('--size', type=int, nargs='+', default=list(DEFAULT_IMAGE_SIZE), metavar='PX',
                        help='image size: one number for square images, or H W')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--overwrite', action='store_true', help='regenerate even if the data is up to date')
    args = parser.parse_args()
    if len(args.size) not in (1, 2):
        parser.error('--size takes one value (square) or two (H W)')
    return args


def main() -> None:
    args = parse_args()
    height, width = args.size * 2 if len(args.size) == 1 else args.size
    meta = osp.join(args.root, 'meta.json')
    before = os.stat(meta).st_mtime_ns if osp.exists(meta) else None
    paths = generate_demo_coco(args.root, num_train=args.num_train, num_val=args.num_val,
                               image_size=(height, width), seed=args.seed, overwrite=args.overwrite)
    fresh = before != os.stat(paths['meta']).st_mtime_ns
    print(f"{'wrote' if fresh else 'up to date, nothing written:'} {args.num_train} train / {args.num_val} val "
          f"images of {height}x{width}, classes {', '.join(DEMO_CLASSES)} (seed {args.seed})")
    for key, path in paths.items():
        print(f'  {key:<15} {path}')


if __name__ == '__main__':
    main()
