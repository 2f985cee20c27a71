"""What sets a polyp detector off at hospitals it never saw, drawn onto training frames (the ``hospitals``
augmentation preset of ``polypseg.transforms``).

Seen on polyp-free frames of other hospitals (docs/quiet.md, ../shared/docs/FACTS.md): the rim of a
transparent distal cap around the picture, black borders and a tower's side panel with its clock and
scope-guide box, specular highlights on folds, clusters of bubbles, and biopsy forceps or snare tips
entering from an edge. Each is drawn here as a layer (colour and opacity) over the frame, on polyp and
polyp-free frames alike, so that none of them says "no polyp" by itself; an instrument is drawn only where
it covers no polyp pixel. What an opaque layer hides (a border, the area outside a cap's rim) is taken out
of the mask as well: the network cannot see a polyp there.

Pure numpy/OpenCV drawing (``draw_*``: a frame's shape and a numpy Generator in, a ``Layer`` out), and one
albumentations transform, ``Artefact``, that draws one kind at a time with the pipeline's seeded random
state.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import albumentations as A
import cv2
import numpy as np

KINDS = ("cap_rim", "borders", "corner_box", "highlights", "bubbles", "instrument")
OPAQUE = 0.9  # a layer at least this opaque hides what is under it: the mask is cleared there


class Layer(NamedTuple):
    """An RGB float32 H x W x 3 colour (0-255) drawn with float32 H x W opacity in [0, 1]."""

    colour: np.ndarray
    alpha: np.ndarray


def blend(image: np.ndarray, layer: Layer) -> np.ndarray:
    """The uint8 RGB image with ``layer`` drawn over it."""
    a = layer.alpha[..., None]
    return np.clip(image.astype(np.float32) * (1 - a) + layer.colour * a, 0, 255).astype(np.uint8)


def _empty(h: int, w: int) -> Layer:
    return Layer(np.zeros((h, w, 3), np.float32), np.zeros((h, w), np.float32))


def draw_cap_rim(h: int, w: int, rng: np.random.Generator) -> Layer:
    """A transparent distal cap: a dark field outside a circle, its translucent edge as a grey-white
    ring (whole or in arcs), and the light falling off towards it (vignette)."""
    layer = _empty(h, w)
    half_diag = 0.5 * np.hypot(h, w)
    cy, cx = h / 2 + rng.normal(0, 0.04 * h), w / 2 + rng.normal(0, 0.04 * w)
    radius = rng.uniform(0.62, 0.95) * half_diag
    ring = rng.uniform(0.015, 0.05) * min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dist = np.hypot(yy - cy, xx - cx)
    vignette = np.clip((dist - 0.55 * radius) / (0.45 * radius), 0, 1) ** 2 * rng.uniform(0.2, 0.6)
    layer.alpha[:] = vignette
    grey = rng.uniform(140, 235)
    in_ring = np.abs(dist - radius) < ring / 2
    if rng.random() < 0.5:  # the edge lit in arcs only
        angle = np.arctan2(yy - cy, xx - cx)
        in_ring &= np.cos(rng.integers(2, 5) * angle + rng.uniform(0, 2 * np.pi)) > rng.uniform(-0.3, 0.5)
    layer.colour[in_ring] = grey
    layer.alpha[in_ring] = rng.uniform(0.35, 0.8)
    outside = dist >= radius + ring / 2
    layer.colour[outside] = rng.uniform(0, 18)
    layer.alpha[outside] = 1.0
    return Layer(layer.colour, cv2.GaussianBlur(layer.alpha, (0, 0), max(0.6, ring / 6)))


def draw_borders(h: int, w: int, rng: np.random.Generator) -> Layer:
    """Black borders on some sides, often a tower's side panel (clock digits, a coloured scope-guide box)."""
    layer = _empty(h, w)
    black = rng.uniform(0, 12)
    for side in range(4):
        if rng.random() < 0.5:
            n = int(rng.uniform(0.02, 0.12) * (w if side < 2 else h))
            region = (slice(None), slice(0, n)) if side == 0 else (slice(None), slice(w - n, w)) if side == 1 \
                else (slice(0, n), slice(None)) if side == 2 else (slice(h - n, h), slice(None))
            layer.colour[region], layer.alpha[region] = black, 1.0
    if rng.random() < 0.5:  # a side panel with the exam clock, sometimes a scope-guide box
        pw = int(rng.uniform(0.15, 0.3) * w)
        x0 = 0 if rng.random() < 0.5 else w - pw
        layer.colour[:, x0:x0 + pw], layer.alpha[:, x0:x0 + pw] = black, 1.0
        canvas = np.zeros((h, pw, 3), np.uint8)
        scale = max(0.25, pw / 260)
        for row in range(int(rng.integers(1, 4))):
            text = f"{rng.integers(0, 24):02d}:{rng.integers(0, 60):02d}:{rng.integers(0, 60):02d}"
            y = int((0.1 + 0.12 * row) * h)
            cv2.putText(canvas, text, (2, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (230, 230, 230), 1, cv2.LINE_AA)
        if rng.random() < 0.5:
            side = int(rng.uniform(0.5, 0.9) * pw)
            top = int(rng.uniform(0.45, 0.95) * h) - side
            colour = (0, int(rng.integers(120, 200)), int(rng.integers(120, 200)))  # teal or green
            cv2.rectangle(canvas, (2, max(0, top)), (2 + side, max(0, top) + side), colour, -1)
        layer.colour[:, x0:x0 + pw] = np.maximum(layer.colour[:, x0:x0 + pw], canvas.astype(np.float32))
    return layer


def draw_corner_box(h: int, w: int, rng: np.random.Generator) -> Layer:
    """A box in the lower-left corner, black or green, as HyperKvasir's polyp-free frames (black) and many
    Kvasir-SEG polyp frames (green, the scope-position box) carry one: drawn on both kinds, neither colour
    says anything."""
    layer = _empty(h, w)
    bh, bw = int(rng.uniform(0.2, 0.38) * h), int(rng.uniform(0.2, 0.38) * w)
    colour = rng.uniform(0, 12) if rng.random() < 0.5 else np.array([0, rng.uniform(90, 170), rng.uniform(0, 60)])
    layer.colour[h - bh:, :bw], layer.alpha[h - bh:, :bw] = colour, 1.0
    return layer


def _spots(layer: Layer, centres: np.ndarray, radii: np.ndarray, colour: float, alpha: float,
           ring: bool = False) -> None:
    for (y, x), r in zip(centres, radii):
        target = np.zeros(layer.alpha.shape, np.float32)
        centre, axes = (int(x), int(y)), (max(1, int(r)), max(1, int(r * 0.7)))
        cv2.ellipse(target, centre, axes, 0, 0, 360, 1.0, max(1, int(r / 4)) if ring else -1, cv2.LINE_AA)
        layer.colour[target > 0] = colour
        layer.alpha[:] = np.maximum(layer.alpha, target * alpha)


def _cluster(h: int, w: int, rng: np.random.Generator, n: int, spread: float) -> np.ndarray:
    """``n`` points scattered along a random curve, as highlights sit along a fold's crest."""
    start = rng.uniform((0.1 * h, 0.1 * w), (0.9 * h, 0.9 * w))
    angle, bend = rng.uniform(0, 2 * np.pi), rng.uniform(-1.5, 1.5)
    s = rng.uniform(0, spread * min(h, w), n)
    points = np.stack([start[0] + s * np.sin(angle + bend * s / min(h, w)),
                       start[1] + s * np.cos(angle + bend * s / min(h, w))], 1)
    return points + rng.normal(0, 0.02 * min(h, w), (n, 2))


def draw_highlights(h: int, w: int, rng: np.random.Generator) -> Layer:
    """Specular highlights: small saturated white spots, soft-edged, along a fold."""
    layer = _empty(h, w)
    n = int(rng.integers(3, 25))
    _spots(layer, _cluster(h, w, rng, n, 0.6), rng.uniform(0.005, 0.025, n) * min(h, w), 252.0, 0.95)
    return Layer(layer.colour, cv2.GaussianBlur(layer.alpha, (0, 0), 0.8))


def draw_bubbles(h: int, w: int, rng: np.random.Generator) -> Layer:
    """A cluster of bubbles: bright thin rims, a glint on each, a faint sheen inside."""
    layer = _empty(h, w)
    n = int(rng.integers(5, 40))
    centres, radii = _cluster(h, w, rng, n, 0.35), rng.uniform(0.01, 0.05, n) * min(h, w)
    _spots(layer, centres, radii, 235.0, 0.12)
    _spots(layer, centres, radii, 240.0, rng.uniform(0.4, 0.8), ring=True)
    _spots(layer, centres - radii[:, None] * 0.4, radii * 0.2, 255.0, 0.9)
    return layer


def draw_instrument(h: int, w: int, rng: np.random.Generator) -> Layer:
    """A biopsy forceps, a snare or an injection needle's sheath entering from an edge: a shaft shaded
    across its width, grey metal (opaque, a bright stripe) or translucent plastic, with a rounded tip."""
    layer = _empty(h, w)
    edge = int(rng.integers(4))
    t = rng.uniform(0.15, 0.85)
    start = [(t * h, 0.0), (t * h, w - 1.0), (0.0, t * w), (h - 1.0, t * w)][edge]
    towards = np.array([h / 2, w / 2]) - np.array(start)
    angle = np.arctan2(towards[0], towards[1]) + rng.uniform(-0.5, 0.5)
    direction = np.array([np.sin(angle), np.cos(angle)])
    length, width = rng.uniform(0.25, 0.6) * min(h, w), rng.uniform(0.06, 0.16) * min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (yy - start[0]) * direction[0] + (xx - start[1]) * direction[1]  # along the shaft
    v = -(yy - start[0]) * direction[1] + (xx - start[1]) * direction[0]  # across it
    half = width / 2 * (1 - 0.25 * np.clip(u / length, 0, 1))  # a little narrower towards the tip
    shaft = (u >= -width) & (u <= length) & (np.abs(v) <= half)
    tip = np.hypot(u - length, v) <= width / 2 * 0.75
    inside = shaft | tip
    across = np.clip(v / np.maximum(half, 1), -1, 1)
    shade = 0.55 + 0.45 * np.cos(across * np.pi / 2)
    if rng.random() < 0.6:  # metal
        base = rng.uniform(110, 190)
        colour = base * shade + 90 * np.exp(-((across - rng.uniform(-0.5, 0.5)) / 0.15) ** 2)
        alpha = 1.0
        layer.colour[inside] = np.stack([colour] * 3, -1)[inside] * np.array([1.0, 1.0, rng.uniform(0.95, 1.08)])
    else:  # translucent plastic sheath, bluish or white
        tint = np.array([rng.uniform(170, 230), rng.uniform(190, 240), rng.uniform(215, 255)])
        layer.colour[inside] = (shade[..., None] * tint)[inside]
        alpha = rng.uniform(0.5, 0.8)
    layer.alpha[inside] = alpha
    return Layer(np.clip(layer.colour, 0, 255), cv2.GaussianBlur(layer.alpha, (0, 0), 0.7))


DRAW = {"cap_rim": draw_cap_rim, "borders": draw_borders, "corner_box": draw_corner_box, "highlights": draw_highlights,
        "bubbles": draw_bubbles, "instrument": draw_instrument}
INSTRUMENT_TRIES = 4  # an instrument that would cover a polyp pixel is drawn elsewhere, or not at all


class Artefact(A.DualTransform):
    """Draws one kind of artefact (``KINDS``) over the image with probability ``p``; where the layer is
    opaque the mask is cleared (the polyp is hidden there). An instrument is placed so that it covers no
    polyp pixel, else left out."""

    def __init__(self, kind: str, p: float = 0.5):
        super().__init__(p=p)
        if kind not in DRAW:
            raise ValueError(f"Unknown artefact '{kind}'. Valid: {', '.join(KINDS)}.")
        self.kind = kind

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        rng = np.random.default_rng(int(self.random_generator.integers(2**63)))
        mask = data.get("mask")
        for _ in range(INSTRUMENT_TRIES if self.kind == "instrument" else 1):
            layer = DRAW[self.kind](h, w, rng)
            if self.kind != "instrument" or mask is None or not (mask.astype(bool) & (layer.alpha > 0.05)).any():
                return {"layer": layer}
        return {"layer": None}

    def apply(self, img: np.ndarray, layer: Layer | None = None, **params: Any) -> np.ndarray:
        return img if layer is None else blend(img, layer)

    def apply_to_mask(self, mask: np.ndarray, layer: Layer | None = None, **params: Any) -> np.ndarray:
        if layer is None:
            return mask
        out = mask.copy()
        out[layer.alpha >= OPAQUE] = 0
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("kind",)
