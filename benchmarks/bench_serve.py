"""`polypseg serve` under load, over loopback: the real server (uvicorn, in a thread of this process, on a
free port) with the shipped model, clients speaking plain HTTP and WebSocket.

    python benchmarks/bench_serve.py                    # ONNX Runtime, as `polypseg serve` runs by default
    python benchmarks/bench_serve.py --backend torch --seconds 5 --requests 32

Prints a table: single-request latency, images/s with 1, 8 and 32 concurrent clients (and how many were
refused with 503), and the live WebSocket at 288x384 (a camera at --camera-fps; one frame in flight, the
newest camera frame sent as soon as the previous answer arrives, the others dropped); then what the server
answers to each bad input. Target: live >= 20 fps on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import cv2
import numpy as np

from polypseg.config import DEFAULT_DATA
from polypseg.predict import Predictor
from polypseg.runtime import cpu_cores
from polypseg.serve import ServeSettings, background_server, create_app

BOUNDARY = "polypsegbench"


def multipart(data: bytes, content_type: str = "image/png", field: str = "file") -> bytes:
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"upload\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def request(host: str, port: int, body, path: str = "/api/v1/segment", method: str = "POST") -> tuple[int, bytes, float]:
    """One request on a fresh connection -> (status, body, seconds). An iterable body goes chunked."""
    begin = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=120)
    conn.request(method, path, body, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
                 encode_chunked=not isinstance(body, (bytes, type(None))))
    response = conn.getresponse()
    content = response.read()
    conn.close()
    return response.status, content, time.perf_counter() - begin


def post(host: str, port: int, body: bytes) -> tuple[int, float]:
    status, _, seconds = request(host, port, body)
    return status, seconds


def bad_inputs(host: str, port: int, png: bytes) -> list[tuple[str, int, str]]:
    """What the server answers to each bad input the issue names -> (input, status, message)."""
    jpg = cv2.imencode(".jpg", cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR))[1].tobytes()
    cases = [
        ("zero-byte image", multipart(b""), "/api/v1/segment"),
        ("not an image (PDF bytes)", multipart(b"%PDF-1.4 " * 50), "/api/v1/segment"),
        ("truncated PNG", multipart(png[: len(png) // 2]), "/api/v1/segment"),
        ("truncated JPEG", multipart(jpg[: len(jpg) // 2], "image/jpeg"), "/api/v1/segment"),
        ("wrong content type (text/plain)", multipart(png, "text/plain"), "/api/v1/segment"),
        ("image over the upload limit (21 MB)", multipart(png + b"\0" * (21 << 20)), "/api/v1/segment"),
        ("upload without Content-Length (chunked)", iter([multipart(png)]), "/api/v1/segment"),
        ("no file field", multipart(png, field="image"), "/api/v1/segment"),
        ("threshold=2", multipart(png), "/api/v1/segment?threshold=2"),
        ("format=gif", multipart(png), "/api/v1/segment?format=gif"),
        ("zero-byte video", multipart(b"", "video/mp4"), "/api/v1/videos"),
        ("not a video (text as video/mp4)", multipart(b"no video here " * 100, "video/mp4"), "/api/v1/videos"),
        ("an image as a video", multipart(png, "image/png"), "/api/v1/videos"),
    ]
    rows = []
    for name, body, path in cases:
        status, content, _ = request(host, port, body, path)
        rows.append((name, status, json.loads(content)["error"]))
    for name, path in [("unknown video job", "/api/v1/videos/0000000000000000"), ("unknown path", "/api/v2/x")]:
        status, content, _ = request(host, port, None, path, "GET")
        rows.append((name, status, json.loads(content)["error"]))
    status, _, _ = request(host, port, multipart(png))
    rows.append(("a good frame after all of these", status, "(served)"))
    return rows


def load(host: str, port: int, body: bytes, clients: int, requests: int) -> dict:
    """``requests`` requests from ``clients`` concurrent clients -> images/s, refused, latency."""
    begin = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda _: post(host, port, body), range(requests)))
    seconds = time.perf_counter() - begin
    ok = [t for status, t in results if status == 200]
    return {"clients": clients, "images_s": len(ok) / seconds, "refused": sum(s == 503 for s, _ in results),
            "other": sum(s not in (200, 503) for s, _ in results),
            "median_ms": 1000 * statistics.median(ok) if ok else float("nan")}


def live(url: str, frames: list[bytes], seconds: float, camera_fps: float) -> dict:
    """A camera at ``camera_fps`` streaming JPEGs; one frame in flight; -> fps, latency, dropped."""
    from websockets.sync.client import connect

    period = 1 / camera_fps
    latencies, server_ms, sent = [], [], 0
    with connect(url.replace("http://", "ws://") + "/api/v1/live", max_size=None) as ws:
        begin = time.perf_counter()
        while (now := time.perf_counter()) - begin < seconds:
            tick = int((now - begin) / period)  # the newest camera frame
            ws.send(frames[tick % len(frames)])
            sent += 1
            answer = ws.recv()
            latencies.append(1000 * (time.perf_counter() - now))
            server_ms.append(json.loads(answer)["server_ms"])
            # wait for the next camera frame: a frame is never sent twice
            next_tick = begin + (tick + 1) * period
            time.sleep(max(0.0, next_tick - time.perf_counter()))
        elapsed = time.perf_counter() - begin
    camera_frames = int(elapsed / period)
    return {"fps": sent / elapsed, "latency_median_ms": statistics.median(latencies),
            "latency_p90_ms": float(np.percentile(latencies, 90)), "server_median_ms": statistics.median(server_ms),
            "sent": sent, "camera_frames": camera_frames, "dropped": max(0, camera_frames - sent)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA, help="CVC-ClinicDB folder")
    p.add_argument("--run", help="run folder or checkpoint (default: the shipped real-time model)")
    p.add_argument("--backend", default="onnxruntime", choices=["torch", "onnxruntime"])
    p.add_argument("--threads", type=int, help="inference threads (default: every core)")
    p.add_argument("--workers", type=int, default=ServeSettings.workers)
    p.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    p.add_argument("--seconds", type=float, default=10.0, help="duration of the live stream")
    p.add_argument("--camera-fps", type=float, default=30.0)
    a = p.parse_args()

    images = sorted((Path(a.data) / "images").glob("*.png"))[300:340]
    png = images[0].read_bytes()
    jpegs = [cv2.imencode(".jpg", cv2.imread(str(f)), [cv2.IMWRITE_JPEG_QUALITY, 70])[1].tobytes() for f in images]
    size = cv2.imread(str(images[0])).shape[:2]
    predictor = Predictor(a.run, backend=a.backend, threads=a.threads)
    # the bare model on the same frame, at the same time: what the server adds is the rest
    frame = cv2.cvtColor(cv2.imread(str(images[0])), cv2.COLOR_BGR2RGB)
    for _ in range(3):
        predictor.predict_prob(frame)
    bare = []
    for _ in range(20):
        begin = time.perf_counter()
        predictor.predict_prob(frame)
        bare.append(1000 * (time.perf_counter() - begin))
    app = create_app(predictor, ServeSettings(backend=a.backend, workers=a.workers))
    body = multipart(png)
    with background_server(app) as url:
        host, port = urlparse(url).hostname, urlparse(url).port
        for _ in range(5):  # warm-up
            post(host, port, body)
        single = sorted(post(host, port, body)[1] for _ in range(20))
        levels = [load(host, port, body, clients, a.requests) for clients in (1, 8, 32)]
        stream = live(url, jpegs, a.seconds, a.camera_fps)
        bad = bad_inputs(host, port, png)

    print(f"polypseg serve, {a.backend}, {cpu_cores()} cores, {a.workers} inference workers, "
          f"frames {size[0]}x{size[1]}, loopback")
    print("| measure | value |\n|---|---|")
    print(f"| bare model, Predictor.predict_prob, median | {statistics.median(bare):.0f} ms |")
    print(f"| single request latency (POST /api/v1/segment, JSON), median / p90 | "
          f"{1000 * statistics.median(single):.0f} / {1000 * single[int(0.9 * len(single))]:.0f} ms |")
    for level in levels:
        print(f"| images/s, {level['clients']} concurrent client(s) | {level['images_s']:.1f} "
              f"(median {level['median_ms']:.0f} ms; {level['refused']} refused with 503, {level['other']} other) |")
    print(f"| live WebSocket fps (camera {a.camera_fps:g} fps, {a.seconds:g} s) | {stream['fps']:.1f} |")
    print(f"| live round-trip latency, median / p90 | {stream['latency_median_ms']:.0f} / "
          f"{stream['latency_p90_ms']:.0f} ms (server {stream['server_median_ms']:.0f} ms) |")
    print(f"| live frames dropped (never queued) | {stream['dropped']} of {stream['camera_frames']} camera frames |")
    print("\n| bad input | status | message |\n|---|---|---|")
    for name, status, message in bad:
        print(f"| {name} | {status} | {message} |")


if __name__ == "__main__":
    main()
