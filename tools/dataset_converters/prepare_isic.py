"""Convert ISIC 2017 / 2018 lesion segmentation downloads into mmseg's layout for the VM-UNet configs.

    python tools/dataset_converters/prepare_isic.py isic2017 DOWNLOAD_DIR data/isic2017            # VM-UNet's 7:3 split
    python tools/dataset_converters/prepare_isic.py isic2018 DOWNLOAD_DIR data/isic2018 --size 256
    python tools/dataset_converters/prepare_isic.py isic2017 DOWNLOAD_DIR data/isic2017 --split official

DOWNLOAD_DIR holds one of:

* the ISIC challenge archives (each as the .zip or unpacked into a folder of the same name):
  ISIC 2017: ISIC-2017_Training_Data, ISIC-2017_Training_Part1_GroundTruth, ISIC-2017_Validation_Data,
  ISIC-2017_Validation_Part1_GroundTruth, ISIC-2017_Test_v2_Data, ISIC-2017_Test_v2_Part1_GroundTruth;
  ISIC 2018: ISIC2018_Task1-2_Training_Input, ISIC2018_Task1_Training_GroundTruth, ISIC2018_Task1-2_Validation_Input,
  ISIC2018_Task1_Validation_GroundTruth, ISIC2018_Task1-2_Test_Input, ISIC2018_Task1_Test_GroundTruth.
  Images are ISIC_XXXXXXX.jpg, masks ISIC_XXXXXXX_segmentation.png (255 = lesion); superpixel files are skipped.
* VM-UNet's prepared download (its README: train/images, train/masks, val/images, val/masks). Its split is kept.

Splits (challenge archives only):
  vmunet (default)  the labelled training and validation images pooled (ISIC 2017: 2150, ISIC 2018: 2694) and split
                    7:3 at random with --seed into train / val, as VM-UNet does. VM-UNet did not publish its lists, so
                    this is a split of the same sizes, not the same images: use its download to get those.
  official          the challenge's own train / val / test parts (those present).

Output (mmseg's layout, read by ISIC2017Dataset / ISIC2018Dataset)::

    OUT/img_dir/{train,val[,test]}/ISIC_XXXXXXX.png   RGB
    OUT/ann_dir/{train,val[,test]}/ISIC_XXXXXXX.png   0 background, 1 lesion (mask >= 128)
    OUT/prepare_info.json                             source, split, seed, size and counts

``--size`` resizes images (bilinear) and masks (bilinear, then >= 128, as VM-UNet does) to a fixed size. VM-UNet
trains and evaluates at 256 x 256, so ``--size 256`` reproduces its evaluation protocol (metrics pooled over 256 x 256
masks) and makes training much faster; without it the original resolution is kept and mmseg evaluates there.
"""
import argparse
import io
import json
import os
import os.path as osp
import random
import re
import shutil
import zipfile
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

# dataset -> split -> (image part, mask part) of the challenge downloads
CHALLENGE_PARTS = {
    'isic2017': {
        'train': ('ISIC-2017_Training_Data', 'ISIC-2017_Training_Part1_GroundTruth'),
        'val': ('ISIC-2017_Validation_Data', 'ISIC-2017_Validation_Part1_GroundTruth'),
        'test': ('ISIC-2017_Test_v2_Data', 'ISIC-2017_Test_v2_Part1_GroundTruth'),
    },
    'isic2018': {
        'train': ('ISIC2018_Task1-2_Training_Input', 'ISIC2018_Task1_Training_GroundTruth'),
        'val': ('ISIC2018_Task1-2_Validation_Input', 'ISIC2018_Task1_Validation_GroundTruth'),
        'test': ('ISIC2018_Task1-2_Test_Input', 'ISIC2018_Task1_Test_GroundTruth'),
    },
}
VMUNET_SPLITS = ('train', 'val')
TRAIN_FRACTION = 0.7  # VM-UNet's 7:3 split
DEFAULT_SEED = 42  # VM-UNet's seed
MASK_THRESHOLD = 128  # mask >= 128 is lesion (VM-UNet: mask / 255 >= 0.5)
IMAGE_NAME = re.compile(r'^(ISIC_\d{7})\.(jpg|jpeg|png)$', re.IGNORECASE)
MASK_NAME = re.compile(r'^(ISIC_\d{7})_segmentation\.png$', re.IGNORECASE)
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff')
MASK_SUFFIXES = ('_segmentation', '_mask', '_Segmentation')


