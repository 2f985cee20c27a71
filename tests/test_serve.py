"""The HTTP API of `polypseg serve` through FastAPI's TestClient: real CVC-ClinicDB frames, the shipped
model (torch backend: it loads in about a second), every bad input the issue names, the token, the
limits under load, video jobs, the live WebSocket, the host allow-list and WebSocket origins, and
images whose header declares more pixels than the server decodes."""

from __future__ import annotations

import csv
import io
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from polypseg.alerts import AlertRule, track
from polypseg.media import read_image, read_mask
from polypseg.errors import PolypsegError
from polypseg.predict import Prediction, Predictor, describe
from polypseg.serve import ServeSettings, background_server, create_app, segment_video
from polypseg.media import declared_size, decode_image

FRAME = "322.png"  # CVC-ClinicDB sequence 16: one clear polyp
TESTSERVER = ["testserver"]  # the Host of TestClient's requests; by default the app answers to loopback names only


@pytest.fixture(scope="module")
def predictor():
    return Predictor(backend="torch", threads=2)


@pytest.fixture(scope="module")
def client(predictor):
    with TestClient(create_app(predictor, ServeSettings(backend="torch", max_upload_mb=1, allowed_hosts=TESTSERVER))) as c:
        yield c


@pytest.fixture(scope="module")
def png(data_dir) -> bytes:
    return (data_dir / "images" / FRAME).read_bytes()


def _image(client, data, content_type="image/png", query="", name="frame.png"):
    return client.post(f"/api/v1/segment{query}", files={"file": (name, data, content_type)})


