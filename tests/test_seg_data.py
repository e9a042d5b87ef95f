"""Segmentation data, metrics and configs: pooled and per-case scores against hand-computed values and a brute-force
HD95, VM-UNet's Dice losses, the generated lesion data, the mmseg datasets, the ISIC / Synapse converters on small
synthetic downloads, and the VM-UNet / UPerNet configs built through the registries."""
import importlib.util
import json
import os
import os.path as osp
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from tool_loading import load_tool as load_tools_script

from mmmv.datasets import generate_demo_lesions
from mmmv.evaluation import case_dice_hd95, confusion_matrix, hd95, pooled_scores
from mmmv.losses import VMUNetDiceLoss

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
requires_mmseg = pytest.mark.skipif(importlib.util.find_spec('mmseg') is None,
                                    reason='the OpenMMLab stack is installed by tools/install.sh')


def load_tool(name):
    return load_tools_script(f'dataset_converters/{name}.py', register=True)


# ----------------------------------------------------------------------------------------------------
# Pooled scores.
# ----------------------------------------------------------------------------------------------------
def test_confusion_matrix_by_hand():
    gt = np.array([[0, 0, 1], [1, 1, 255]])
    pred = np.array([[0, 1, 1], [0, 1, 1]])
    # rows gt, columns pred; the 255 pixel is left out
    np.testing.assert_array_equal(confusion_matrix(pred, gt, 2), [[1, 1], [1, 2]])
    with pytest.raises(ValueError, match=r'gt holds labels outside 0..1'):
        confusion_matrix(pred, gt, 2, ignore_index=None)
    with pytest.raises(ValueError, match=r'pred holds labels outside 0..1 \(min 0, max 2\)'):
        confusion_matrix(np.array([0, 2]), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match=r'pred has shape \(2,\) but gt has shape \(3,\)'):
        confusion_matrix(np.zeros(2), np.zeros(3), 2)


def test_pooled_binary_scores_by_hand():
    # TN 50, FP 10, FN 5, TP 35
    scores = pooled_scores(np.array([[50, 10], [5, 35]]))
    assert scores['dice'][1] == pytest.approx(70 / 85)  # 2TP / (2TP + FP + FN)
    assert scores['iou'][1] == pytest.approx(35 / 50)  # TP / (TP + FP + FN)
    assert scores['sensitivity'][1] == pytest.approx(35 / 40)
    assert scores['specificity'][1] == pytest.approx(50 / 60)
    assert float(scores['accuracy']) == pytest.approx(85 / 100)
    assert scores['dice'][0] == pytest.approx(100 / 115)  # background: TP 50, FP 5, FN 10


def test_pooled_absent_class_is_nan():
    scores = pooled_scores(np.array([[4, 1, 0], [0, 3, 0], [0, 0, 0]]))
    assert np.isnan(scores['dice'][2]) and np.isnan(scores['iou'][2])
    assert scores['dice'][1] == pytest.approx(6 / 7)


def _sample(pred, gt, img_path='x.png'):
    return dict(pred_sem_seg=dict(data=torch.as_tensor(pred)[None]), gt_sem_seg=dict(data=torch.as_tensor(gt)[None]),
                img_path=img_path)


def test_pooled_metric_pools_pixels_not_images():
    from mmmv.evaluation.metrics import PooledSegMetric
    metric = PooledSegMetric()
    metric.dataset_meta = dict(classes=('background', 'lesion'))
    # image 1: a 4-pixel lesion found exactly; image 2: 96 lesion pixels of which 48 are found, 8 false positives
    gt1, pred1 = np.zeros((10, 10), np.int64), np.zeros((10, 10), np.int64)
    gt1[:2, :2] = pred1[:2, :2] = 1
    gt2, pred2 = np.zeros((10, 10), np.int64), np.zeros((10, 10), np.int64)
    gt2.flat[:96] = 1
    pred2.flat[:48] = 1
    pred2.flat[96:] = 1  # the 4 background pixels: false positives
    metric.process({}, [_sample(pred1, gt1), _sample(pred2, gt2)])
    out = metric.compute_metrics(metric.results)
    tp, fp, fn = 4 + 48, 4, 48
    tn = 200 - tp - fp - fn
    assert out['DSC'] == pytest.approx(100 * 2 * tp / (2 * tp + fp + fn))
    assert out['mIoU'] == pytest.approx(100 * tp / (tp + fp + fn))
    assert out['accuracy'] == pytest.approx(100 * (tp + tn) / 200)
    assert out['sensitivity'] == pytest.approx(100 * tp / (tp + fn))
    assert out['specificity'] == pytest.approx(100 * tn / (tn + fp))
    per_image_mean = 100 * (1.0 + 2 * 48 / (2 * 48 + 4 + 48)) / 2
    assert abs(out['DSC'] - per_image_mean) > 5  # pooling differs from averaging images