class Source:
    """A file in a folder or in a zip archive, readable as bytes (picklable for worker processes)."""

    def __init__(self, container: str, member: Optional[str] = None):
        self.container, self.member = container, member

    def read(self) -> bytes:
        if self.member is None:
            with open(self.container, 'rb') as f:
                return f.read()
        with zipfile.ZipFile(self.container) as archive:
            return archive.read(self.member)

    def __repr__(self) -> str:
        return self.container if self.member is None else f'{self.container}:{self.member}'


# ----------------------------------------------------------------------------------------------------
# Finding the files.
# ----------------------------------------------------------------------------------------------------
def list_part(root: str, part: str) -> Optional[Dict[str, Source]]:
    """{basename: Source} of the challenge part `part` (a folder or a .zip under root); None if absent."""
    folder, archive = osp.join(root, part), osp.join(root, part + '.zip')
    if osp.isdir(folder):
        return {name: Source(osp.join(dirpath, name)) for dirpath, _, names in os.walk(folder) for name in names}
    if osp.isfile(archive):
        with zipfile.ZipFile(archive) as zf:
            return {osp.basename(m): Source(archive, m) for m in zf.namelist() if not m.endswith('/')}
    return None


def pair_challenge_part(root: str, image_part: str, mask_part: str) -> Dict[str, Tuple[Source, Source]]:
    """{ISIC id: (image, mask)} of one split of the challenge downloads; errors name what is missing."""
    parts = {name: list_part(root, name) for name in (image_part, mask_part)}
    missing = [name for name, files in parts.items() if files is None]
    if missing:
        expected = ', '.join(f'{name}.zip (or the folder {name}/)' for name in missing)
        raise FileNotFoundError(f'{root}: missing {expected}')
    images = {m.group(1): src for name, src in parts[image_part].items() if (m := IMAGE_NAME.match(name))}
    masks = {m.group(1): src for name, src in parts[mask_part].items() if (m := MASK_NAME.match(name))}
    if not images:
        raise FileNotFoundError(f'{image_part}: no ISIC_XXXXXXX.jpg image found')
    _check_pairs(images, masks, image_part, mask_part)
    return {key: (images[key], masks[key]) for key in sorted(images)}


def _check_pairs(images: Dict[str, Source], masks: Dict[str, Source], image_where: str, mask_where: str) -> None:
    for lacking, have, where in ((set(images) - set(masks), 'mask', mask_where),
                                 (set(masks) - set(images), 'image', image_where)):
        if lacking:
            names = ', '.join(sorted(lacking)[:5])
            raise FileNotFoundError(f'{len(lacking)} file(s) have no {have} in {where}: {names}'
                                    f'{" ..." if len(lacking) > 5 else ""}')


def _mask_key(name: str) -> str:
    stem = osp.splitext(name)[0]
    for suffix in MASK_SUFFIXES:
        if stem.endswith(suffix):
            return stem[:-len(suffix)]
    return stem


