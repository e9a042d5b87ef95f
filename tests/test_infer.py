"""Pictures of predictions: mmmv.visualization (labels that never hide each other, drawings that change the picture only
where the predictions are), tools/infer.py end to end for a detector, a segmentor and a classifier with random weights,
its one-line errors, and the one layout of tools/test.py --show-dir (PredictionPicturesHook)."""
import argparse
import importlib.util
import os
import os.path as osp
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from mmmv import visualization as vis

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOL = osp.join(REPO, 'tools', 'infer.py')
HELPERS = osp.join(REPO, 'tests', 'helpers')
GREY = 100
LAST_LINE = re.compile(r'^\[mmmv\] (\d+) pictures? of predictions: (.+)$')


# ---------------------------------------------------------------------------------------------------------------------
# Sizes and label placement
# ---------------------------------------------------------------------------------------------------------------------
def test_small_images_are_enlarged_by_a_whole_factor_and_text_keeps_its_minimum():
    assert vis.picture_scale(128, 128) == 4 and vis.picture_scale(64, 64) == 8 and vis.picture_scale(96, 160) == 6
    assert vis.picture_scale(800, 1333) == 1
    assert vis.picture_scale(100, 1000) == vis.MAX_LONG_SIDE // 1000  # a long thin image: the long side is capped
    assert vis.text_height(512, 512) == vis.MIN_TEXT_HEIGHT == vis.text_height(20, 30)
    assert vis.text_height(2000, 3000) == 50


def test_written_text_is_as_high_as_asked():
    height = vis.MIN_TEXT_HEIGHT
    width, box_height = vis.label_size('Ag', height)
    canvas = np.zeros((box_height, width + 10, 3), np.uint8)
    vis.draw_label(canvas, 'Ag', (0, 0, width, box_height), (255, 255, 255), height)
    ink_rows = np.flatnonzero((canvas[:, :width] < 128).all(axis=2).any(axis=1))
    assert ink_rows[-1] - ink_rows[0] + 1 >= 0.8 * height
    assert (canvas[:, width:] == 0).all()  # nothing outside the label's rectangle


def _overlap(a, b):
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_labels_of_many_overlapping_boxes_never_overlap_and_stay_inside():
    rng = np.random.default_rng(0)
    size = (512, 512)
    corners = rng.uniform(0, 120, (60, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(20, 80, (60, 2))], axis=1)  # 60 boxes piled in a corner
    sizes = [vis.label_size(f'class {i} 0.{i:02d}', vis.MIN_TEXT_HEIGHT) for i in range(60)]
    rects = vis.place_labels(boxes, sizes, size)
    assert all(rect is not None for rect in rects)  # there is room for all of them
    for i, rect in enumerate(rects):
        assert 0 <= rect[0] < rect[2] <= size[1] and 0 <= rect[1] < rect[3] <= size[0]
        assert (rect[2] - rect[0], rect[3] - rect[1]) == sizes[i]
        assert not any(_overlap(rect, other) for other in rects[:i]), (i, rect)


def test_labels_go_above_then_inside_the_top_then_below():
    box = [100, 100, 200, 200]
    rects = vis.place_labels([box] * 4, [(60, 20)] * 4, (400, 400))
    assert rects[:3] == [(100, 80, 160, 100), (100, 100, 160, 120), (100, 200, 160, 220)]
    assert rects[3] == (100, 120, 160, 140)  # then down the box's column
    at_the_edges = vis.place_labels([[-5, 0, 50, 50], [380, 390, 400, 400]], [(60, 20)] * 2, (400, 400))
    assert at_the_edges == [(0, 0, 60, 20), (340, 370, 400, 390)]  # inside the top; above, moved left into the picture


def test_a_full_picture_leaves_the_extra_labels_out():
    rects = vis.place_labels([[0, 0, 30, 30]] * 3, [(30, 20)] * 3, (30, 30))
    assert rects[0] == (0, 0, 30, 20) and rects[1:] == [None, None]


# ---------------------------------------------------------------------------------------------------------------------
# Drawings
# ---------------------------------------------------------------------------------------------------------------------
def _blend(colour):
    return np.round(GREY * (1 - vis.MASK_ALPHA) + np.asarray(colour) * vis.MASK_ALPHA)


