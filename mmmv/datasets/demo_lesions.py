"""A small, deterministic binary-lesion segmentation dataset, laid out like prepared ISIC data.

It lets the VM-UNet configs train and evaluate end to end (pooled DSC / mIoU, pictures of predicted masks) without
downloading ISIC, on a CPU in minutes. Nothing is committed: the images are generated.

What the images hold: one dark, blobby lesion per image on a skin-coloured background. The background has a skin
tone, a smooth illumination field, a dermoscope-like dark vignette, fine mottled texture, pixel noise and sometimes a
few dark hairs (drawn over the lesion too; they do not change the mask). The lesion is an ellipse whose radius is
perturbed by a few low harmonics of the angle, darker towards its centre, with a mottled texture and a soft
one-pixel edge; its mask is the set of pixels whose centre lies inside the boundary.

Layout under ``root`` (mmseg's; the one ``tools/dataset_converters/prepare_isic.py`` writes)::

    img_dir/train/000001.png ...   RGB images           data_prefix=dict(img_path='img_dir/train', ...)
    ann_dir/train/000001.png ...   labels: 0 background, 1 lesion
    img_dir/val/ ...  ann_dir/val/ ...
    meta.json                      the generation parameters, used to skip regeneration

Determinism: all randomness comes from ``numpy.random.default_rng`` seeded with ``(seed, split)``, so the same
parameters give byte-identical files (for a given Pillow/zlib) and the validation split does not change with
``num_train``.
"""
from __future__ import annotations

import math
import os.path as osp

import numpy as np
from PIL import Image, ImageDraw

from .generated import SPLITS, clear_generated_files, file_name, generate_splits, generation_params, is_complete

LESION_CLASSES = ('background', 'lesion')

FORMAT_VERSION = 1  # bump when the drawing changes, so that older data is regenerated
DEFAULT_NUM_TRAIN = 40
DEFAULT_NUM_VAL = 12
DEFAULT_IMAGE_SIZE = (64, 64)  # (H, W)

SKIN_RGB = (222.0, 176.0, 148.0)
SKIN_JITTER = 18.0
LESION_DARKNESS = (0.42, 0.68)  # lesion colour = skin colour x this factor (per image) ...
LESION_TINT = (1.0, 0.82, 0.78)  # ... x this per channel: browner than the skin
LESION_RADIUS = (0.16, 0.32)  # mean radius as a fraction of the shorter side
LESION_ASPECT = (0.6, 1.0)
CENTRE_JITTER = 0.15  # lesion centre offset from the image centre, fraction of each side
HARMONICS = (2, 3, 4, 5)
HARMONIC_AMPLITUDE = 0.22  # harmonic k has amplitude up to this / k
EDGE_WIDTH = 1.0  # pixels over which the lesion fades into the skin
ILLUMINATION = 14.0
VIGNETTE = (0.0, 0.7)
TEXTURE = 0.10  # relative amplitude of the mottling
NOISE_STD = 4.0
MAX_HAIRS = 3
HAIR_PROBABILITY = 0.4
HAIR_TINT = (1.0, 0.8, 0.65)  # dark brown


def generate_demo_lesions(root: str,
                          num_train: int = DEFAULT_NUM_TRAIN,
                          num_val: int = DEFAULT_NUM_VAL,
                          image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
                          seed: int = 0,
                          overwrite: bool = False) -> dict[str, str]:
    """Write the lesion dataset under ``root`` unless it is already there with the same parameters.

    Args:
        root: output folder, created if missing.
        num_train: number of training images.
        num_val: number of validation images.
        image_size: ``(H, W)`` of every image; at least 32 pixels each way.
        seed: the seed of all randomness.
        overwrite: regenerate even if ``root/meta.json`` says the data matches.

    Returns:
        Paths: ``root``, ``meta``, and ``{split}_img_dir``, ``{split}_ann_dir`` for the splits train and val.
    """
    params = generation_params(num_train, num_val, image_size, seed, LESION_CLASSES, FORMAT_VERSION)
    height, width = params['image_size']
    paths = lesion_paths(root)
    if not overwrite and is_complete(paths['meta'], params, _expected_files(paths, params)):
        return paths

    def write_split(split: str, num_images: int, rng: np.random.Generator) -> None:
        _write_split(paths[f'{split}_img_dir'], paths[f'{split}_ann_dir'], num_images, height, width, rng)

    generate_splits(paths['meta'], params, write_split)
    return paths


def lesion_paths(root: str) -> dict[str, str]:
    """The folders of the layout under ``root``."""
    paths = dict(root=root, meta=osp.join(root, 'meta.json'))
    for split in SPLITS:
        paths[f'{split}_img_dir'] = osp.join(root, 'img_dir', split)
        paths[f'{split}_ann_dir'] = osp.join(root, 'ann_dir', split)
    return paths


def _expected_files(paths: dict[str, str], params: dict) -> list[str]:
    """Every file a complete generation with ``params`` holds."""
    return [
        osp.join(paths[f'{split}_{kind}_dir'], file_name(i)) for split in SPLITS for kind in ('img', 'ann')
        for i in range(params[f'num_{split}'])
    ]


