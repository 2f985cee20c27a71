"""`polypseg serve`'s live stream: the WebSocket ``/api/v1/live`` (camera frames in, one answer per frame out)
and ``live_step``, a frame through its connection's ``exam.ExamLog`` (alerts, and outlines only while one is
on)."""

from __future__ import annotations

import json
import time

import numpy as np
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from .errors import PolypsegError, one_line
from .media import decode_image
from .serve_frames import segment_frame
from .serve_state import Busy, State

router = APIRouter(tags=["live"])


@router.websocket("/api/v1/live")
async def live_stream(ws: WebSocket):
    """Camera frames in (binary JPEG/PNG messages, or text ``{"threshold": x}``: the mask's threshold, not
    the verdict's operating point), one JSON answer per frame out: ``describe`` of the frame plus
    ``server_ms`` and the alert (``live_step``), or ``{"busy": true}`` (the frame was dropped), or
    ``{"error": ...}``. Clients send a frame only after the previous answer: slow frames are then dropped at
    the camera, never queued. Each connection has its own ``exam.ExamLog`` (the alert rule as the connection
    opened, and outlines only while an alert is on), fed the frames answered (not busy or bad ones), timed
    when they arrive."""
    from .exam import ExamLog

    state: State = ws.app.state.polypseg
    await ws.accept()
    log, opened = ExamLog(state.predictor.alert_rule(), "alert"), time.monotonic()
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
                prob, info = await state.pool.run(lambda: segment_frame(state.predictor, decode_image(data), threshold))
            except Busy:
                await ws.send_json({"busy": True})
                continue
            except PolypsegError as err:
                await ws.send_json({"error": one_line(err)})
                continue
            info["server_ms"] = round(1000 * (time.perf_counter() - begin), 1)
            info.update(live_step(log, received_ms, prob, info))
            await ws.send_json(info)
    except WebSocketDisconnect:
        return


def live_step(log, t_ms: float, prob: np.ndarray, info: dict) -> dict:
    """One answered live frame through its connection's ``ExamLog``: ``t_ms`` (when it arrived, ms since the
    connection opened; kept increasing), ``smoothed_score``, ``alert``, ``alert_started``, ``alert_ended``
    and ``outlined``; the frame keeps its ``polygons`` only while an alert is on and its own verdict is polyp
    (``exam.outline_style``): a blip the rule holds back is not drawn."""
    from .exam import frame_result

    result, _ = frame_result(len(log.rows), t_ms, prob, info["polyp_score"], log.rule.operating_point,
                             info["threshold"])
    step = log.add(result)
    shown = step.style == "shown"  # implies the frame's verdict, whose outlines `describe` gave: keep them
    if not shown:
        info["polygons"] = []
    return {"t_ms": step.row["time_ms"], "smoothed_score": round(step.state.smoothed, 4), "alert": step.state.alert,
            "alert_started": step.state.started, "alert_ended": step.state.ended, "outlined": shown}


def _live_threshold(text: str, current: float | None) -> float | None:
    try:
        value = json.loads(text).get("threshold")
        return current if value is None or not 0 <= float(value) <= 1 else float(value)
    except (ValueError, AttributeError, TypeError):
        return current