def test_pooled_metric_multiclass_keys():
    from mmmv.evaluation.metrics import PooledSegMetric
    metric = PooledSegMetric()
    metric.dataset_meta = dict(classes=('background', 'a', 'b', 'c'))
    gt = np.array([[0, 1, 1, 2], [2, 2, 0, 255]])
    pred = np.array([[0, 1, 2, 2], [2, 1, 0, 3]])
    metric.process({}, [_sample(pred, gt)])
    out = metric.compute_metrics(metric.results)
    assert out['DSC.a'] == pytest.approx(100 * 2 / 4) and out['DSC.b'] == pytest.approx(100 * 4 / 6)
    assert np.isnan(out['DSC.c'])  # absent from ground truth and (non-ignored) prediction
    assert out['DSC'] == pytest.approx((50 + 400 / 6) / 2)  # mean over a, b: c is NaN, background left out
    assert out['aAcc'] == pytest.approx(100 * 5 / 7)


# ----------------------------------------------------------------------------------------------------
# HD95 and per-case scores.
# ----------------------------------------------------------------------------------------------------
def _border(mask):
    """Foreground voxels with a face neighbour outside the mask (outside the array counts as background)."""
    padded = np.pad(mask, 1)
    inner = np.ones_like(mask)
    for axis in range(mask.ndim):
        for shift in (-1, 1):
            inner &= np.roll(padded, shift, axis=axis)[tuple(slice(1, -1) for _ in range(mask.ndim))]
    return mask & ~inner


def brute_force_hd95(a, b, spacing=None):
    spacing = np.ones(a.ndim) if spacing is None else np.asarray(spacing, float)
    pa, pb = np.argwhere(_border(a)) * spacing, np.argwhere(_border(b)) * spacing
    distances = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return np.percentile(np.hstack([distances.min(1), distances.min(0)]), 95)


def test_hd95_by_hand():
    a = np.zeros((12, 12), bool)
    b = np.zeros((12, 12), bool)
    a[2:6, 2:6] = True
    b[2:6, 5:9] = True  # the same square moved 3 columns
    assert hd95(a, b) == pytest.approx(brute_force_hd95(a, b))
    single, other = np.zeros((5, 5), bool), np.zeros((5, 5), bool)
    single[0, 0], other[3, 4] = True, True
    assert hd95(single, other) == pytest.approx(5.0)  # one voxel each: their distance
    assert hd95(single, other, spacing=(2.0, 1.0)) == pytest.approx(np.hypot(6, 4))
    assert hd95(a, a) == 0.0


@pytest.mark.parametrize('seed', range(4))
def test_hd95_matches_brute_force_3d(seed):
    rng = np.random.default_rng(seed)
    a = rng.random((6, 9, 7)) < 0.3
    b = rng.random((6, 9, 7)) < 0.3
    a[0, 0, 0] = b[5, 8, 6] = True  # touching the array border on both sides
    assert hd95(a, b) == pytest.approx(brute_force_hd95(a, b))
    assert hd95(a, b, spacing=(2.5, 1, 0.5)) == pytest.approx(brute_force_hd95(a, b, (2.5, 1, 0.5)))


def test_hd95_crop_is_exact():
    """A small object in a large volume: the cropped computation equals the brute force on the full array."""
    a = np.zeros((30, 40, 50), bool)
    b = np.zeros_like(a)
    a[10:14, 5:9, 40:45] = True
    b[12:15, 7:12, 44:50] = True  # reaches the last column
    assert hd95(a, b) == pytest.approx(brute_force_hd95(a, b))


