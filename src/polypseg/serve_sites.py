"""`polypseg serve`'s site profiles (``polypseg.sites``): ``/api/v1/sites``, what the page's Settings tab calls.

A site uploads a clip of its own polyp-free video and states a target (false alerts per minute, or the share
of polyp-free frames flagged); a job on the video-job machinery scores every frame (``segment_video``: the
exam folder's ``frames.csv``), ``sites.choose`` picks the operating point and onset, and the profile is saved
beside the model (``WEIGHTS.site-NAME.json``) with its trade-off curve. The clip's scores stay in this
server's memory (``State.site_clips``), so that a person can move the point along the curve (``PUT
.../point``: the costs measured again) and apply it: ``POST .../apply`` makes the running server judge new
frames, videos and live connections with the profile (``predictor.site``).

Endpoints: ``POST /api/v1/sites`` (multipart: ``file``, ``name``, one of ``false_alerts_per_minute`` /
``flagged_share``, optional ``onset_ms``; 202 and a job), ``GET /api/v1/sites/jobs/{id}`` (the job; when done
its ``result`` is the profile), ``DELETE /api/v1/sites/jobs/{id}``, ``GET /api/v1/sites`` (the model's sites
and the one applied), ``GET /api/v1/sites/{name}``, ``PUT /api/v1/sites/{name}/point`` (JSON
``{"operating_point": x, "onset_ms": y, "save": true}``) and ``POST /api/v1/sites/{name}/apply``.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
from fastapi import APIRouter, Depends, File, Form, HTTPException, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from . import sites
from .errors import PolypsegError
from .serve_state import State, get_state
from .serve_videos import Job, find_job, segment_video, submit_video_job

PREFIX = "/api/v1/sites"
MAX_ONSET_MS = 10_000.0

router = APIRouter(prefix=PREFIX, tags=["sites"])


def _weights(state: State) -> Path:
    checkpoint = getattr(state.predictor, "checkpoint", None)
    if checkpoint is None:
        raise HTTPException(409, "site profiles belong to a checkpoint, and this server runs an ONNX file alone: "
                                 "start it with --run MODEL")
    return Path(checkpoint)


def model_sha256(state: State) -> str:
    """The served weights' SHA-256, computed once per server."""
    from .runtime import file_sha256

    weights = _weights(state)
    return state.once("model_sha256", lambda: file_sha256(weights))


def validation_scores(state: State) -> np.ndarray | None:
    """The polyp scores of the model's own validation polyp frames (``calibration.validation_polyp_scores``),
    computed once per server on first use; None where the model has no validation side on this machine."""
    from .calibration import validation_polyp_scores

    weights = _weights(state)
    return state.once("validation_polyp_scores",
                      lambda: validation_polyp_scores(weights, state.predictor, progress=False))


def _load(state: State, name: str) -> sites.SiteProfile:
    weights = _weights(state)
    if name not in sites.site_names(weights):
        sites.check_name(name)
        raise HTTPException(404, f"this model has no site '{name}'")
    return sites.load(weights, name, model_sha256(state))


def site_public(state: State, profile: sites.SiteProfile) -> dict:
    """The profile (``SiteProfile.to_dict``, its curve included), its file's name beside the model,
    whether the server applies a profile of that name now, and whether its clip's scores are in memory
    (``movable``: the point can be moved and measured again)."""
    applied = getattr(state.predictor, "site", None)
    with state.lock:
        movable = profile.name in state.site_clips
    return {**profile.to_dict(), "file": sites.site_path(_weights(state), profile.name).name,
            "applied": applied is not None and applied.name == profile.name, "movable": movable}


def _check_target(false_alerts_per_minute: float | None, flagged_share: float | None, onset_ms: float | None) -> dict:
    _check_onset(onset_ms)
    return sites.check_target(false_alerts_per_minute, flagged_share)


def _check_onset(onset_ms: float | None) -> None:
    if onset_ms is not None and not 0.0 <= onset_ms <= MAX_ONSET_MS:
        raise PolypsegError(f"onset_ms lies between 0 and {MAX_ONSET_MS:g} ms, got {onset_ms}")


def _check_writable(path: Path) -> None:
    from .files import check_writable

    try:
        check_writable(path, "the site profile")
    except PolypsegError:  # its message names the server's folders: say it without them
        raise HTTPException(409, "the model's folder cannot be written, so a site profile cannot be saved beside "
                                 "it; serve a copy of the model from a folder this server may write") from None