def _is_error(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and "\n" not in body["error"] and body["error"]
    return body["error"]


# --- describe: the figures every path reports -------------------------------------------------------

def test_describe_counts_regions_area_and_confidence():
    prob = np.zeros((100, 200), np.float32)
    prob[10:30, 10:40] = 0.9  # 600 px
    prob[60:70, 100:140] = 0.6  # 400 px
    prob[0, 199] = 0.3  # below the threshold
    d = describe(prob, 0.5)
    assert d["polyp_present"] and d["regions"] == 2 and len(d["polygons"]) == 2
    assert d["area_fraction"] == pytest.approx(1000 / 20000)
    assert d["confidence"] == pytest.approx((600 * 0.9 + 400 * 0.6) / 1000, abs=1e-4)
    xs = [x for x, _ in d["polygons"][0]]
    assert (min(xs), max(xs)) == (10, 39)  # largest region first, in pixel coordinates
    none = describe(prob, 0.95)
    assert (none["polyp_present"], none["regions"], none["area_fraction"], none["confidence"]) == (False, 0, 0.0, None)
    assert none["polygons"] == [] and none["max_probability"] == pytest.approx(0.9)
    with pytest.raises(PolypsegError):
        describe(prob, 1.5)


# --- happy paths ------------------------------------------------------------------------------------

def test_health_and_model_card(client, predictor):
    assert client.get("/healthz").json() == {"status": "ok"}
    m = client.get("/api/v1/model").json()
    assert m["mask_threshold"] == pytest.approx(predictor.threshold) and m["input"] == [224, 288]
    assert "threshold" not in m and m["operating_point"] == predictor.operating_point and m["site"] is None
    assert "CVC-ClinicDB" in m["training_data"] and "research" in m["intended_use"].lower()
    assert client.get("/").text.count("For research only") == 1
    assert "/api/v1/segment" in client.get("/openapi.json").json()["paths"]


def test_segment_json_finds_the_polyp(client, png, data_dir, predictor):
    r = _image(client, png)
    assert r.status_code == 200
    d = r.json()
    assert (d["width"], d["height"]) == (384, 288) and d["threshold"] == pytest.approx(predictor.threshold)
    assert d["polyp_present"] and d["regions"] >= 1 and predictor.threshold <= d["confidence"] <= 1
    truth = read_mask(data_dir / "masks" / FRAME)[0] > 0
    drawn = np.zeros((288, 384), np.uint8)
    cv2.fillPoly(drawn, [np.array(p, np.int32) for p in d["polygons"]], 1)
    dice = 2 * (drawn.astype(bool) & truth).sum() / (drawn.sum() + truth.sum())
    assert dice > 0.8  # the outlines land on the real polyp


def test_segment_png_is_the_predictor_mask(client, png, predictor, data_dir):
    r = _image(client, png, query="?format=png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    mask = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_GRAYSCALE)
    expected = predictor.predict_mask(read_image(data_dir / "images" / FRAME))
    assert np.array_equal(mask == 255, expected) and set(np.unique(mask)) == {0, 255}
    assert float(r.headers["x-polyp-area-fraction"]) == pytest.approx(expected.mean(), abs=1e-6)


def test_segment_threshold_and_probability_map(client, png):
    low = _image(client, png, query="?threshold=0.05&probability=true").json()
    high = _image(client, png, query="?threshold=0.99").json()
    assert low["threshold"] == 0.05 and high["area_fraction"] < low["area_fraction"]
    assert high["probability_png"] is None
    import base64

    prob = cv2.imdecode(np.frombuffer(base64.b64decode(low["probability_png"]), np.uint8), cv2.IMREAD_UNCHANGED)
    assert prob.shape == (288, 384) and prob.dtype == np.uint8
    assert (prob >= round(0.05 * 255)).mean() == pytest.approx(low["area_fraction"], abs=0.01)


def test_jpeg_and_grayscale_uploads(client, data_dir):
    rgb = read_image(data_dir / "images" / FRAME)
    jpg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
    gray = cv2.imencode(".png", rgb[:, :, 0])[1].tobytes()
    assert _image(client, jpg, "image/jpeg").json()["polyp_present"]
    assert _image(client, gray).status_code == 200


def test_jpeg_stored_sideways_is_answered_upright(client, rotated_jpeg, data_dir, predictor):
    """Issue 32: a JPEG with EXIF Orientation 6 (stored 288 wide, 384 high) is the upright 384x288 frame,
    as browsers show it: its declared size, the answer's height and width, the outline and the mask."""
    data = rotated_jpeg.read_bytes()
    assert declared_size(data) == (384, 288)
    decoded = decode_image(data)
    assert decoded.shape == (288, 384, 3)
    assert np.abs(decoded.astype(int) - read_image(data_dir / "images" / FRAME)).mean() < 3
    answer = _image(client, data, "image/jpeg", name="sideways.jpg").json()
    assert (answer["height"], answer["width"]) == (288, 384) and answer["polyp_present"]
    upright = _image(client, (data_dir / "images" / FRAME).read_bytes()).json()
    x0, y0, w, h = cv2.boundingRect(np.array(answer["polygons"][0], np.int32))
    u0, v0, uw, uh = cv2.boundingRect(np.array(upright["polygons"][0], np.int32))  # the same polyp, same place
    assert abs(x0 - u0) <= 4 and abs(y0 - v0) <= 4 and abs(w - uw) <= 8 and abs(h - uh) <= 8
    mask = cv2.imdecode(np.frombuffer(_image(client, data, "image/jpeg", query="?format=png").content, np.uint8),
                        cv2.IMREAD_GRAYSCALE)
    assert mask.shape == (288, 384)


@pytest.mark.parametrize("width, height, status", [(1, 1, 400), (31, 200, 400), (200, 31, 400), (32, 32, 200)])
def test_images_under_32_pixels_on_a_side_are_refused(client, data_dir, width, height, status):
    """Issue 32: one minimum, data.MIN_IMAGE_SIDE, for the API as for `polypseg predict`."""
    crop = read_image(data_dir / "images" / FRAME)[50:50 + height, 100:100 + width]
    data = cv2.imencode(".png", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))[1].tobytes()
    response = _image(client, data)
    assert response.status_code == status, response.text
    if status == 400:
        assert _is_error(response, 400) == (f"the image is {width}x{height} pixels, too small to segment: "
                                            "polypseg needs at least 32x32. Give the full frame.")
    else:
        assert (response.json()["height"], response.json()["width"]) == (32, 32)


def test_favicon_is_served_and_linked_from_the_page(client):
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    assert icon.content.lstrip().startswith(b"<svg")
    page = client.get("/").text
    linked = page.split('<link rel="icon" href="', 1)[1].split('"', 1)[0]
    assert client.get(linked).status_code == 200 and client.get(linked).content == icon.content


def test_api_docs_load_their_files_from_this_server(client):
    """Issue 32: /docs and /redoc name no file outside the server (FastAPI's own pages load them from a
    CDN); the files are there, and the OpenAPI schema they render."""
    import re

    for page, assets in (("/docs", ("swagger-ui-bundle.js", "swagger-ui.css")), ("/redoc", ("redoc.standalone.js",))):
        html = client.get(page)
        assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']|url:\s*['"]([^'"]+)['"]""", html.text)
        assert [u for pair in urls for u in pair if u.startswith(("http:", "https:", "//"))] == []
        for name in assets:
            assert f"/docs-assets/{name}" in html.text
            served = client.get(f"/docs-assets/{name}")
            assert served.status_code == 200 and len(served.content) > 100_000
    assert "/api/v1/segment" in client.get("/openapi.json").json()["paths"]


class ScriptedPredictor:
    """The real predictor's settings with polyp scores a test chooses: frame k gets ``scores[k]``, its
    verdict at the model's operating point, and a square of probability 0.9 in the probability map."""

    def __init__(self, predictor, scores):
        self.inner, self.scores = predictor, iter(scores)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def predict(self, image):
        score = next(self.scores)
        h, w = image.shape[:2]
        prob = np.zeros((h, w), np.float32)
        prob[h // 4: h // 2, w // 4: w // 2] = 0.9
        return Prediction(prob, score, score >= self.inner.operating_point)


def test_segment_is_quiet_when_the_verdict_is_no_polyp(predictor, png):
    point = predictor.operating_point  # the shipped model's, chosen on polyp-free frames: a logit of 5.90
    low, high = round(point - 4, 4), round(point + 4, 4)
    with TestClient(create_app(ScriptedPredictor(predictor, [low, low, high]), ServeSettings(allowed_hosts=TESTSERVER))) as c:
        quiet = _image(c, png, query="?probability=true").json()
        assert (quiet["polyp_present"], quiet["polyp_score"]) == (False, pytest.approx(low, abs=1e-4))
        assert quiet["operating_point"] == pytest.approx(point, abs=1e-4)  # rounded to 4 places
        assert (quiet["polygons"], quiet["area_fraction"], quiet["regions"], quiet["confidence"]) == ([], 0.0, 0, None)
        assert quiet["max_probability"] == 0.9 and quiet["probability_png"]  # the map comes: the page gates its drawing
        # the mask as a file stays raw (the square of 0.9), the verdict beside it
        answer = _image(c, png, query="?format=png")
        mask = cv2.imdecode(np.frombuffer(answer.content, np.uint8), cv2.IMREAD_GRAYSCALE)
        assert mask.shape == (288, 384) and (mask == 255).sum() == 72 * 96
        assert answer.headers["X-Polyp-Present"] == "0" and float(answer.headers["X-Operating-Point"]) == pytest.approx(point, abs=1e-4)
        seen = _image(c, png).json()
        assert seen["polyp_present"] and seen["polyp_score"] == pytest.approx(high, abs=1e-4) and len(seen["polygons"]) == 1


# --- bad input: a 4xx with one line of JSON, and the server keeps serving --------------------------

def _truncated_jpeg(png: bytes) -> bytes:
    jpg = cv2.imencode(".jpg", cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR))[1].tobytes()
    return jpg[: len(jpg) // 2]


@pytest.mark.parametrize("case, status, words", [
    ("empty", 400, "empty"),
    ("not an image", 400, "not an image"),
    ("truncated png", 400, "truncated"),
    ("truncated jpeg", 400, "truncated"),
    ("wrong content type", 415, "text/plain"),
    ("oversized", 413, "limit"),
])
def test_bad_uploads(client, png, case, status, words):
    data, content_type = {
        "empty": (b"", "image/png"),
        "not an image": (b"%PDF-1.4 not a frame at all", "image/png"),
        "truncated png": (png[: len(png) // 2], "image/png"),
        "truncated jpeg": (_truncated_jpeg(png), "image/jpeg"),
        "wrong content type": (png, "text/plain"),
        "oversized": (png + b"\0" * (1 << 20), "image/png"),
    }[case]
    assert words in _is_error(_image(client, data, content_type, name="patient-name.png"), status)
    assert _image(client, png).status_code == 200


def test_bad_requests(client, png):
    _is_error(client.post("/api/v1/segment"), 422)
    assert "threshold" in _is_error(_image(client, png, query="?threshold=2"), 422)
    _is_error(_image(client, png, query="?format=gif"), 422)
    _is_error(client.get("/api/v1/nothing"), 404)
    _is_error(client.get("/api/v1/segment"), 405)
    chunked = client.post("/api/v1/segment", content=iter([b"--x\r\n"]), headers={"content-type": "multipart/form-data; boundary=x"})
    _is_error(chunked, 411)
    _is_error(client.get("/api/v1/videos/0123456789abcdef"), 404)


# --- token ------------------------------------------------------------------------------------------

def test_token_guards_every_request(predictor, png):
    with TestClient(create_app(predictor, ServeSettings(token="s3cret", allowed_hosts=TESTSERVER))) as c:
        for path in ("/", "/static/app.js", "/api/v1/model", "/healthz", "/docs"):
            r = c.get(path)
            _is_error(r, 401)
            assert r.headers["www-authenticate"] == "Bearer"
        _is_error(c.get("/api/v1/model", headers={"Authorization": "Bearer wrong"}), 401)
        _is_error(_image(c, png), 401)
        assert c.get("/api/v1/model", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        with pytest.raises(WebSocketDisconnect) as closed:
            with c.websocket_connect("/api/v1/live") as ws:
                ws.receive_json()
        assert closed.value.code == 1008
        page = c.get("/?token=s3cret")  # how a browser opens it; the cookie carries the token from there
        assert page.status_code == 200 and "HttpOnly" in page.headers["set-cookie"]
        assert c.get("/static/app.js").status_code == 200
        assert _image(c, png).status_code == 200
        with c.websocket_connect("/api/v1/live") as ws:
            ws.send_bytes(png)
            assert ws.receive_json()["polyp_present"]


# --- load: bounded, every request answered ----------------------------------------------------------

class GatedPredictor:
    """The real predictor behind a gate, so that a test can hold requests in flight."""

    def __init__(self, predictor):
        self.inner, self.gate, self.entered = predictor, threading.Event(), threading.Semaphore(0)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def predict(self, image):
        self.entered.release()
        self.gate.wait(30)
        return self.inner.predict(image)

    def infer(self, x):
        self.entered.release()
        self.gate.wait(30)
        return self.inner.infer(x)


def test_full_server_answers_503_at_once_and_recovers(predictor, png):
    gated = GatedPredictor(predictor)
    with TestClient(create_app(gated, ServeSettings(workers=1, max_pending=2, allowed_hosts=TESTSERVER))) as c, ThreadPoolExecutor(8) as pool:
        held = [pool.submit(_image, c, png) for _ in range(2)]
        assert gated.entered.acquire(timeout=30)  # one in the worker, one waiting: the server is full
        deadline = time.monotonic() + 30
        while c.app.state.polypseg.pool.pending < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = [_image(c, png) for _ in range(3)]
        for r in refused:
            assert "busy" in _is_error(r, 503)
        gated.gate.set()
        assert [f.result().status_code for f in held] == [200, 200]
        assert _image(c, png).status_code == 200


def test_32_concurrent_requests_all_answered(predictor, png):
    with TestClient(create_app(predictor, ServeSettings(allowed_hosts=TESTSERVER))) as c, ThreadPoolExecutor(32) as pool:
        codes = list(pool.map(lambda _: _image(c, png, query="?format=png").status_code, range(32)))
    assert codes == [200] * 32


# --- video jobs -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clip(data_dir, tmp_path_factory):
    from polypseg.media import write_clip

    frames = [read_image(data_dir / "images" / f"{i:03d}.png") for i in range(320, 326)]
    return write_clip(frames, tmp_path_factory.mktemp("clip") / "clip.mp4").read_bytes()


def _wait(c, job_id: str, url: str = "/api/v1/videos/{}") -> dict:
    """Poll a job (a video job; a site job with ``url="/api/v1/sites/jobs/{}"``) until it has ended."""
    deadline = time.monotonic() + 120
    while (job := c.get(url.format(job_id)).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return job


def test_video_job_gives_h264_csv_and_timeline(client, clip):
    import av

    r = client.post("/api/v1/videos", files={"file": ("patient.mp4", clip, "video/mp4")})
    assert r.status_code == 202 and r.json()["frames_total"] == 6
    job = _wait(client, r.json()["id"])
    assert job["status"] == "done" and job["progress"] == 1.0 and job["frames_done"] == 6
    assert job["result"]["timeline"] == [1] * 6 and job["result"]["polyp_frames"] == 6
    # two rates, two names (issue 32): the clip's 25 fps by its timestamps, and the server's speed
    result = job["result"]
    assert result["time_ms"] == pytest.approx([40 * i for i in range(6)]) and "fps" not in result
    assert (result["summary"]["duration_ms"], result["summary"]["source_fps"]) == (240, 25)
    assert result["processing_fps"] > 0 and result["summary"]["processing_fps"] > 0
    state_job = client.app.state.polypseg.jobs.get(job["id"])
    assert not state_job.input.exists()  # the upload is gone once the job ends

    video = client.get(job["video_url"])
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    with av.open(io.BytesIO(video.content)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert sum(1 for _ in container.decode(stream)) == 6
    rows = list(csv.DictReader(io.StringIO(client.get(job["csv_url"]).text)))
    assert [int(row["frame"]) for row in rows] == list(range(6))

    assert client.delete(f"/api/v1/videos/{job['id']}").status_code == 204
    assert not state_job.folder.exists()
    _is_error(client.get(job["video_url"]), 404)


def test_video_job_lists_its_alerts_as_its_csvs_and_the_python_api_say(client, clip, predictor, tmp_path):
    job = _wait(client, client.post("/api/v1/videos", files={"file": ("v.mp4", clip, "video/mp4")}).json()["id"])
    result, base = job["result"], f"/api/v1/videos/{job['id']}"
    rows = list(csv.DictReader(io.StringIO(client.get(job["csv_url"]).text)))
    assert result["score"] == [float(r["polyp_score"]) for r in rows]
    assert result["alert"] == [int(r["alert"]) for r in rows] and sum(result["alert"]) >= 1
    answer = client.get(job["events_url"])
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    events = list(csv.DictReader(io.StringIO(answer.text)))
    assert len(result["events"]) == len(events) == result["summary"]["alerts"] >= 1
    for event, row in zip(result["events"], events):
        assert event["index"] == int(row["index"]) and event["peak_frame"] == int(row["peak_frame"])
        for key in ("start_ms", "end_ms", "duration_ms", "peak_score", "peak_area"):
            assert event[key] == float(row[key]), key
        alerted = [float(r["time_ms"]) for r in rows if event["start_ms"] <= float(r["time_ms"]) < event["end_ms"]]
        assert alerted and all(int(r["alert"]) for r in rows if float(r["time_ms"]) in alerted)
        assert event["thumbnail_url"] == f"{base}/alerts/{event['index']}.jpg"
        thumb = client.get(event["thumbnail_url"])
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert cv2.imdecode(np.frombuffer(thumb.content, np.uint8), cv2.IMREAD_COLOR).shape[1] == 240
    summary = result["summary"]
    assert summary["rule"] == AlertRule().resolved(predictor.operating_point).as_dict() and "source" not in summary
    assert summary["alerts_per_minute"] == pytest.approx(len(events) / (summary["duration_ms"] / 60000), rel=1e-3)
    for n in (0, len(events) + 1):
        assert "no alert" in _is_error(client.get(f"{base}/alerts/{n}.jpg"), 404)
    _is_error(client.get(f"{base}/alerts/x.jpg"), 404)
    folder = client.app.state.polypseg.jobs.get(job["id"]).folder  # every output inside the job's folder
    assert {"overlay.mp4", "frames.csv", "events.csv", "alerts", "summary.json", "timeline.png"} <= {p.name for p in folder.iterdir()}
    assert client.delete(base).status_code == 204 and not folder.exists()

    (tmp_path / "clip.mp4").write_bytes(clip)  # the Python API: the same figures
    direct = segment_video(predictor, tmp_path / "clip.mp4", tmp_path / "exam")
    for key in ("frames", "time_ms", "timeline", "outlined", "area", "score", "alert"):
        assert direct[key] == result[key], key
    speed = lambda summary: {k: v for k, v in summary.items() if k != "processing_fps"}  # noqa: E731 - a time
    assert speed(direct["summary"]) == speed(result["summary"])
    assert direct["summary"]["processing_fps"] > 0 and result["summary"]["processing_fps"] > 0
    for mine, served in zip(direct["events"], result["events"], strict=True):
        assert mine.pop("thumbnail_url") == (tmp_path / "exam" / mine["thumbnail"]).resolve().as_uri()
        assert mine == {k: v for k, v in served.items() if k != "thumbnail_url"}


@pytest.mark.parametrize("data, content_type, status", [
    (b"", "video/mp4", 400),
    (b"this is no video, only some text" * 100, "video/mp4", 400),
    (b"\0" * 100, "image/png", 415),
])
def test_bad_video_uploads(client, data, content_type, status):
    _is_error(client.post("/api/v1/videos", files={"file": ("v.mp4", data, content_type)}), status)
    assert not any(client.app.state.polypseg.jobs.root.iterdir())  # nothing left behind


def test_video_queue_is_bounded_and_jobs_cancel(predictor, clip):
    gated = GatedPredictor(predictor)
    with TestClient(create_app(gated, ServeSettings(max_jobs=1, allowed_hosts=TESTSERVER))) as c:
        post = lambda: c.post("/api/v1/videos", files={"file": ("v.mp4", clip, "video/mp4")})  # noqa: E731
        running = post().json()["id"]
        assert gated.entered.acquire(timeout=30)  # the worker holds the first job
        waiting = post().json()["id"]
        assert "waiting" in _is_error(post(), 503)
        _is_error(c.get(f"/api/v1/videos/{running}/video"), 409)
        assert c.delete(f"/api/v1/videos/{waiting}").status_code == 204
        gated.gate.set()
        assert _wait(c, running)["status"] == "done"
        root = c.app.state.polypseg.jobs.root
    assert not root.exists()  # the server's temporary folder goes with it


# --- live -------------------------------------------------------------------------------------------

def test_live_websocket_answers_each_frame(client, data_dir):
    rgb = read_image(data_dir / "images" / FRAME)
    jpg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 70])[1].tobytes()
    with client.websocket_connect("/api/v1/live") as ws:
        ws.send_bytes(jpg)
        first = ws.receive_json()
        assert first["polyp_present"] and first["server_ms"] >= first["infer_ms"] > 0
        assert first["polygons"] == [] and not first["outlined"]  # a polyp, but no alert yet: nothing drawn
        assert first["polyp_score"] >= first["operating_point"] and first["t_ms"] >= 0
        assert (first["alert"], first["alert_started"], first["alert_ended"]) == (False, False, False)  # onset first
        assert first["smoothed_score"] == pytest.approx(first["polyp_score"], abs=1e-4)
        ws.send_bytes(b"garbage")
        assert "not an image" in ws.receive_json()["error"]
        ws.send_text('{"threshold": 0.9}')
        ws.send_bytes(jpg)
        assert ws.receive_json()["threshold"] == 0.9  # still serving after the bad frame


def test_live_alert_starts_after_the_onset_and_ends_after_the_release(predictor, png):
    point = predictor.operating_point
    scores = [point - 4] * 2 + [point + 4] * 9 + [point - 4] * 8  # the onset and the release (200 ms): 4+ frames here
    rule = AlertRule().resolved(predictor.operating_point)
    with TestClient(create_app(ScriptedPredictor(predictor, scores), ServeSettings(allowed_hosts=TESTSERVER))) as c:
        assert c.get("/api/v1/model").json()["alert_rule"] == rule.as_dict()
        answers = []
        with c.websocket_connect("/api/v1/live") as ws:
            for _ in scores:
                ws.send_bytes(png)
                answers.append(ws.receive_json())
                time.sleep(0.05)
    t = [a["t_ms"] for a in answers]
    assert [a["polyp_score"] for a in answers] == scores and t == sorted(set(t))
    assert not answers[0]["polyp_present"] and answers[0]["polygons"] == []  # quiet below the operating point
    # what the endoscopist sees follows the alert: outlines only while it is on, none before the onset
    assert [bool(a["polygons"]) for a in answers] == [a["outlined"] for a in answers]
    assert [a["outlined"] for a in answers] == [a["alert"] and a["polyp_present"] for a in answers]
    started = [i for i, a in enumerate(answers) if a["alert_started"]]
    ended = [i for i, a in enumerate(answers) if a["alert_ended"]]
    assert len(started) == len(ended) == 1
    on, off = started[0], ended[0]
    assert t[on] - t[2] >= rule.onset_ms - 1e-3 and t[on - 1] - t[2] < rule.onset_ms
    assert t[off] - t[11] >= rule.release_ms - 1e-3 and t[off - 1] - t[11] < rule.release_ms
    assert [a["alert"] for a in answers] == [on <= i < off for i in range(len(scores))]
    states, _ = track(t, scores, rule)  # what polypseg.alerts says of these frames
    assert [a["smoothed_score"] for a in answers] == [round(s.smoothed, 4) for s in states]
    assert [a["alert"] for a in answers] == [s.alert for s in states]


# --- what reaches the logs, and the command line ----------------------------------------------------

def test_real_server_logs_no_paths_or_names(predictor, png, capfd):
    import urllib.request

    with background_server(create_app(predictor)) as url:
        boundary = "b0undary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"Jane-Doe-1970.png\"\r\n"
                f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(f"{url}/api/v1/segment?format=json", data=body, method="POST",
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(request) as r:
            assert r.status == 200
    out, err = capfd.readouterr()
    assert "Jane-Doe" not in out + err and "/api/v1/segment" not in out + err


def test_cli_refuses_network_without_token(monkeypatch, capsys):
    from polypseg.cli import main

    monkeypatch.delenv("POLYPSEG_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--backend", "torch"]) == 2
    assert "token" in capsys.readouterr().err


def test_cli_serve_prints_the_address_to_open(monkeypatch, capsys):
    import uvicorn

    from polypseg.cli import main

    served = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: served.append((self.config.host, self.config.port)))
    monkeypatch.setenv("POLYPSEG_TOKEN", "t0ken")
    assert main(["serve", "--backend", "torch", "--port", "8123"]) == 0
    assert served == [("127.0.0.1", 8123)]
    out = capsys.readouterr().out
    assert "open http://127.0.0.1:8123/?token=t0ken" in out and "not for diagnosis" in out


def test_cli_serve_runs_the_onnx_file_given(monkeypatch, tiny_checkpoint, data_dir, png):
    """`serve --onnx FILE` serves that file (an int8 file, say), and the model card says which."""
    import polypseg.serve as serve_module
    from polypseg.cli import main
    from polypseg.export import export_onnx

    onnx = export_onnx(tiny_checkpoint, out_path=tiny_checkpoint / "deployed.onnx", check_frames=1, data=data_dir,
                       verbose=False)
    given = []
    monkeypatch.setattr(serve_module, "serve", lambda settings, **kw: given.append(settings))
    assert main(["serve", "--run", str(tiny_checkpoint), "--onnx", str(onnx)]) == 0
    settings = given[0]
    settings.allowed_hosts = TESTSERVER
    predictor = serve_module.load_predictor(settings)
    with TestClient(create_app(predictor, settings)) as c:
        m = c.get("/api/v1/model").json()
        assert (m["backend"], m["onnx"], m["input"]) == ("onnxruntime", "deployed.onnx", [64, 96])
        r = _image(c, png)
        assert r.status_code == 200 and (r.json()["width"], r.json()["height"]) == (384, 288)


# --- hosts and origins: no DNS rebinding, no WebSocket from another site's page ---------------------

class CountingPredictor:
    """The real predictor, counting the frames it is given."""

    def __init__(self, predictor):
        self.inner, self.frames = predictor, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def predict(self, image):
        self.frames += 1
        return self.inner.predict(image)


def test_foreign_host_is_refused_and_loopback_names_answered(predictor, png):
    counting = CountingPredictor(predictor)
    with TestClient(create_app(counting, ServeSettings(backend="torch")), base_url="http://127.0.0.1:8000") as c:
        for base in ("http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000", "http://LOCALHOST"):
            assert c.get(f"{base}/api/v1/model").status_code == 200, base
        for host in ("evil.example", "testserver", "127.0.0.1.evil.example", "localhost:8000.evil.example"):
            message = _is_error(c.get("/api/v1/model", headers={"Host": host}), 400)
            assert "does not answer to the host" in message and "--allowed-host" in message
        assert "evil.example" in _is_error(c.get("/", headers={"Host": "evil.example:8000"}), 400)
        foreign = c.post("/api/v1/segment", files={"file": ("f.png", png, "image/png")}, headers={"Host": "evil.example"})
        _is_error(foreign, 400)
        assert counting.frames == 0  # refused before the upload is read
        assert _image(c, png).status_code == 200 and counting.frames == 1
        with pytest.raises(WebSocketDisconnect) as closed:  # TestClient's WebSocket Host is 'testserver'
            with c.websocket_connect("/api/v1/live") as ws:
                ws.receive_json()
        assert closed.value.code == 1008 and counting.frames == 1


def test_allowed_host_option_adds_names_and_wildcards(predictor):
    settings = ServeSettings(backend="torch", allowed_hosts=["Endo.Hospital.example", "*.ward.example", "10.1.2.3"])
    with TestClient(create_app(predictor, settings), base_url="http://127.0.0.1") as c:
        for host in ("endo.hospital.example", "endo.hospital.example:8000", "bed-4.ward.example", "10.1.2.3:8000",
                     "127.0.0.1"):
            assert c.get("/healthz", headers={"Host": host}).status_code == 200, host
        for host in ("ward.example", "hospital.example", "endo.hospital.example.evil.example", "10.1.2.4"):
            _is_error(c.get("/healthz", headers={"Host": host}), 400)
    for bad, words in [("endo.example:8000", "without scheme, port"), ("http://endo.example", "without scheme"),
                       ("a.example,b.example", "one name per"), ("endo*.example", "like '*.example.org'")]:
        with pytest.raises(PolypsegError, match="--allowed-host") as err:
            create_app(predictor, ServeSettings(allowed_hosts=[bad]))
        assert words in str(err.value)


def test_websocket_from_a_foreign_origin_is_refused_before_the_model_runs(predictor, png):
    counting = CountingPredictor(predictor)
    with TestClient(create_app(counting, ServeSettings(backend="torch", allowed_hosts=TESTSERVER))) as c:
        for origin in ("http://evil.example", "http://testserver.evil.example", "null", "file://"):
            with pytest.raises(WebSocketDisconnect) as closed:
                with c.websocket_connect("/api/v1/live", headers={"Origin": origin}) as ws:
                    ws.send_bytes(png)
                    ws.receive_json()
            assert closed.value.code == 1008, origin
        assert counting.frames == 0
        for origin in ("http://testserver", "http://127.0.0.1:8000", "https://localhost", None):  # same origin, no page
            with c.websocket_connect("/api/v1/live", headers={"Origin": origin} if origin else {}) as ws:
                ws.send_bytes(png)
                assert ws.receive_json()["polyp_present"], origin
        assert counting.frames == 4


def test_real_server_refuses_foreign_host_and_origin(predictor):
    import http.client

    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with background_server(create_app(predictor)) as url:
        port = int(url.rsplit(":", 1)[1])
        for host, status in (("evil.example", 400), (f"127.0.0.1:{port}", 200)):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/api/v1/model", headers={"Host": host})
            answer = conn.getresponse()
            assert answer.status == status and answer.headers["content-type"] == "application/json"
            conn.close()
        live = url.replace("http://", "ws://") + "/api/v1/live"
        with pytest.raises(InvalidStatus) as refused:
            connect(live, origin="http://evil.example", open_timeout=30).close()
        assert refused.value.response.status_code == 403
        with connect(live, origin=url, open_timeout=30) as ws:
            ws.send('{"threshold": 0.5}')  # accepted: a page of the server itself


def test_cli_allowed_host(monkeypatch, capsys):
    import uvicorn

    from polypseg.cli import main

    assert main(["serve", "--backend", "torch", "--allowed-host", "endo.example:8000"]) == 2
    assert "--allowed-host 'endo.example:8000' is not a host name" in capsys.readouterr().err
    apps = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: apps.append(self.config.app))
    monkeypatch.setenv("POLYPSEG_TOKEN", "t0ken")
    argv = ["serve", "--backend", "torch", "--host", "0.0.0.0",
            "--allowed-host", "endo.example", "--allowed-host", "*.ward.example"]
    assert main(argv) == 0
    assert "endo.example, *.ward.example" in capsys.readouterr().out
    with TestClient(apps[0], base_url="http://endo.example", headers={"Authorization": "Bearer t0ken"}) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/healthz", headers={"Host": "bed-4.ward.example"}).status_code == 200
        _is_error(c.get("/healthz", headers={"Host": "evil.example"}), 400)


# --- decompression bombs: a tiny file that declares a huge image gets the 400, not a 500 -------------

def _bomb(kind: str, width: int, height: int) -> bytes:
    """A valid tiny image of ``kind`` whose header is patched to declare width x height."""
    from PIL import Image

    buf = io.BytesIO()
    options = {"lossless": True} if kind == "webp" else {}  # lossless: the VP8L header
    Image.new("L" if kind == "tiff" else "RGB", (16, 16)).save(buf, kind.upper(), **options)
    data = bytearray(buf.getvalue())
    if kind == "png":  # IHDR: width, height, then its CRC
        data[16:24] = struct.pack(">II", width, height)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    elif kind == "jpeg":  # SOF0: height, width
        at = data.index(b"\xff\xc0")
        data[at + 5:at + 9] = struct.pack(">HH", height, width)
    elif kind == "bmp":
        data[18:26] = struct.pack("<ii", width, height)
    elif kind == "webp":  # VP8L: 14 bits each, minus one
        assert data[12:16] == b"VP8L" and data[20] == 0x2F
        bits = struct.unpack("<I", data[21:25])[0]
        data[21:25] = struct.pack("<I", (width - 1) | (height - 1) << 14 | bits & ~((1 << 28) - 1))
    elif kind == "tiff":  # tags ImageWidth (256) and ImageLength (257) of the first IFD
        end = "<" if data[:2] == b"II" else ">"
        ifd = struct.unpack(end + "I", data[4:8])[0]
        for k in range(struct.unpack(end + "H", data[ifd:ifd + 2])[0]):
            at = ifd + 2 + 12 * k
            tag, kind_of_value = struct.unpack(end + "HH", data[at:at + 4])
            if tag in (256, 257):
                value = width if tag == 256 else height
                short = kind_of_value == 3
                data[at + 8:at + 12] = struct.pack(end + "HH", value, 0) if short else struct.pack(end + "I", value)
    return bytes(data)


@pytest.mark.parametrize("kind, width, height", [
    ("png", 30000, 30000), ("png", 8000, 6000), ("jpeg", 30000, 30000), ("tiff", 30000, 30000),
    ("webp", 16384, 16384), ("bmp", 30000, 30000),
])
def test_decode_image_refuses_a_decompression_bomb_from_its_header(kind, width, height):
    from PIL import Image

    before = Image.MAX_IMAGE_PIXELS
    data = _bomb(kind, width, height)
    assert len(data) < 2000
    begin = time.perf_counter()
    with pytest.raises(PolypsegError, match=f"^the image is {width}x{height}, over 40 megapixels"):
        decode_image(data)
    assert time.perf_counter() - begin < 1  # nothing was decoded
    assert Image.MAX_IMAGE_PIXELS == before  # a per-call check; Pillow's process-wide limit is left alone


def test_bomb_upload_gets_the_400_and_the_server_keeps_serving(client, png):
    bomb = _bomb("png", 30000, 30000)
    message = _is_error(_image(client, bomb), 400)
    assert message.startswith("the image is 30000x30000, over 40 megapixels")
    with client.websocket_connect("/api/v1/live") as ws:
        ws.send_bytes(bomb)
        assert "30000x30000, over 40 megapixels" in ws.receive_json()["error"]
        ws.send_bytes(png)
        assert ws.receive_json()["polyp_present"]
    assert _image(client, png).status_code == 200


# --- site profiles: the Settings tab's API ----------------------------------------------------------

SITE_FRAMES = 20  # polyp-free frames of PolypGen centre A, sequence 1, as a 25 fps clip (0.8 s)


def polyp_free_clip(data_dir, path, n: int = SITE_FRAMES):
    from polypseg.media import id_sort_key, write_clip

    folder = data_dir.parent / "polypgen-centre-a" / "negatives" / "seq1"
    names = sorted((p for p in folder.iterdir() if p.suffix == ".jpg"), key=lambda p: id_sort_key(p.stem))[:n]
    return write_clip([read_image(p) for p in names], path, fps=25)


@pytest.fixture
def site_model(tiny_checkpoint):
    """The tiny model (a copy in a tmp folder: profiles are saved beside it) with a split whose validation
    side is six CVC-ClinicDB polyp frames, so that the curve's sensitivity is known."""
    import json

    ids = [f"{i:03d}" for i in range(1, 13)]
    (tiny_checkpoint / "split.json").write_text(json.dumps({"train": ids[6:], "val": ids[:6], "test": []}))
    return Predictor(tiny_checkpoint, backend="torch", threads=1)


def _wait_site(c, job_id: str) -> dict:
    return _wait(c, job_id, "/api/v1/sites/jobs/{}")


def test_sites_api_calibrates_moves_and_applies_a_site(site_model, tiny_checkpoint, data_dir, png, tmp_path, monkeypatch):
    from polypseg import sites
    from polypseg.runtime import file_sha256

    clip = polyp_free_clip(data_dir, tmp_path / "free.mp4").read_bytes()
    weights = site_model.checkpoint
    post = lambda c, **form: c.post("/api/v1/sites", files={"file": ("room.mp4", clip, "video/mp4")},  # noqa: E731
                                    data={k: str(v) for k, v in form.items()})
    with TestClient(create_app(site_model, ServeSettings(allowed_hosts=TESTSERVER))) as c:
        listed = c.get("/api/v1/sites").json()
        assert (listed["sites"], listed["applied"], listed["verdict"]) == ([], None, site_model.config.verdict)
        assert "one target" in _is_error(post(c, name="room-3"), 400)
        assert "one target" in _is_error(post(c, name="room-3", flagged_share=0.1, false_alerts_per_minute=1), 400)
        assert "[0, 1)" in _is_error(post(c, name="room-3", flagged_share=1.5), 400)
        assert "name" in _is_error(post(c, name="../room", flagged_share=0.1), 400)
        assert not any(c.app.state.polypseg.jobs.root.iterdir())  # refused before anything was saved

        r = post(c, name="room-3", flagged_share=0.1)
        assert r.status_code == 202, r.text
        job = _wait_site(c, r.json()["id"])
        assert job["status"] == "done", job["error"]
        assert job["frames_done"] == SITE_FRAMES and job["progress"] == 1.0
        profile = job["result"]
        _is_error(c.get(f"/api/v1/videos/{job['id']}"), 404)  # a site job is no video job

        # saved beside the model, as the profile the job returned
        path = sites.site_path(weights, "room-3")
        assert path.is_file() and path.parent == tiny_checkpoint and profile["file"] == path.name
        assert sites.load(weights, "room-3", file_sha256(weights)).to_dict() == {
            k: v for k, v in profile.items() if k not in ("file", "applied", "movable")}
        assert (profile["applied"], profile["movable"]) == (False, True)
        measured = profile["measured"]
        assert measured["frames"] == SITE_FRAMES and measured["flagged_share"] <= 0.1
        assert measured["validation_polyp_frames"] == 6 and measured["validation_sensitivity"] is not None
        assert profile["target"] == {"flagged_share": 0.1} and profile["verdict"] == site_model.config.verdict
        assert profile["model_sha256"] == file_sha256(weights) and "room.mp4" not in str(profile)  # no file name
        curve = profile["curve"]
        points = [row["operating_point"] for row in curve]
        assert len(curve) > 3 and points == sorted(points)
        assert all(row["sensitivity"] is not None and row["false_alerts_per_minute"] is not None for row in curve)
        assert c.get("/api/v1/sites").json()["sites"] == ["room-3"]
        assert c.get("/api/v1/sites/room-3").json()["operating_point"] == profile["operating_point"]
        assert "no site" in _is_error(c.get("/api/v1/sites/room-4"), 404)

        # applied: the model's description, and the frames, are the site's
        own = c.get("/api/v1/model").json()
        assert own["site"] is None and own["operating_point"] == site_model.config.effective_operating_point
        answer = c.post("/api/v1/sites/room-3/apply")
        assert answer.status_code == 200 and answer.json()["site"] == "room-3"
        m = c.get("/api/v1/model").json()
        assert (m["site"], m["operating_point"]) == ("room-3", profile["operating_point"])
        assert (m["alert_rule"]["onset_ms"], m["alert_rule"]["operating_point"]) == (profile["onset_ms"], profile["operating_point"])
        assert m["model_operating_point"] == own["operating_point"] and m["mask_threshold"] == own["mask_threshold"]
        frame = _image(c, png).json()
        assert frame["operating_point"] == profile["operating_point"]
        assert frame["polyp_present"] == (frame["polyp_score"] >= profile["operating_point"])
        assert c.get("/api/v1/sites").json()["applied"] == "room-3"

        # moved by hand: the costs measured again, monotone in the point; the file left alone without save
        lowest = 0.0 if site_model.config.verdict != "logit" else points[0] - 100  # every frame flagged
        picks = [lowest, points[0], points[len(points) // 2], points[-1]]
        moved = [c.put("/api/v1/sites/room-3/point", json={"operating_point": p, "save": False}).json() for p in picks]
        shares = [mv["measured"]["flagged_share"] for mv in moved]
        sensitivity = [mv["measured"]["validation_sensitivity"] for mv in moved]
        alerts = [mv["measured"]["false_alerts_per_minute"] for mv in moved]
        assert shares == sorted(shares, reverse=True) and shares[0] == 1.0 and shares[1] >= 0.5 and shares[-1] == 0.0
        assert sensitivity == sorted(sensitivity, reverse=True) and sensitivity[0] == 1.0
        assert alerts[0] == pytest.approx(1 / (SITE_FRAMES / 25 / 60)) and alerts[-1] == 0.0  # one alert all along; none
        picks = picks[1:]
        for mv, p in zip(moved[1:], picks):  # what the curve said of that point
            row = curve[points.index(p)]
            assert mv["operating_point"] == p and mv["measured"]["flagged_share"] == row["flagged_share"]
            assert mv["measured"]["false_alerts_per_minute"] == row["false_alerts_per_minute"]
            assert mv["measured"]["validation_sensitivity"] == row["sensitivity"]
        assert sites.load(weights, "room-3").operating_point == profile["operating_point"]
        later = c.put("/api/v1/sites/room-3/point", json={"operating_point": picks[1], "onset_ms": 0}).json()
        assert later["onset_ms"] == 0 and later["target"]["moved_by_hand"] == 1.0
        assert sites.load(weights, "room-3").operating_point == picks[1]
        assert c.get("/api/v1/model").json()["operating_point"] == profile["operating_point"]  # until applied
        c.post("/api/v1/sites/room-3/apply")
        m = c.get("/api/v1/model").json()
        assert (m["operating_point"], m["alert_rule"]["onset_ms"]) == (picks[1], 0)
        if site_model.config.verdict != "logit":
            assert "between 0 and 1" in _is_error(c.put("/api/v1/sites/room-3/point", json={"operating_point": 2}), 400)
        _is_error(c.put("/api/v1/sites/room-3/point", json={"operating_point": "high"}), 422)
        assert "no site" in _is_error(c.put("/api/v1/sites/room-4/point", json={"operating_point": 0.5}), 404)

    # a site's clip is a video: the video upload limit applies to it, not the image one
    with TestClient(create_app(site_model, ServeSettings(allowed_hosts=TESTSERVER, max_upload_mb=0.01, max_video_mb=0.25))) as c:
        assert len(clip) > 0.25 * 2**20 and "over the 0.25 MB limit" in _is_error(post(c, name="room-5", flagged_share=0.1), 413)

    # a server started with the site (serve --site): its point from the start; the clip's scores are gone
    from polypseg.cli import main
    import polypseg.serve as serve_module

    given = []
    monkeypatch.setattr(serve_module, "serve", lambda settings, **kw: given.append(settings))
    assert main(["serve", "--run", str(tiny_checkpoint), "--backend", "torch", "--site", "room-3"]) == 0
    assert given[0].site == "room-3"
    started = serve_module.load_predictor(given[0])
    with TestClient(create_app(started, ServeSettings(allowed_hosts=TESTSERVER))) as c:
        m = c.get("/api/v1/model").json()
        assert (m["site"], m["operating_point"]) == ("room-3", picks[1])
        assert c.get("/api/v1/sites/room-3").json()["movable"] is False
        assert "calibrate it here again" in _is_error(
            c.put("/api/v1/sites/room-3/point", json={"operating_point": picks[0]}), 409)
