"""The web page as a person uses it: headless Chromium (Playwright) against the real server on a free
loopback port, with the shipped model. Set POLYPSEG_SCREENSHOTS=DIR to save a screenshot of each tab
(scripts/screenshots.py does, for the README)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from polypseg.data import read_image

CHROMIUM = Path("/usr/bin/chromium")
FRAMES = [f"{i:03d}.png" for i in range(320, 332)]  # CVC-ClinicDB sequence 16
SHOTS = os.environ.get("POLYPSEG_SCREENSHOTS")

pytestmark = pytest.mark.browser

if not CHROMIUM.exists() and not os.environ.get("CI"):
    pytest.skip(f"{CHROMIUM} is missing (scripts/setup-browser.sh installs it; in CI these tests must run)",
                allow_module_level=True)


def write_y4m(frames: list[np.ndarray], path: Path, fps: int = 25) -> Path:
    """RGB frames -> a raw YUV 4:2:0 y4m file, what Chromium's fake camera plays (in a loop)."""
    h, w = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            f.write(b"FRAME\n" + cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420).tobytes())
    return path


@pytest.fixture(scope="module")
def clip_frames(data_dir):
    return [read_image(data_dir / "images" / name) for name in FRAMES]


@pytest.fixture(scope="module")
def server():
    from polypseg.predict import Predictor
    from polypseg.serve import ServeSettings, background_server, create_app

    # torch loads the shipped model in about a second (ONNX Runtime exports it first, several seconds)
    app = create_app(Predictor(backend="torch", threads=2), ServeSettings(backend="torch"))
    with background_server(app) as url:
        yield url


@pytest.fixture(scope="module")
def page(tmp_path_factory, clip_frames, server):
    from playwright.sync_api import sync_playwright

    camera = write_y4m(clip_frames, tmp_path_factory.mktemp("camera") / "camera.y4m")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-video-capture={camera}", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run",
        ])
        context = browser.new_context(viewport={"width": 1000, "height": 760}, accept_downloads=True)
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(server)
        page.wait_for_function("document.getElementById('model').textContent.includes('threshold')")
        yield page
        browser.close()


def _shot(page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"))


def _overlay_pixels(page) -> str:
    return page.eval_on_selector("canvas.overlay", "c => c.toDataURL()")


def test_images_tab_overlay_slider_and_zip(page, data_dir, tmp_path):
    assert "research" in page.text_content(".warning").lower()
    assert "CVC-ClinicDB" in page.text_content("#model")
    page.set_input_files("#image-files", [str(data_dir / "images" / FRAMES[0])])
    page.wait_for_selector("canvas.overlay")
    page.wait_for_function("document.querySelector('.stats') && document.querySelector('.stats').textContent.includes('polyp area')")
    before, stats_before = _overlay_pixels(page), page.text_content(".stats")
    assert stats_before.startswith("polyp (score")  # the verdict
    _shot(page, "images")
    page.eval_on_selector("#threshold", "el => { el.value = 0.97; el.dispatchEvent(new Event('input')); }")
    assert page.text_content("#threshold-value") == "0.97"
    assert _overlay_pixels(page) != before
    assert page.text_content(".stats") != stats_before

    with page.expect_download() as download:
        page.click("#zip")
    path = tmp_path / "masks.zip"
    download.value.save_as(path)
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None
        assert sorted(z.namelist()) == ["masks/320.png", "predictions.csv"]
        mask = cv2.imdecode(np.frombuffer(z.read("masks/320.png"), np.uint8), cv2.IMREAD_GRAYSCALE)
        assert mask.shape == (288, 384) and set(np.unique(mask)) <= {0, 255}
        header, row = z.read("predictions.csv").decode().splitlines()[:2]
        assert header.startswith("image,width,height,threshold,polyp_score,polyp_present,")
        assert row.startswith('"320.png",384,288,0.97,') and row.split(",")[5] == "1"

    # a "no polyp" verdict draws no outline, whatever the slider says
    page.evaluate("frames[0].verdict = {present: false, score: 0.03, point: 0.5}; setThreshold(0.05)")
    assert page.text_content(".stats").startswith("no polyp, score 0.03 < 0.50") and "area 0.0%" in page.text_content(".stats")
    original = page.eval_on_selector(".pair canvas", "c => c.toDataURL()")
    assert _overlay_pixels(page) == original


def test_video_tab_plays_the_overlay(page, clip_frames, tmp_path):
    from polypseg.video import write_clip

    clip = write_clip(clip_frames[:8], tmp_path / "clip.mp4")  # H.264, as uploads from a scope usually are
    page.click("button[data-tab=video]")
    page.set_input_files("#video-file", str(clip))
    page.wait_for_function("(v => v.readyState >= 2 && v.duration > 0)(document.getElementById('video-player'))")
    assert page.eval_on_selector("#video-progress", "p => p.value") == 1
    assert "8 frames" in page.text_content("#video-summary")
    assert page.get_attribute("#video-csv", "href").endswith("/csv")
    assert page.get_attribute("#video-events", "href").endswith("/events")
    assert "1 alert(s)" in page.text_content("#video-summary")  # sequence 16: a polyp all along, one alert
    page.wait_for_function("[...document.querySelectorAll('#video-alerts img')].every(i => i.complete && i.naturalWidth > 0)")
    assert page.locator("#video-alerts li").count() == 1
    assert page.text_content("#video-alerts li").startswith("0:00.2–")  # after the 200 ms onset
    page.click("#video-alerts li")
    assert page.eval_on_selector("#video-player", "v => v.currentTime") == pytest.approx(0.2, abs=0.01)
    _shot(page, "video")


def test_live_tab_gets_overlays_from_the_fake_camera(page):
    page.click("button[data-tab=live]")
    page.click("#live-start")
    page.wait_for_function("Number(document.getElementById('live-fps').textContent) > 0")
    assert not page.is_checked("#live-sound")  # the sound is off until asked for
    page.wait_for_selector("#live-frame.alert")  # the camera shows a polyp all along: the alert goes on
    assert page.is_visible("#live-alert") and 0 <= float(page.text_content("#live-score")) <= 1
    page.wait_for_timeout(1500)  # let the fps figure settle for the screenshot
    assert float(page.text_content("#live-latency")) > 0
    _shot(page, "live")
    page.click("#live-stop")
    assert page.locator("#live-frame.alert").count() == 0 and not page.is_visible("#live-alert")
