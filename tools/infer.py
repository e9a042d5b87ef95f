"""Draw a model's predictions on images, for detection (mmdet), segmentation (mmseg) and classification (mmpretrain).

    python tools/infer.py CONFIG CHECKPOINT IMAGE_OR_FOLDER [...] --out-dir DIR [--score-thr 0.3] [--device cpu]
                          [--cfg-options KEY=VALUE ...]

A folder stands for the images directly inside it. One picture per image is written to DIR under the image's name (a
.jpg stays .jpg, anything else becomes .png), drawn by :mod:`mmmv.visualization` so that it reads at any image size:
detections as boxes, filled masks and ``name score`` labels (those scoring at least --score-thr); segmentations as a
colour per class with a legend; classifications as the top 5 classes on bars. Each image gets a one-line summary, and
the last line is ``[mmmv] N pictures of predictions: /absolute/DIR``.

The toolbox is the config's ``default_scope``; the predictions come from its API (``mmdet.apis.inference_detector``,
``mmseg.apis.inference_model``, ``mmpretrain.apis.ImageClassificationInferencer``) on the config's test pipeline. The
checkpoint is loaded strictly through mmmv's safe loader (no code in it runs). Problems a user can fix (a missing file,
no image, an image that cannot be read, a checkpoint of another model) end with one ``error: ...`` line, exit status 2.
"""
import argparse
import os
import os.path as osp
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..')))

from mmmv.engine.toolbox import SetupError, exit_tool  # noqa: E402

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
KEPT_EXTENSIONS = ('.jpg', '.png')  # an image's picture keeps these extensions; any other becomes .png
ANNOTATION_LOADERS = ('LoadAnnotations', 'mmdet.LoadAnnotations', 'mmseg.LoadAnnotations')
MISMATCH_CHARACTERS = 300  # of the reason a checkpoint does not load (e.g. its missing keys), in the error line


def parse_args(argv=None) -> argparse.Namespace:
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description='Draw the predictions of a detector, segmentor or classifier')
    parser.add_argument('config', help='config file, e.g. configs/demo/mask_rcnn_mambavision_t_demo.py')
    parser.add_argument('checkpoint', help='checkpoint file (loaded safely and strictly)')
    parser.add_argument('images', nargs='+', help='image files, or folders of images')
    parser.add_argument('--out-dir', required=True, help='folder for the pictures (created if missing)')
    parser.add_argument('--score-thr', type=float, default=0.3, help='detection: draw boxes scoring at least this')
    parser.add_argument('--device', default=None, help='cpu, cuda or cuda:N (default: cuda when there is one)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config entries')
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------------
# Images and pictures
# ---------------------------------------------------------------------------------------------------------------------
def find_images(paths: Sequence[str]) -> List[str]:
    """The files of `paths`, and the images directly inside its folders (by extension, sorted)."""
    images = []
    for path in paths:
        if osp.isdir(path):
            images += sorted(osp.join(path, name) for name in os.listdir(path)
                             if name.lower().endswith(IMAGE_EXTENSIONS) and osp.isfile(osp.join(path, name)))
        elif osp.isfile(path):
            images.append(path)
        else:
            raise SetupError(f'image or folder {path!r} does not exist')
    if not images:
        raise SetupError(f'no image found in {", ".join(map(repr, paths))}; give image files, or folders holding '
                         f'{"/".join(IMAGE_EXTENSIONS)} files')
    return images


def read_image(path: str):
    """The image at `path`, (H, W, 3) uint8 BGR."""
    import cv2
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise SetupError(f'cannot read image {path!r}: not an image, or a format OpenCV cannot decode')
    return image


def picture_names(images: Sequence[str]) -> List[str]:
    """A file name per image for its picture: the image's own (a second image of the same name gets ``_2``...)."""
    names, taken = [], set()
    for path in images:
        stem, extension = osp.splitext(osp.basename(path))
        extension = extension.lower() if extension.lower() in KEPT_EXTENSIONS else '.png'
        name, copy = stem + extension, 1
        while name in taken:
            copy += 1
            name = f'{stem}_{copy}{extension}'
        taken.add(name)
        names.append(name)
    return names


# ---------------------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------------------
def load_model(args: argparse.Namespace):
    """The config, and its model with the checkpoint's weights on the device; the checkpoint's meta."""
    import torch

    from mmmv.engine.cli import load_tool_config
    from mmmv.engine.toolbox import build_model, load_weights
    if not osp.isfile(args.checkpoint):
        raise SetupError(f'checkpoint {args.checkpoint!r} does not exist')
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise SetupError(f'--device {device}: this torch sees no CUDA device; use --device cpu')
    cfg = load_tool_config(args.config, args.cfg_options)
    model = build_model(cfg)
    try:
        meta = load_weights(model, args.checkpoint, strict=True)
    except RuntimeError as error:  # strict loading lists the missing and unexpected keys; or not a checkpoint
        detail = ' '.join(str(error).split())
        raise SetupError(f'cannot load checkpoint {args.checkpoint!r} into the model of {args.config!r}: '
                         f'{detail[:MISMATCH_CHARACTERS]}{"..." if len(detail) > MISMATCH_CHARACTERS else ""}') \
            from error
    model.cfg = cfg
    return cfg, model.to(device), meta


