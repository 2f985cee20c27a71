"""Polyp-free views cut out of polyp frames: the tissue of every hospital that has masks, as "no polyp".

A polyp frame's mask says where the polyp is; everything else in the frame is polyp-free tissue of that
hospital, its scope and its tower. ``polyp_free_boxes`` finds boxes of the model's aspect, at several
scales, that hold no polyp pixel (the mask grown by a margin, since outlines are drawn by hand) and lie on
the endoscopic picture (not on its black border). Training reads each box as a polyp-free frame
(``polypseg.data.polyp_free_views``), beside the polyp-free frames of other hospitals, so that "no polyp"
is not one hospital's look. Pure numpy/OpenCV; the boxes are a function of the mask, the image and the
seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from .crop import DARK_LEVEL, Box

# Box heights as a share of the frame's height: views from a close look at one fold to most of the frame.
VIEW_SCALES = (0.4, 0.55, 0.7)
MARGIN = 0.04  # the mask is grown by this share of the frame's shorter side before boxes avoid it
MIN_PICTURE = 0.9  # share of a box's pixels that must be on the endoscopic picture (not dark border)
TRIES = 64  # random positions tried per scale


def _integral(values: np.ndarray) -> np.ndarray:
    return cv2.integral(values.astype(np.uint8))


def _box_sum(integral: np.ndarray, top: int, left: int, h: int, w: int) -> int:
    return int(integral[top + h, left + w] - integral[top, left + w] - integral[top + h, left] + integral[top, left])


def polyp_free_boxes(image: np.ndarray, mask: np.ndarray, aspect: float, seed: int | tuple[int, ...],
                     scales: Sequence[float] = VIEW_SCALES) -> list[Box]:
    """At most one box per scale in ``scales`` (height as a share of the frame's), width / height =
    ``aspect``, holding no pixel of ``mask`` grown by ``MARGIN`` and at least ``MIN_PICTURE`` bright
    (picture) pixels; positions drawn with ``seed``. Fewer (or none) when the polyp leaves no room."""
    h, w = mask.shape[:2]
    grow = max(1, int(round(MARGIN * min(h, w))))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
    polyp = _integral(cv2.dilate((mask > 0).astype(np.uint8), kernel))
    bright = image.max(axis=2) > DARK_LEVEL if image.ndim == 3 else image > DARK_LEVEL
    picture = _integral(bright)
    rng = np.random.default_rng(seed)
    boxes = []
    for scale in scales:
        bh = int(round(scale * h))
        bw = int(round(bh * aspect))
        if bw > w:
            bw, bh = w, int(round(w / aspect))
        if bh < 16 or bw < 16:
            continue
        for _ in range(TRIES):
            top, left = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
            if _box_sum(polyp, top, left, bh, bw) == 0 and _box_sum(picture, top, left, bh, bw) >= MIN_PICTURE * bh * bw:
                boxes.append(Box(top, top + bh, left, left + bw))
                break
    return boxes
