"""An exam's frames -> alerts -> what is drawn and what is written: the one flow that ``video``, ``batch``,
``serve`` (Video and Live) and the Python API share.

Frame results come in (``FrameResult``: the frame's polyp score and verdict, the raw mask's area); the alert
rule (``polypseg.alerts``) turns them into alert states and events; ``ExamLog`` keeps the per-frame rows,
the events and the summary; ``ExamWriter`` writes them as files with one naming (``exam_files``).

What the endoscopist sees follows the verdict, never the raw mask (docs/quiet.md, "from score to picture"):
- on video and live streams an outline is drawn only while an alert is on, on frames whose own verdict is
  polyp (``OUTLINES`` ``alert``): a blip the rule holds back is not drawn, nor the frames the release keeps
  the alert on for after the polyp has gone (their amber border says the alert is still on);
- on single images (predict, the Images tab, the API) it follows the frame's verdict (``verdict``);
- for research, ``all`` shows every raw outline too, those the rule would hide in another style (``raw``);
- files keep the raw mask and probabilities, with the verdict, the alert state and ``outlined`` beside them.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np

from .alerts import AlertEvent, AlertRule, AlertTracker, FrameState, summary as alert_summary
from .errors import PolypsegError
from .files import atomic_write, atomic_write_text, csv_text, publish, temp_path

OUTLINES = ("alert", "verdict", "all")  # which outlines a picture shows: see the module's docstring
FRAME_FIELDS = ("frame", "time_ms", "polyp_score", "polyp_present", "area_fraction", "mean_confidence",
                "smoothed_score", "alert", "outlined", "latency_ms")
EVENT_FIELDS = ("index", "start_ms", "end_ms", "duration_ms", "first_crossing_ms", "peak_score", "peak_area",
                "peak_frame", "thumbnail")
THUMBNAIL_WIDTH = 240


def check_outlines(outlines: str) -> str:
    if outlines not in OUTLINES:
        raise PolypsegError(f"Unknown outline mode '{outlines}'. Valid: {', '.join(OUTLINES)} (alert: only while an "
                            "alert is on; verdict: when the frame's verdict is polyp; all: every raw outline, for research).")
    return outlines


def outline_style(outlines: str, polyp_present: bool, alert: bool) -> str | None:
    """How a frame's raw mask is drawn: ``"shown"`` (the outline the endoscopist sees), ``"raw"`` (research
    only: an outline the contract hides, drawn in another style) or None (not drawn). ``outlines``: ``alert``
    (streams: while an alert is on, on the frames whose own verdict is polyp: a blip the rule holds back is
    not drawn, nor the tissue of the frames the release keeps the alert on for after the polyp has gone),
    ``verdict`` (single images: when the verdict is polyp) or ``all`` (streams, research: what ``alert``
    shows, and every other raw outline as ``raw``)."""
    if outlines == "verdict":
        return "shown" if polyp_present else None
    if alert and polyp_present:
        return "shown"
    return "raw" if outlines == "all" else None


@dataclass(frozen=True)
class FrameResult:
    """One processed frame: its index in the source, its timestamp, its polyp score and verdict, the raw
    mask's area (share of the frame at or above the mask threshold, whatever the verdict) and the mean
    probability inside it (None without a mask), and how long the model took (ms, None where unmeasured)."""

    index: int
    t_ms: float
    score: float
    polyp_present: bool
    area_fraction: float
    mean_confidence: float | None
    latency_ms: float | None = None


def mask_figures(prob: np.ndarray, threshold: float) -> tuple[np.ndarray, float, float | None]:
    """The raw mask at ``threshold``, the share of the frame it covers, and the mean probability inside it
    (None without a mask): what every file and row reports, whatever the verdict."""
    mask = prob >= threshold
    area = int(mask.sum())
    return mask, (area / mask.size if mask.size else 0.0), (float(prob[mask].mean()) if area else None)


def frame_result(index: int, t_ms: float, prob: np.ndarray, score: float, operating_point: float, threshold: float,
                 latency_ms: float | None = None) -> tuple[FrameResult, np.ndarray]:
    """A frame's probability map and polyp score -> (its ``FrameResult``, the verdict at ``operating_point``
    (the alert rule's: streams decide frames and alerts at one point), its raw bool mask at ``threshold``)."""
    mask, area, confidence = mask_figures(prob, threshold)
    return FrameResult(int(index), float(t_ms), float(score), float(score) >= operating_point, area, confidence,
                       latency_ms), mask


class Step(NamedTuple):
    """A frame after the rule: its CSV row, its alert state and how its outline is drawn (``outline_style``)."""

    row: dict[str, Any]
    state: FrameState
    style: str | None


class ExamLog:
    """The frames of one exam, in time order, through the alert rule (``rule``, its operating point filled
    in): each ``add`` gives the frame's row, state and outline style; ``close`` ends an alert still on.
    Times are rounded to the CSV's 1 us and kept increasing, and the tracker sees the CSV's rounded figures,
    so the events are what ``alerts.track`` gives on the CSV."""

    def __init__(self, rule: AlertRule, outlines: str = "alert"):
        self.tracker = AlertTracker(rule)
        self.outlines = check_outlines(outlines)
        self.rows: list[dict[str, Any]] = []

    @property
    def rule(self) -> AlertRule:
        return self.tracker.rule

    @property
    def events(self) -> list[AlertEvent]:
        return self.tracker.events

    def add(self, frame: FrameResult) -> Step:
        last = self.tracker.last_ms
        t_ms = round(frame.t_ms, 3)
        if last is not None and t_ms <= last:
            t_ms = round(last + 0.001, 3)
        score, area = round(frame.score, 6), round(frame.area_fraction, 6)
        state = self.tracker.update(t_ms, score, area, frame.index)
        style = outline_style(self.outlines, frame.polyp_present, state.alert)
        row = {"frame": frame.index, "time_ms": t_ms, "polyp_score": score, "polyp_present": int(frame.polyp_present),
               "area_fraction": area,
               "mean_confidence": "" if frame.mean_confidence is None else round(frame.mean_confidence, 6),
               "smoothed_score": round(state.smoothed, 6), "alert": int(state.alert), "outlined": int(style == "shown"),
               "latency_ms": "" if frame.latency_ms is None else round(frame.latency_ms, 2)}
        self.rows.append(row)
        return Step(row, state, style)

    def close(self) -> AlertEvent | None:
        return self.tracker.close()

    @property
    def duration_ms(self) -> float:
        return self.tracker.duration_ms

    def summary(self, **about: Any) -> dict[str, Any]:
        """What ``summary.json`` holds: ``about`` (source, model, frames skipped, processing_fps, ...) first,
        then the frames, their duration and frame rate (``source_fps``, by their timestamps), the alerts, the
        rule and its operating point, the share of frames whose verdict was polyp and the highest score."""
        duration = self.duration_ms
        figures = alert_summary(self.events, duration)
        rows = self.rows

        def r3(x):
            return None if x is None else round(float(x), 3)

        return {
            **about, "frames": len(rows), "duration_ms": round(duration, 3),
            "source_fps": round(1000 * len(rows) / duration, 3) if duration > 0 else None,
            "alerts": figures["alerts"], "alerts_per_minute": round(figures["alerts_per_minute"], 4),
            "alerted_share": round(figures["alerted_share"], 6), "mean_alert_ms": r3(figures["mean_alert_ms"]),
            "median_alert_ms": r3(figures["median_alert_ms"]),
            "first_alert_ms": self.events[0].start_ms if self.events else None,
            "rule": self.rule.as_dict(), "operating_point": round(float(self.rule.operating_point), 6),
            "outlines": self.outlines,
            "polyp_frame_share": round(sum(r["polyp_present"] for r in rows) / len(rows), 6) if rows else None,
            "outlined_share": round(sum(r["outlined"] for r in rows) / len(rows), 6) if rows else None,
            "peak_score": max((r["polyp_score"] for r in rows), default=None),
        }


# ---------------------------------------------------------------------------------------------------
# files, with one naming


class ExamFiles(NamedTuple):
    """Where an exam's files go: ``folder`` and a ``prefix`` every name starts with (``polypseg video -o
    DIR/NAME.mp4``: ``NAME.``; an exam's own folder in ``batch`` and ``serve``: none); ``frames_csv``: the
    per-frame CSV elsewhere (``polypseg video --csv``)."""

    folder: Path
    prefix: str = ""
    frames_csv: Path | None = None

    def path(self, kind: str) -> Path:
        return self.folder / f"{self.prefix}{kind}"

    @property
    def frames(self) -> Path:  # one row per frame (FRAME_FIELDS)
        return self.frames_csv if self.frames_csv is not None else self.path("frames.csv")

    @property
    def events(self) -> Path:  # one row per alert (EVENT_FIELDS)
        return self.path("events.csv")

    @property
    def alerts(self) -> Path:  # the alerts' thumbnails, alert-001.jpg, ... (only when there are alerts)
        return self.path("alerts")

    @property
    def summary(self) -> Path:  # written last
        return self.path("summary.json")

    @property
    def timeline(self) -> Path:  # the score, the operating point and the alerts over time
        return self.path("timeline.png")

    def all(self) -> list[Path]:
        return [self.frames, self.events, self.alerts, self.summary, self.timeline]


def exam_files(folder: str | Path, prefix: str = "") -> ExamFiles:
    return ExamFiles(Path(folder), prefix)


def files_beside(video: str | Path, frames_csv: str | Path | None = None) -> ExamFiles:
    """The files beside an overlay video ``DIR/NAME.mp4``: ``DIR/NAME.frames.csv`` (or ``frames_csv``),
    ``NAME.events.csv``, ``NAME.alerts/``, ``NAME.summary.json``, ``NAME.timeline.png``."""
    video = Path(video)
    return ExamFiles(video.parent, video.stem + ".", None if frames_csv is None else Path(frames_csv))


def thumbnail_name(number: int) -> str:
    return f"alert-{number:03d}.jpg"


def jpeg_thumbnail(image: np.ndarray, width: int = THUMBNAIL_WIDTH) -> bytes:
    """RGB -> a small JPEG ``width`` pixels wide (never enlarged)."""
    h, w = image.shape[:2]
    if w > width:
        image = cv2.resize(image, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise PolypsegError("OpenCV could not encode an alert thumbnail as JPEG.")
    return buf.tobytes()


def events_csv_text(events: list[AlertEvent], alerts_folder: str) -> str:
    rows = []
    for i, event in enumerate(events, 1):
        row = {k: round(v, 6 if k in ("peak_score", "peak_area") else 3) if isinstance(v, float) else v
               for k, v in event.as_dict().items()}
        rows.append({"index": i, **row, "thumbnail": f"{alerts_folder}/{thumbnail_name(i)}"})
    return csv_text(rows, EVENT_FIELDS)


def timeline_png(rows: list[dict], events: list[AlertEvent], operating_point: float) -> bytes:
    """The score over time (seconds), the operating point and the alerts as amber spans: a small PNG."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    t = np.array([r["time_ms"] for r in rows], float) / 1000
    fig = Figure(figsize=(6, 1.5), dpi=100)
    ax = fig.add_subplot()
    for event in events:
        ax.axvspan(event.start_ms / 1000, event.end_ms / 1000, color="#ffb000", alpha=0.35, lw=0)
    scores = [r["polyp_score"] for r in rows]
    ax.plot(t, scores, lw=0.8, color="#1f77b4", label="polyp score")
    ax.axhline(operating_point, color="#d62728", lw=0.6, ls="--", label="operating point")
    if len(t):
        ax.set_xlim(t[0], max(t[-1], t[0] + 1e-3))
    ax.set_xlabel("time (s)", fontsize=7)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, loc="upper right", frameon=False)
    fig.tight_layout(pad=0.2)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


class ExamWriter:
    """Writes an exam's files (``files``) as its frames come, each under a temporary name: the per-frame CSV
    row by row, the overlay video frame by frame (``video``: a writer made by the caller, e.g.
    ``video.open_writer``, with ``write`` and ``close``; or None), the thumbnail of each alert's peak
    frame. ``finish`` ends an alert still on, writes the events, the timeline and the summary, and
    publishes every file (the video first, the summary last), so a reader never sees half an exam;
    ``discard`` removes the temporary files."""

    def __init__(self, files: ExamFiles, log: ExamLog):
        import tempfile

        self.files, self.log = files, log
        files.folder.mkdir(parents=True, exist_ok=True)
        self.frames_tmp = temp_path(files.frames, keep_suffix=True)
        self._csv_file = open(self.frames_tmp, "w", newline="")
        self._csv = csv.DictWriter(self._csv_file, fieldnames=FRAME_FIELDS, lineterminator="\n")
        self._csv.writeheader()
        self.alerts_tmp = Path(tempfile.mkdtemp(dir=files.folder, prefix=f".{files.alerts.name}.", suffix=".tmp"))
        self._peak: np.ndarray | None = None  # the open alert's peak frame as drawn (not a copy)
        self.video = None
        self.video_tmp: Path | None = None
        self.video_path: Path | None = None

    def open_video(self, path: Path, open_writer: Callable[[Path], Any]) -> None:
        """Write the overlay video to ``path`` (through a temporary file) with ``open_writer(tmp)``."""
        self.video_path = Path(path)
        self.video_tmp = temp_path(self.video_path, keep_suffix=True)
        self.video = open_writer(self.video_tmp)

    def frame(self, step: Step, drawn: np.ndarray | None) -> None:
        """One frame's row, and its drawn picture (the overlay video's frame, and the alert's thumbnail when
        it is the open alert's peak; None: no picture for this frame)."""
        if step.state.ended:
            self._thumbnail()
        if drawn is not None:
            if self.video is not None:
                self.video.write(drawn)
            if step.state.peak:
                self._peak = drawn  # a new array every frame, never written to again: no copy
        self._csv.writerow(step.row)

    def _thumbnail(self) -> None:
        if self._peak is not None:
            (self.alerts_tmp / thumbnail_name(len(self.log.events))).write_bytes(jpeg_thumbnail(self._peak))
        self._peak = None

    def close_stream(self) -> list[BaseException]:
        """Ends an alert still on (its thumbnail written), closes the CSV and the video writer; every step is
        tried, and the errors are returned."""
        errors: list[BaseException] = []
        for step in (lambda: self.log.close() is not None and self._thumbnail(), self._csv_file.close,
                     lambda: self.video is not None and self.video.close()):
            try:
                step()
            except BaseException as err:  # e.g. a full disk while the video's index was written
                errors.append(err)
        return errors

    def finish(self, about: dict[str, Any]) -> dict[str, Any]:
        """After ``close_stream``: the events, timeline and summary (``ExamLog.summary(**about)``) written and
        every file published. Returns the summary."""
        from .files import publish_folder

        files, log = self.files, self.log
        summary = log.summary(**about)
        if self.video_tmp is not None:
            publish(self.video_tmp, self.video_path)
        publish(self.frames_tmp, files.frames)
        publish_folder(self.alerts_tmp, files.alerts, keep=bool(log.events))
        atomic_write_text(files.events, events_csv_text(log.events, files.alerts.name))
        png = timeline_png(log.rows, log.events, log.rule.operating_point)
        atomic_write(files.timeline, lambda tmp: Path(tmp).write_bytes(png))
        atomic_write_text(files.summary, json.dumps(summary, indent=2) + "\n")
        return summary

    def discard(self) -> None:
        import shutil

        if not self._csv_file.closed:
            self._csv_file.close()
        for tmp in (self.frames_tmp, self.video_tmp):
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        shutil.rmtree(self.alerts_tmp, ignore_errors=True)