def _write_split(img_dir: str, ann_dir: str, num_images: int, height: int, width: int,
                 rng: np.random.Generator) -> None:
    clear_generated_files(img_dir)
    clear_generated_files(ann_dir)
    for index in range(num_images):
        pixels, mask = draw_lesion_image(height, width, rng)
        Image.fromarray(pixels).save(osp.join(img_dir, file_name(index)))
        Image.fromarray(mask.astype(np.uint8)).save(osp.join(ann_dir, file_name(index)))


# ----------------------------------------------------------------------------------------------------
# Drawing.
# ----------------------------------------------------------------------------------------------------
def draw_lesion_image(height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One image: ``(uint8 HxWx3 pixels, boolean HxW lesion mask)``."""
    skin = np.asarray(SKIN_RGB) + rng.uniform(-SKIN_JITTER, SKIN_JITTER, 3)
    canvas = _skin(height, width, skin, rng)
    edge_distance, depth = _lesion_shape(height, width, rng)

    lesion_color = skin * rng.uniform(*LESION_DARKNESS) * np.asarray(LESION_TINT)
    shading = 1.0 - 0.3 * depth  # darker towards the centre
    mottling = 1.0 + TEXTURE * _smooth_noise(rng, height, width, cells=6)
    lesion = lesion_color * (shading * mottling)[..., None]
    alpha = np.clip(edge_distance / EDGE_WIDTH + 0.5, 0.0, 1.0)
    canvas = alpha[..., None] * lesion + (1.0 - alpha[..., None]) * canvas
    mask = alpha >= 0.5  # the pixels whose centre lies inside the boundary

    canvas += rng.normal(0.0, NOISE_STD, canvas.shape)
    pixels = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    if rng.random() < HAIR_PROBABILITY:
        pixels = _draw_hairs(pixels, rng)
    return pixels, mask


def _skin(height: int, width: int, skin: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Float HxWx3 skin: tone + illumination field + mottling, darkened towards the corners."""
    illumination = ILLUMINATION * _smooth_noise(rng, height, width, cells=3)
    texture = 1.0 + 0.5 * TEXTURE * _smooth_noise(rng, height, width, cells=12)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    radius = np.hypot((ys + 0.5) / height - 0.5, (xs + 0.5) / width - 0.5) / math.sqrt(0.5)  # 1 at the corners
    vignette = 1.0 - rng.uniform(*VIGNETTE) * np.clip(radius - 0.6, 0.0, None) ** 2 / 0.16
    return (skin * texture[..., None] + illumination[..., None]) * vignette[..., None]


def _lesion_shape(height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The lesion as two HxW maps: the distance inside its boundary in pixels (> 0 inside, measured along the
    minor axis, so an underestimate elsewhere), and the relative depth (0 on and outside the boundary, 1 at the
    centre)."""
    radius = rng.uniform(*LESION_RADIUS) * min(height, width)
    aspect = rng.uniform(*LESION_ASPECT)
    angle = rng.uniform(0.0, math.pi)
    cx = width * (0.5 + rng.uniform(-CENTRE_JITTER, CENTRE_JITTER))
    cy = height * (0.5 + rng.uniform(-CENTRE_JITTER, CENTRE_JITTER))
    amplitudes = [rng.uniform(0.0, HARMONIC_AMPLITUDE / k) for k in HARMONICS]
    phases = rng.uniform(0.0, 2 * math.pi, len(HARMONICS))

    ys, xs = np.mgrid[0:height, 0:width] + 0.5  # pixel centres
    dx, dy = xs - cx, ys - cy
    u = (dx * math.cos(angle) + dy * math.sin(angle)) / radius
    v = (-dx * math.sin(angle) + dy * math.cos(angle)) / (radius * aspect)
    rho, theta = np.hypot(u, v), np.arctan2(v, u)  # rho = 1 on the unperturbed ellipse
    boundary = 1.0 + sum(a * np.cos(k * theta + p) for a, k, p in zip(amplitudes, HARMONICS, phases))
    edge_distance = (boundary - rho) * radius * aspect
    depth = np.clip(1.0 - rho / boundary, 0.0, 1.0)
    return edge_distance, depth


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Zero-mean, roughly unit-variance noise varying over about ``size / cells`` pixels."""
    coarse = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode='F').resize((width, height), Image.BICUBIC), dtype=np.float64)


def _draw_hairs(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Up to ``MAX_HAIRS`` dark, one-pixel curves across the image."""
    height, width = pixels.shape[:2]
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, MAX_HAIRS + 1))):
        start, control, end = rng.uniform(0, 1, (3, 2)) * (width, height)
        t = np.linspace(0.0, 1.0, 4 * (height + width))[:, None]
        curve = (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t ** 2 * end
        color = tuple(int(c) for c in rng.uniform(25, 70) * np.asarray(HAIR_TINT))
        draw.line([tuple(p) for p in curve], fill=color, width=1)
    return np.asarray(image)
