"""Pictures people look at: mask overlays shared by preview, predict, video and reports."""

from __future__ import annotations

import cv2
import numpy as np

GREEN = (0, 255, 0)
RED = (255, 0, 0)
YELLOW = (255, 220, 0)


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    color: tuple[int, int, int] = GREEN,
    alpha: float = 0.35,
    contour: bool = True,
    thickness: int = 2,
) -> np.ndarray:
    """RGB uint8 image with ``mask`` (bool or {0,1}) drawn as a translucent fill and a contour."""
    out = image.copy()
    m = mask.astype(bool)
    if m.any():
        fill = np.empty_like(out)
        fill[:] = color
        out[m] = (out[m] * (1 - alpha) + fill[m] * alpha).astype(np.uint8)
        if contour:
            contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, color, thickness)
    return out
