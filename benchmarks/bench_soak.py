"""A bounded soak of `polypseg serve` over loopback: the real command (`polypseg serve`, in its own process,
127.0.0.1, a free port, the shipped model) under a mixed load for --seconds, then its memory.

    python benchmarks/bench_soak.py                  # 180 s, ONNX Runtime, as `polypseg serve` runs by default
    python benchmarks/bench_soak.py --seconds 120

Client threads, each bounded in requests and in time: image uploads (CVC-ClinicDB frames, JSON and PNG
answers), bad uploads (truncated, not an image, a 30000x30000 PNG bomb, wrong type, another site's Host, a
WebSocket from another site's page), live WebSocket frames (one in flight, 100 a connection) and short
video jobs (upload, poll, download video and CSV, delete). Prints a table of requests per kind, how many
got the expected answer, how many were refused as busy (503 or {"busy": true}: the server's stated answer
under load) and how many got anything else (errors), then the server's resident memory (RSS) at the
start (model loaded, warmed up), its peak and at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
from bench_serve import multipart, request

from polypseg.config import DEFAULT_DATA
from polypseg.runtime import cpu_cores

KINDS = ("image", "bad", "live", "video")
MAX_ROUNDS = 20_000  # rounds per client thread (a request, a live connection, a video job), whatever --seconds says


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB: psutil when installed, else /proc/PID/status."""
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A 1x1 PNG whose header says width x height (CRC recomputed): under 100 bytes."""
    ok, buf = cv2.imencode(".png", np.zeros((1, 1, 3), np.uint8))
    data = bytearray(buf.tobytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


class Tally:
    """Answers per kind, shared by the client threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {kind: defaultdict(int) for kind in KINDS}
        self.ms = {kind: [] for kind in KINDS}
        self.samples: list[str] = []  # the first unexpected answers, to print
        self.jobs_done = 0

    def add(self, kind: str, outcome: str, seconds: float | None = None, what: str = "") -> None:
        with self.lock:
            self.counts[kind]["requests"] += 1
            self.counts[kind][outcome] += 1
            if seconds is not None and outcome == "ok":
                self.ms[kind].append(1000 * seconds)
            if outcome == "error" and len(self.samples) < 8:
                self.samples.append(f"{kind}: {what}"[:200])


def judge(tally: Tally, kind: str, status: int, expected: int, seconds: float, what: str) -> bool:
    outcome = "ok" if status == expected else ("busy" if status == 503 else "error")
    tally.add(kind, outcome, seconds, f"{what}: {status}, expected {expected}")
    return outcome == "ok"


def drive(tally: Tally, kind: str, one_round, port: int, data, deadline: float) -> None:
    """One client: rounds until the deadline (at most MAX_ROUNDS); an exception counts as an error of its
    kind and the client goes on."""
    for n in range(MAX_ROUNDS):
        if time.monotonic() > deadline:
            return
        try:
            one_round(port, data, tally, deadline, n)
        except Exception as err:  # noqa: BLE001 - a soak reports what broke, it does not stop
            tally.add(kind, "error", what=f"{type(err).__name__}: {err}")
            time.sleep(0.5)


def image_round(port: int, frames: list[bytes], tally: Tally, deadline: float, n: int) -> None:
    query = "?format=png" if n % 2 else "?format=json"
    status, _, seconds = request("127.0.0.1", port, multipart(frames[n % len(frames)]), "/api/v1/segment" + query)
    judge(tally, "image", status, 200, seconds, "POST /api/v1/segment")


def _get(port: int, path: str, headers: dict, method: str = "GET") -> tuple[int, bytes, float]:
    begin = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read(), time.perf_counter() - begin
    finally:
        conn.close()


