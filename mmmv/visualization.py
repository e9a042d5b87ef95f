"""Pictures of predictions that stay legible at any image size: detections (boxes, filled masks with a contour, class
names and scores), segmentation maps (a colour per class and a legend) and classifications (the top classes on bars).

Pure numpy / OpenCV, no model and no toolbox: images are ``(H, W, 3)`` uint8 arrays in OpenCV's BGR order, and boxes and
masks are in the input image's pixels. Each ``draw_*`` function returns a new picture. An image smaller than
:data:`MIN_SHORT_SIDE` is first enlarged by a whole factor (:func:`picture_scale`: every pixel becomes a square), so
that text of at least :data:`MIN_TEXT_HEIGHT` pixels fits beside the objects; labels are placed by :func:`place_labels`,
so that no label hides another, on a filled background of their class's colour.
"""
import math
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

MIN_SHORT_SIDE = 512  # pictures of smaller images are enlarged by a whole factor until their short side reaches this
MAX_LONG_SIDE = 2048  # ... unless their long side would pass this
MIN_TEXT_HEIGHT = 14  # pixels from the top of a capital to the bottom of a descender, in every picture
TEXT_HEIGHT_FRACTION = 0.025  # of the picture's short side, for pictures where this is more than the minimum
MASK_ALPHA = 0.45  # opacity of the colour filling a mask
PANEL_GREY = (242, 242, 242)  # background of the legend and of the classification bars
BAR_TRACK_GREY = (215, 215, 215)
BAR_COLOURS = ((230, 170, 90), (240, 210, 170))  # the best class's bar, the others' (light blues: black text reads)
TOP_K = 5
FONT = cv2.FONT_HERSHEY_SIMPLEX
# rows of ink of "Ag" written in FONT at scale 1, measured (cv2.getTextSize's 27 + 7 overstate them)
INK_ABOVE_BASELINE, INK_BELOW_BASELINE = 20, 6
GOLDEN_RATIO = 0.618034  # hue step between successive class colours

Rect = Tuple[int, int, int, int]  # x0, y0, x1, y1 in picture pixels; x1 and y1 are excluded
Colour = Tuple[int, int, int]  # B, G, R


# ---------------------------------------------------------------------------------------------------------------------
# Sizes, colours and text
# ---------------------------------------------------------------------------------------------------------------------
def picture_scale(height: int, width: int) -> int:
    """The whole factor by which the picture of an image of this size is enlarged (1 for images already large)."""
    wanted = math.ceil(MIN_SHORT_SIDE / max(1, min(height, width)))
    allowed = MAX_LONG_SIDE // max(1, height, width)
    return max(1, min(wanted, allowed))


def text_height(height: int, width: int) -> int:
    """Height in pixels of the text written on a picture of this size: a fixed share of its short side, at least
    :data:`MIN_TEXT_HEIGHT`."""
    return max(MIN_TEXT_HEIGHT, round(TEXT_HEIGHT_FRACTION * min(height, width)))


def class_colours(num: int) -> List[Colour]:
    """`num` distinct saturated BGR colours (hues a golden ratio apart), the same for the same index every time."""
    if num <= 0:
        return []
    hues = (np.arange(num) * GOLDEN_RATIO % 1.0 * 180).astype(np.uint8)
    hsv = np.stack([hues, np.full(num, 210, np.uint8), np.full(num, 235, np.uint8)], axis=-1)[None]
    return [tuple(int(c) for c in bgr) for bgr in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0]]


def class_name(index: int, class_names: Optional[Sequence[str]]) -> str:
    """The name of class `index`, or ``class N`` when there are no names for it."""
    return str(class_names[index]) if class_names is not None and 0 <= index < len(class_names) else f'class {index}'


def _font(height: int) -> Tuple[float, int, int]:
    """(font scale, stroke thickness, pixels from the top to the baseline) of text `height` pixels high."""
    scale = height / (INK_ABOVE_BASELINE + INK_BELOW_BASELINE)
    return scale, max(1, round(height / 14)), round(INK_ABOVE_BASELINE * scale)


