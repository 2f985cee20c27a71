"""The endoscopic image inside a frame as towers send it, and the corner every frame has blacked out.

Endoscopy towers put the scope's picture inside black borders, often beside a side panel holding the
clock, text and a scope-guide box; data sets add boxes of their own in a corner (Kvasir-SEG's green
scope-position box, HyperKvasir's black one). A model sees such things and learns from them ("panel =
no polyp"). So every frame, in training and inference alike, is cut to its endoscopic image
(``endoscope_box``), the lower-left corner of that image is blacked out (``blank_corner``: the same
region in every frame, polyp or not, so a box there carries no signal), and predictions are mapped back
to the whole frame (``paste_back``), zero outside the image.

Pure numpy/OpenCV, no model: cheap enough for every video frame (about a millisecond at 1920x1080).
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

# A pixel is "picture" when its brightest channel is above this (JPEG black borders stay below ~15).
DARK_LEVEL = 24
# The search runs on a copy whose longer side is this many pixels.
SEARCH_SIDE = 256
# The picture is the largest bright region once thin things (text, clock digits, lines) are opened away
# with a square this fraction of the search image's shorter side.
OPEN_FRACTION = 0.04
# Below this share of the frame, no region is taken for the picture: the whole frame is used.
MIN_PICTURE = 0.15
# At full resolution an edge row or column belongs to the picture when this share of it is bright.
EDGE_SHARE = 0.1


class Box(NamedTuple):
    """Rows ``top:bottom`` and columns ``left:right`` of a frame."""

    top: int
    bottom: int
    left: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left


def full_box(shape: tuple[int, ...]) -> Box:
    return Box(0, int(shape[0]), 0, int(shape[1]))


def endoscope_box(image: np.ndarray) -> Box:
    """Where the endoscopic picture lies in an RGB frame: the bounding box of the largest bright region
    after thin marks are opened away, with its edges refined at full resolution. The whole frame when no
    region covers ``MIN_PICTURE`` of it (a dark frame, or a frame that is all picture)."""
    h, w = image.shape[:2]
    bright = image.max(axis=2) > DARK_LEVEL if image.ndim == 3 else image > DARK_LEVEL
    scale = SEARCH_SIDE / max(h, w)
    small = cv2.resize(bright.astype(np.uint8), (max(1, round(w * scale)), max(1, round(h * scale))),
                       interpolation=cv2.INTER_AREA)
    k = max(3, round(min(small.shape) * OPEN_FRACTION) | 1)
    opened = cv2.morphologyEx(small, cv2.MORPH_OPEN, np.ones((k, k), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=8)
    if count < 2:
        return full_box(image.shape)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, bw, bh, area = stats[best]
    if area < MIN_PICTURE * small.size:
        return full_box(image.shape)
    # back to full resolution, one search pixel of margin, then trim rows/columns that are mostly dark
    sy, sx = h / small.shape[0], w / small.shape[1]
    top, bottom = max(0, int((y - 1) * sy)), min(h, int(np.ceil((y + bh + 1) * sy)))
    left, right = max(0, int((x - 1) * sx)), min(w, int(np.ceil((x + bw + 1) * sx)))
    region = bright[top:bottom, left:right]
    # shares of the picture's own extent (rows and columns with any bright pixel), not of the search
    # region's, so that the same picture inside wider borders or beside a panel gives the same box
    tall, wide = int(region.any(axis=1).sum()), int(region.any(axis=0).sum())
    rows = np.flatnonzero(region.sum(axis=1) > EDGE_SHARE * wide)
    cols = np.flatnonzero(region.sum(axis=0) > EDGE_SHARE * tall)
    if len(rows) == 0 or len(cols) == 0:
        return full_box(image.shape)
    return Box(top + int(rows[0]), top + int(rows[-1]) + 1, left + int(cols[0]), left + int(cols[-1]) + 1)


def corner_box(height: int, width: int, corner: tuple[float, float]) -> Box:
    """The lower-left ``corner`` (height, width fractions) of a ``height x width`` picture."""
    ch, cw = round(height * corner[0]), round(width * corner[1])
    return Box(height - ch, height, 0, cw)


def blank_corner(image: np.ndarray, corner: tuple[float, float] | None) -> np.ndarray:
    """A copy of ``image`` with its lower-left ``corner`` black (the image itself when there is none)."""
    if not corner or not (corner[0] and corner[1]):
        return image
    b = corner_box(image.shape[0], image.shape[1], corner)
    out = image.copy()
    out[b.top:b.bottom, b.left:b.right] = 0
    return out


def picture(image: np.ndarray, crop: bool, corner: tuple[float, float] | None) -> tuple[np.ndarray, Box]:
    """(what the model sees of a frame, where it lies in the frame): the endoscopic image (``crop``) or
    the whole frame, with its corner blacked out."""
    box = endoscope_box(image) if crop else full_box(image.shape)
    seen = image[box.top:box.bottom, box.left:box.right]
    return np.ascontiguousarray(blank_corner(seen, corner)), box


def picture_mask(mask: np.ndarray, box: Box, corner: tuple[float, float] | None) -> np.ndarray:
    """The training mask of ``picture``'s output: cut like the image, and empty in the blacked-out corner
    (the model is never taught to find a polyp in black pixels)."""
    return np.ascontiguousarray(blank_corner(mask[box.top:box.bottom, box.left:box.right], corner))


def paste_back(prob: np.ndarray, box: Box, frame_hw: tuple[int, int], corner: tuple[float, float] | None) -> np.ndarray:
    """A probability map of the picture -> one of the whole frame: zero outside the picture and in its
    blacked-out corner."""
    prob = blank_corner(prob, corner)
    if box == full_box(frame_hw):
        return prob
    out = np.zeros(tuple(frame_hw), dtype=prob.dtype)
    out[box.top:box.bottom, box.left:box.right] = prob
    return out
