"""Generate the demo datasets used by the demo configs.

    python tools/misc/make_demo_data.py                       # shapes, COCO format: data/demo_coco, 200/40, 128x128
    python tools/misc/make_demo_data.py --size 160 --num-train 400 --seed 1
    python tools/misc/make_demo_data.py --kind lesions        # lesions, mmseg layout: data/demo_lesions, 40/12, 64x64

``shapes`` (mmmv.datasets.generate_demo_coco) feeds configs/demo/mask_rcnn_mambavision_t_demo.py; ``lesions``
(mmmv.datasets.generate_demo_lesions, laid out like prepared ISIC data) feeds configs/demo/vmunet_demo.py, which also
generates it on first use. Nothing is written when the folder already holds data made with the same parameters (see
--overwrite).
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..', '..')))

from mmmv.datasets import (DEMO_CLASSES, LESION_CLASSES, demo_lesions, demo_shapes,  # noqa: E402
                           generate_demo_coco, generate_demo_lesions)

# kind -> (generator, classes, its module with the DEFAULT_* values, default root)
KINDS = {
    'shapes': (generate_demo_coco, DEMO_CLASSES, demo_shapes, 'data/demo_coco'),
    'lesions': (generate_demo_lesions, LESION_CLASSES, demo_lesions, 'data/demo_lesions'),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--kind', choices=sorted(KINDS), default='shapes',
                        help='shapes: COCO instance segmentation; lesions: binary segmentation (mmseg layout)')
    parser.add_argument('--root', help='output folder (default: data/demo_coco or data/demo_lesions)')
    parser.add_argument('--num-train', type=int, help='training images (default: 200 shapes, 40 lesions)')
    parser.add_argument('--num-val', type=int, help='validation images (default: 40 shapes, 12 lesions)')
    parser.add_argument('--size', type=int, nargs='+', metavar='PX',
                        help='image size: one number for square images, or H W (default: 128 shapes, 64 lesions)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--overwrite', action='store_true', help='regenerate even if the data is up to date')
    args = parser.parse_args(argv)
    _, _, defaults, root = KINDS[args.kind]
    args.root = args.root or root
    args.num_train = defaults.DEFAULT_NUM_TRAIN if args.num_train is None else args.num_train
    args.num_val = defaults.DEFAULT_NUM_VAL if args.num_val is None else args.num_val
    args.size = list(defaults.DEFAULT_IMAGE_SIZE) if args.size is None else args.size
    if len(args.size) not in (1, 2):
        parser.error('--size takes one value (square) or two (H W)')
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    generate, classes, _, _ = KINDS[args.kind]
    height, width = args.size * 2 if len(args.size) == 1 else args.size
    meta = osp.join(args.root, 'meta.json')
    before = os.stat(meta).st_mtime_ns if osp.exists(meta) else None
    paths = generate(args.root, num_train=args.num_train, num_val=args.num_val, image_size=(height, width),
                     seed=args.seed, overwrite=args.overwrite)
    fresh = before != os.stat(paths['meta']).st_mtime_ns
    print(f"{'wrote' if fresh else 'up to date, nothing written:'} {args.num_train} train / {args.num_val} val "
          f"images of {height}x{width}, classes {', '.join(classes)} (seed {args.seed})")
    for key, path in paths.items():
        print(f'  {key:<15} {path}')


if __name__ == '__main__':
    main()
