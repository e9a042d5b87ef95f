"""Convert TransUNet's preprocessed Synapse multi-organ CT data into mmseg's layout for configs/vmunet_synapse.py.

    python tools/dataset_converters/prepare_synapse.py DOWNLOAD_DIR data/synapse

DOWNLOAD_DIR is the layout TransUNet publishes and VM-UNet's README asks for::

    train_npz/caseXXXX_sliceYYY.npz     2D training slices: 'image' float in [0, 1], 'label' 0..8 (512 x 512)
    test_vol_h5/caseXXXX.npy.h5         3D test volumes: 'image' (slices, 512, 512) in [0, 1], 'label'
    lists/lists_Synapse/train.txt       optional: the slice names to convert (default: every .npz)
    lists/lists_Synapse/test_vol.txt    optional: the case names to convert (default: every .npy.h5)

(TransUNet clipped the CT to [-125, 275] HU and scaled it to [0, 1]; the labels keep 8 organs: 1 aorta,
2 gallbladder, 3 left kidney, 4 right kidney, 5 liver, 6 pancreas, 7 spleen, 8 stomach.) Reading the .h5 volumes needs
h5py (``pip install h5py``).

Output (read by SynapseSliceDataset; the test volumes become the 'val' split, as VM-UNet evaluates on them)::

    OUT/img_dir/train/caseXXXX_sliceYYY.png   8-bit grey: round(image * 255)
    OUT/ann_dir/train/caseXXXX_sliceYYY.png   labels 0..8
    OUT/img_dir/val/caseXXXX_sliceYYY.png     every slice of each test volume, numbered from 000
    OUT/ann_dir/val/caseXXXX_sliceYYY.png
    OUT/prepare_info.json

The 8-bit images quantise the [0, 1] intensities in steps of 1/255 (about 1.6 HU), which is below what the 224 x 224
networks resolve. CaseDiceHD95Metric regroups the val slices into volumes by their names.
"""
import argparse
import glob
import json
import os
import os.path as osp
import shutil
from concurrent.futures import ProcessPoolExecutor
from typing import Iterator, List, Optional, Tuple

import numpy as np
from PIL import Image

NUM_CLASSES = 9
INTENSITY_TOLERANCE = 1e-3  # how far outside [0, 1] an image may stray (float rounding)
LIST_FOLDERS = ('lists_Synapse', 'list_Synapse')  # TransUNet's name, and the one VM-UNet's README spells


def find_list(root: str, name: str) -> Optional[str]:
    for folder in LIST_FOLDERS:
        path = osp.join(root, 'lists', folder, name)
        if osp.isfile(path):
            return path
    return None


def read_names(path: str) -> List[str]:
    with open(path, encoding='utf-8') as f:
        return [line.strip() for line in f if line.strip()]


def listed_files(root: str, folder: str, list_name: str, suffix: str, what: str) -> List[str]:
    """Paths of the `suffix` files in ``root/folder`` named in ``list_name`` (every such file if there is no list)."""
    directory = osp.join(root, folder)
    if not osp.isdir(directory):
        raise FileNotFoundError(f'{root}: missing {folder}/ (TransUNet\'s preprocessed Synapse {what})')
    listed = find_list(root, list_name)
    if listed is None:
        paths = sorted(glob.glob(osp.join(directory, '*' + suffix)))
        if not paths:
            raise FileNotFoundError(f'{directory}: no {suffix} file')
        return paths
    paths = [osp.join(directory, name + suffix) for name in read_names(listed)]
    missing = [p for p in paths if not osp.isfile(p)]
    if missing:
        raise FileNotFoundError(f'{len(missing)} file(s) listed in {listed} do not exist, e.g. {missing[0]}')
    return paths