@router.post("", status_code=202)
async def create_site(
    file: UploadFile = File(..., description="a clip of the site's own polyp-free video (mp4, avi, mov, ...)"),
    name: str = Form(..., description="the site's name: 1-64 letters, digits, '.', '_' or '-', e.g. endo-room-3"),
    false_alerts_per_minute: float | None = Form(None, description="target: false alerts per minute on the clip"),
    flagged_share: float | None = Form(None, description="target: share of the clip's frames flagged, in [0, 1)"),
    onset_ms: float | None = Form(None, description="the alert's onset (ms); default: chosen (false alerts) or 200"),
    state: State = Depends(get_state),
) -> dict:
    """Calibrate a site: a job scores every frame of the clip, chooses the operating point (and onset) that
    meets the target, and saves the profile beside the model (a profile of that name is replaced). Poll
    ``GET /api/v1/sites/jobs/{id}``; when done, its ``result`` is the profile with its trade-off curve
    (``operating_point``, ``flagged_share``, ``false_alerts_per_minute``, ``sensitivity`` on the model's
    validation polyp frames or None) and ``measured``: what the chosen point costs."""
    sites.check_name(name)
    target = _check_target(false_alerts_per_minute, flagged_share, onset_ms)
    weights = _weights(state)
    await run_in_threadpool(_check_writable, sites.site_path(weights, name))

    def task(predictor, job: Job) -> dict:
        video = segment_video(predictor, job.input, job.folder)
        clip = sites.Clip(np.asarray(video["time_ms"], np.float64), np.asarray(video["score"], np.float64))
        polyp_scores = validation_scores(state)
        profile = sites.choose(name, [clip], polyp_scores, onset_ms=onset_ms, **target)
        duration = video["summary"].get("duration_ms") or 0.0
        profile = replace(profile, verdict=state.predictor.config.verdict, model_sha256=model_sha256(state),
                          sources=[f"clip uploaded to polypseg serve ({len(clip.scores)} frames, "
                                   f"{duration / 1000:.1f} s)"])
        sites.save(profile, weights)
        with state.lock:
            state.site_clips[name] = ([clip], polyp_scores)
        return site_public(state, profile)

    return (await submit_video_job(state, file, "site", task)).public()


def _site_job(job_id: str, state: State) -> Job:
    return find_job(state, job_id, "site")


@router.get("/jobs/{job_id}")
def get_site_job(job_id: str, state: State = Depends(get_state)) -> dict:
    """Status and progress of a site calibration; when done, ``result`` is the profile."""
    return _site_job(job_id, state).public()


@router.delete("/jobs/{job_id}", status_code=204)
def delete_site_job(job_id: str, state: State = Depends(get_state)) -> Response:
    """Cancel a site calibration and delete its files (a profile already saved stays)."""
    if not state.jobs.delete(job_id, "site"):
        raise HTTPException(404, "no such site job")
    return Response(status_code=204)


@router.get("")
def list_sites(state: State = Depends(get_state)) -> dict:
    """The model's site profiles (``sites``, names), the one the server applies now (``applied``, None: the
    model's own point), the verdict (what the polyp score is) and the model's own operating point."""
    checkpoint = getattr(state.predictor, "checkpoint", None)
    applied = getattr(state.predictor, "site", None)
    return {"sites": sites.site_names(checkpoint) if checkpoint is not None else [],
            "applied": applied.name if applied is not None else None,
            "verdict": state.predictor.config.verdict,
            "model_operating_point": state.predictor.config.effective_operating_point}


@router.get("/{name}")
def get_site(name: str, state: State = Depends(get_state)) -> dict:
    """One site's profile, with its trade-off curve."""
    return site_public(state, _load(state, name))


class PointMove(BaseModel):
    operating_point: float = Field(description="the polyp score at or above which a frame is flagged")
    onset_ms: float | None = Field(None, description="the alert's onset (ms); default: the profile's")
    save: bool = Field(True, description="false: only measure what the point would cost; the file is left alone")


@router.put("/{name}/point")
def move_point(name: str, move: PointMove, state: State = Depends(get_state)) -> dict:
    """Move a site's operating point (and onset) by hand: its costs measured again on the calibration clip
    (false alerts per minute, flagged share, validation sensitivity; a new curve when the onset changes) and,
    with ``save``, the profile saved. Needs the clip's scores, which this server keeps from the calibration it
    ran (409 otherwise: calibrate the site here again). The running server keeps what it applies until
    ``POST .../apply``."""
    profile = _load(state, name)
    verdict = state.predictor.config.verdict
    point = float(move.operating_point)
    if not math.isfinite(point) or (verdict != "logit" and not 0.0 <= point <= 1.0):
        raise PolypsegError(f"the operating point of verdict '{verdict}' must be "
                            f"{'between 0 and 1' if verdict != 'logit' else 'a finite number'}, got {point}")
    _check_onset(move.onset_ms)
    with state.lock:
        kept = state.site_clips.get(name)
    if kept is None:
        raise HTTPException(409, f"the scores of site '{name}''s clip are not in this server's memory (it was "
                                 "calibrated elsewhere, or before the server started): calibrate it here again "
                                 "to move its point")
    clips, polyp_scores = kept
    profile = sites.moved(profile, clips, polyp_scores, point, move.onset_ms)
    if move.save:
        sites.save(profile, _weights(state))
    return site_public(state, profile)


@router.post("/{name}/apply")
def apply_site(name: str, state: State = Depends(get_state)) -> dict:
    """From now on the server judges new frames, video jobs and live connections with this site's operating
    point and alert rule (a live connection keeps the rule it opened with, and a video job running now its
    alert rule, though its remaining frames' verdicts take the new point). Returns the model's description
    (``GET /api/v1/model``), which names the site."""
    profile = _load(state, name)
    state.predictor.site = profile
    state.refresh_info()
    return state.info
