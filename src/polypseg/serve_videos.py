"""`polypseg serve`'s video jobs: ``/api/v1/videos`` (upload, poll, results, cancel), the job machinery they
run on (``Job``, ``JobManager``: one worker thread, a bounded queue, results in a temporary folder; the site
calibration of ``serve_sites`` runs on it too) and ``segment_video``, the one call into ``polypseg.video``."""

from __future__ import annotations

import csv
import queue
import shutil
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, File, HTTPException, UploadFile
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from .alerts import AlertRule
from .errors import PolypsegError, one_line
from .media import VIDEO_SUFFIXES
from .serve_state import Busy, State, check_type, get_state

PREFIX = "/api/v1/videos"


# ---------------------------------------------------------------------------------------------------
# jobs: one worker thread, a bounded queue, results in a temporary folder


@dataclass
class Job:
    """One upload's work, run by the ``JobManager``'s thread: ``task(predictor, job)`` returns the result
    (the predictor counts the frames and stops a cancelled job); ``kind`` says which router owns it."""

    id: str
    folder: Path
    input: Path
    frames_total: int | None
    task: Callable[[Any, Job], dict] | None = None
    kind: str = "video"  # video | site
    status: str = "queued"  # queued | running | done | failed | cancelled
    frames_done: int = 0
    error: str | None = None
    result: dict | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    def public(self) -> dict:
        out = {"id": self.id, "status": self.status, "frames_done": self.frames_done,
               "frames_total": self.frames_total, "error": self.error, "result": self.result}
        out["progress"] = (round(min(1.0, self.frames_done / self.frames_total), 3)
                           if self.frames_total else (1.0 if self.status == "done" else None))
        return out


class JobCancelled(Exception):
    pass