def to_pngs(image: np.ndarray, label: np.ndarray, where: str) -> Tuple[Image.Image, Image.Image]:
    """A [0, 1] float slice and its labels as 8-bit grey and label images; ValueError for other data."""
    if image.shape != label.shape or image.ndim != 2:
        raise ValueError(f'{where}: image {image.shape} and label {label.shape} must be 2D slices of one shape')
    low, high = float(image.min()), float(image.max())
    if low < -INTENSITY_TOLERANCE or high > 1 + INTENSITY_TOLERANCE:
        raise ValueError(f'{where}: image values lie in [{low:.3g}, {high:.3g}], not [0, 1]: this is not '
                         'TransUNet\'s preprocessed data (CT clipped to [-125, 275] HU and scaled to [0, 1])')
    labels = np.rint(label)
    if labels.min() < 0 or labels.max() >= NUM_CLASSES or not np.allclose(labels, label):
        raise ValueError(f'{where}: labels must be integers 0..{NUM_CLASSES - 1}, found values in '
                         f'[{label.min()}, {label.max()}]')
    grey = np.rint(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    return Image.fromarray(grey), Image.fromarray(labels.astype(np.uint8))


def convert_slice(task: Tuple[str, str]) -> int:
    path, out = task
    with np.load(path) as data:
        if 'image' not in data or 'label' not in data:
            raise KeyError(f'{path}: expected the arrays "image" and "label", found {sorted(data.files)}')
        image, label = to_pngs(data['image'], data['label'], path)
    name = osp.basename(path)[:-len('.npz')] + '.png'
    image.save(osp.join(out, 'img_dir', 'train', name))
    label.save(osp.join(out, 'ann_dir', 'train', name))
    return 1


def _volume_slices(path: str) -> Iterator[Tuple[int, np.ndarray, np.ndarray]]:
    try:
        import h5py
    except ImportError as error:
        raise ImportError('reading the Synapse test volumes (.npy.h5) needs h5py: pip install h5py') from error
    with h5py.File(path, 'r') as f:
        if 'image' not in f or 'label' not in f:
            raise KeyError(f'{path}: expected the datasets "image" and "label", found {sorted(f.keys())}')
        image, label = f['image'][:], f['label'][:]
    if image.ndim != 3 or image.shape != label.shape:
        raise ValueError(f'{path}: image {image.shape} and label {label.shape} must be (slices, H, W) volumes')
    for index in range(image.shape[0]):
        yield index, image[index], label[index]


def convert_volume(task: Tuple[str, str]) -> int:
    path, out = task
    case = osp.basename(path)[:-len('.npy.h5')]
    count = 0
    for index, image_slice, label_slice in _volume_slices(path):
        image, label = to_pngs(image_slice, label_slice, f'{path} slice {index}')
        name = f'{case}_slice{index:03d}.png'
        image.save(osp.join(out, 'img_dir', 'val', name))
        label.save(osp.join(out, 'ann_dir', 'val', name))
        count += 1
    return count


def prepare(root: str, out: str, workers: int = 1, overwrite: bool = False) -> dict:
    """Convert the download under `root` into `out`; returns the summary also written to ``prepare_info.json``."""
    if not osp.isdir(root):
        raise FileNotFoundError(f'download folder {root!r} does not exist')
    slices = listed_files(root, 'train_npz', 'train.txt', '.npz', 'training slices')
    volumes = listed_files(root, 'test_vol_h5', 'test_vol.txt', '.npy.h5', 'test volumes')
    existing = [kind for kind in ('img_dir', 'ann_dir') if osp.isdir(osp.join(out, kind))]
    if existing and not overwrite:
        raise FileExistsError(f'{out} already holds {" and ".join(existing)}; pass --overwrite to replace them')
    for kind in existing:
        shutil.rmtree(osp.join(out, kind))
    for kind in ('img_dir', 'ann_dir'):
        for split in ('train', 'val'):
            os.makedirs(osp.join(out, kind, split), exist_ok=True)

    jobs = [(convert_slice, [(p, out) for p in slices]), (convert_volume, [(p, out) for p in volumes])]
    counts = []
    for function, tasks in jobs:
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                counts.append(sum(pool.map(function, tasks, chunksize=8)))
        else:
            counts.append(sum(map(function, tasks)))
    info = dict(dataset='synapse', train_slices=counts[0], val_cases=len(volumes), val_slices=counts[1])
    with open(osp.join(out, 'prepare_info.json'), 'w', encoding='utf-8') as f:
        json.dump(info, f, indent=2)
    return info


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('root', help='the download folder (train_npz/, test_vol_h5/, lists/)')
    parser.add_argument('out', help='output folder, e.g. data/synapse')
    parser.add_argument('--workers', type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument('--overwrite', action='store_true', help='replace an earlier conversion in OUT')
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    info = prepare(args.root, args.out, workers=args.workers, overwrite=args.overwrite)
    print(f'wrote {args.out}: {info["train_slices"]} training slices, {info["val_cases"]} test cases '
          f'({info["val_slices"]} slices) as val')


if __name__ == '__main__':
    main()
