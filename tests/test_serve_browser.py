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

from polypseg.media import read_image

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
    _assert_compared_apart(stats_before)
    model = page.text_content("#model")  # the three settings, named apart
    assert "mask threshold 0.5 (pixel probability)" in model and "operating point 5.899 (polyp score, logit;" in model
    assert "alert after 200 ms" in model and "threshold 0.5 " not in model.replace("mask threshold 0.5 ", "")
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
    assert page.text_content(".stats").startswith("no polyp, score 0.03 < 0.5 ") and "area 0.0%" in page.text_content(".stats")
    original = page.eval_on_selector(".pair canvas", "c => c.toDataURL()")
    assert _overlay_pixels(page) == original

    # a score and the operating point never print alike: digits enough to tell them apart
    for present, score, point, shown in [(True, 0.99996, 0.99994, "0.99996 ≥ 0.99994"), (False, 0.99786, 0.9979, "0.99786 < 0.9979"),
                                         (True, 0.99999, 0.9979, "0.99999 ≥ 0.9979"), (False, 5.8399, 5.84, "5.8399 < 5.84"),
                                         (True, 7.21, -0.3, "7.21 ≥ -0.3")]:
        page.evaluate(f"frames[0].verdict = {{present: {str(present).lower()}, score: {score}, point: {point}}}; setThreshold(0.5)")
        stats = page.text_content(".stats")
        assert f"score {shown}" in stats, stats
        _assert_compared_apart(stats)


def _assert_compared_apart(text: str) -> None:
    """The numbers on either side of every '≥' or '<' in ``text`` print differently."""
    import re

    pairs = re.findall(r"(-?[\d.e+-]+) ([≥<]) (-?[\d.e+-]+)", text)
    assert pairs, text
    for left, _, right in pairs:
        assert left != right, text


def test_images_tab_shows_a_sideways_jpeg_upright(page, rotated_jpeg, data_dir):
    """Issue 32: a JPEG stored sideways with EXIF Orientation 6: Chromium shows it upright, so the server's
    answer (height, width, outline) must be the upright frame's, and the page draws it so."""
    import base64

    cards = page.locator(".card").count()
    page.set_input_files("#image-files", [str(rotated_jpeg)])
    page.wait_for_function(f"document.querySelectorAll('.card .stats').length > {cards - 1} && "
                           "[...document.querySelectorAll('.card')].at(-1).textContent.includes('322-sideways.jpg')")
    card = page.locator(".card").last
    assert "polyp area" in card.locator(".stats").text_content()
    sizes = card.locator("canvas").evaluate_all("cs => cs.map(c => [c.width, c.height])")
    assert sizes == [[384, 288], [384, 288]]  # frame and overlay, upright
    # what the page drew is the upright frame (the browser turned the JPEG, as the server did)
    url = card.locator("canvas").first.evaluate("c => c.toDataURL('image/png')")
    shown = cv2.cvtColor(cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8),
                                      cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    upright = read_image(data_dir / "images" / "322.png")
    assert shown.shape == upright.shape and np.abs(shown.astype(int) - upright).mean() < 4
    page.evaluate("setThreshold(document.getElementById('threshold').value)")  # redraw: still upright


def test_api_docs_render_with_no_internet(page):
    """Issue 32: /docs behind the token and the host guard, every request off this machine refused: the
    API's operations are listed (Swagger UI's files come from the installed environment)."""
    from polypseg.predict import Predictor
    from polypseg.serve import ServeSettings, background_server, create_app

    app = create_app(Predictor(backend="torch", threads=1), ServeSettings(backend="torch", token="s3cret"))
    refused = []

    def local_only(route):
        host = route.request.url.split("/")[2].split(":")[0]
        if host == "127.0.0.1":
            return route.continue_()
        refused.append(route.request.url)
        return route.abort()

    with background_server(app) as url:
        context = page.context.browser.new_context()
        try:
            docs = context.new_page()
            docs.set_default_timeout(60_000)
            docs.route("**/*", local_only)
            docs.goto(f"{url}/docs?token=s3cret")
            docs.wait_for_selector(".opblock-summary-path")
            paths = docs.locator(".opblock-summary-path").all_text_contents()
            assert "/api/v1/segment" in [p.replace("\u200b", "").strip() for p in paths]
            assert docs.get_by_text("/api/v1/segment", exact=False).first.is_visible()
            assert docs.title() == "polypseg - API" and "polypseg" in docs.text_content(".info .title")
            assert refused == []  # nothing was even asked of the internet
        finally:
            context.close()