def test_hd95_errors():
    with pytest.raises(ValueError, match='undefined for an empty mask'):
        hd95(np.zeros((3, 3)), np.ones((3, 3)))
    with pytest.raises(ValueError, match='spacing has 3 values for 2-D masks'):
        hd95(np.ones((3, 3)), np.ones((3, 3)), spacing=(1, 1, 1))


def test_case_dice_hd95_transunet_rule():
    gt = np.zeros((4, 4), bool)
    gt[1:3, 1:3] = True
    pred = np.zeros((4, 4), bool)
    pred[1:3, 1:4] = True
    dice, distance = case_dice_hd95(pred, gt)
    assert dice == pytest.approx(8 / 10) and distance == pytest.approx(brute_force_hd95(pred, gt))
    assert case_dice_hd95(pred, np.zeros_like(gt)) == (1.0, 0.0)  # predicted, absent
    assert case_dice_hd95(np.zeros_like(pred), gt) == (0.0, 0.0)  # present, missed
    assert case_dice_hd95(np.zeros_like(pred), np.zeros_like(gt)) == (0.0, 0.0)  # TransUNet scores this 0 too


def test_case_metric_rebuilds_volumes():
    from mmmv.evaluation.metrics import CaseDiceHD95Metric
    rng = np.random.default_rng(0)
    classes = ('background', 'liver', 'spleen')
    volumes = {case: (rng.integers(0, 3, (5, 8, 9)), rng.integers(0, 3, (5, 8, 9))) for case in ('case0001', 'case0003')}
    samples = [_sample(pred[i], gt[i], f'/data/img_dir/val/{case}_slice{i:03d}.png')
               for case, (pred, gt) in volumes.items() for i in range(5)]
    order = rng.permutation(len(samples))  # the metric must sort the slices back
    metric = CaseDiceHD95Metric()
    metric.dataset_meta = dict(classes=classes)
    metric.process({}, [samples[i] for i in order])
    out = metric.compute_metrics(metric.results)
    expected = {c: [case_dice_hd95(pred == c, gt == c) for pred, gt in volumes.values()] for c in (1, 2)}
    for c, name in ((1, 'liver'), (2, 'spleen')):
        assert out[f'DSC.{name}'] == pytest.approx(100 * np.mean([d for d, _ in expected[c]]))
        assert out[f'HD95.{name}'] == pytest.approx(np.mean([h for _, h in expected[c]]))
    assert out['DSC'] == pytest.approx((out['DSC.liver'] + out['DSC.spleen']) / 2)
    assert metric.prefix == 'case'

    metric.results.clear()
    metric.process({}, [s for s in samples if not s['img_path'].endswith('case0001_slice002.png')])
    with pytest.raises(ValueError, match=r"case 'case0001': slices must be numbered without gaps.*missing \[2\]"):
        metric.compute_metrics(metric.results)
    with pytest.raises(ValueError, match=r"image name 'scan_7' does not match case_pattern"):
        metric.process({}, [_sample(np.zeros((2, 2)), np.zeros((2, 2)), 'scan_7.png')])
    with pytest.raises(ValueError, match='must define the named groups'):
        CaseDiceHD95Metric(case_pattern=r'(?P<case>.+)')


# ----------------------------------------------------------------------------------------------------
# VM-UNet's Dice losses.
# ----------------------------------------------------------------------------------------------------
def test_binary_dice_loss_by_hand():
    logits = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]], [[[-2.0, 1.0], [0.0, 4.0]]]], requires_grad=True)
    target = torch.tensor([[[1, 0], [1, 255]], [[0, 0], [1, 1]]])
    loss = VMUNetDiceLoss()(logits, target)
    p = torch.sigmoid(logits.detach())[:, 0]
    valid = target != 255
    t = (target == 1) & valid
    expected = []
    for i in range(2):
        inter = (p[i] * t[i]).sum()
        expected.append((2 * inter + 1) / ((p[i] * valid[i]).sum() + t[i].sum() + 1))
    assert loss.item() == pytest.approx(1 - torch.stack(expected).mean().item(), rel=1e-6)
    loss.backward()
    assert logits.grad.abs().sum() > 0


