"""Augmentation presets, frame geometry (fit, pad to /32, crop back) and the augmentation preview."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from polypseg.config import Config
from polypseg.data import index_dataset
from polypseg.media import read_image, read_mask
from polypseg.errors import PolypsegError
from polypseg.transforms import (
    eval_transform,
    from_output,
    preview,
    preview_size,
    to_input,
    train_transform,
)


def _shown(x: np.ndarray, cfg: Config) -> np.ndarray:
    """A normalised float H x W x 3 sample back to brightness in [0, 1]."""
    return x * np.asarray(cfg.std, np.float32) + np.asarray(cfg.mean, np.float32)


def _synthetic_pair() -> tuple[np.ndarray, np.ndarray]:
    """A dark noisy frame that is bright exactly where its (asymmetric, off-centre) mask is 1."""
    rng = np.random.default_rng(0)
    mask = np.zeros((288, 384), np.uint8)
    cv2.ellipse(mask, (240, 120), (70, 40), 25, 0, 360, 1, -1)
    cv2.rectangle(mask, (60, 170), (120, 250), 1, -1)
    image = rng.integers(25, 55, (288, 384, 3), dtype=np.uint8)
    image[mask == 1] = 235
    return image, mask


def _real_pair(data_dir) -> tuple[np.ndarray, np.ndarray]:
    """A real frame darkened, with its real polyp mask painted bright: real shapes, known truth."""
    image = read_image(data_dir / "images" / "050.png")
    mask, _ = read_mask(data_dir / "masks" / "050.png")
    painted = (image * 0.35).astype(np.uint8)
    painted[mask == 1] = 235
    return painted, mask


@pytest.mark.parametrize("preset", ["default", "strong", "light"])
@pytest.mark.parametrize("source", ["synthetic", "real"])
def test_train_augmentation_keeps_mask_on_the_bright_region(data_dir, preset, source):
    image, mask = _synthetic_pair() if source == "synthetic" else _real_pair(data_dir)
    cfg = Config(encoder="tu-test_efficientnet", encoder_weights="none", height=192, width=256, augment=preset)
    transform = train_transform(cfg)
    transform.set_random_seed(0)
    plain = eval_transform(cfg)(image=image, mask=mask)["mask"]
    kernel = np.ones((7, 7), np.uint8)  # blur and interpolation only touch the edges
    moved = 0
    for _ in range(30):
        sample = transform(image=image, mask=mask)
        assert sample["image"].shape == (192, 256, 3) and sample["mask"].shape == (192, 256)
        assert set(np.unique(sample["mask"])) <= {0, 1}
        bright = _shown(sample["image"], cfg).mean(axis=2) > 0.55
        inside = cv2.erode(sample["mask"], kernel).astype(bool)
        outside = cv2.erode(1 - sample["mask"], kernel).astype(bool)
        assert inside.sum() > 100
        assert bright[inside].mean() > 0.99
        assert bright[outside].mean() < 0.01
        moved += not np.array_equal(sample["mask"], plain)
    assert moved >= 10  # the augmentation really moved things, so alignment was tested


def test_eval_transform_gives_the_model_size_for_any_frame():
    cfg = Config(encoder="tu-test_efficientnet", encoder_weights="none", height=64, width=96)
    for h, w in [(288, 384), (576, 720), (100, 500), (270, 350), (500, 90)]:
        sample = eval_transform(cfg)(image=np.zeros((h, w, 3), np.uint8), mask=np.zeros((h, w), np.uint8))
        assert sample["image"].shape == (64, 96, 3)
        assert sample["mask"].shape == (64, 96)


@pytest.mark.parametrize("size", [(270, 350), (350, 270), (577, 721)])
def test_to_input_pads_to_32_and_from_output_crops_back(size):
    cfg = Config(encoder="tu-test_efficientnet", encoder_weights="none")  # 288 x 384
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = (255 * xx / (w - 1)).astype(np.uint8)
    image[..., 1] = (255 * yy / (h - 1)).astype(np.uint8)
    x, fitted = to_input(image, cfg)
    assert x.dtype == np.float32 and x.shape[0] == 3
    assert x.shape[1] % 32 == 0 and x.shape[2] % 32 == 0
    assert fitted[0] <= x.shape[1] < fitted[0] + 32 and fitted[1] <= x.shape[2] < fitted[1] + 32
    assert fitted[0] <= cfg.height and fitted[1] <= cfg.width
    assert abs(fitted[0] / fitted[1] - h / w) < 0.02  # aspect kept
    # Treat de-normalised channels as "probabilities": back at the frame's own size, they must line up.
    for channel in (0, 1):
        prob = x[channel] * cfg.std[channel] + cfg.mean[channel]
        back = from_output(prob, fitted, (h, w))
        assert back.shape == (h, w)
        assert np.abs(back - image[..., channel] / 255.0).mean() < 0.01


def test_unknown_augmentation_preset_is_refused(tiny_config, tmp_path):
    with pytest.raises(PolypsegError, match="default, strong, hospitals, light, none"):
        train_transform(tiny_config.replace(augment="heavy"))


def test_preview_writes_a_png_grid_with_masks(data_dir, tiny_config, tmp_path):
    pairs = index_dataset(data_dir).pairs
    out = preview(pairs, tiny_config, tmp_path / "sub" / "preview.png", n=6, seed=0)
    assert out == tmp_path / "sub" / "preview.png"
    assert [p.name for p in out.parent.iterdir()] == ["preview.png"]  # no temporary file left behind
    with Image.open(out) as png:
        assert png.format == "PNG"
        assert png.size == preview_size(6, tiny_config) == (3 * 240, 2 * (160 + 24) + 40)
        pixels = np.asarray(png.convert("RGB")).astype(int)
    green = (pixels[..., 1] > 200) & (pixels[..., 0] < 80) & (pixels[..., 2] < 80)
    assert green.sum() > 50  # mask contours drawn

    again = preview(pairs, tiny_config, tmp_path / "again.png", n=6, seed=0)
    other = preview(pairs, tiny_config, tmp_path / "other.png", n=6, seed=1)
    with Image.open(again) as a, Image.open(other) as b:
        assert np.array_equal(np.asarray(a.convert("RGB")), pixels)  # same seed, same picture
        assert not np.array_equal(np.asarray(b.convert("RGB")), pixels)


def test_preview_refuses_bad_requests(data_dir, tiny_config, tmp_path):
    pairs = index_dataset(data_dir).pairs
    with pytest.raises(PolypsegError, match=r"\.png"):
        preview(pairs, tiny_config, tmp_path / "preview.jpg")
    with pytest.raises(PolypsegError, match="no image/mask pairs"):
        preview([], tiny_config, tmp_path / "preview.png")
    with pytest.raises(PolypsegError, match="Unknown augmentation preset"):
        preview(pairs, tiny_config.replace(augment="heavy"), tmp_path / "preview.png")
    assert not (tmp_path / "preview.png").exists()


# --- what sets detectors off at other hospitals, drawn as augmentation (issue 31) ---------------------------


def test_each_artefact_draws_and_hides_what_is_under_its_opaque_parts(data_dir):
    from polypseg.artefacts import DRAW, OPAQUE, Artefact, blend

    image, mask = read_image(data_dir / "images" / "100.png"), read_mask(data_dir / "masks" / "100.png")[0]
    h, w = mask.shape
    for kind, draw in DRAW.items():
        layer = draw(h, w, np.random.default_rng(3))
        assert layer.colour.shape == (h, w, 3) and layer.alpha.shape == (h, w), kind
        assert 0 < (layer.alpha > 0.05).mean() < 1, kind  # draws something, never the whole frame
        drawn = blend(image, layer)
        assert (drawn[layer.alpha > 0.5] != image[layer.alpha > 0.5]).any(), kind
        t = Artefact(kind, p=1.0)
        t.set_random_seed(0)
        out = t(image=image, mask=mask)
        again = Artefact(kind, p=1.0)
        again.set_random_seed(0)
        assert np.array_equal(out["image"], again(image=image, mask=mask)["image"])  # seeded: reproducible
        if kind == "instrument":  # placed off the polyp, or not at all
            changed = (out["image"] != image).any(axis=2)
            assert not (changed & (mask > 0)).any() and np.array_equal(out["mask"], mask)
    # a border hides the polyp pixels under it: the mask follows what can be seen
    t = Artefact("borders", p=1.0)
    for seed in range(20):
        t.set_random_seed(seed)
        out = t(image=image, mask=mask)
        hidden = (out["image"].max(axis=2) <= 12) & (image.max(axis=2) > 40) & (mask > 0)
        assert not (out["mask"][hidden] > 0).any()
    assert OPAQUE == 0.9


def test_the_hospitals_preset_runs_on_polyp_and_polyp_free_frames(data_dir, tiny_config):
    cfg = tiny_config.replace(augment="hospitals")
    transform = train_transform(cfg)
    image, mask = read_image(data_dir / "images" / "100.png"), read_mask(data_dir / "masks" / "100.png")[0]
    for m in (mask, np.zeros_like(mask)):
        out = transform(image=image, mask=m)
        assert out["image"].shape == (cfg.height, cfg.width, 3) and out["mask"].shape == (cfg.height, cfg.width)
        assert set(np.unique(out["mask"])) <= {0, 1}


def test_polyp_free_boxes_avoid_the_polyp_and_the_black_border():
    from polypseg.views import MARGIN, polyp_free_boxes

    image = np.zeros((300, 400, 3), np.uint8)
    image[20:280, 30:370] = 150  # the endoscopic picture inside a black border
    mask = np.zeros((300, 400), np.uint8)
    mask[40:120, 40:140] = 1  # a polyp in the upper left
    boxes = polyp_free_boxes(image, mask, aspect=4 / 3, seed=0, scales=(0.3, 0.5, 0.7))
    assert boxes and len(boxes) <= 3
    grow = round(MARGIN * 300)
    for b in boxes:
        assert abs(b.width / b.height - 4 / 3) < 0.02
        assert not mask[max(0, b.top - grow):b.bottom + grow, max(0, b.left - grow):b.right + grow].any()
        assert (image[b.top:b.bottom, b.left:b.right].max(axis=2) > 0).mean() >= 0.9
    assert boxes == polyp_free_boxes(image, mask, aspect=4 / 3, seed=0, scales=(0.3, 0.5, 0.7))  # seeded
    everywhere = np.ones_like(mask)
    assert polyp_free_boxes(image, everywhere, aspect=4 / 3, seed=0) == []  # no room: no view


def test_polyp_free_views_of_real_frames_read_as_polyp_free(data_dir):
    from polypseg.data import load_pair, polyp_free_views

    pairs = index_dataset(data_dir).pairs[:6]
    views = polyp_free_views(pairs, aspect=288 / 224, seed=0)
    assert views and all(v.polyp is False and v.mask is None and "@view-" in v.id for v in views)
    for view in views:
        image, mask = load_pair(view)
        top, bottom, left, right = view.view
        assert image.shape[:2] == (bottom - top, right - left) and not mask.any()
        original = next(p for p in pairs if view.id.startswith(p.id + "@"))
        assert not read_mask(original.mask)[0][top:bottom, left:right].any()
