"""Augmentation presets (albumentations) and the frame geometry shared by training and inference.

Geometry, everywhere: a frame is scaled, aspect kept, to fit the model's ``height x width`` (the scale
the model learned), padded at the bottom/right (to exactly ``height x width`` for batches, or to a
multiple of 32 for single frames of any size), and predictions are cropped back and resized to the
original frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import albumentations as A
import cv2
import numpy as np

from .config import Config
from .errors import PolypsegError

AUGMENT_PRESETS = ("default", "strong", "hospitals", "light", "none")


def _fit(cfg: Config) -> A.DualTransform:
    """Frames of any shape to the model's scale: aspect kept within height x width (``fit``, padded
    afterwards), or resized to exactly height x width (``stretch``, as PraNet trains)."""
    if cfg.resize == "stretch":
        return A.Resize(cfg.height, cfg.width, area_for_downscale="image")
    return A.LongestMaxSize(max_size_hw=(cfg.height, cfg.width), area_for_downscale="image")


def _pad_to_size(cfg: Config) -> A.PadIfNeeded:
    return A.PadIfNeeded(
        min_height=cfg.height, min_width=cfg.width, position="top_left",
        border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0,
    )


def _normalize(cfg: Config) -> A.Normalize:
    return A.Normalize(mean=cfg.mean, std=cfg.std, max_pixel_value=255.0)


def _affine(scale: tuple[float, float], translate: float, rotate: float, p: float, **more) -> A.Affine:
    """Zoom, shift (a share of the frame) and turn (degrees either way), the border filled black."""
    return A.Affine(scale=scale, translate_percent=(-translate, translate), rotate=(-rotate, rotate),
                    border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=p, **more)


def train_transform(cfg: Config) -> A.Compose:
    """The train preset named by ``cfg.augment``: image and mask transformed together."""
    if cfg.augment not in AUGMENT_PRESETS:
        raise PolypsegError(f"Unknown augmentation preset '{cfg.augment}'. Valid: {', '.join(AUGMENT_PRESETS)}.")
    if cfg.augment == "none":
        return eval_transform(cfg)
    ops: list = [_fit(cfg), A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
    if cfg.augment == "default":
        # Colonoscopy frames have no canonical orientation and vary in zoom, light and focus.
        ops += [
            _affine(scale=(0.75, 1.25), translate=0.1, rotate=30, p=0.7),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.03, p=0.7),
            A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=(3, 7))], p=0.2),
        ]
    elif cfg.augment == "strong":
        # For frames from other hospitals: wider zoom (multi-scale), more light and colour change, and the
        # scopes' and files' own noise (sensor noise, JPEG artefacts).
        ops += [
            _affine(scale=(0.6, 1.4), translate=0.15, rotate=45, p=0.8, shear=(-10, 10)),
            A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=0.8),
            A.RandomGamma(gamma_limit=(70, 150), p=0.3),
            A.OneOf([A.GaussianBlur(blur_limit=(3, 7)), A.MotionBlur(blur_limit=(3, 9))], p=0.3),
            A.ImageCompression(quality_range=(40, 95), p=0.3),
            A.GaussNoise(std_range=(0.02, 0.06), p=0.2),
        ]
    elif cfg.augment == "hospitals":
        # Quiet at hospitals never seen (issue 31): default's geometry with more zoom, then what sets
        # detectors off elsewhere drawn over polyp and polyp-free frames alike (polypseg.artefacts), and the
        # colour and light of other towers' processing.
        ops += [
            _affine(scale=(0.75, 1.5), translate=0.1, rotate=30, p=0.7),
            *hospital_artefacts(),
            A.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25, hue=0.04, p=0.7),
            A.OneOf([A.RGBShift(r_shift_limit=20, g_shift_limit=15, b_shift_limit=20), A.RandomToneCurve(scale=0.2),
                     A.CLAHE(clip_limit=(1, 3)), A.RandomGamma(gamma_limit=(70, 140))], p=0.4),
            A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=(3, 7)),
                     A.Sharpen(alpha=(0.1, 0.3))], p=0.25),
            A.ImageCompression(quality_range=(50, 95), p=0.2),
        ]
    ops += [_pad_to_size(cfg), _normalize(cfg)]
    # albumentations keeps its own random state: seed it, or runs are not reproducible. Data loader
    # workers re-seed their copy (polypseg.train.seed_worker) so that they do not repeat each other.
    return A.Compose(ops, seed=cfg.seed)


def hospital_artefacts() -> list:
    """The artefacts of other hospitals (``polypseg.artefacts``), each on about a fifth of the frames."""
    from .artefacts import Artefact

    return [Artefact("cap_rim", p=0.2), Artefact("borders", p=0.25), Artefact("corner_box", p=0.4),
            Artefact("highlights", p=0.25),
            Artefact("bubbles", p=0.15), Artefact("instrument", p=0.2)]


def eval_transform(cfg: Config) -> A.Compose:
    """Fit to the model's size, pad to exactly ``height x width``, normalise."""
    return A.Compose([_fit(cfg), _pad_to_size(cfg), _normalize(cfg)])