def pair_vmunet_split(root: str, split: str) -> Tuple[Dict[str, Tuple[Source, Source]], bool]:
    """{name: (image, mask)} of VM-UNet's ``split/images`` and ``split/masks``, and whether the names were paired by
    sorted order (VM-UNet's own rule, used when the names do not match up)."""
    folders = {kind: osp.join(root, split, kind) for kind in ('images', 'masks')}
    for folder in folders.values():
        if not osp.isdir(folder):
            raise FileNotFoundError(f'VM-UNet layout: missing folder {folder}')
    listing = {kind: sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES))
               for kind, folder in folders.items()}
    if not listing['images']:
        raise FileNotFoundError(f'VM-UNet layout: no image in {folders["images"]}')
    images = {osp.splitext(n)[0]: Source(osp.join(folders['images'], n)) for n in listing['images']}
    masks = {_mask_key(n): Source(osp.join(folders['masks'], n)) for n in listing['masks']}
    if not set(images) & set(masks) and len(listing['images']) == len(listing['masks']):
        pairs = zip(listing['images'], listing['masks'])
        return {osp.splitext(i)[0]: (Source(osp.join(folders['images'], i)), Source(osp.join(folders['masks'], m)))
                for i, m in pairs}, True
    _check_pairs(images, masks, folders['images'], folders['masks'])  # raises unless the names match up
    return {key: (images[key], masks[key]) for key in sorted(images)}, False


def detect_source(root: str, dataset: str) -> str:
    if all(osp.isdir(osp.join(root, split, 'images')) for split in VMUNET_SPLITS):
        return 'vmunet'
    if any(list_part(root, image_part) is not None for image_part, _ in CHALLENGE_PARTS[dataset].values()):
        return 'challenge'
    expected = ', '.join(f'{p}.zip' for p, _ in CHALLENGE_PARTS[dataset].values())
    raise FileNotFoundError(f'{root}: found neither the ISIC challenge downloads ({expected}, with their ground truth) '
                            'nor VM-UNet\'s layout (train/images, train/masks, val/images, val/masks)')


def collect_splits(root: str, dataset: str, source: str, split: str, seed: int
                   ) -> Tuple[Dict[str, Dict[str, Tuple[Source, Source]]], List[str]]:
    """{output split: {name: (image, mask)}} and notes for the log."""
    notes = []
    if source == 'vmunet':
        splits = {}
        for name in VMUNET_SPLITS:
            splits[name], by_order = pair_vmunet_split(root, name)
            if by_order:
                notes.append(f'{name}: image and mask names differ; paired in sorted order as VM-UNet does')
        return splits, notes
    parts = CHALLENGE_PARTS[dataset]
    if split == 'official':
        splits = {}
        for name, (image_part, mask_part) in parts.items():
            if name != 'train' and list_part(root, image_part) is None:
                notes.append(f'{name}: {image_part} not found, split skipped')
                continue
            splits[name] = pair_challenge_part(root, image_part, mask_part)
        return splits, notes
    pool = {}
    for name in ('train', 'val'):  # the labelled images VM-UNet pools: the challenge's training and validation parts
        pool.update(pair_challenge_part(root, *parts[name]))
    keys = sorted(pool)
    random.Random(seed).shuffle(keys)
    num_train = int(len(keys) * TRAIN_FRACTION)
    notes.append(f'{len(keys)} labelled images split 7:3 with seed {seed}')
    return {'train': {k: pool[k] for k in sorted(keys[:num_train])},
            'val': {k: pool[k] for k in sorted(keys[num_train:])}}, notes


# ----------------------------------------------------------------------------------------------------
# Writing.
# ----------------------------------------------------------------------------------------------------
def convert_pair(task: Tuple[Source, Source, str, str, Optional[Tuple[int, int]]]) -> None:
    """Write one image as RGB PNG and its mask as a 0/1 label PNG, optionally resized to (H, W)."""
    image_src, mask_src, image_out, label_out, size = task
    image = Image.open(io.BytesIO(image_src.read())).convert('RGB')
    mask = Image.open(io.BytesIO(mask_src.read())).convert('L')
    if image.size != mask.size:
        raise ValueError(f'{image_src} is {image.size[0]}x{image.size[1]} but its mask {mask_src} is '
                         f'{mask.size[0]}x{mask.size[1]}')
    if size is not None:
        image = image.resize(size[::-1], Image.BILINEAR)
        mask = mask.resize(size[::-1], Image.BILINEAR)
    labels = (np.asarray(mask) >= MASK_THRESHOLD).astype(np.uint8)
    image.save(image_out)
    Image.fromarray(labels).save(label_out)