class CountingPredictor:
    """The predictor handed to a job: counts frames for the progress bar and stops a cancelled job
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


class JobManager:
    """Jobs (videos, site calibrations), run one at a time by one thread, at most ``max_waiting`` waiting. A
    job's upload is deleted when the job ends; its results stay until deleted or until ``keep`` newer jobs
    have ended."""

    def __init__(self, predictor, root: Path, max_waiting: int, keep: int):
        self.predictor, self.root, self.keep = predictor, root, keep
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.lock = threading.Lock()
        self.waiting: queue.Queue = queue.Queue(maxsize=max(1, max_waiting))
        self.thread = threading.Thread(target=self._work, name="polypseg-jobs", daemon=True)
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

    def get(self, job_id: str, kind: str | None = None) -> Job | None:
        with self.lock:
            job = self.jobs.get(job_id)
        return job if job is not None and (kind is None or job.kind == kind) else None

    def delete(self, job_id: str, kind: str | None = None) -> bool:
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None or (kind is not None and job.kind != kind):
                return False
            self.jobs.pop(job_id)
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
                job.result = job.task(CountingPredictor(self.predictor, job), job)
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


def save_upload(upload: UploadFile, target: Path) -> None:
    upload.file.seek(0)
    with open(target, "wb") as f:
        shutil.copyfileobj(upload.file, f, 1 << 20)
    if target.stat().st_size == 0:
        raise PolypsegError("the uploaded file is empty (0 bytes)")


def probe_video(path: Path) -> int | None:
    """Frames in the video (None when it does not say); PolypsegError when it is no video at all."""
    from .media import open_source

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


async def submit_video_job(state: State, file: UploadFile, kind: str, task: Callable[[Any, Job], dict]) -> Job:
    """A job for an uploaded video: the upload saved in the job's own folder (under a fixed name that keeps
    only a known suffix, never the file's name), probed, and queued; 503 when too many jobs wait. Nothing is
    left behind when any of that fails."""
    check_type(file, "video")
    suffix = Path(file.filename or "").suffix.lower()
    job_id, folder = state.jobs.new_folder()
    target = folder / ("input" + (suffix if suffix in VIDEO_SUFFIXES else ".bin"))  # FFmpeg may use the suffix
    try:
        await run_in_threadpool(save_upload, file, target)
        job = Job(job_id, folder, target, await run_in_threadpool(probe_video, target), task=task, kind=kind)
        state.jobs.submit(job)
    except Busy:
        shutil.rmtree(folder, ignore_errors=True)
        raise HTTPException(503, "too many jobs are waiting; retry later") from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return job


# ---------------------------------------------------------------------------------------------------
# a video through polypseg.video


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def segment_video(predictor, source: str | Path, folder: str | Path, url: str | None = None,
                  rule: AlertRule | None = None, outlines: str = "alert") -> dict:
    """The one place serve calls polypseg.video: an exam's folder (``exam.exam_files``, as batch writes
    it): ``overlay.mp4`` (H.264, which browsers play; an outline only while an alert is on), ``frames.csv``,
    ``events.csv``, thumbnails in ``alerts/``, ``timeline.png``, ``summary.json``. Returns the figures
    (``processing_fps``: frames processed per second of wall time, not the clip's frame rate, which is the
    summary's ``source_fps``), the per-frame ``time_ms``, ``timeline`` (verdict), ``outlined``, ``area``,
    ``score`` and ``alert``, the alert ``events`` as in the events CSV (each with ``index``, from 1,
    ``thumbnail`` relative to the folder, and ``thumbnail_url``: ``{url}/alerts/{index}.jpg``, or without
    ``url`` the file's ``file://`` URI) and their ``summary`` (as in the summary JSON, without the source
    path)."""
    from .exam import exam_files
    from .video import run_video

    folder = Path(folder)
    files = exam_files(folder)
    stats = run_video(source, predictor, out_path=folder / "overlay.mp4", show_progress=False, alerts=rule,
                      outlines=outlines, files=files)
    rows = _read_csv(files.frames)
    events = []
    for row in _read_csv(files.events):  # the CSV's figures, so that the JSON says what the file says
        event = {k: v if k == "thumbnail" else int(v) if k in ("index", "peak_frame") else float(v)
                 for k, v in row.items()}
        thumbnail = folder / event["thumbnail"]
        event["thumbnail_url"] = (None if not thumbnail.is_file() else
                                  f"{url}/alerts/{event['index']}.jpg" if url else thumbnail.resolve().as_uri())
        events.append(event)
    present = [int(r["polyp_present"]) for r in rows]
    return {
        "frames": stats.frames, "skipped": stats.skipped, "seconds": round(stats.seconds, 2),
        "processing_fps": round(stats.processing_fps, 1), "polyp_frames": sum(present),
        "time_ms": [float(r["time_ms"]) for r in rows],
        "timeline": present, "outlined": [int(r["outlined"]) for r in rows],
        "area": [float(r["area_fraction"]) for r in rows],
        "score": [float(r["polyp_score"]) for r in rows], "alert": [int(r["alert"]) for r in rows],
        "events": events, "summary": {k: v for k, v in stats.summary.items() if k != "source"},
    }


# ---------------------------------------------------------------------------------------------------
# the router


router = APIRouter(prefix=PREFIX, tags=["videos"])


def video_public(job: Job) -> dict:
    out = job.public()
    if job.status == "done":
        out["video_url"] = f"{PREFIX}/{job.id}/video"
        out["csv_url"] = f"{PREFIX}/{job.id}/csv"
        out["events_url"] = f"{PREFIX}/{job.id}/events"
    return out


@router.post("", status_code=202)
async def create_video_job(
    file: UploadFile = File(..., description="a colonoscopy video (mp4, avi, mov, mkv, webm, ...)"),
    state: State = Depends(get_state),
) -> dict:
    """Start a video job: the overlay video (H.264) and a per-frame CSV. Poll ``GET /api/v1/videos/{id}``."""

    def task(predictor, job: Job) -> dict:
        return segment_video(predictor, job.input, job.folder, url=f"{PREFIX}/{job.id}")

    return video_public(await submit_video_job(state, file, "video", task))


def find_job(state: State, job_id: str, kind: str) -> Job:
    """Job ``job_id`` of ``kind`` ("video" or "site"), or a 404 that says finished jobs do not stay."""
    job = state.jobs.get(job_id, kind)
    if job is None:
        raise HTTPException(404, f"no such {kind} job (finished jobs are kept for a while, then removed)")
    return job


def _job(job_id: str, state: State) -> Job:
    return find_job(state, job_id, "video")


@router.get("/{job_id}")
def get_video_job(job_id: str, state: State = Depends(get_state)) -> dict:
    """Status and progress; when done, the figures, the per-frame timeline, scores and alerts, the alert
    events and their summary, and the download links."""
    return video_public(_job(job_id, state))


def _done_job(job_id: str, state: State) -> Job:
    job = _job(job_id, state)
    if job.status != "done":
        raise HTTPException(409, f"the job is {job.status}, not done")
    return job


def _result_file(job_id: str, state: State, name: str) -> Path:
    return _done_job(job_id, state).folder / name


@router.get("/{job_id}/video", response_class=FileResponse)
def get_video_result(job_id: str, state: State = Depends(get_state)):
    """The overlay video, H.264 in MP4."""
    return FileResponse(_result_file(job_id, state, "overlay.mp4"), media_type="video/mp4",
                        filename="overlay.mp4", content_disposition_type="inline")


@router.get("/{job_id}/csv", response_class=FileResponse)
def get_video_csv(job_id: str, state: State = Depends(get_state)):
    """One row per frame: frame, time_ms, polyp_score, polyp_present, area_fraction, mean_confidence,
    smoothed_score, alert, outlined, latency_ms."""
    return FileResponse(_result_file(job_id, state, "frames.csv"), media_type="text/csv", filename="frames.csv")


@router.get("/{job_id}/events", response_class=FileResponse)
def get_video_events(job_id: str, state: State = Depends(get_state)):
    """One row per alert: index, start_ms, end_ms, duration_ms, first_crossing_ms, peak_score, peak_area,
    peak_frame, thumbnail."""
    return FileResponse(_result_file(job_id, state, "events.csv"), media_type="text/csv",
                        filename="events.csv")


@router.get("/{job_id}/alerts/{index:int}.jpg", response_class=FileResponse)
def get_alert_thumbnail(job_id: str, index: int, state: State = Depends(get_state)):
    """Alert ``index``'s thumbnail (from 1): the overlay frame at its peak, 240 px wide."""
    job = _done_job(job_id, state)
    events = job.result["events"]
    path = job.folder / events[index - 1]["thumbnail"] if 1 <= index <= len(events) else None
    if path is None or not path.is_file():
        raise HTTPException(404, f"the video has no alert {index}")
    return FileResponse(path, media_type="image/jpeg")


@router.delete("/{job_id}", status_code=204)
def delete_video_job(job_id: str, state: State = Depends(get_state)) -> Response:
    """Cancel a job and delete its files."""
    if not state.jobs.delete(job_id, "video"):
        raise HTTPException(404, "no such video job")
    return Response(status_code=204)