def test_binary_dice_loss_rewards_the_right_mask():
    """The reason for this loss: mmseg 1.2's DiceLoss with one channel prefers the inverted mask."""
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, :3] = 1
    right = torch.where(target == 1, 10.0, -10.0)[:, None].float()
    loss = VMUNetDiceLoss()
    assert loss(right, target) < 0.01 < 0.9 < loss(-right, target)


def test_multiclass_dice_loss_by_hand():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, generator=gen)
    target = torch.randint(0, 3, (2, 4, 5), generator=gen)
    target[0, 0, 0] = 255
    loss = VMUNetDiceLoss(loss_weight=2.0)(logits, target)
    prob = logits.softmax(1)
    valid = (target != 255).float()
    terms = []
    for c in range(3):
        p, t = prob[:, c] * valid, (target == c).float()
        terms.append(1 - (2 * (p * t).sum() + 1e-5) / ((p * p).sum() + (t * t).sum() + 1e-5))
    assert loss.item() == pytest.approx(2.0 * torch.stack(terms).mean().item(), rel=1e-6)


def test_dice_loss_errors():
    loss = VMUNetDiceLoss()
    with pytest.raises(ValueError, match='needs labels 0 / 1, got 2'):
        loss(torch.zeros(1, 1, 2, 2), torch.full((1, 2, 2), 2))
    with pytest.raises(ValueError, match='label 3 is out of range for 3 classes'):
        loss(torch.zeros(1, 3, 2, 2), torch.full((1, 2, 2), 3))
    with pytest.raises(ValueError, match=r'pred must be \(N, C, H, W\)'):
        loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match='does not support pixel weights'):
        loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), weight=torch.ones(1))
    with pytest.raises(ValueError, match='must start with "loss_"'):
        VMUNetDiceLoss(loss_name='dice')


# ----------------------------------------------------------------------------------------------------
# Generated lesion data.
# ----------------------------------------------------------------------------------------------------
SMALL = dict(num_train=6, num_val=3, image_size=(48, 56), seed=0)


@pytest.fixture(scope='module')
def lesions(tmp_path_factory):
    return generate_demo_lesions(str(tmp_path_factory.mktemp('lesions')), **SMALL)


def _read_split(paths, split):
    names = sorted(os.listdir(paths[f'{split}_img_dir']))
    assert names == sorted(os.listdir(paths[f'{split}_ann_dir']))
    images = [np.asarray(Image.open(osp.join(paths[f'{split}_img_dir'], n))) for n in names]
    labels = [np.asarray(Image.open(osp.join(paths[f'{split}_ann_dir'], n))) for n in names]
    return names, images, labels


def test_lesions_layout_and_labels(lesions):
    names, images, labels = _read_split(lesions, 'train')
    assert names == [f'{i:06d}.png' for i in range(1, 7)]
    assert len(os.listdir(lesions['val_img_dir'])) == 3
    for image, label in zip(images, labels):
        assert image.shape == (48, 56, 3) and image.dtype == np.uint8
        assert label.shape == (48, 56) and set(np.unique(label)) == {0, 1}
        assert 0.02 < label.mean() < 0.5  # one lesion, neither a speck nor the whole image
        # the lesion is the dark region: inside darker than outside by a clear margin
        brightness = image.astype(float).mean(-1)
        assert brightness[label == 1].mean() < brightness[label == 0].mean() - 40


def test_lesions_deterministic_and_cached(tmp_path, lesions):
    again = generate_demo_lesions(str(tmp_path / 'again'), **SMALL)
    for split in ('train', 'val'):
        _, images, labels = _read_split(lesions, split)
        _, images2, labels2 = _read_split(again, split)
        assert all(np.array_equal(a, b) for a, b in zip(images + labels, images2 + labels2))
    stamp = os.stat(again['meta']).st_mtime_ns
    generate_demo_lesions(str(tmp_path / 'again'), **SMALL)
    assert os.stat(again['meta']).st_mtime_ns == stamp, 'same parameters must not regenerate'
    other = generate_demo_lesions(str(tmp_path / 'other'), **{**SMALL, 'seed': 1})
    assert not np.array_equal(_read_split(other, 'train')[1][0], _read_split(lesions, 'train')[1][0])
    with pytest.raises(ValueError, match='image_size must be at least 32x32'):
        generate_demo_lesions(str(tmp_path / 'bad'), image_size=(16, 64))