def test_video_tab_plays_the_overlay(page, clip_frames, tmp_path):
    from polypseg.media import write_clip

    clip = write_clip(clip_frames[:8], tmp_path / "clip.mp4")  # H.264, as uploads from a scope usually are
    page.click("button[data-tab=video]")
    page.set_input_files("#video-file", str(clip))
    page.wait_for_function("(v => v.readyState >= 2 && v.duration > 0)(document.getElementById('video-player'))")
    assert page.eval_on_selector("#video-progress", "p => p.value") == 1
    assert "8 frames" in page.text_content("#video-summary")
    assert page.get_attribute("#video-csv", "href").endswith("/csv")
    assert page.get_attribute("#video-events", "href").endswith("/events")
    assert "1 alert(s)" in page.text_content("#video-summary")  # sequence 16: a polyp all along, one alert
    summary = page.text_content("#video-summary")
    assert "(0.3 s at 25 fps)" in summary and "frames/s on the server" in summary and "undefined" not in summary
    # the time axis (issue 32): 8 frames at 25 fps last 0.32 s; labels every 0.1 s from 0, placed by time
    ticks = page.locator("#timeline-axis .tick")
    assert ticks.all_text_contents() == ["0.0 s", "0.1 s", "0.2 s", "0.3 s"]
    assert ticks.evaluate_all("ts => ts.map(t => t.style.left)") == ["0%", "31.25%", "62.5%", "93.75%"]
    assert all(ticks.nth(i).is_visible() for i in range(4))
    legend = page.locator("#timeline-legend")  # shown, not only in the canvas's hover title
    assert legend.is_visible() and "polyp seen" in legend.text_content() and "alert" in legend.text_content()
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
    assert page.is_visible("#live-alert") and float(page.text_content("#live-score")) >= 5.8  # logit, over the point
    page.wait_for_timeout(1500)  # let the fps figure settle for the screenshot
    assert float(page.text_content("#live-latency")) > 0
    _shot(page, "live")
    page.click("#live-stop")
    assert page.locator("#live-frame.alert").count() == 0 and not page.is_visible("#live-alert")


def _canvas_colours(page, selector: str, colours: dict[str, str]) -> dict[str, int]:
    """How many of the canvas's pixels are near each of ``colours`` (name -> '#rrggbb'), and how many are
    not its background (#1d2229), as ``drawn``."""
    return page.eval_on_selector(selector, """(c, colours) => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const rgb = (hex) => [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
        const wanted = Object.entries(colours).map(([name, hex]) => [name, rgb(hex)]);
        const counts = Object.fromEntries([['drawn', 0], ...wanted.map(([name]) => [name, 0])]);
        const near = (i, [r, g, b]) => Math.abs(d[i] - r) + Math.abs(d[i + 1] - g) + Math.abs(d[i + 2] - b) < 24;
        for (let i = 0; i < d.length; i += 4) {
            counts.drawn += !near(i, [0x1d, 0x22, 0x29]);
            for (const [name, colour] of wanted) counts[name] += near(i, colour);
        }
        return counts;
    }""", colours)


