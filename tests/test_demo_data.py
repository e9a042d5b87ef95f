"""The generated demo shapes dataset: determinism, COCO validity against the pixels, balance, caching, loading."""
import json
import os
import os.path as osp
import runpy
import sys
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from mmmv.datasets import DEMO_CLASSES, generate_demo_coco

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SMALL = dict(num_train=24, num_val=6, image_size=(96, 112), seed=0)
COLOR_TOLERANCE = 45.0  # RGB distance from a shape's median colour that still counts as the shape (noise std 6)
MIN_IOU = 0.9


def file_bytes(root):
    """``{relative path: bytes}`` of every file under ``root``."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = osp.join(folder, name)
            with open(path, 'rb') as f:
                out[osp.relpath(path, root)] = f.read()
    return out


def mtimes(root):
    return {path: os.stat(osp.join(root, path)).st_mtime_ns for path in file_bytes(root)}


def load_json(path):
    with open(path, encoding='utf-8') as f:
        return json.load(f)


@pytest.fixture(scope='module')
def small(tmp_path_factory):
    return generate_demo_coco(str(tmp_path_factory.mktemp('demo')), **SMALL)


def test_layout(small):
    assert sorted(os.listdir(small['root'])) == ['annotations', 'meta.json', 'train', 'val']
    assert len(os.listdir(small['train_img_dir'])) == SMALL['num_train']
    assert len(os.listdir(small['val_img_dir'])) == SMALL['num_val']
    meta = load_json(small['meta'])
    assert meta['image_size'] == list(SMALL['image_size']) and meta['classes'] == list(DEMO_CLASSES)


def test_deterministic(tmp_path, small):
    again = generate_demo_coco(str(tmp_path / 'again'), **SMALL)
    assert file_bytes(again['root']) == file_bytes(small['root'])
    other = generate_demo_coco(str(tmp_path / 'other'), **{**SMALL, 'seed': 1})
    assert file_bytes(other['root'])['annotations/instances_train.json'] != \
        file_bytes(small['root'])['annotations/instances_train.json']


@pytest.mark.parametrize('split', ['train', 'val'])
def test_annotations_match_pixels(small, split):
    """Each polygon, rasterised by pycocotools, is the region of the image that has the shape's colour."""
    pycocotools_coco = pytest.importorskip('pycocotools.coco', reason='pycocotools is not installed')
    coco = pycocotools_coco.COCO(small[f'{split}_ann_file'])
    assert [c['id'] for c in coco.loadCats(coco.getCatIds())] == [1, 2, 3]
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        pixels = np.asarray(Image.open(osp.join(small[f'{split}_img_dir'], info['file_name'])), dtype=np.float64)
        assert pixels.shape == (info['height'], info['width'], 3)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert 1 <= len(anns) <= 4
        masks = [coco.annToMask(ann).astype(bool) for ann in anns]
        assert not np.any(np.sum(masks, axis=0) > 1), 'instances overlap'
        for ann, mask in zip(anns, masks):
            assert ann['iscrowd'] == 0 and ann['category_id'] in (1, 2, 3)
            median = np.median(pixels[mask], axis=0)
            by_color = np.linalg.norm(pixels - median, axis=-1) < COLOR_TOLERANCE
            by_color &= ~np.any([m for m in masks if m is not mask] or [np.zeros_like(mask)], axis=0)
            iou = (mask & by_color).sum() / (mask | by_color).sum()
            assert iou > MIN_IOU, (info['file_name'], ann['id'], iou)
            assert abs(int(mask.sum()) - ann['area']) <= 0.05 * ann['area']
            ys, xs = np.nonzero(mask)
            x, y, w, h = ann['bbox']
            np.testing.assert_allclose([x, y, x + w, y + h], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=1)


def test_class_balance(small):
    for split in ('train', 'val'):
        per_class = Counter(ann['category_id'] for ann in load_json(small[f'{split}_ann_file'])['annotations'])
        assert sorted(per_class) == [1, 2, 3] and max(per_class.values()) - min(per_class.values()) <= 1, per_class
    per_image = Counter(ann['image_id'] for ann in load_json(small['train_ann_file'])['annotations'])
    assert len(per_image) == SMALL['num_train'] and set(per_image.values()) <= {1, 2, 3, 4}
    assert np.mean(list(per_image.values())) >= 2