# ----------------------------------------------------------------------------------------------------
# The mmseg datasets through the registry.
# ----------------------------------------------------------------------------------------------------


def build_dataset(cfg):
    import mmmv  # noqa: F401  (registers the datasets)
    from mmseg.registry import DATASETS
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    return DATASETS.build(cfg)


TEST_PIPELINE = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'), dict(type='PackSegInputs')]


@requires_mmseg
@pytest.mark.parametrize('name', ['ISIC2017Dataset', 'ISIC2018Dataset'])
def test_isic_datasets_read_the_layout(lesions, name):
    dataset = build_dataset(dict(type=name, data_root=lesions['root'], pipeline=TEST_PIPELINE,
                                 data_prefix=dict(img_path='img_dir/train', seg_map_path='ann_dir/train')))
    assert len(dataset) == 6 and dataset.metainfo['classes'] == ('background', 'lesion')
    item = dataset[0]
    assert tuple(item['inputs'].shape) == (3, 48, 56)
    assert set(item['data_samples'].gt_sem_seg.data.unique().tolist()) == {0, 1}


@requires_mmseg
def test_dataset_missing_folder_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'ISIC2018Dataset: image folder .* does not exist; prepare the data '
                                                r'with: python tools/dataset_converters/prepare_isic.py isic2018'):
        build_dataset(dict(type='ISIC2018Dataset', data_root=str(tmp_path),
                           data_prefix=dict(img_path='img_dir/val', seg_map_path='ann_dir/val')))
    (tmp_path / 'img_dir' / 'val').mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r'SynapseSliceDataset: no \*.png image in'):
        build_dataset(dict(type='SynapseSliceDataset', data_root=str(tmp_path),
                           data_prefix=dict(img_path='img_dir/val', seg_map_path='ann_dir/val')))


@requires_mmseg
def test_demo_dataset_generates_its_data(tmp_path):
    root = str(tmp_path / 'demo')
    dataset = build_dataset(dict(type='DemoLesionDataset', data_root=root, num_train=3, num_val=2,
                                 image_size=(40, 40), data_prefix=dict(img_path='img_dir/val',
                                                                       seg_map_path='ann_dir/val')))
    assert len(dataset) == 2 and osp.isfile(osp.join(root, 'meta.json'))


# ----------------------------------------------------------------------------------------------------
# Converters on small synthetic downloads.
# ----------------------------------------------------------------------------------------------------
def _png_bytes(array):
    import io
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format='PNG')
    return buffer.getvalue()


def _jpg_bytes(array):
    import io
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format='JPEG')
    return buffer.getvalue()


def make_isic_part(root, image_part, mask_part, ids, as_zip=True, drop_mask=None, size=(20, 30)):
    """One challenge split: images ISIC_XXXXXXX.jpg (+ a superpixels file) and 0/255 masks, zipped or in folders."""
    rng = np.random.default_rng(len(ids))
    files = {image_part: {}, mask_part: {}}
    for i in ids:
        mask = np.zeros(size, np.uint8)
        mask[:, : (i % size[1]) + 1] = 255
        files[image_part][f'ISIC_{i:07d}.jpg'] = _jpg_bytes(rng.integers(0, 255, (*size, 3), dtype=np.uint8))
        files[image_part][f'ISIC_{i:07d}_superpixels.png'] = _png_bytes(np.zeros(size, np.uint8))
        if i != drop_mask:
            files[mask_part][f'ISIC_{i:07d}_segmentation.png'] = _png_bytes(mask)
    for part, members in files.items():
        if as_zip:
            with zipfile.ZipFile(osp.join(root, part + '.zip'), 'w') as archive:
                for name, data in members.items():
                    archive.writestr(f'{part}/{name}', data)
        else:
            os.makedirs(osp.join(root, part))
            for name, data in members.items():
                with open(osp.join(root, part, name), 'wb') as f:
                    f.write(data)


