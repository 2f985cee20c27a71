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


AMBER = (255, 176, 0)  # the border of a frame while an alert is on
MAGENTA = (255, 0, 255)  # research only: raw outlines the verdict and the alert rule hide


def draw_frame(image: np.ndarray, mask: np.ndarray, style: str | None, alert: bool = False) -> np.ndarray:
    """A video frame as the endoscopist sees it (``polypseg.exam``'s contract): with ``style`` ``"shown"``
    the mask's fill and contour and its area as a caption, ``"raw"`` (research) a thin magenta contour
    without fill, captioned "raw", ``None`` the frame alone; an amber border while an alert is on."""
    if style == "shown":
        out = overlay(image, mask)
    elif style == "raw":
        out = overlay(image, mask, color=MAGENTA, alpha=0.0, thickness=1)
    else:
        out = image.copy()
    if style is not None and mask.any():
        scale = max(0.4, image.shape[1] / 900)
        text = f"{'polyp' if style == 'shown' else 'raw'} {100 * float(mask.mean()):.1f}%"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        pad = max(2, int(4 * scale))
        cv2.rectangle(out, (0, 0), (tw + 2 * pad, th + base + 2 * pad), (0, 0, 0), cv2.FILLED)
        cv2.putText(out, text, (pad, pad + th), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    GREEN if style == "shown" else MAGENTA, 1, cv2.LINE_AA)
    if alert:
        b = max(3, image.shape[1] // 100)
        out[:b], out[-b:], out[:, :b], out[:, -b:] = AMBER, AMBER, AMBER, AMBER
    return out