def test_cached_until_params_change(tmp_path):
    root = str(tmp_path / 'demo')
    params = dict(num_train=5, num_val=4, image_size=(64, 64), seed=3)
    paths = generate_demo_coco(root, **params)
    first, first_bytes = mtimes(root), file_bytes(root)
    assert generate_demo_coco(root, **params) == paths
    assert mtimes(root) == first, 'same parameters must not rewrite anything'

    generate_demo_coco(root, **{**params, 'num_val': 2})
    assert sorted(os.listdir(paths['val_img_dir'])) == ['000001.png', '000002.png'], 'stale images must go'
    assert load_json(paths['meta'])['num_val'] == 2
    now = file_bytes(root)
    assert all(now[f'train/{name}'] == first_bytes[f'train/{name}'] for name in os.listdir(paths['train_img_dir']))
    assert now['val/000001.png'] == first_bytes['val/000001.png']

    os.remove(osp.join(paths['train_img_dir'], '000003.png'))
    generate_demo_coco(root, **{**params, 'num_val': 2})
    assert osp.isfile(osp.join(paths['train_img_dir'], '000003.png')), 'a missing file must trigger regeneration'
    before = mtimes(root)
    generate_demo_coco(root, **{**params, 'num_val': 2}, overwrite=True)
    assert all(before[path] != stamp for path, stamp in mtimes(root).items())


def test_rejects_bad_params(tmp_path):
    with pytest.raises(ValueError, match='image_size'):
        generate_demo_coco(str(tmp_path), image_size=(16, 128))
    with pytest.raises(ValueError, match='num_val'):
        generate_demo_coco(str(tmp_path), num_val=0)


def test_cli(tmp_path, monkeypatch, capsys):
    script = osp.join(ROOT, 'tools', 'misc', 'make_demo_data.py')
    argv = [script, '--root', str(tmp_path), '--num-train', '3', '--num-val', '2', '--size', '48', '64']
    monkeypatch.setattr(sys, 'argv', argv)
    runpy.run_path(script, run_name='__main__')
    first = capsys.readouterr().out
    assert first.startswith('wrote 3 train / 2 val images of 48x64'), first
    assert osp.join(str(tmp_path), 'annotations', 'instances_val.json') in first
    assert load_json(osp.join(tmp_path, 'meta.json'))['image_size'] == [48, 64]
    runpy.run_path(script, run_name='__main__')
    assert capsys.readouterr().out.startswith('up to date'), 'a second run must not write'


def test_mmdet_coco_dataset_loads(small):
    pytest.importorskip('mmdet', reason='mmdet is not installed')
    from mmdet.datasets import CocoDataset
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                dict(type='PackDetInputs')]
    dataset = CocoDataset(data_root=small['root'], ann_file='annotations/instances_train.json',
                          data_prefix=dict(img='train/'), metainfo=dict(classes=DEMO_CLASSES), pipeline=pipeline)
    assert len(dataset) == SMALL['num_train']
    assert dataset.metainfo['classes'] == DEMO_CLASSES
    coco = load_json(small['train_ann_file'])
    for index in (0, len(dataset) - 1):
        item = dataset[index]
        height, width = SMALL['image_size']
        assert tuple(item['inputs'].shape) == (3, height, width)
        sample = item['data_samples']
        anns = [ann for ann in coco['annotations'] if ann['image_id'] == sample.img_id]
        gt = sample.gt_instances
        assert len(gt) == len(gt.masks) == len(anns)
        assert sorted(gt.labels.tolist()) == sorted(ann['category_id'] - 1 for ann in anns)
        xyxy = sorted([x, y, x + w, y + h] for x, y, w, h in (ann['bbox'] for ann in anns))
        np.testing.assert_allclose(sorted(gt.bboxes.tensor.tolist()), xyxy)