def _padding(height: int) -> int:
    return max(2, height // 4)


def label_size(text: str, height: int) -> Tuple[int, int]:
    """(width, height) of the filled rectangle holding `text` written `height` pixels high, padding included."""
    scale, thickness, _ = _font(height)
    width = cv2.getTextSize(text, FONT, scale, thickness)[0][0]
    return width + 2 * _padding(height), height + 2 * _padding(height)


def _fit(text: str, height: int, max_width: int) -> str:
    """`text`, shortened with '...' until its label is at most `max_width` wide."""
    if label_size(text, height)[0] <= max_width:
        return text
    while text and label_size(text + '...', height)[0] > max_width:
        text = text[:-1]
    return text + '...'


def _ink(background: Colour) -> Colour:
    """Black or white, whichever reads better on `background`."""
    blue, green, red = background
    return (0, 0, 0) if 0.114 * blue + 0.587 * green + 0.299 * red > 150 else (255, 255, 255)


def _write(picture: np.ndarray, text: str, left: int, top: int, height: int, colour: Colour) -> None:
    scale, thickness, ascent = _font(height)
    cv2.putText(picture, text, (left, top + ascent), FONT, scale, colour, thickness, cv2.LINE_AA)


def draw_label(picture: np.ndarray, text: str, rect: Rect, colour: Colour, height: int) -> None:
    """Write `text` (`height` pixels high) in place on a rectangle `rect` filled with `colour`."""
    x0, y0, x1, y1 = rect
    cv2.rectangle(picture, (x0, y0), (x1 - 1, y1 - 1), colour, thickness=cv2.FILLED)
    pad = _padding(height)
    _write(picture[y0:y1, x0:x1], text, pad, pad, height, _ink(colour))  # a view: the text cannot leave its rectangle


def _line_thickness(height: int) -> int:
    return max(2, round(height / 7))


def enlarge(image: np.ndarray, scale: int) -> np.ndarray:
    """`image` (or a mask) with every pixel repeated into a `scale` x `scale` square."""
    return image if scale == 1 else image.repeat(scale, axis=0).repeat(scale, axis=1)


def fill_mask(picture: np.ndarray, mask: np.ndarray, colour: Colour, thickness: int, alpha: float = MASK_ALPHA) -> None:
    """Tint the pixels of `mask` (bool, the picture's size) with `colour` at opacity `alpha` and outline them."""
    mask = mask.astype(bool)
    picture[mask] = (picture[mask] * (1 - alpha) + np.asarray(colour, np.float32) * alpha).round().astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(picture, contours, -1, colour, thickness, cv2.LINE_AA)


# ---------------------------------------------------------------------------------------------------------------------
# Label placement
# ---------------------------------------------------------------------------------------------------------------------
def _candidates(box: np.ndarray, width: int, height: int, size: Tuple[int, int]) -> np.ndarray:
    """Top-left corners for a `width` x `height` label of `box`, best first, all inside a picture of `size`: above the
    box, inside its top, below it, then down (and up) its column, then every place of a grid nearest first."""
    picture_height, picture_width = size
    x_max, y_max = picture_width - width, picture_height - height
    x = int(np.clip(round(box[0]), 0, x_max))
    top, bottom = int(round(box[1])), int(round(box[3]))
    column = [top - height, top, bottom]
    column += list(range(top + height, y_max + 1, height)) + list(range(top - 2 * height, -1, -height))
    ys = np.clip(np.asarray(column), 0, y_max)
    grid_x, grid_y = np.meshgrid(np.arange(0, x_max + 1, max(1, height // 2)), np.arange(0, y_max + 1, height))
    grid = np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)
    grid = grid[np.argsort(np.abs(grid[:, 0] - x) + np.abs(grid[:, 1] - top), kind='stable')]
    return np.concatenate([np.stack([np.full(len(ys), x), ys], axis=1), grid])


def place_labels(boxes: np.ndarray, sizes: Sequence[Tuple[int, int]], size: Tuple[int, int]) -> List[Optional[Rect]]:
    """Rectangles for the labels of `boxes`, in their order, inside the picture and overlapping no other label.

    Each label goes to the first free place of: above its box, inside the box's top, below the box, further down (then
    up) the box's column, any other place of a grid over the picture nearest first. Earlier labels choose first: give
    the boxes best first. A label gets None only when no place is free: when labels about fill the picture.

    Args:
        boxes: (N, 4) x0, y0, x1, y1 in picture pixels.
        sizes: (width, height) of each label, e.g. from :func:`label_size`; a label is cut to the picture's size.
        size: (height, width) of the picture.
    """
    placed = np.zeros((0, 4), np.int64)
    rects: List[Optional[Rect]] = []
    for box, (width, height) in zip(np.asarray(boxes, np.float64).reshape(-1, 4), sizes):
        width, height = min(int(width), size[1]), min(int(height), size[0])
        corners = _candidates(box, width, height, size)
        options = np.concatenate([corners, corners + (width, height)], axis=1)
        overlaps = ((options[:, None, 0] < placed[None, :, 2]) & (placed[None, :, 0] < options[:, None, 2])
                    & (options[:, None, 1] < placed[None, :, 3]) & (placed[None, :, 1] < options[:, None, 3]))
        free = np.flatnonzero(~overlaps.any(axis=1))
        if len(free) == 0:
            rects.append(None)
            continue
        rect = options[free[0]]
        placed = np.concatenate([placed, rect[None]])
        rects.append(tuple(int(v) for v in rect))
    return rects


# ---------------------------------------------------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------------------------------------------------
def _colours(palette: Optional[Sequence[Colour]], num: int) -> List[Colour]:
    colours = list(palette) if palette is not None else []
    return colours + class_colours(num)[len(colours):]


def draw_detections(image: np.ndarray,
                    boxes: np.ndarray,
                    labels: Sequence[int],
                    scores: Optional[Sequence[float]] = None,
                    masks: Optional[np.ndarray] = None,
                    class_names: Optional[Sequence[str]] = None,
                    palette: Optional[Sequence[Colour]] = None) -> np.ndarray:
    """Boxes, masks (filled semi-transparent, outlined) and ``name score`` labels over the enlarged `image`.

    The best detection is drawn on top and its label placed first; every label is on a rectangle of its class's colour
    and hides no other label.

    Args:
        image: (H, W, 3) uint8, BGR.
        boxes: (N, 4) x0, y0, x1, y1 in image pixels.
        labels: (N, ) class indices.
        scores: (N, ) scores in [0, 1], or None for labels without scores.
        masks: (N, H, W) bool, or None.
        class_names: class names by index (default ``class N``).
        palette: BGR colours by class index (default :func:`class_colours`).

    Returns:
        The picture, (s * H, s * W, 3) uint8 with s = ``picture_scale(H, W)``.
    """
    scale = picture_scale(*image.shape[:2])
    picture = np.ascontiguousarray(enlarge(image, scale))
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4) * scale
    labels = [int(label) for label in labels]
    order = np.argsort(-np.asarray(scores), kind='stable') if scores is not None else np.arange(len(labels))
    height = text_height(*picture.shape[:2])
    thickness = _line_thickness(height)
    colours = _colours(palette, max(labels, default=-1) + 1)
    for i in order[::-1]:  # the worst first, so that the best lies on top
        if masks is not None:
            fill_mask(picture, enlarge(np.asarray(masks[i]), scale), colours[labels[i]], thickness)
        x0, y0, x1, y1 = (int(round(v)) for v in boxes[i])
        cv2.rectangle(picture, (x0, y0), (x1 - 1, y1 - 1), colours[labels[i]], thickness)
    texts = [class_name(label, class_names) + ('' if scores is None else f' {float(scores[i]):.2f}')
             for i, label in enumerate(labels)]
    sizes = [label_size(texts[i], height) for i in order]
    for i, rect in zip(order, place_labels(boxes[order], sizes, picture.shape[:2])):
        if rect is not None:
            draw_label(picture, texts[i], rect, colours[labels[i]], height)
    return picture


def _panel(width: int, rows: int, height: int) -> np.ndarray:
    """A grey strip for `rows` lines of text `height` pixels high, to go below a picture `width` wide."""
    row = height + 2 * _padding(height)
    return np.full((rows * row + 2 * _padding(height), width, 3), PANEL_GREY, np.uint8)


def _legend_rows(entries: Sequence[str], height: int, width: int) -> List[List[Tuple[int, int]]]:
    """Entries (index, x) laid out left to right in rows of at most `width` pixels: a swatch, a space, the name."""
    pad = _padding(height)
    rows: List[List[Tuple[int, int]]] = [[]]
    x = pad
    for index, name in enumerate(entries):
        entry = height + pad + label_size(name, height)[0]
        if rows[-1] and x + entry > width:
            rows.append([])
            x = pad
        rows[-1].append((index, x))
        x += entry + 2 * pad
    return rows


def draw_segmentation(image: np.ndarray,
                      mask: np.ndarray,
                      class_names: Optional[Sequence[str]] = None,
                      palette: Optional[Sequence[Colour]] = None,
                      background: Optional[int] = None) -> np.ndarray:
    """Each class of `mask` filled with its colour (semi-transparent, outlined) over the enlarged `image`, and a legend
    of the classes present below it.

    Args:
        image: (H, W, 3) uint8, BGR.
        mask: (H, W) class index per pixel; indices without a name (e.g. an ignore index 255) are not drawn.
        class_names: class names by index (default ``class N``, and every index is drawn).
        palette: BGR colours by class index (default :func:`class_colours`).
        background: a class left unfilled (e.g. VM-UNet's "background"); the legend shows it with a hollow swatch.

    Returns:
        The picture: the enlarged image, s * H by s * W with s = ``picture_scale(H, W)``, above the legend.
    """
    scale = picture_scale(*image.shape[:2])
    picture = np.ascontiguousarray(enlarge(image, scale))
    mask = enlarge(np.asarray(mask), scale)
    present = [int(c) for c in np.unique(mask) if class_names is None or 0 <= c < len(class_names)]
    height = text_height(*picture.shape[:2])
    thickness = _line_thickness(height)
    colours = _colours(palette, max(present, default=-1) + 1)
    for index in present:
        if index != background:
            fill_mask(picture, mask == index, colours[index], thickness)
    names = [class_name(index, class_names) for index in present] or ['nothing']
    width, pad = picture.shape[1], _padding(height)
    rows = _legend_rows(names, height, width)
    legend = _panel(width, len(rows), height)
    for row_index, row in enumerate(rows):
        top = pad + row_index * (height + 2 * pad) + pad
        for entry, left in row:
            if entry < len(present):
                swatch = cv2.FILLED if present[entry] != background else thickness
                cv2.rectangle(legend, (left, top), (left + height - 1, top + height - 1), colours[present[entry]],
                              swatch)
            _write(legend, names[entry], left + height + pad, top, height, (0, 0, 0))
    return np.concatenate([picture, legend])


def draw_classification(image: np.ndarray,
                        scores: Sequence[float],
                        class_names: Optional[Sequence[str]] = None,
                        top_k: int = TOP_K) -> np.ndarray:
    """The enlarged `image` above the `top_k` classes, best first: ``name score`` over a bar as long as the score.

    Args:
        image: (H, W, 3) uint8, BGR.
        scores: (num_classes, ) class scores in [0, 1].
        class_names: class names by index (default ``class N``).

    Returns:
        The picture: the enlarged image, s * H by s * W with s = ``picture_scale(H, W)``, above the bars.
    """
    scale = picture_scale(*image.shape[:2])
    picture = enlarge(image, scale)
    scores = np.asarray(scores, np.float64).ravel()
    best = np.argsort(-scores, kind='stable')[:top_k]
    height = text_height(*picture.shape[:2])
    width, pad = picture.shape[1], _padding(height)
    panel = _panel(width, len(best), height)
    track = width - 2 * pad
    for row, index in enumerate(best):
        top = pad + row * (height + 2 * pad)
        bottom = top + height + 2 * pad - 1
        cv2.rectangle(panel, (pad, top + 1), (pad + track - 1, bottom - 1), BAR_TRACK_GREY, cv2.FILLED)
        length = int(round(track * float(np.clip(scores[index], 0, 1))))
        if length > 0:
            bar = BAR_COLOURS[0] if row == 0 else BAR_COLOURS[1]
            cv2.rectangle(panel, (pad, top + 1), (pad + length - 1, bottom - 1), bar, cv2.FILLED)
        score = f'{scores[index]:.2f}'
        score_width = label_size(score, height)[0]
        _write(panel, score, pad + track - score_width, top + pad, height, (0, 0, 0))
        name = _fit(class_name(int(index), class_names), height, track - score_width - pad)
        _write(panel, name, 2 * pad, top + pad, height, (0, 0, 0))
    return np.concatenate([picture, panel])
