"""Shared test fixtures: the real CVC-ClinicDB frames and a tiny, fast model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from polypseg.config import Config

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("POLYPSEG_TEST_DATA", REPO.parent / "shared" / "data" / "cvc-clinicdb"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "images").is_dir():
        pytest.fail(f"CVC-ClinicDB not found at {DATA}; set POLYPSEG_TEST_DATA")
    return DATA


@pytest.fixture
def tiny_config() -> Config:
    """A model small enough for CPU tests: timm's test EfficientNet, random init, 64x96 input."""
    return Config(
        arch="deeplabv3plus",
        encoder="tu-test_efficientnet",
        encoder_weights="none",
        height=64,
        width=96,
        batch_size=2,
        epochs=1,
        num_workers=0,
        data=str(DATA),
    )


@pytest.fixture
def tiny_checkpoint(tmp_path, tiny_config) -> Path:
    """A run-like folder with an untrained tiny model's best checkpoint (no training needed)."""
    from polypseg.model import build_model, save_checkpoint

    torch.manual_seed(0)
    run = tmp_path / "tiny-run"
    save_checkpoint(build_model(tiny_config), tiny_config, run / "best", epoch=0, metrics={})
    tiny_config.save(run / "config.json")
    return run


@pytest.fixture(scope="session")
def rotated_jpeg(data_dir, tmp_path_factory) -> Path:
    """CVC-ClinicDB frame 322 (384 wide, 288 high) as a camera stores a picture taken sideways: the pixels
    turned 90 degrees counter-clockwise (288 wide, 384 high) and EXIF Orientation 6 ("turn 90 degrees
    clockwise to show"), so that viewers and browsers show the upright 384x288 frame."""
    from PIL import Image

    path = tmp_path_factory.mktemp("exif") / "322-sideways.jpg"
    with Image.open(data_dir / "images" / "322.png") as upright:
        stored = upright.convert("RGB").transpose(Image.Transpose.ROTATE_90)  # counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    stored.save(path, quality=95, exif=exif)
    with Image.open(path) as check:  # what a reader that ignores EXIF would see
        assert check.size == (288, 384) and check.getexif()[0x0112] == 6
    return path