def class_names(cfg, meta: dict) -> Optional[Sequence[str]]:
    """The class names: from the checkpoint (mmengine stores its dataset's), the config's test dataset, or that
    dataset's class; None when none says."""
    classes = (meta.get('dataset_meta') or {}).get('classes')
    if classes:
        return classes
    dataset = inner_test_dataset(cfg)
    classes = dataset.get('metainfo', {}).get('classes')
    if classes:
        return classes
    import importlib
    registry = importlib.import_module(f'{cfg.default_scope}.registry').DATASETS
    dataset_class = registry.get(dataset.get('type', ''))
    return getattr(dataset_class, 'METAINFO', {}).get('classes')


def inner_test_dataset(cfg):
    """The config of the test dataloader's dataset, inside its wrappers."""
    dataset = cfg.test_dataloader.dataset
    while 'dataset' in dataset:
        dataset = dataset.dataset
    return dataset


def inference_pipeline(cfg) -> list:
    """The test dataset's transforms, annotation loading left out (inference has no annotations)."""
    return [t for t in inner_test_dataset(cfg).pipeline if t.get('type') not in ANNOTATION_LOADERS]


# ---------------------------------------------------------------------------------------------------------------------
# One predictor per toolbox: image (BGR) -> (picture, summary)
# ---------------------------------------------------------------------------------------------------------------------
Predictor = Callable[[object], Tuple[object, str]]


def detector(model, cfg, names, args) -> Predictor:
    from mmcv.transforms import Compose
    from mmdet.apis import inference_detector

    from mmmv.visualization import draw_detections
    pipeline = inference_pipeline(cfg)
    if 'LoadImage' in pipeline[0]['type']:  # images come as arrays
        pipeline = pipeline[1:]
    pipeline = Compose([dict(type='mmdet.LoadImageFromNDArray'), *pipeline])

    def predict(image):
        instances = inference_detector(model, image, test_pipeline=pipeline).pred_instances
        instances = instances[instances.scores >= args.score_thr].cpu()
        masks = instances.masks.numpy() if 'masks' in instances else None
        picture = draw_detections(image, instances.bboxes.numpy(), instances.labels.tolist(), instances.scores.tolist(),
                                  masks, names)
        return picture, f'{len(instances)} detections with score >= {args.score_thr}'

    return predict


def segmentor(model, cfg, names, args) -> Predictor:
    from mmseg.apis import inference_model

    from mmmv.visualization import class_name, draw_segmentation
    model.cfg = cfg.copy()
    model.cfg.test_pipeline = inference_pipeline(cfg)  # the first transform is made LoadImageFromNDArray by mmseg
    background = next((i for i, name in enumerate(names or ()) if name.lower() == 'background'), None)

    def predict(image):
        mask = inference_model(model, image).pred_sem_seg.data[0].cpu().numpy()
        present = sorted(int(c) for c in set(mask.ravel().tolist()))
        picture = draw_segmentation(image, mask, names, background=background)
        return picture, 'classes present: ' + ', '.join(class_name(c, names) for c in present)

    return predict


def classifier(model, cfg, names, args) -> Predictor:
    import mmpretrain.utils.progress as mmpretrain_progress
    from mmpretrain.apis import ImageClassificationInferencer

    from mmmv.visualization import class_name, draw_classification
    model._config = cfg  # what mmpretrain's get_model() sets, and its inferencer reads the test pipeline from
    inferencer = ImageClassificationInferencer(model, pretrained=False)
    mmpretrain_progress.disable_progress_bar = True  # one image per call: its bar would only garble our lines

    def predict(image):
        scores = inferencer(image)[0]['pred_scores']
        best = int(scores.argmax())
        picture = draw_classification(image, scores, names)
        return picture, f'top class {class_name(best, names)} ({scores[best]:.2f})'

    return predict


PREDICTORS: Dict[str, Callable[..., Predictor]] = dict(mmdet=detector, mmseg=segmentor, mmpretrain=classifier)


def main(argv=None) -> int:
    args = parse_args(argv)
    images = find_images(args.images)
    for path in images:  # every image is read before the (slow) model is built
        read_image(path)
    cfg, model, meta = load_model(args)
    from mmengine.registry import init_default_scope
    init_default_scope(cfg.default_scope)
    predict = PREDICTORS[cfg.default_scope](model, cfg, class_names(cfg, meta), args)

    import cv2
    import torch
    os.makedirs(args.out_dir, exist_ok=True)
    for path, name in zip(images, picture_names(images)):
        with torch.no_grad():
            picture, summary = predict(read_image(path))
        cv2.imwrite(osp.join(args.out_dir, name), picture)
        print(f'{path}: {summary}', flush=True)
    from mmmv.engine.picture_hook import pictures_line
    print(pictures_line(len(images), args.out_dir))
    return 0


if __name__ == '__main__':
    exit_tool(main)