def test_prepare_isic_vmunet_split(tmp_path):
    tool = load_tool('prepare_isic')
    download = tmp_path / 'download'
    download.mkdir()
    parts = tool.CHALLENGE_PARTS['isic2017']
    make_isic_part(str(download), *parts['train'], ids=range(14))
    make_isic_part(str(download), *parts['val'], ids=range(100, 106), as_zip=False)  # unpacked folders work too
    out = str(tmp_path / 'out')
    info = tool.prepare('isic2017', str(download), out, seed=3)
    assert info['source'] == 'challenge' and info['counts'] == dict(train=14, val=6)  # 20 pooled, 7:3
    train, val = (sorted(os.listdir(osp.join(out, 'img_dir', s))) for s in ('train', 'val'))
    assert not set(train) & set(val) and len(train) + len(val) == 20
    assert sorted(os.listdir(osp.join(out, 'ann_dir', 'train'))) == train
    assert not any('superpixels' in name for name in train + val)
    label = np.asarray(Image.open(osp.join(out, 'ann_dir', 'train', train[0])))
    i = int(train[0][5:12]) % 30
    expected = np.zeros((20, 30), np.uint8)
    expected[:, :i + 1] = 1
    np.testing.assert_array_equal(label, expected)  # 255 -> 1, exactly where the mask was
    assert Image.open(osp.join(out, 'img_dir', 'train', train[0])).mode == 'RGB'
    with open(osp.join(out, 'prepare_info.json')) as f:
        assert json.load(f)['seed'] == 3

    with pytest.raises(FileExistsError, match='pass --overwrite'):
        tool.prepare('isic2017', str(download), out, seed=3)
    tool.prepare('isic2017', str(download), out, seed=3, overwrite=True)
    assert sorted(os.listdir(osp.join(out, 'img_dir', 'train'))) == train  # the seed fixes the split
    tool.prepare('isic2017', str(download), out, seed=4, overwrite=True)
    assert sorted(os.listdir(osp.join(out, 'img_dir', 'train'))) != train


def test_prepare_isic_official_split_resize_and_cli(tmp_path, capsys):
    tool = load_tool('prepare_isic')
    download = tmp_path / 'download'
    download.mkdir()
    parts = tool.CHALLENGE_PARTS['isic2018']
    make_isic_part(str(download), *parts['train'], ids=range(5))
    make_isic_part(str(download), *parts['test'], ids=range(50, 53))
    out = str(tmp_path / 'out')
    tool.main(['isic2018', str(download), out, '--split', 'official', '--size', '16', '24', '--workers', '2'])
    printed = capsys.readouterr().out
    assert 'val: ISIC2018_Task1-2_Validation_Input not found, split skipped' in printed
    assert 'train 5, test 3' in printed
    image = Image.open(osp.join(out, 'img_dir', 'test', 'ISIC_0000050.png'))
    label = np.asarray(Image.open(osp.join(out, 'ann_dir', 'test', 'ISIC_0000050.png')))
    assert image.size == (24, 16) and label.shape == (16, 24) and set(np.unique(label)) <= {0, 1}


def test_prepare_isic_errors(tmp_path):
    tool = load_tool('prepare_isic')
    parts = tool.CHALLENGE_PARTS['isic2017']
    with pytest.raises(FileNotFoundError, match='found neither the ISIC challenge downloads'):
        tool.prepare('isic2017', str(tmp_path), str(tmp_path / 'out'))
    make_isic_part(str(tmp_path), *parts['train'], ids=range(4))
    with pytest.raises(FileNotFoundError, match='missing ISIC-2017_Validation_Data.zip .*, '
                                                'ISIC-2017_Validation_Part1_GroundTruth.zip'):
        tool.prepare('isic2017', str(tmp_path), str(tmp_path / 'out'))  # the 7:3 split pools train and val
    make_isic_part(str(tmp_path), *parts['val'], ids=range(10, 13), drop_mask=11)
    with pytest.raises(FileNotFoundError, match=r'1 file\(s\) have no mask in .*Validation_Part1.*: ISIC_0000011'):
        tool.prepare('isic2017', str(tmp_path), str(tmp_path / 'out'))