def prepare(dataset: str, root: str, out: str, split: str = 'vmunet', seed: int = DEFAULT_SEED,
            size: Optional[Sequence[int]] = None, source: str = 'auto', workers: int = 1,
            overwrite: bool = False) -> dict:
    """Convert the download under `root` into `out`; returns the summary also written to ``prepare_info.json``."""
    if dataset not in CHALLENGE_PARTS:
        raise ValueError(f'unknown dataset {dataset!r}; valid: {", ".join(CHALLENGE_PARTS)}')
    if not osp.isdir(root):
        raise FileNotFoundError(f'download folder {root!r} does not exist')
    size = _check_size(size)
    source = detect_source(root, dataset) if source == 'auto' else source
    splits, notes = collect_splits(root, dataset, source, split, seed)
    _prepare_output(out, overwrite)

    tasks = []
    for name, pairs in splits.items():
        for kind in ('img_dir', 'ann_dir'):
            os.makedirs(osp.join(out, kind, name), exist_ok=True)
        for key, (image_src, mask_src) in pairs.items():
            tasks.append((image_src, mask_src, osp.join(out, 'img_dir', name, key + '.png'),
                          osp.join(out, 'ann_dir', name, key + '.png'), size))
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(convert_pair, tasks, chunksize=16))
    else:
        for task in tasks:
            convert_pair(task)
    info = dict(dataset=dataset, source=source, split=split if source == 'challenge' else 'vmunet download',
                seed=seed, size=None if size is None else list(size),
                counts={name: len(pairs) for name, pairs in splits.items()}, notes=notes)
    with open(osp.join(out, 'prepare_info.json'), 'w', encoding='utf-8') as f:
        json.dump(info, f, indent=2)
    return info


def _check_size(size: Optional[Sequence[int]]) -> Optional[Tuple[int, int]]:
    if size is None:
        return None
    size = tuple(int(s) for s in size)
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f'--size takes one positive value (square) or two (H W), got {size}')
    return size


def _prepare_output(out: str, overwrite: bool) -> None:
    existing = [kind for kind in ('img_dir', 'ann_dir') if osp.isdir(osp.join(out, kind))]
    if existing and not overwrite:
        raise FileExistsError(f'{out} already holds {" and ".join(existing)}; pass --overwrite to replace them')
    for kind in existing:
        shutil.rmtree(osp.join(out, kind))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('dataset', choices=sorted(CHALLENGE_PARTS))
    parser.add_argument('root', help='the download folder')
    parser.add_argument('out', help='output folder, e.g. data/isic2017')
    parser.add_argument('--split', choices=['vmunet', 'official'], default='vmunet',
                        help='for the challenge downloads: VM-UNet\'s random 7:3 split or the official parts')
    parser.add_argument('--seed', type=int, default=DEFAULT_SEED, help='seed of the 7:3 split')
    parser.add_argument('--size', type=int, nargs='+', metavar='PX', help='resize to S x S or H x W')
    parser.add_argument('--source', choices=['auto', 'challenge', 'vmunet'], default='auto')
    parser.add_argument('--workers', type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument('--overwrite', action='store_true', help='replace an earlier conversion in OUT')
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    info = prepare(args.dataset, args.root, args.out, split=args.split, seed=args.seed, size=args.size,
                   source=args.source, workers=args.workers, overwrite=args.overwrite)
    for note in info['notes']:
        print(f'note: {note}')
    counts = ', '.join(f'{name} {count}' for name, count in info['counts'].items())
    print(f'wrote {args.out} from the {info["source"]} layout: {counts}')


if __name__ == '__main__':
    main()
