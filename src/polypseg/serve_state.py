"""What every router of `polypseg serve` shares: the settings, the model's description, the bounded inference
pool, the one ``State`` made in the app's lifespan (``get_state`` hands it to a handler), the error handlers
(one JSON shape) and the upload checks.

The bottom of the server: the routers (``serve_frames``, ``serve_videos``, ``serve_live``, ``serve_sites``,
``serve_pages``) import it, ``serve`` puts them together; it imports none of them.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__
from .errors import PolypsegError
from .guards import error_response
from .predict import Predictor, card_row, model_card

TOKEN_ENV = "POLYPSEG_TOKEN"
RESEARCH_NOTE = "For research only: not a medical device, not for diagnosis."
T = TypeVar("T")


@dataclass
class ServeSettings:
    """Everything `polypseg serve` can be told; the defaults are the safe ones."""

    run: str | None = None  # run folder or checkpoint; None: the shipped real-time model
    backend: str = "onnxruntime"
    onnx: str | None = None  # ONNX file for the onnxruntime backend (e.g. RUN/best.int8.onnx); None: RUN/best.onnx
    precision: str = "auto"  # without onnx: the int8 file beside the checkpoint where there is one (runtime.onnx_backend)
    device: str = "cpu"
    threads: int | None = None
    site: str | None = None  # a site profile of the model (polypseg.sites) the server starts with; None: the model's own
    token: str | None = None  # bearer token required on every request when set
    max_upload_mb: float = 20.0  # one image (also one live frame)
    max_video_mb: float = 500.0  # one video (also a site's polyp-free clip)
    workers: int = 2  # inference threads shared by images and live frames
    max_pending: int = 64  # images/live frames in flight or waiting; beyond: 503 (live: frame dropped)
    max_jobs: int = 4  # video and site jobs waiting behind the running one; beyond: 503
    keep_jobs: int = 16  # finished jobs whose results are kept; older ones are removed
    # Host names answered besides guards.LOOPBACK_HOSTS (``serve`` adds the address it binds to); a name, an IP,
    # '*.example.org' for every name under example.org, or '*' for any (no DNS-rebinding protection)
    allowed_hosts: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------
# errors: one JSON shape, {"error": "one line"}


def install_error_handlers(app: FastAPI) -> None:
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


def check_type(upload: UploadFile, kind: str) -> None:
    """415 unless the upload says it is ``kind``/* (or says nothing more than octet-stream)."""
    declared = (upload.content_type or "").split(";")[0].strip().lower()
    if not declared.startswith(kind + "/") and declared != "application/octet-stream":
        raise HTTPException(415, f"expected {kind}/* content, got '{declared or 'none'}'")


# ---------------------------------------------------------------------------------------------------
# inference: a few threads, a bounded number of frames waiting for them


class Busy(Exception):
    """More frames (or jobs) are waiting than the server takes."""


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


# ---------------------------------------------------------------------------------------------------
# the model and what the page says about it


def load_predictor(settings: ServeSettings) -> Predictor:
    return Predictor(settings.run, device=settings.device, backend=settings.backend, onnx_path=settings.onnx,
                     threads=settings.threads, precision=settings.precision, site=settings.site)


def model_info(predictor) -> dict[str, Any]:
    """What the page and ``GET /api/v1/model`` say about the model: name, architecture, input, its three
    settings named apart (``mask_threshold``: the pixel probability that cuts the mask; ``operating_point``:
    the polyp score, of kind ``verdict``, at or above which a frame is polyp; ``alert_rule``: how long the score
    stays above it before an alert and below it before the end), the site profile in use (``site``, None: the
    model's own point), training data (from the model card for the shipped model, else from the checkpoint's
    config)."""
    cfg = predictor.config
    checkpoint = getattr(predictor, "checkpoint", None)
    card = model_card(checkpoint)
    metrics, epoch = {}, None
    if checkpoint is not None and Path(checkpoint).with_suffix(".json").is_file():
        from .model import read_checkpoint_meta

        meta = read_checkpoint_meta(checkpoint)
        metrics, epoch = meta.get("metrics", {}), meta.get("epoch")
    data = card_row(card, "training data") if card else None
    site = getattr(predictor, "site", None)
    return {
        "name": f"polypseg {Path(checkpoint).stem} model (shipped)" if card else (Path(checkpoint).parent.name if checkpoint else "ONNX model"),
        "architecture": f"{cfg.arch} / {cfg.encoder}",
        "input": [cfg.height, cfg.width],
        "mask_threshold": predictor.threshold,
        "verdict": cfg.verdict,
        "operating_point": predictor.operating_point,
        "model_operating_point": cfg.effective_operating_point,  # the checkpoint's own, whatever the site
        "alert_rule": predictor.alert_rule().as_dict(),
        "site": site.name if site is not None else None,
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


class State:
    """What the handlers share, made once in the lifespan: the predictor, the settings, the model's
    description (``info``; ``refresh_info`` after a site is applied), the inference pool, the job manager
    (``serve_videos.JobManager``, given by ``serve``: this module imports no router), figures computed once
    per server on first use (``once``) and each site's calibration clips kept for moving its point
    (``site_clips``: name -> (clips, validation polyp scores))."""

    def __init__(self, predictor, settings: ServeSettings, workdir: Path, jobs: Any = None):
        self.predictor, self.settings, self.workdir = predictor, settings, workdir
        self.info = model_info(predictor)
        self.pool = InferencePool(predictor, settings.workers, settings.max_pending)
        self.jobs = jobs
        self.site_clips: dict[str, tuple[list, Any]] = {}
        self.lock = threading.Lock()
        self._once: dict[str, Any] = {}
        self._once_locks: dict[str, threading.Lock] = {}

    def once(self, key: str, compute: Callable[[], T]) -> T:
        """``compute()``'s value, computed on the first call for ``key`` and kept for the server's life (one
        lock per key: a long computation holds back only the callers of its own key)."""
        with self.lock:
            key_lock = self._once_locks.setdefault(key, threading.Lock())
        with key_lock:
            if key not in self._once:
                self._once[key] = compute()
            return self._once[key]

    def refresh_info(self) -> None:
        self.info = model_info(self.predictor)

    def close(self) -> None:
        if self.jobs is not None:
            self.jobs.close()
        self.pool.close()


def get_state(request: Request) -> State:
    return request.app.state.polypseg