def bad_round(port: int, png: bytes, tally: Tally, deadline: float, n: int) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    cases = [
        ("truncated PNG", multipart(png[: len(png) // 2]), 400),
        ("not an image", multipart(b"%PDF-1.4 " * 50), 400),
        ("30000x30000 PNG bomb", multipart(png_bomb()), 400),
        ("wrong content type", multipart(png, "text/plain"), 415),
    ]
    step = n % (len(cases) + 2)
    if step < len(cases):
        name, body, expected = cases[step]
        status, _, seconds = request("127.0.0.1", port, body)
        judge(tally, "bad", status, expected, seconds, name)
    elif step == len(cases):
        status, _, seconds = _get(port, "/api/v1/model", {"Host": "evil.example"})
        judge(tally, "bad", status, 400, seconds, "another site's Host")
    else:
        begin = time.perf_counter()
        try:
            connect(f"ws://127.0.0.1:{port}/api/v1/live", origin="http://evil.example", open_timeout=30).close()
            status = 101
        except InvalidStatus as refused:
            status = refused.response.status_code
        judge(tally, "bad", status, 403, time.perf_counter() - begin, "WebSocket from another site's page")
    time.sleep(0.05)


def live_round(port: int, jpegs: list[bytes], tally: Tally, deadline: float, n: int) -> None:
    """One connection, up to 100 frames, one in flight."""
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{port}/api/v1/live", max_size=None, open_timeout=30) as ws:
        for i in range(100):
            if time.monotonic() > deadline:
                return
            begin = time.perf_counter()
            ws.send(jpegs[(100 * n + i) % len(jpegs)])
            answer = json.loads(ws.recv(timeout=60))
            outcome = "ok" if "polyp_present" in answer else ("busy" if answer.get("busy") else "error")
            tally.add("live", outcome, time.perf_counter() - begin, f"live frame: {answer}")


def video_round(port: int, clip: bytes, tally: Tally, deadline: float, n: int) -> None:
    """One job: upload, poll to the end, download the video and the CSV, delete."""
    status, content, seconds = request("127.0.0.1", port, multipart(clip, "video/mp4"), "/api/v1/videos")
    if not judge(tally, "video", status, 202, seconds, "POST /api/v1/videos"):
        time.sleep(1)
        return
    job_id = json.loads(content)["id"]
    job = {"status": "queued"}
    give_up = time.monotonic() + 120  # a 12-frame clip takes seconds; a job stuck this long is an error
    while job["status"] in ("queued", "running") and time.monotonic() < give_up:
        time.sleep(0.5)
        status, content, seconds = _get(port, f"/api/v1/videos/{job_id}", {})
        if judge(tally, "video", status, 200, seconds, "GET job"):
            job = json.loads(content)
    if job["status"] == "done":
        for path in (job["video_url"], job["csv_url"]):
            status, _, seconds = _get(port, path, {})
            judge(tally, "video", status, 200, seconds, f"GET {path.rsplit('/', 1)[1]}")
        with tally.lock:
            tally.jobs_done += 1
    else:
        tally.add("video", "error", what=f"job ended {job['status']}: {job.get('error')}")
    status, _, seconds = _get(port, f"/api/v1/videos/{job_id}", {}, "DELETE")
    judge(tally, "video", status, 204, seconds, "DELETE job")


def start_server(port: int, backend: str, log: Path) -> subprocess.Popen:
    """`polypseg serve` on 127.0.0.1:port in its own process; returns once /healthz answers."""
    command = [sys.executable, "-m", "polypseg.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--backend", backend]
    env = {k: v for k, v in os.environ.items() if k != "POLYPSEG_TOKEN"}
    proc = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    give_up = time.monotonic() + 180
    while time.monotonic() < give_up and proc.poll() is None:
        try:
            if _get(port, "/healthz", {})[0] == 200:
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"polypseg serve did not start; its output:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)  # uvicorn's graceful stop, as Ctrl-C
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA, help="CVC-ClinicDB folder (images/)")
    p.add_argument("--backend", default="onnxruntime", choices=["torch", "onnxruntime"])
    p.add_argument("--seconds", type=float, default=180.0, help="duration of the mixed load (default 180)")
    p.add_argument("--image-clients", type=int, default=2, help="threads uploading images (default 2)")
    a = p.parse_args()

    files = sorted((Path(a.data) / "images").glob("*.png"))[300:340]
    if not files:
        raise SystemExit(f"no CVC-ClinicDB frames in {Path(a.data) / 'images'}; give --data")
    frames = [f.read_bytes() for f in files]
    jpegs = [cv2.imencode(".jpg", cv2.imread(str(f)), [cv2.IMWRITE_JPEG_QUALITY, 70])[1].tobytes() for f in files]
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="polypseg-soak-") as tmp:
        from polypseg.media import write_clip

        rgb = [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in files[:12]]
        clip = write_clip(rgb, Path(tmp) / "clip.mp4").read_bytes()
        port = free_port()
        proc = start_server(port, a.backend, Path(tmp) / "server.log")
        try:
            loaded = rss_mb(proc.pid)
            for frame in frames[:3]:  # warm-up: the first inferences set up the runtime
                request("127.0.0.1", port, multipart(frame))
            start = rss_mb(proc.pid)
            samples, stop = [start], threading.Event()

            def sample() -> None:
                while not stop.wait(1.0):
                    samples.append(rss_mb(proc.pid))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            begin = time.monotonic()
            deadline = begin + a.seconds
            clients = [("image", image_round, frames)] * a.image_clients + [
                ("bad", bad_round, frames[0]), ("live", live_round, jpegs), ("video", video_round, clip)]
            threads = [threading.Thread(target=drive, args=(tally, kind, fn, port, data, deadline))
                       for kind, fn, data in clients]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=a.seconds + 300)
            elapsed = time.monotonic() - begin
            stop.set()
            sampler.join()
            healthy = _get(port, "/healthz", {})[0] == 200
            end = rss_mb(proc.pid)
        finally:
            stop_server(proc)

    print(f"polypseg serve soak: {a.backend}, {cpu_cores()} cores, {elapsed:.0f} s of mixed load over loopback "
          f"({a.image_clients} image clients, 1 bad-input, 1 live, 1 video client)")
    print("| kind | requests | expected answer | busy (503 / {busy}) | errors (unexpected) | median ms |")
    print("|---|---|---|---|---|---|")
    for kind in KINDS:
        c, ms = tally.counts[kind], tally.ms[kind]
        print(f"| {kind} | {c['requests']} | {c['ok']} | {c['busy']} | {c['error']} | "
              f"{statistics.median(ms) if ms else float('nan'):.0f} |")
    total = {k: sum(tally.counts[kind][k] for kind in KINDS) for k in ("requests", "ok", "busy", "error")}
    print(f"| all | {total['requests']} | {total['ok']} | {total['busy']} | {total['error']} | |")
    print("\n| server RSS, MiB | model loaded | start (after 3 warm-up requests) | peak | end |")
    print("|---|---|---|---|---|")
    print(f"| polypseg serve | {loaded:.0f} | {start:.0f} | {max(samples + [end]):.0f} | {end:.0f} |")
    quarters = [samples[min(len(samples) - 1, round(q * (len(samples) - 1) / 4))] for q in range(5)]
    print("RSS at 0, 25, 50, 75, 100 % of the load: " + ", ".join(f"{mb:.0f}" for mb in quarters) + " MiB")
    print(f"\nvideo jobs completed (12 frames each, downloaded, deleted): {tally.jobs_done}; "
          f"server healthy after the soak: {'yes' if healthy else 'NO'}")
    for line in tally.samples:
        print("unexpected:", line)


if __name__ == "__main__":
    main()
