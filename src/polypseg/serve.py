"""`polypseg serve`: the web app and the HTTP API, one process, the model loaded once.

Sits on top of the package: it imports predict and video, nothing imports it. ``create_app`` builds the
FastAPI app (routers for the model, frames, video jobs, the live WebSocket and the page); ``serve`` runs
it on uvicorn. The page in ``static/`` calls the same endpoints as any client, and every frame, whether
uploaded, streamed live or part of a video, is described by ``polypseg.predict.describe``.

Safe by default: loopback only unless told otherwise, answers only to allowed Host names (no DNS
rebinding) and to WebSockets from no page or a page of an allowed host, an optional bearer token on every
request, upload size limits (those three are the middlewares of ``guards``), a pixel limit checked on
the image header before decoding, one JSON error shape, bounded concurrency (503 beyond), uploads in temporary folders removed when the request or job
ends, and no access log (paths and file names never reach a log).
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import ipaddress
import math
import os
import queue
import shutil
import struct
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from fastapi import APIRouter, Depends, FastAPI, File, HTTPException, Query, Request, UploadFile, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.websockets import WebSocketDisconnect

from . import __version__
from .alerts import AlertRule, AlertTracker
from .errors import PolypsegError
from .guards import Guard, HostGuard, allowed_hosts, bind_names, error_response, one_line
from .predict import Predictor, card_row, describe, model_card

STATIC_DIR = Path(__file__).resolve().parent / "static"
TOKEN_ENV = "POLYPSEG_TOKEN"
MAX_PIXELS = 40_000_000  # a decoded frame larger than this is refused before it takes the memory
VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".y4m"}
RESEARCH_NOTE = "For research only: not a medical device, not for diagnosis."


@dataclass
class ServeSettings:
    """Everything `polypseg serve` can be told; the defaults are the safe ones."""

    run: str | None = None  # run folder or checkpoint; None: the shipped real-time model
    backend: str = "onnxruntime"
    onnx: str | None = None  # ONNX file for the onnxruntime backend (e.g. RUN/best.int8.onnx); None: RUN/best.onnx
    precision: str = "auto"  # without onnx: the int8 file beside the checkpoint where there is one (runtime.onnx_backend)
    device: str = "cpu"
    threads: int | None = None
    token: str | None = None  # bearer token required on every request when set
    max_upload_mb: float = 20.0  # one image (also one live frame)
    max_video_mb: float = 500.0
    workers: int = 2  # inference threads shared by images and live frames
    max_pending: int = 64  # images/live frames in flight or waiting; beyond: 503 (live: frame dropped)
    max_jobs: int = 4  # video jobs waiting behind the running one; beyond: 503
    keep_jobs: int = 16  # finished video jobs whose results are kept; older ones are removed
    # Host names answered besides guards.LOOPBACK_HOSTS (``serve`` adds the address it binds to); a name, an IP,
    # '*.example.org' for every name under example.org, or '*' for any (no DNS-rebinding protection)
    allowed_hosts: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------
# errors: one JSON shape, {"error": "one line"}


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, exc.detail, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("body", "query"))
        return error_response(422, f"{where}: {first.get('msg', 'invalid request')}" if where else "invalid request")

    @app.exception_handler(PolypsegError)
    async def polypseg_error(request: Request, exc: PolypsegError):
        return error_response(400, str(exc))


# ---------------------------------------------------------------------------------------------------
# inference: a few threads, a bounded number of frames waiting for them


class Busy(Exception):
    """More frames are waiting than the server takes."""


class InferencePool:
    """Runs frames on ``workers`` threads so that the event loop stays free; admits at most
    ``max_pending`` at a time and refuses the rest at once (Busy), so memory stays bounded under load."""

    def __init__(self, predictor, workers: int, max_pending: int):
        self.predictor = predictor
        self.executor = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="polypseg-infer")
        self.max_pending = max(1, max_pending)
        self.pending = 0  # touched only from the event loop's thread

    async def run(self, fn, *args):
        if self.pending >= self.max_pending:
            raise Busy
        self.pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        finally:
            self.pending -= 1

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


def decode_image(data: bytes) -> np.ndarray:
    """Uploaded bytes -> RGB uint8 H x W x 3; PolypsegError for an empty, unreadable, truncated or huge
    file. Pillow, not OpenCV: OpenCV returns half a picture from a truncated JPEG without a word. The size
    is checked from the header before anything is decoded (a 100 KB PNG may declare 30000 x 30000)."""
    if not data:
        raise PolypsegError("the uploaded file is empty (0 bytes)")
    try:
        size = declared_size(data)
        if size is not None:
            _check_pixels(*size)
        with Image.open(io.BytesIO(data)) as im:
            _check_pixels(im.width, im.height)
            im.load()
            return np.asarray(im.convert("RGB"))
    except UnidentifiedImageError:
        raise PolypsegError("the file is not an image (PNG, JPEG, TIFF, BMP or WebP)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:  # a plugin's own check
        raise PolypsegError(f"the image is over {MAX_PIXELS // 10**6} megapixels or over Pillow's limit "
                            f"(Pillow: {one_line(err)}); send a smaller image") from None
    except (OSError, SyntaxError, ValueError) as err:  # Pillow's words for truncated and corrupt files
        raise PolypsegError(f"the image cannot be decoded: {one_line(err)}") from None


def _check_pixels(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise PolypsegError(f"the image is {width}x{height}, over {MAX_PIXELS // 10**6} megapixels; "
                            "send a smaller image")


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) that an image file's header declares, None when no Pillow plugin reads it. Read as
    ``Image.open`` reads it, plugin by plugin, but without Pillow's decompression-bomb check, whose limit
    is process-wide (``Image.MAX_IMAGE_PIXELS``, left as it is) and which raises without saying the size;
    nothing beyond the header is decoded. WebP's plugin makes its decoder, canvas included, as it opens:
    its header is read here instead."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    Image.init()
    prefix = data[:16]
    for name in Image.ID:
        factory, accept = Image.OPEN[name]
        verdict = not accept or accept(prefix)
        if not verdict or isinstance(verdict, str):  # a str: Pillow's "this plugin cannot read it" note
            continue
        try:
            im = factory(io.BytesIO(data), "")
        except (SyntaxError, IndexError, TypeError, struct.error, OSError, ValueError, EOFError):
            continue
        try:
            return im.size
        finally:
            im.close()
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """The canvas size in a WebP file's first chunk (lossy VP8, lossless VP8L or extended VP8X)."""
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = struct.unpack("<I", data[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


def segment_frame(predictor, image: np.ndarray, threshold: float | None = None) -> tuple[np.ndarray, dict]:
    """One RGB frame -> (probability map, ``describe`` of it, with the network's time in ms). The path
    every frame takes: the segment endpoint, the live stream and the Python API."""
    begin = time.perf_counter()
    prediction = predictor.predict(image)
    infer_ms = 1000 * (time.perf_counter() - begin)
    info = describe(prediction, predictor.threshold if threshold is None else threshold,
                    operating_point=predictor.operating_point)
    info["infer_ms"] = round(infer_ms, 1)
    return prediction.prob, info


def png_bytes(gray: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", gray)
    if not ok:
        raise PolypsegError("OpenCV could not encode a PNG")
    return buf.tobytes()


# ---------------------------------------------------------------------------------------------------
# video jobs: one worker thread, a bounded queue, results in a temporary folder


@dataclass
class Job:
    id: str
    folder: Path
    input: Path
    frames_total: int | None
    status: str = "queued"  # queued | running | done | failed | cancelled
    frames_done: int = 0
    error: str | None = None
    result: dict | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    def public(self, prefix: str) -> dict:
        out = {"id": self.id, "status": self.status, "frames_done": self.frames_done,
               "frames_total": self.frames_total, "error": self.error, "result": self.result}
        out["progress"] = (round(min(1.0, self.frames_done / self.frames_total), 3)
                           if self.frames_total else (1.0 if self.status == "done" else None))
        if self.status == "done":
            out["video_url"] = f"{prefix}/{self.id}/video"
            out["csv_url"] = f"{prefix}/{self.id}/csv"
            out["events_url"] = f"{prefix}/{self.id}/events"
        return out


class JobCancelled(Exception):
    pass


class _CountingPredictor:
    """The predictor handed to run_video: counts frames for the progress bar and stops a cancelled job
    (run_video calls ``infer`` once per frame and cleans up after an exception)."""

    def __init__(self, predictor, job: Job):
        self._predictor, self._job = predictor, job

    def __getattr__(self, name):
        return getattr(self._predictor, name)

    def infer(self, x):
        if self._job.cancelled.is_set():
            raise JobCancelled
        out = self._predictor.infer(x)
        self._job.frames_done += 1
        return out


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def segment_video(predictor, source: str | Path, out_mp4: str | Path, out_csv: str | Path,
                  url: str | None = None) -> dict:
    """The one place serve calls polypseg.video: the overlay video (an .mp4 is H.264, which browsers play),
    the per-frame CSV and beside the video the alerts (``NAME.events.csv``, thumbnails in ``NAME.alerts/``,
    ``NAME.summary.json``). Returns the figures, the per-frame ``timeline`` (verdict), ``area``, ``score``
    and ``alert``, the alert ``events`` as in the events CSV (each with ``index``, from 1, ``thumbnail``
    relative to the video's folder, and ``thumbnail_url``: ``{url}/alerts/{index}.jpg``, or without ``url``
    the file's ``file://`` URI) and their ``summary`` (as in the summary JSON, without the source path)."""
    from .video import run_video

    out_mp4, out_csv = Path(out_mp4), Path(out_csv)
    stats = run_video(source, predictor, out_path=out_mp4, csv_path=out_csv, show_progress=False)
    rows = _read_csv(out_csv)
    events = []
    for row in _read_csv(stats.events_csv):  # the CSV's figures, so that the JSON says what the file says
        event = {k: v if k == "thumbnail" else int(v) if k in ("index", "peak_frame") else float(v)
                 for k, v in row.items()}
        thumbnail = out_mp4.parent / event["thumbnail"]
        event["thumbnail_url"] = (None if not thumbnail.is_file() else
                                  f"{url}/alerts/{event['index']}.jpg" if url else thumbnail.resolve().as_uri())
        events.append(event)
    present = [int(r["polyp_present"]) for r in rows]
    return {
        "frames": stats.frames, "skipped": stats.skipped, "seconds": round(stats.seconds, 2),
        "fps": round(stats.fps, 1), "polyp_frames": sum(present),
        "timeline": present, "area": [float(r["area_fraction"]) for r in rows],
        "score": [float(r["polyp_score"]) for r in rows], "alert": [int(r["alert"]) for r in rows],
        "events": events, "summary": {k: v for k, v in stats.summary.items() if k != "source"},
    }


class JobManager:
    """Video jobs, run one at a time by one thread, at most ``max_waiting`` waiting. A job's upload is
    deleted when the job ends; its results stay until deleted or until ``keep`` newer jobs have ended."""

    def __init__(self, predictor, root: Path, max_waiting: int, keep: int):
        self.predictor, self.root, self.keep = predictor, root, keep
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.lock = threading.Lock()
        self.waiting: queue.Queue = queue.Queue(maxsize=max(1, max_waiting))
        self.thread = threading.Thread(target=self._work, name="polypseg-video", daemon=True)
        self.thread.start()

    def new_folder(self) -> tuple[str, Path]:
        job_id = uuid.uuid4().hex[:16]
        folder = self.root / job_id
        folder.mkdir(mode=0o700)
        return job_id, folder

    def submit(self, job: Job) -> None:
        with self.lock:
            try:
                self.waiting.put_nowait(job)
            except queue.Full:
                raise Busy from None
            self.jobs[job.id] = job

    def get(self, job_id: str) -> Job | None:
        with self.lock:
            return self.jobs.get(job_id)

    def delete(self, job_id: str) -> bool:
        with self.lock:
            job = self.jobs.pop(job_id, None)
        if job is None:
            return False
        job.cancelled.set()
        if job.status not in ("queued", "running"):  # a running job's folder goes when it stops
            shutil.rmtree(job.folder, ignore_errors=True)
        return True

    def close(self) -> None:
        for job in list(self.jobs.values()):
            job.cancelled.set()
        while True:  # make room for the end marker: waiting jobs are cancelled anyway
            try:
                self.waiting.get_nowait()
            except queue.Empty:
                break
        self.waiting.put(None)
        self.thread.join(timeout=30)

    def _work(self) -> None:
        while (job := self.waiting.get()) is not None:
            if job.cancelled.is_set():
                job.status = "cancelled"
                shutil.rmtree(job.folder, ignore_errors=True)
                continue
            job.status = "running"
            try:
                job.result = segment_video(_CountingPredictor(self.predictor, job), job.input, job.folder / "overlay.mp4",
                                           job.folder / "frames.csv", url=f"{videos.prefix}/{job.id}")
                job.status = "done"
            except JobCancelled:
                job.status = "cancelled"
            except PolypsegError as err:
                job.status, job.error = "failed", one_line(err)
            except Exception as err:  # a job must never take the worker down; the message says what broke
                job.status, job.error = "failed", f"{type(err).__name__}: {one_line(err)}"
            finally:
                job.input.unlink(missing_ok=True)
            if job.status != "done" or job.id not in self.jobs:
                shutil.rmtree(job.folder, ignore_errors=True)
            self._evict()

    def _evict(self) -> None:
        with self.lock:
            ended = [j for j in self.jobs.values() if j.status not in ("queued", "running")]
            for job in ended[: max(0, len(ended) - self.keep)]:
                self.jobs.pop(job.id, None)
                shutil.rmtree(job.folder, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# the model and what the page says about it


def load_predictor(settings: ServeSettings) -> Predictor:
    return Predictor(settings.run, device=settings.device, backend=settings.backend, onnx_path=settings.onnx,
                     threads=settings.threads, precision=settings.precision)


def model_info(predictor) -> dict[str, Any]:
    """What the page and ``GET /api/v1/model`` say about the model: name, architecture, input, threshold,
    training data (from the model card for the shipped model, else from the checkpoint's config)."""
    cfg = predictor.config
    checkpoint = getattr(predictor, "checkpoint", None)
    card = model_card(checkpoint)
    metrics, epoch = {}, None
    if checkpoint is not None and Path(checkpoint).with_suffix(".json").is_file():
        from .model import read_checkpoint_meta

        meta = read_checkpoint_meta(checkpoint)
        metrics, epoch = meta.get("metrics", {}), meta.get("epoch")
    data = card_row(card, "training data") if card else None
    return {
        "name": f"polypseg {Path(checkpoint).stem} model (shipped)" if card else (Path(checkpoint).parent.name if checkpoint else "ONNX model"),
        "architecture": f"{cfg.arch} / {cfg.encoder}",
        "input": [cfg.height, cfg.width],
        "threshold": predictor.threshold,
        "verdict": cfg.verdict,
        "operating_point": predictor.operating_point,
        "alert_rule": live_alert_rule(predictor).as_dict(),
        "training_data": data or f"{cfg.data} ({cfg.split_strategy} split, seed {cfg.seed})",
        "validation_dice": round(metrics["val_dice"], 3) if math.isfinite(metrics.get("val_dice", math.nan)) else None,
        "epoch": epoch,
        "backend": getattr(predictor, "backend", None),
        "onnx": getattr(getattr(predictor, "onnx_path", None), "name", None),  # e.g. best.int8.onnx
        "precision": getattr(predictor, "precision", None),
        "runtime": getattr(predictor, "runtime", None),  # what runs the frames, and any int8 file not run
        "device": str(getattr(predictor, "device", "")),
        "version": __version__,
        "intended_use": RESEARCH_NOTE,
        "card": card.read_text(encoding="utf-8") if card else None,
    }


# ---------------------------------------------------------------------------------------------------
# routers


class State:
    """What the handlers share, made once in the lifespan."""

    def __init__(self, predictor, settings: ServeSettings, workdir: Path):
        self.predictor, self.settings = predictor, settings
        self.info = model_info(predictor)
        self.pool = InferencePool(predictor, settings.workers, settings.max_pending)
        self.jobs = JobManager(predictor, workdir, settings.max_jobs, settings.keep_jobs)


def get_state(request: Request) -> State:
    return request.app.state.polypseg


class Segmentation(BaseModel):
    height: int
    width: int
    threshold: float
    polyp_present: bool
    polyp_score: float
    operating_point: float | None
    area_fraction: float
    regions: int
    confidence: float | None
    max_probability: float
    polygons: list[list[list[int]]]
    infer_ms: float
    probability_png: str | None = None


def _check_type(upload: UploadFile, kind: str) -> None:
    declared = (upload.content_type or "").split(";")[0].strip().lower()
    if not declared.startswith(kind + "/") and declared != "application/octet-stream":
        raise HTTPException(415, f"expected {kind}/* content, got '{declared or 'none'}'")


async def _run_frame(state: State, fn, *args):
    try:
        return await state.pool.run(fn, *args)
    except Busy:
        raise HTTPException(503, "the server is busy; retry in a moment") from None


meta = APIRouter(tags=["model"])


@meta.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@meta.get("/api/v1/model")
def get_model(state: State = Depends(get_state)) -> dict:
    return state.info


frames = APIRouter(prefix="/api/v1", tags=["frames"])


@frames.post("/segment", response_model=Segmentation, responses={200: {"content": {"image/png": {}}}})
async def segment(
    file: UploadFile = File(..., description="one frame: PNG, JPEG, TIFF, BMP or WebP"),
    format: Literal["json", "png"] = Query("json", description="json: figures and polygons; png: the 0/255 mask"),
    threshold: float | None = Query(None, ge=0, le=1, description="default: the model's"),
    probability: bool = Query(False, description="json: add the probability map as an 8-bit PNG (base64)"),
    state: State = Depends(get_state),
):
    """Segment one frame: polyp area, regions, confidence and outlines, or the mask as a PNG."""
    _check_type(file, "image")
    data = await file.read()

    def work():
        prob, info = segment_frame(state.predictor, decode_image(data), threshold)
        if format == "png":
            shown = (prob >= info["threshold"]) & info["polyp_present"]  # quiet when the verdict is no polyp
            return png_bytes(shown.astype(np.uint8) * 255), info
        if probability:
            info["probability_png"] = base64.b64encode(png_bytes(np.round(prob * 255).astype(np.uint8))).decode()
        return None, info

    mask_png, info = await _run_frame(state, work)
    if mask_png is not None:
        return Response(mask_png, media_type="image/png", headers={
            "X-Polyp-Area-Fraction": str(info["area_fraction"]), "X-Polyp-Regions": str(info["regions"]),
            "X-Polyp-Confidence": str(info["confidence"] or ""), "X-Threshold": str(info["threshold"])})
    return info


videos = APIRouter(prefix="/api/v1/videos", tags=["videos"])


@videos.post("", status_code=202)
async def create_video_job(
    file: UploadFile = File(..., description="a colonoscopy video (mp4, avi, mov, mkv, webm, ...)"),
    state: State = Depends(get_state),
) -> dict:
    """Start a video job: the overlay video (H.264) and a per-frame CSV. Poll ``GET /api/v1/videos/{id}``."""
    _check_type(file, "video")
    suffix = Path(file.filename or "").suffix.lower()
    job_id, folder = state.jobs.new_folder()
    # the upload keeps only a known suffix (FFmpeg may use it), never the file's name
    target = folder / ("input" + (suffix if suffix in VIDEO_SUFFIXES else ".bin"))
    try:
        await run_in_threadpool(_save_upload, file, target)
        job = Job(job_id, folder, target, await run_in_threadpool(_probe_video, target))
        state.jobs.submit(job)
    except Busy:
        shutil.rmtree(folder, ignore_errors=True)
        raise HTTPException(503, "too many video jobs are waiting; retry later") from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return job.public(videos.prefix)


def _save_upload(upload: UploadFile, target: Path) -> None:
    upload.file.seek(0)
    with open(target, "wb") as f:
        shutil.copyfileobj(upload.file, f, 1 << 20)
    if target.stat().st_size == 0:
        raise PolypsegError("the uploaded file is empty (0 bytes)")


def _probe_video(path: Path) -> int | None:
    """Frames in the video (None when it does not say); PolypsegError when it is no video at all."""
    from .video import open_source

    try:
        source = open_source(path)
    except PolypsegError:
        raise PolypsegError("the file is not a video FFmpeg can read") from None
    try:
        first = next(iter(source.frames()), None)
        total = source.total
    finally:
        source.close()
    if first is None:
        raise PolypsegError("the video holds no frame that can be decoded")
    return total


def _job(job_id: str, state: State) -> Job:
    job = state.jobs.get(job_id)
    if job is None:
        raise HTTPException(404, "no such video job (finished jobs are kept for a while, then removed)")
    return job


@videos.get("/{job_id}")
def get_video_job(job_id: str, state: State = Depends(get_state)) -> dict:
    """Status and progress; when done, the figures, the per-frame timeline, scores and alerts, the alert
    events and their summary, and the download links."""
    return _job(job_id, state).public(videos.prefix)


def _done_job(job_id: str, state: State) -> Job:
    job = _job(job_id, state)
    if job.status != "done":
        raise HTTPException(409, f"the job is {job.status}, not done")
    return job


def _result_file(job_id: str, state: State, name: str) -> Path:
    return _done_job(job_id, state).folder / name


@videos.get("/{job_id}/video", response_class=FileResponse)
def get_video_result(job_id: str, state: State = Depends(get_state)):
    """The overlay video, H.264 in MP4."""
    return FileResponse(_result_file(job_id, state, "overlay.mp4"), media_type="video/mp4",
                        filename="overlay.mp4", content_disposition_type="inline")


@videos.get("/{job_id}/csv", response_class=FileResponse)
def get_video_csv(job_id: str, state: State = Depends(get_state)):
    """One row per frame: frame, time_ms, polyp_score, polyp_present, area_fraction, mean_confidence,
    smoothed_score, alert, latency_ms."""
    return FileResponse(_result_file(job_id, state, "frames.csv"), media_type="text/csv", filename="frames.csv")


@videos.get("/{job_id}/events", response_class=FileResponse)
def get_video_events(job_id: str, state: State = Depends(get_state)):
    """One row per alert: index, start_ms, end_ms, duration_ms, first_crossing_ms, peak_score, peak_area,
    peak_frame, thumbnail."""
    return FileResponse(_result_file(job_id, state, "overlay.events.csv"), media_type="text/csv",
                        filename="events.csv")


@videos.get("/{job_id}/alerts/{index:int}.jpg", response_class=FileResponse)
def get_alert_thumbnail(job_id: str, index: int, state: State = Depends(get_state)):
    """Alert ``index``'s thumbnail (from 1): the overlay frame at its peak, 240 px wide."""
    job = _done_job(job_id, state)
    events = job.result["events"]
    path = job.folder / events[index - 1]["thumbnail"] if 1 <= index <= len(events) else None
    if path is None or not path.is_file():
        raise HTTPException(404, f"the video has no alert {index}")
    return FileResponse(path, media_type="image/jpeg")


@videos.delete("/{job_id}", status_code=204)
def delete_video_job(job_id: str, state: State = Depends(get_state)) -> Response:
    """Cancel a job and delete its files."""
    if not state.jobs.delete(job_id):
        raise HTTPException(404, "no such video job")
    return Response(status_code=204)


live = APIRouter(tags=["live"])


@live.websocket("/api/v1/live")
async def live_stream(ws: WebSocket):
    """Camera frames in (binary JPEG/PNG messages, or text ``{"threshold": x}``: the mask's threshold, not
    the verdict's), one JSON answer per frame out: ``describe`` of the frame plus ``server_ms`` and the
    alert (``live_alert``), or ``{"busy": true}`` (the frame was dropped), or ``{"error": ...}``. Clients
    send a frame only after the previous answer: slow frames are then dropped at the camera, never queued.
    Each connection has its own alert tracker, fed the frames answered (not busy or bad ones), timed when
    they arrive."""
    state: State = ws.app.state.polypseg
    await ws.accept()
    tracker, opened = AlertTracker(live_alert_rule(state.predictor)), time.monotonic()
    threshold = None
    limit = int(state.settings.max_upload_mb * 2**20)
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                threshold = _live_threshold(message["text"], threshold)
                continue
            data = message.get("bytes") or b""
            received_ms = 1000 * (time.monotonic() - opened)
            begin = time.perf_counter()
            if len(data) > limit:
                await ws.send_json({"error": "frame over the upload limit"})
                continue
            try:
                _, info = await state.pool.run(lambda: segment_frame(state.predictor, decode_image(data), threshold))
            except Busy:
                await ws.send_json({"busy": True})
                continue
            except PolypsegError as err:
                await ws.send_json({"error": one_line(err)})
                continue
            info["server_ms"] = round(1000 * (time.perf_counter() - begin), 1)
            info.update(live_alert(tracker, received_ms, info))
            await ws.send_json(info)
    except WebSocketDisconnect:
        return


def live_alert_rule(predictor) -> AlertRule:
    """The live stream's alert rule: polypseg.alerts' defaults at the model's operating point."""
    return AlertRule().resolved(predictor.operating_point)


def live_alert(tracker: AlertTracker, t_ms: float, info: dict) -> dict:
    """One answered live frame through its connection's tracker: ``t_ms`` (when it arrived, ms since the
    connection opened; kept increasing), ``smoothed_score``, ``alert``, ``alert_started``, ``alert_ended``."""
    last = tracker.last_ms
    t = round(t_ms, 3) if last is None or round(t_ms, 3) > last else round(last + 0.001, 3)
    s = tracker.update(t, info["polyp_score"], info["area_fraction"])
    return {"t_ms": t, "smoothed_score": round(s.smoothed, 4), "alert": s.alert, "alert_started": s.started,
            "alert_ended": s.ended}


def _live_threshold(text: str, current: float | None) -> float | None:
    import json

    try:
        value = json.loads(text).get("threshold")
        return current if value is None or not 0 <= float(value) <= 1 else float(value)
    except (ValueError, AttributeError, TypeError):
        return current


page = APIRouter(include_in_schema=False)


@page.get("/")
def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


# ---------------------------------------------------------------------------------------------------
# the app


def create_app(predictor_or_settings: Predictor | ServeSettings | None = None,
               settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app. Give a loaded predictor (tests, the Python API) or settings to load one when the
    app starts; ``settings`` carries the limits, the token and the allowed hosts (default: ServeSettings(),
    which answers to loopback names only)."""
    if isinstance(predictor_or_settings, ServeSettings):
        settings, predictor = predictor_or_settings, None
    else:
        predictor = predictor_or_settings
        settings = settings or ServeSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        model = predictor if predictor is not None else await run_in_threadpool(load_predictor, settings)
        workdir = Path(tempfile.mkdtemp(prefix="polypseg-serve-"))
        state = State(model, settings, workdir)
        app.state.polypseg = state
        try:
            yield
        finally:
            state.jobs.close()
            state.pool.close()
            shutil.rmtree(workdir, ignore_errors=True)

    app = FastAPI(title="polypseg", version=__version__, lifespan=lifespan,
                  description=f"Polyp segmentation for colonoscopy frames and video. {RESEARCH_NOTE}")
    _install_error_handlers(app)
    for router in (meta, frames, videos, live, page):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(Guard, token=settings.token, max_bytes=int(settings.max_upload_mb * 2**20),
                       max_video_bytes=int(settings.max_video_mb * 2**20))
    app.add_middleware(HostGuard, allowed_hosts=allowed_hosts(settings.allowed_hosts))  # outermost: first
    return app


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def uvicorn_config(app: FastAPI, host: str = "127.0.0.1", port: int = 8000):
    """uvicorn's settings for polypseg: no access log, since request paths and upload names must never
    reach a log; uvicorn's own start and error lines stay."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, access_log=False, log_level="info")


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, insecure: bool = False) -> None:
    """Load the model, print the address to open, serve until Ctrl-C."""
    import uvicorn

    settings.token = settings.token or os.environ.get(TOKEN_ENV) or None
    if not _is_loopback(host) and settings.token is None and not insecure:
        raise PolypsegError(
            f"--host {host} exposes the server to the network: give a token (--token or {TOKEN_ENV}) so that "
            "every request must carry it, or pass --insecure on a network you trust."
        )
    settings.allowed_hosts = allowed_hosts([*settings.allowed_hosts, *bind_names(host)])  # checked before loading
    print(f"polypseg: loading the model ({settings.backend} on {settings.device})...", flush=True)
    app = create_app(load_predictor(settings), settings)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{shown}:{port}/" + (f"?token={settings.token}" if settings.token else "")
    print(f"polypseg: open {url}  (API docs: http://{shown}:{port}/docs; Ctrl-C stops)\n"
          f"polypseg: {RESEARCH_NOTE}", flush=True)
    if not _is_loopback(host):
        print(f"polypseg: answering to the hosts {', '.join(settings.allowed_hosts)}; for another name or IP "
              "that clients use: --allowed-host NAME", flush=True)
    uvicorn.Server(uvicorn_config(app, host, port)).run()


@contextmanager
def background_server(app: FastAPI, host: str = "127.0.0.1") -> Iterator[str]:
    """Run ``app`` on uvicorn in a thread on a free port of ``host``; yields its base URL. For the
    browser tests, the benchmark and the screenshots: the real server, in-process."""
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind((host, 0))
    server = uvicorn.Server(uvicorn_config(app))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="polypseg-uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise PolypsegError("the server did not start")
            time.sleep(0.05)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