def to_input(image: np.ndarray, cfg: Config) -> tuple[np.ndarray, tuple[int, int]]:
    """One RGB uint8 frame of any size -> (normalised float32 CHW array padded to /32, fitted (h, w))."""
    fitted = _fit(cfg)(image=image)["image"]
    h, w = fitted.shape[:2]
    x = (fitted.astype(np.float32) / 255.0 - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    ph, pw = -h % 32, -w % 32
    if ph or pw:
        x = np.pad(x, ((0, ph), (0, pw), (0, 0)))
    return np.ascontiguousarray(x.transpose(2, 0, 1)), (h, w)


def from_output(prob: np.ndarray, fitted_hw: tuple[int, int], original_hw: tuple[int, int]) -> np.ndarray:
    """A probability map (H x W, padded) -> cropped to the fitted frame and resized to the original."""
    h, w = fitted_hw
    prob = prob[:h, :w]
    if (h, w) != tuple(original_hw):
        prob = cv2.resize(prob, (original_hw[1], original_hw[0]), interpolation=cv2.INTER_LINEAR)
    return prob


PREVIEW_TILE_PX = 240  # width of one sample in the preview grid
_PREVIEW_TITLE_PX = 24  # room for the frame id above each sample
_PREVIEW_HEADER_PX = 40  # room for the figure's title


def preview_size(n: int, cfg: Config) -> tuple[int, int]:
    """(width, height) in pixels of the PNG ``preview`` writes for ``n`` samples."""
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    tile_h = round(PREVIEW_TILE_PX * cfg.height / cfg.width) + _PREVIEW_TITLE_PX
    return cols * PREVIEW_TILE_PX, rows * tile_h + _PREVIEW_HEADER_PX


def _with_views(pairs: Sequence, cfg: Config, n: int, seed: int) -> list:
    """``n`` pairs for the preview, a quarter of them polyp-free views cut out of polyp frames (seeded)."""
    import random

    from .data import polyp_free_views

    rng = random.Random(seed)
    polyp = [p for p in pairs if p.polyp is not False]
    views = polyp_free_views(rng.sample(polyp, min(len(polyp), n)), cfg.width / cfg.height, cfg.seed)
    shown = views[: max(1, n // 4)]
    return rng.sample(list(pairs), min(len(pairs), n - len(shown))) + shown


def preview(pairs: Sequence, cfg: Config, out_path: str | Path, n: int = 16, seed: int = 0) -> Path:
    """A PNG grid of ``n`` samples as ``train_transform(cfg)`` augments them, each mask drawn over its image.

    ``pairs`` are ``polypseg.data.Pair``s; they are drawn at random (seeded), with repeats only when there
    are fewer than ``n``; with ``cfg.polyp_free_views`` a quarter of the grid is polyp-free views, as
    training sees them. The file is written atomically.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend state, renders with Agg

    from .data import load_pair
    from .files import atomic_write
    from .viz import overlay

    if not pairs:
        raise PolypsegError("There are no image/mask pairs to preview; check the dataset folder (`polypseg data check`).")
    if n < 1:
        raise PolypsegError(f"The preview needs at least one sample, got n={n}.")
    out = Path(out_path)
    if out.suffix.lower() != ".png":
        raise PolypsegError(f"The preview is a PNG image; give an output path ending in .png, not '{out}'.")
    if cfg.polyp_free_views:
        pairs = _with_views(pairs, cfg, n, seed)
    transform = train_transform(cfg)
    transform.set_random_seed(seed)
    chosen = np.random.default_rng(seed).choice(len(pairs), size=n, replace=n > len(pairs))
    mean, std = np.asarray(cfg.mean, np.float32), np.asarray(cfg.std, np.float32)

    width, height = preview_size(n, cfg)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width / 100, height / 100), dpi=100)
    fig.subplots_adjust(left=0.005, right=0.995, bottom=0.005, top=1 - _PREVIEW_HEADER_PX / height,
                        wspace=0.02, hspace=_PREVIEW_TITLE_PX / (height / rows - _PREVIEW_TITLE_PX) + 0.02)
    for i, index in enumerate(chosen):
        pair = pairs[index]
        image, mask = load_pair(pair)
        sample = transform(image=image, mask=mask)
        shown = np.clip((sample["image"] * std + mean) * 255.0, 0, 255).round().astype(np.uint8)
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(overlay(shown, sample["mask"]))
        name = str(pair.id)
        ax.set_title(name if len(name) <= 30 else f"{name[:14]}...{name[-13:]}", fontsize=8, pad=2)
        ax.set_axis_off()
    fig.suptitle(f"augmentation preset '{cfg.augment}', {cfg.height}x{cfg.width} input, seed {seed}", fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png"))
    return out
