"""One place for pictures of predictions in mmdet, mmseg and mmpretrain runs, and a line saying where it is.

``tools/test.py --show-dir DIR`` adds ``dict(type='PredictionPicturesHook', out_dir=DIR)``: every test image is drawn
by the toolbox's visualizer (mmdet: ground truth left, predicted boxes and masks right; mmseg: ground truth and
predicted masks over the image; mmpretrain: the true and predicted classes) into ``WORK_DIR/TIMESTAMP/DIR/NAME.png``
(``NAME``: the image's file name without extension; an absolute DIR is used as it is), whatever the toolbox. At the end
of testing it prints ``[mmmv] N pictures of predictions: /absolute/folder``.

Without ``out_dir`` it draws nothing: it prints the same line for the pictures that the toolbox's own visualization hook
saved during the run (``draw=True`` in ``default_hooks.visualization``; they are in the visualizer's folder,
``WORK_DIR/TIMESTAMP/vis_data/vis_image``), after training and after testing.
"""
import os
import os.path as osp
from typing import Optional, Sequence

import mmcv
from mmengine.dist import is_main_process
from mmengine.hooks import Hook

PICTURE_EXTENSIONS = ('.png', '.jpg', '.jpeg')


def pictures_line(count: int, folder: str) -> str:
    """``[mmmv] N pictures of predictions: /absolute/folder``, the last line of every tool that draws predictions."""
    return f'[mmmv] {count} picture{"" if count == 1 else "s"} of predictions: {osp.abspath(folder)}'


def report_pictures(folder: str) -> None:
    """Print :func:`pictures_line` for `folder` when it holds pictures."""
    count = len([name for name in os.listdir(folder) if name.lower().endswith(PICTURE_EXTENSIONS)]) \
        if osp.isdir(folder) else 0
    if count:
        print(pictures_line(count, folder), flush=True)


class PredictionPicturesHook(Hook):
    """Draw every test image's predictions into ``WORK_DIR/TIMESTAMP/out_dir/`` and print the folder at the end; without
    `out_dir`, only print where the toolbox's visualization hook saved its pictures.

    Args:
        out_dir: the folder of the pictures, relative to ``WORK_DIR/TIMESTAMP``, or absolute.
        draw_args: keyword arguments of the visualizer's drawing call, e.g. ``dict(pred_score_thr=0.3)`` for mmdet.
    """

    def __init__(self, out_dir: Optional[str] = None, draw_args: Optional[dict] = None):
        self.out_dir = out_dir
        self.draw_args = dict(draw_args or {})
        self.folder: Optional[str] = None

    def before_test(self, runner) -> None:
        if self.out_dir is not None:
            self.folder = osp.abspath(osp.join(runner.log_dir, self.out_dir))
            os.makedirs(self.folder, exist_ok=True)

    def after_test_iter(self, runner, batch_idx: int, data_batch=None, outputs: Optional[Sequence] = None) -> None:
        if self.folder is None:
            return
        visualizer = runner.visualizer
        for index, sample in enumerate(outputs or ()):
            image, name = self._image(sample, data_batch, index, batch_idx)
            out_file = osp.join(self.folder, f'{osp.splitext(name)[0]}.png')
            if hasattr(visualizer, 'visualize_cls'):  # mmpretrain's UniversalVisualizer
                visualizer.visualize_cls(image, sample, out_file=out_file, name=name, **self.draw_args)
            else:
                visualizer.add_datasample(name, image, data_sample=sample, out_file=out_file, **self.draw_args)

    @staticmethod
    def _image(sample, data_batch, index: int, batch_idx: int):
        """The RGB test image of `sample` read from its file (the network's input when it has no file), and its name."""
        path = sample.get('img_path')
        if path:
            return mmcv.imread(path, channel_order='rgb'), osp.basename(path)
        image = data_batch['inputs'][index].permute(1, 2, 0).cpu().numpy()
        return image[..., ::-1].copy(), f'{batch_idx:06d}_{index}'  # the toolboxes load images as BGR

    def after_train(self, runner) -> None:
        if self.out_dir is None and is_main_process():
            report_pictures(self._visualizer_folder(runner))

    def after_test(self, runner) -> None:
        if is_main_process():
            report_pictures(self.folder if self.folder is not None else self._visualizer_folder(runner))

    @staticmethod
    def _visualizer_folder(runner) -> str:
        """Where the visualizer's LocalVisBackend saves pictures (mmengine's defaults: the run's log dir)."""
        return osp.join(runner.log_dir, 'vis_data', 'vis_image')