def test_settings_tab_calibrates_moves_and_applies_a_site(page, tiny_checkpoint, data_dir, tmp_path):
    """The Settings tab against a server of the tiny model (a copy in a tmp folder: the profile is saved beside
    it): a polyp-free clip and a target in, the trade-off curve drawn, the point moved with the slider and by a
    click on the curve, its costs shown in numbers, then applied to the running server."""
    import json
    import urllib.request

    from polypseg import sites
    from polypseg.media import id_sort_key, write_clip
    from polypseg.predict import Predictor
    from polypseg.serve import ServeSettings, background_server, create_app

    folder = data_dir.parent / "polypgen-centre-a" / "negatives" / "seq1"
    names = sorted(folder.glob("*.jpg"), key=lambda p: id_sort_key(p.stem))[:20]
    clip = write_clip([read_image(p) for p in names], tmp_path / "room.mp4", fps=25)
    ids = [f"{i:03d}" for i in range(1, 13)]  # six validation polyp frames: the sensitivity is known
    (tiny_checkpoint / "split.json").write_text(json.dumps({"train": ids[6:], "val": ids[:6], "test": []}))
    predictor = Predictor(tiny_checkpoint, backend="torch", threads=1)
    with background_server(create_app(predictor, ServeSettings(backend="torch"))) as url:
        context = page.context.browser.new_context(viewport={"width": 1000, "height": 900})
        try:
            tab = context.new_page()
            tab.set_default_timeout(60_000)
            tab.goto(url)
            tab.wait_for_function("document.getElementById('model').textContent.includes('operating point')")
            tab.click("button[data-tab=settings]")
            assert "the model's own operating point" in tab.text_content("#site-applied")
            tab.fill("#site-name", "room-3")
            tab.set_input_files("#site-file", str(clip))
            tab.select_option("#site-target-kind", "flagged_share")
            tab.fill("#site-target", "10")  # per cent
            tab.click("#site-run")
            tab.wait_for_function("!document.getElementById('site-result').hidden", timeout=120_000)
            assert "saved beside the model as best.site-room-3.json" in tab.text_content("#site-status")
            saved = sites.load(predictor.checkpoint, "room-3")
            assert saved.measured["flagged_share"] <= 0.1 and saved.target == {"flagged_share": 0.1}
            assert tab.eval_on_selector("#site-list", "s => [...s.options].map(o => o.value)") == ["room-3"]

            # the curve drawn (blue), the profile's point marked (an amber ring) and the slider's (a green dot)
            colours = _canvas_colours(tab, "#site-curve", {"curve": "#5aa0e6", "profile": "#ffb000", "slider": "#3fbf5f"})
            assert colours["drawn"] > 2000 and colours["curve"] > 300, colours
            assert colours["profile"] > 20 and colours["slider"] > 20, colours
            costs = tab.text_content("#site-costs")
            point = tab.text_content("#site-point-value")
            assert float(point) == pytest.approx(saved.operating_point, rel=1e-3)
            assert f"operating point {point} (polyp score, {saved.verdict}; the profile's point)" in costs
            assert "false alerts per minute" in costs and "% of the clip's 20 polyp-free frames flagged" in costs
            assert "validation polyp frames" in costs and "chosen for at most 10% of polyp-free frames flagged" in costs
            assert f"{saved.measured['flagged_share'] * 100:g}% of the clip" in costs
            _shot(tab, "settings")

            # the slider moves the point: other numbers, another picture, the saved point still marked
            drawn = tab.eval_on_selector("#site-curve", "c => c.toDataURL()")
            tab.eval_on_selector("#site-point", "el => { el.value = 0; el.dispatchEvent(new Event('input')); }")
            low = tab.text_content("#site-point-value")
            assert float(low) < float(point) and tab.text_content("#site-costs") != costs
            assert "the profile holds" in tab.text_content("#site-costs")
            assert tab.eval_on_selector("#site-curve", "c => c.toDataURL()") != drawn
            flagged = tab.evaluate("site.rows[site.index].flagged_share")
            assert flagged >= 0.5 and f"{flagged * 100:g}% of the clip" in tab.text_content("#site-costs")
            # a click on the curve moves it too: at the last stop's dot (the highest point)
            x, y = tab.evaluate("(() => { const c = document.getElementById('site-curve'); const xy = site.pixels.at(-1);"
                                " return [xy[0] * c.clientWidth / c.width, xy[1] * c.clientHeight / c.height]; })()")
            tab.click("#site-curve", position={"x": x, "y": y})
            assert tab.evaluate("site.index") == tab.evaluate("site.rows.length - 1")
            assert float(tab.text_content("#site-point-value")) > float(point)
            tab.eval_on_selector("#site-point", "el => { el.value = 0; el.dispatchEvent(new Event('input')); }")
            chosen = tab.evaluate("site.rows[site.index].operating_point")

            # Apply: saved, and the running server judges with it; the model card says so
            tab.click("#site-apply")
            tab.wait_for_function("document.getElementById('site-apply-status').textContent.startsWith('applied')")
            with urllib.request.urlopen(f"{url}/api/v1/model") as answer:
                model = json.load(answer)
            assert (model["site"], model["operating_point"]) == ("room-3", chosen)
            assert sites.load(predictor.checkpoint, "room-3").operating_point == chosen
            card = tab.text_content("#model")
            import re

            shown = re.search(rf"operating point (\S+) \(polyp score, {saved.verdict}; site room-3\)", card)
            assert shown and float(shown.group(1)) == pytest.approx(chosen, rel=1e-3), card
            assert "this server applies site room-3" in tab.text_content("#site-applied")
            assert tab.text_content("#site-point-value") == low and "the profile's point" in tab.text_content("#site-costs")
        finally:
            context.close()