def test_prepare_isic_vmunet_layout(tmp_path):
    tool = load_tool('prepare_isic')
    for split, count in (('train', 3), ('val', 2)):
        for kind in ('images', 'masks'):
            (tmp_path / split / kind).mkdir(parents=True)
        for i in range(count):
            mask = np.full((8, 8), 255 * (i % 2), np.uint8)
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / split / 'images' / f'ISIC_{i:07d}.png')
            Image.fromarray(mask).save(tmp_path / split / 'masks' / f'ISIC_{i:07d}_segmentation.png')
    info = tool.prepare('isic2017', str(tmp_path), str(tmp_path / 'out'))
    assert info['source'] == 'vmunet' and info['counts'] == dict(train=3, val=2) and not info['notes']
    assert np.asarray(Image.open(tmp_path / 'out' / 'ann_dir' / 'train' / 'ISIC_0000001.png')).min() == 1
    # names that do not match up are paired in sorted order, as VM-UNet does, and the log says so
    for i, path in enumerate(sorted((tmp_path / 'val' / 'masks').iterdir())):
        path.rename(tmp_path / 'val' / 'masks' / f'mask_{i}.png')
    info = tool.prepare('isic2017', str(tmp_path), str(tmp_path / 'out'), overwrite=True)
    assert info['notes'] == ['val: image and mask names differ; paired in sorted order as VM-UNet does']


def make_synapse_download(root, with_h5=True, bad_range=False):
    rng = np.random.default_rng(0)
    (root / 'train_npz').mkdir(parents=True)
    (root / 'lists' / 'lists_Synapse').mkdir(parents=True)
    names = ['case0005_slice000', 'case0005_slice001', 'case0006_slice000']
    for name in names:
        image = rng.random((12, 10)).astype(np.float32) * (3 if bad_range else 1)
        np.savez(root / 'train_npz' / (name + '.npz'), image=image, label=rng.integers(0, 9, (12, 10)).astype(np.float32))
    (root / 'lists' / 'lists_Synapse' / 'train.txt').write_text('\n'.join(names[:2]) + '\n')  # the list wins
    if with_h5:
        import h5py
        (root / 'test_vol_h5').mkdir()
        for case, depth in (('case0001', 3), ('case0002', 2)):
            with h5py.File(root / 'test_vol_h5' / f'{case}.npy.h5', 'w') as f:
                f['image'] = rng.random((depth, 12, 10)).astype(np.float32)
                f['label'] = rng.integers(0, 9, (depth, 12, 10)).astype(np.float32)


def test_prepare_synapse(tmp_path):
    pytest.importorskip('h5py', reason='the Synapse test volumes are HDF5 files')
    tool = load_tool('prepare_synapse')
    download = tmp_path / 'download'
    make_synapse_download(download)
    out = tmp_path / 'out'
    info = tool.prepare(str(download), str(out))
    assert info == dict(dataset='synapse', train_slices=2, val_cases=2, val_slices=5)
    assert sorted(os.listdir(out / 'img_dir' / 'train')) == ['case0005_slice000.png', 'case0005_slice001.png']
    assert sorted(os.listdir(out / 'ann_dir' / 'val')) == [
        'case0001_slice000.png', 'case0001_slice001.png', 'case0001_slice002.png', 'case0002_slice000.png',
        'case0002_slice001.png']
    with np.load(download / 'train_npz' / 'case0005_slice001.npz') as data:
        image, label = data['image'], data['label']
    np.testing.assert_array_equal(np.asarray(Image.open(out / 'img_dir' / 'train' / 'case0005_slice001.png')),
                                  np.rint(image * 255).astype(np.uint8))
    np.testing.assert_array_equal(np.asarray(Image.open(out / 'ann_dir' / 'train' / 'case0005_slice001.png')), label)


def test_prepare_synapse_errors(tmp_path):
    tool = load_tool('prepare_synapse')
    with pytest.raises(FileNotFoundError, match=r'missing train_npz/'):
        tool.prepare(str(tmp_path), str(tmp_path / 'out'))
    make_synapse_download(tmp_path / 'bad', with_h5=False, bad_range=True)
    with pytest.raises(FileNotFoundError, match=r'missing test_vol_h5/'):
        tool.prepare(str(tmp_path / 'bad'), str(tmp_path / 'out'))
    (tmp_path / 'bad' / 'test_vol_h5').mkdir()
    (tmp_path / 'bad' / 'test_vol_h5' / 'case0001.npy.h5').write_bytes(b'')
    with pytest.raises(ValueError, match=r"not \[0, 1\]: this is not TransUNet's preprocessed data"):
        tool.prepare(str(tmp_path / 'bad'), str(tmp_path / 'out'))
    (tmp_path / 'bad' / 'lists' / 'lists_Synapse' / 'test_vol.txt').write_text('case0009\n')
    with pytest.raises(FileNotFoundError, match=r'1 file\(s\) listed in .*test_vol.txt do not exist'):
        tool.prepare(str(tmp_path / 'bad'), str(tmp_path / 'out2'))
    with pytest.raises(ValueError, match=r'labels must be integers 0..8'):
        tool.to_pngs(np.zeros((2, 2)), np.full((2, 2), 9.0), 'x')