def test_detections_change_the_picture_only_at_the_box_the_mask_and_the_label():
    image = np.full((64, 64, 3), GREY, np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    cv2.circle(mask, (28, 36), 8, 1, -1)
    picture = vis.draw_detections(image, np.array([[16, 24, 40, 48]]), [0], [0.9], mask[None].astype(bool),
                                  ['circle'])
    colour = vis.class_colours(1)[0]
    assert picture.shape == (512, 512, 3)  # scale 8: the box is x 128..320, y 192..384
    np.testing.assert_allclose(picture[36 * 8 + 4, 28 * 8 + 4], _blend(colour), atol=1)  # the mask, tinted
    assert (picture[250, 128] == colour).all() and (picture[383, 250] == colour).all()  # the box's edges
    assert (picture[200:220, 135:155] == GREY).all()  # inside the box, outside the mask
    label = (picture[192 - 22:192, 128:320] == colour).all(axis=2)  # the label, above the box
    assert label.sum() > 0.5 * 22 * 80
    untouched = np.ones((512, 512), bool)
    untouched[192 - 22:192, 128:320] = False
    untouched[190:386, 126:322] = False
    assert (picture[untouched] == GREY).all()


def test_no_detection_leaves_the_enlarged_image():
    image = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    picture = vis.draw_detections(image, np.zeros((0, 4)), [], [], np.zeros((0, 40, 30), bool))
    assert (picture == vis.enlarge(image, 18)).all()


def test_segmentation_fills_each_class_leaves_background_and_lists_the_classes_present():
    image = np.full((32, 32, 3), GREY, np.uint8)
    mask = np.zeros((32, 32), np.int64)
    mask[4:12, 4:12] = 1
    mask[20:28, 16:30] = 2
    names = ('background', 'lesion', 'vessel', 'absent')
    picture = vis.draw_segmentation(image, mask, names, background=0)
    colours = vis.class_colours(len(names))
    assert picture.shape[1] == 512 and picture.shape[0] > 512  # scale 16, the legend below
    np.testing.assert_allclose(picture[8 * 16, 8 * 16], _blend(colours[1]), atol=1)
    np.testing.assert_allclose(picture[24 * 16, 23 * 16], _blend(colours[2]), atol=1)
    assert (picture[:50, 300:500] == GREY).all() and (picture[260:310, 20:150] == GREY).all()  # background
    legend = picture[512:]
    swatches = [(legend == colour).all(axis=2).sum() for colour in colours]
    size = vis.MIN_TEXT_HEIGHT ** 2
    assert swatches[1] == swatches[2] == size and swatches[3] == 0  # lesion and vessel filled, absent not listed
    assert 0 < swatches[0] < size  # background: a hollow swatch


def test_classification_draws_the_top_five_on_bars_below_the_unchanged_image():
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    scores = [0.1, 0.6, 0.05, 0.2, 0.03, 0.01, 0.01]
    picture = vis.draw_classification(image, scores, [f'class {i}' for i in range(7)])
    assert (picture[:512] == vis.enlarge(image, 8)).all()
    panel = picture[512:]
    track = 512 - 2 * (vis.MIN_TEXT_HEIGHT // 4)
    best, others = ((panel == colour).all(axis=2) for colour in vis.BAR_COLOURS)
    assert abs(best.any(axis=0).sum() - 0.6 * track) <= 1  # the best bar is as long as its score
    assert abs(others.any(axis=0).sum() - 0.2 * track) <= 1  # the longest of the others: the second best
    rows_of_others = np.flatnonzero(others.any(axis=1))
    assert 1 + (np.diff(rows_of_others) > 1).sum() == 4  # four bars below the best one: five in all
    fewer = vis.draw_classification(image, scores[:3])
    assert fewer.shape[0] < picture.shape[0]  # three classes: three bars


# ---------------------------------------------------------------------------------------------------------------------
# tools/infer.py
# ---------------------------------------------------------------------------------------------------------------------
def _run(args, cwd, code=None):
    command = [sys.executable, TOOL, *args] if code is None else [sys.executable, '-c', code, *args]
    env = dict(os.environ, PYTHONPATH=REPO, MMMV_SCAN_BACKEND='torch', OMP_NUM_THREADS='2')
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


@pytest.fixture()
def images(tmp_path):
    """A folder of two images (128 x 128 .png, 96 x 160 .jpg) and a 64 x 64 .bmp outside it."""
    rng = np.random.default_rng(0)
    folder = tmp_path / 'images'
    folder.mkdir()
    shapes = {'images/a.png': (128, 128), 'images/b.jpg': (96, 160), 'c.bmp': (64, 64)}
    for name, shape in shapes.items():
        noise = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
        cv2.imwrite(str(tmp_path / name), cv2.GaussianBlur(noise, (7, 7), 2))
    (folder / 'notes.txt').write_text('not an image')
    return shapes


def _save_random_checkpoint(config, path, meta):
    import torch

    from mmmv.engine.cli import load_config
    from mmmv.engine.toolbox import build_model
    cfg = load_config(argparse.Namespace(config=str(config), cfg_options=None, launcher='none', work_dir=None))
    torch.save({'state_dict': build_model(cfg).state_dict(), 'meta': meta}, str(path))


def _check_pictures(proc, tmp_path, shapes, summary):
    """Each image has a picture s times its size (taller when a panel is below), a summary line, and the last line
    gives the absolute folder."""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    count, folder = LAST_LINE.match(lines[-1]).groups()
    assert int(count) == len(shapes) and folder == str(tmp_path / 'out') and osp.isabs(folder)
    for name, (height, width) in shapes.items():
        stem, extension = osp.splitext(osp.basename(name))
        picture = cv2.imread(osp.join(folder, stem + ('.jpg' if extension == '.jpg' else '.png')))
        scale = vis.picture_scale(height, width)
        assert picture.shape[1] == scale * width and picture.shape[0] >= scale * height
        assert any(line.startswith(name) and re.search(summary, line) for line in lines), (name, lines)
    return folder


def test_tool_draws_a_detector(tmp_path, images):
    if importlib.util.find_spec('mmdet') is None:
        pytest.skip('mmdet is not installed')
    from test_training import write_config  # the tiny MambaVision demo detector
    config = write_config(tmp_path, data_root='unused/', epochs=1)
    _save_random_checkpoint(config, tmp_path / 'det.pth', meta={})
    proc = _run([config, 'det.pth', 'images', 'c.bmp', '--out-dir', 'out', '--score-thr', '0'], cwd=tmp_path)
    folder = _check_pictures(proc, tmp_path, images, r': \d+ detections with score >= 0.0$')
    a = cv2.imread(osp.join(folder, 'a.png'))
    assert a.shape == (512, 512, 3) and (a != vis.enlarge(cv2.imread(str(tmp_path / 'images/a.png')), 4)).any()
    assert re.search(r'^images/a.png: [1-9]\d* detections', proc.stdout, re.M)  # something was drawn


def test_tool_draws_a_segmentor(tmp_path, images):
    if importlib.util.find_spec('mmseg') is None:
        pytest.skip('mmseg is not installed')
    config = osp.join(REPO, 'configs', 'demo', 'vmunet_demo.py')  # VM-UNet at a quarter width, 1.2 M parameters
    classes = ('background', 'lesion')
    _save_random_checkpoint(config, tmp_path / 'seg.pth', meta=dict(dataset_meta=dict(classes=classes)))
    proc = _run([config, 'seg.pth', 'images', 'c.bmp', '--out-dir', 'out'], cwd=tmp_path)
    _check_pictures(proc, tmp_path, images, r': classes present: (background|lesion)')


def test_tool_draws_a_classifier_with_the_torchvision_shim(tmp_path, images):
    """mmpretrain imports torchvision (no CPU wheel): the checkpoint is made and the tool run under the shim."""
    from test_flops import _tiny_config
    config = _tiny_config(tmp_path, 'mmpretrain', 'mambavision_t_in1k.py',
                          backbone=dict(out_indices=(3, ), out_norm=None, final_norm=True), head=dict(in_channels=128))
    code = (f'import runpy, sys; sys.path[:0] = [{HELPERS!r}, {osp.join(REPO, "tests")!r}]; import torchvision_shim; '
            'torchvision_shim.install_if_needed(); import test_infer; '
            f'test_infer._save_random_checkpoint({str(config)!r}, "cls.pth", {{}}); '
            f'runpy.run_path({TOOL!r}, run_name="__main__")')
    proc = _run([str(config), 'cls.pth', 'images', 'c.bmp', '--out-dir', 'out'], cwd=tmp_path, code=code)
    _check_pictures(proc, tmp_path, images, r': top class \S.* \(0\.\d\d\)$')  # an ImageNet class name


@pytest.mark.parametrize('case', ['missing checkpoint', 'no image', 'unreadable image', 'checkpoint of another model'])
def test_tool_errors_are_one_line(tmp_path, images, case):
    import torch
    config = osp.join(REPO, 'configs', 'demo', 'vmunet_demo.py')
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'broken.png').write_text('not a png')
    torch.save({'state_dict': {'head.weight': torch.zeros(2)}}, str(tmp_path / 'other.pth'))
    args, message = {
        'missing checkpoint': (['missing.pth', 'images'], r"checkpoint 'missing.pth' does not exist"),
        'no image': (['missing.pth', 'empty'], r"no image found in 'empty'"),
        'unreadable image': (['missing.pth', 'images', 'broken.png'], r"cannot read image 'broken.png'"),
        'checkpoint of another model': (['other.pth', 'images'], r"cannot load checkpoint 'other.pth' into the model "
                                        r"of '.*vmunet_demo.py': .*unexpected key in source state_dict: head.weight"),
    }[case]
    proc = _run([config, *args, '--out-dir', 'out'], cwd=tmp_path)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and re.search(message, errors[0]), proc.stderr
    assert not (tmp_path / 'out').exists()


# ---------------------------------------------------------------------------------------------------------------------
# tools/test.py --show-dir: one layout for the three toolboxes
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('scope, switch', [('mmdet', 'draw'), ('mmseg', 'draw'), ('mmpretrain', 'enable')])
def test_show_dir_adds_the_pictures_hook_in_every_toolbox(scope, switch):
    from mmengine.config import Config

    from mmmv.engine.cli import _apply_show_options
    cfg = Config(dict(default_scope=scope, work_dir='w', default_hooks=dict(visualization={switch: True}),
                      custom_hooks=[dict(type='EMAHook')]))
    _apply_show_options(cfg, argparse.Namespace(show=False, show_dir='pics', wait_time=2))
    assert cfg.default_hooks.visualization[switch] is False  # no second copy of the pictures
    assert cfg.custom_hooks[0]['type'] == 'EMAHook'
    hook = cfg.custom_hooks[1]
    assert hook['type'] == 'PredictionPicturesHook' and hook['out_dir'] == 'pics'
    assert hook['draw_args'] == (dict(pred_score_thr=0.3) if scope == 'mmdet' else {})


class _Visualizer:
    """Records the drawing calls of PredictionPicturesHook and writes an empty picture for each."""

    def __init__(self):
        self.calls = []

    def add_datasample(self, name, image, data_sample=None, out_file=None, **kwargs):
        self.calls.append((name, image.shape, out_file, kwargs))
        cv2.imwrite(out_file, image)


def test_pictures_hook_writes_to_work_dir_timestamp_show_dir_and_prints_it(tmp_path, capsys):
    from mmengine.structures import BaseDataElement

    from mmmv.engine.picture_hook import PredictionPicturesHook
    cv2.imwrite(str(tmp_path / 'x.jpg'), np.zeros((8, 12, 3), np.uint8))
    runner = argparse.Namespace(log_dir=str(tmp_path / 'work' / '20240101_000000'), visualizer=_Visualizer())
    hook = PredictionPicturesHook('pics', draw_args=dict(pred_score_thr=0.5))
    hook.before_test(runner)
    hook.after_test_iter(runner, 0, None, [BaseDataElement(metainfo=dict(img_path=str(tmp_path / 'x.jpg')))])
    hook.after_test(runner)
    folder = osp.join(runner.log_dir, 'pics')
    assert runner.visualizer.calls == [('x.jpg', (8, 12, 3), osp.join(folder, 'x.png'), dict(pred_score_thr=0.5))]
    assert capsys.readouterr().out.strip() == f'[mmmv] 1 picture of predictions: {folder}'