# ----------------------------------------------------------------------------------------------------
# Configs through the registries.
# ----------------------------------------------------------------------------------------------------
def load_config(name, **options):
    import mmmv  # noqa: F401
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(REPO, 'configs', name))
    cfg.merge_from_dict(options)
    return cfg


def build_model(cfg):
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    init_default_scope(cfg.default_scope)
    return MODELS.build(cfg.model)


@requires_mmseg
def test_vmunet_isic_config_builds_and_loads_its_pretrained_weights(tmp_path):
    cfg = load_config('vmunet_isic17.py')
    assert cfg.model.decode_head.out_channels == 1 and cfg.train_dataloader.batch_size == 32
    assert cfg.optim_wrapper.optimizer == dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    assert cfg.train_cfg.max_epochs == 300 and cfg.param_scheduler[0].type == 'CosineAnnealingLR'
    model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(27.43e6, rel=2e-3)  # VM-UNet, one class
    assert {type(loss).__name__ for loss in model.decode_head.loss_decode} == {'CrossEntropyLoss', 'VMUNetDiceLoss'}

    # a checkpoint in the converter's layout (backbone.*, decode_head.* without conv_seg) loads through init_cfg
    state = {k: torch.randn_like(v) for k, v in model.state_dict().items() if 'conv_seg' not in k}
    torch.save(dict(state_dict=state), tmp_path / 'init.pth')
    cfg = load_config('vmunet_isic17.py', pretrained=str(tmp_path / 'init.pth'))
    cfg.model.backbone.init_cfg.checkpoint = cfg.model.decode_head.init_cfg.checkpoint = str(tmp_path / 'init.pth')
    model = build_model(cfg)
    model.init_weights()
    loaded = model.state_dict()
    for key in ('backbone.layers.3.blocks.1.self_attention.A_logs', 'decode_head.layers_up.0.blocks.0.ln_1.weight',
                'decode_head.final_up.expand.weight'):
        torch.testing.assert_close(loaded[key], state[key], rtol=0, atol=0)


@requires_mmseg
def test_isic18_and_synapse_configs():
    cfg = load_config('vmunet_isic18.py')
    assert cfg.train_dataloader.dataset.type == 'ISIC2018Dataset'
    assert cfg.val_dataloader.dataset.data_root == 'data/isic2018/'
    cfg = load_config('vmunet_synapse.py', **{'model.backbone.init_cfg': None, 'model.decode_head.init_cfg': None})
    assert cfg.model.data_preprocessor.size == (224, 224)
    assert [m['type'] for m in cfg.val_evaluator] == ['CaseDiceHD95Metric', 'PooledSegMetric']
    model = build_model(cfg)
    assert model.decode_head.conv_seg.out_channels == 9
    from mmengine.registry import METRICS
    assert [type(METRICS.build(m)).__name__ for m in cfg.val_evaluator] == ['CaseDiceHD95Metric', 'PooledSegMetric']


@requires_mmseg
def test_upernet_mambavision_config():
    cfg = load_config('upernet_mambavision_t_ade20k.py', **{'model.backbone.init_cfg': None})
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper' and cfg.optim_wrapper.optimizer.lr == 5e-5
    assert cfg.train_cfg.max_iters == 160000 and cfg.param_scheduler[0].end == 1500
    model = build_model(cfg)
    assert type(model.backbone).__name__ == 'MambaVision' and model.backbone.window_size == [8, 8, 64, 32]
    with torch.no_grad():
        features = model.backbone(torch.zeros(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == [80, 160, 320, 640]
