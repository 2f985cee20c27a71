"""Segment video: decode -> infer -> encode as three stages joined by bounded queues.

The source is a video file, a folder of frames, a camera index or a stream URL. Decoding and encoding
run in their own threads (their C code runs outside the GIL), inference in the calling thread, so the
pipeline goes as fast as the model. Outputs: an overlay video (mask fill and contour, polyp area and a
live fps figure; an amber border while an alert is on) and a CSV with one row per processed frame; the
alerts (``polypseg.alerts``: smoothed score, onset and release in ms of the frames' timestamps) as an
events CSV with a thumbnail of each alert, and a summary JSON. A ``.mp4`` is H.264 (libx264 through
PyAV), which every browser plays; OpenCV's own mp4v (MPEG-4 part 2) plays in neither Chromium nor Firefox.

Every output is written under a temporary name and renamed at the end; the video writer is closed
(encoder flushed, MP4 index written) and an alert still on is ended in every case, so an error or Ctrl-C
after the first frame still leaves a playable file and the alerts of the frames done so far. A frame
that cannot be decoded is counted and skipped. Live sources (cameras, streams) drop the oldest waiting
frame when the model falls behind, so the overlay never lags further and further behind the scope.
"""

from __future__ import annotations

import csv
import json
import math
import os
import queue
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from .alerts import AlertEvent, AlertRule, AlertTracker, FrameState, summary
from .data import folder_images, read_image
from .errors import PolypsegError
from .files import atomic_write_text, check_writable, csv_text, publish, temp_path
from .predict import STATS_FIELDS, Predictor, check_threshold, frame_stats
from .progress import progress_bar
from .viz import GREEN, overlay

CSV_FIELDS = ("frame", "time_ms", *STATS_FIELDS, "smoothed_score", "alert", "latency_ms")
EVENT_FIELDS = ("index", "start_ms", "end_ms", "duration_ms", "first_crossing_ms", "peak_score", "peak_area",
                "peak_frame", "thumbnail")
AMBER = (255, 176, 0)  # the border of a frame while an alert is on
THUMBNAIL_WIDTH = 240
VIDEO_FORMATS = {".mp4": "H.264", ".avi": "MJPG"}
# x264 at 384x288 on the 2-core machine of docs (busy with a training run), one encoder thread, crf 23:
# ultrafast 1.8-2.4 ms/frame, veryfast 6.4-7.4 ms/frame (files 1.45x smaller). At 30 fps on 2 cores
# every millisecond is taken from inference, so ultrafast; one thread so that x264 does not compete
# with the inference threads (and adds no frame-threading delay).
H264_OPTIONS = {"crf": "23", "preset": "ultrafast"}
DEFAULT_FPS = 25.0  # frame folders, and sources that do not say (colonoscopes run at 25-30 fps)
QUEUE_SIZE = 4
_END = object()  # ends a queue
_BAD = object()  # a frame that could not be decoded


@dataclass
class VideoStats:
    source: str
    output: Path | None
    csv: Path | None
    frames: int = 0  # frames processed and written
    skipped: int = 0  # frames that could not be decoded
    dropped: int = 0  # live sources: frames dropped because the model fell behind
    seconds: float = 0.0
    size: tuple[int, int] | None = None  # (width, height) of the written video
    interrupted: bool = False
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    rule: AlertRule | None = None  # the alert rule used, its threshold filled in
    duration_ms: float = 0.0  # of the source's frames, by their timestamps (the last one lasting one frame step)
    events: list[AlertEvent] = field(default_factory=list)  # the alerts, as in the events CSV
    summary: dict = field(default_factory=dict)  # as in the summary JSON
    events_csv: Path | None = None
    alerts_dir: Path | None = None  # the alerts' thumbnails, alert-001.jpg, ... (written only when there are alerts)
    summary_json: Path | None = None
    model: str = ""  # what ran the frames (Predictor.runtime), e.g. 'onnxruntime int8 (realtime.int8.onnx)'

    @property
    def fps(self) -> float:
        """Frames per second through the whole pipeline (decode, inference, encode)."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def latency_median_ms(self) -> float:
        return float(np.median(self.latencies_ms)) if self.latencies_ms else math.nan

    @property
    def latency_p90_ms(self) -> float:
        return float(np.percentile(self.latencies_ms, 90)) if self.latencies_ms else math.nan

    def __str__(self) -> str:
        text = f"model: {self.model}\n" if self.model else ""
        text += (f"{self.frames} frames in {self.seconds:.1f} s ({self.fps:.1f} fps end to end; inference "
                f"latency median {self.latency_median_ms:.1f} ms, p90 {self.latency_p90_ms:.1f} ms)")
        if self.skipped:
            text += f"; {self.skipped} frame(s) could not be decoded and were skipped"
        if self.dropped:
            text += f"; {self.dropped} frame(s) dropped because the model fell behind the live source"
        if self.interrupted:
            text += "; stopped by Ctrl-C"
        s = self.summary
        if s:
            text += (f"\n{s['alerts']} alert(s) in {s['duration_ms'] / 1000:.1f} s of video "
                     f"({s['alerts_per_minute']:.2f} per minute, alerted {100 * s['alerted_share']:.1f}% of the time)")
        return (f"{text}\nvideo: {self.output}\nper-frame CSV: {self.csv}\nalerts: {self.events_csv}"
                f"\nsummary: {self.summary_json}")


# ---------------------------------------------------------------------------------------------------
# sources


class _Source:
    """Frames as ``(index, RGB uint8 array or _BAD, time in ms)``; ``total`` is None when unknown. Times
    increase: a file's presentation times, index / ``fps`` for frame folders, the wall clock since the
    first frame for live sources."""

    live = False
    total: int | None = None
    fps = DEFAULT_FPS

    def frames(self) -> Iterator[tuple[int, object, float]]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _FolderSource(_Source):
    def __init__(self, folder: Path):
        self.paths = folder_images(folder)
        self.total = len(self.paths)

    def frames(self):
        for i, path in enumerate(self.paths):
            t = i * 1000 / self.fps
            try:
                yield i, read_image(path), t
            except PolypsegError:
                yield i, _BAD, t


class _CaptureSource(_Source):
    """cv2.VideoCapture: a file, a camera or a stream."""

    MAX_BAD_RUN = 25  # consecutive failed reads before a known-length file is taken as ended

    def __init__(self, target: int | str, what: str, live: bool):
        self.cap = cv2.VideoCapture(target)
        if not self.cap.isOpened():
            self.cap.release()
            raise PolypsegError(
                f"Cannot open {what}. "
                + ("Check the camera index and that no other program uses it." if isinstance(target, int) else
                   "It is not a video OpenCV's FFmpeg can read, or not reachable. Convert it (e.g. ffmpeg -i IN "
                   "-c:v libx264 OUT.mp4) or give a folder of frames.")
            )
        count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.total = count if count > 0 and not live else None
        self.live = live
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 1 <= fps <= 240 else DEFAULT_FPS

    def frames(self):
        i, bad_run, last, origin = 0, 0, -math.inf, None
        while True:
            ok, frame = self.cap.read()
            if ok and frame is not None:
                # A file's presentation time (pts x time base, from the stream's start); live: the wall clock.
                if self.live:
                    now = 1000 * time.monotonic()
                    origin = now if origin is None else origin
                    t = now - origin
                else:
                    t = self.cap.get(cv2.CAP_PROP_POS_MSEC)
                # A time that stands still or goes back (missing pts) is taken as one frame step on.
                last = t if t > last else (last + 1000 / self.fps if last > -math.inf else 0.0)
                # Failed reads followed by a good frame were undecodable frames, not the end.
                for k in range(bad_run):
                    yield i - bad_run + k, _BAD, math.nan
                bad_run = 0
                yield i, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), last
            elif self.total is not None and i < self.total and bad_run < self.MAX_BAD_RUN:
                bad_run += 1
            else:
                return
            i += 1

    def close(self):
        self.cap.release()


def open_source(source: str | int | Path) -> _Source:
    """A video file, a folder of frames, a camera index (``0`` or ``"0"``) or a stream URL."""
    text = str(source)
    if isinstance(source, int) or text.isdigit():
        return _CaptureSource(int(text), f"camera {text}", live=True)
    if "://" in text:
        return _CaptureSource(text, f"the stream {text}", live=True)
    path = Path(source)
    if path.is_dir():
        return _FolderSource(path)
    if not path.is_file():
        raise PolypsegError(f"{path} does not exist. Give a video file, a folder of frames, a camera index or a URL.")
    if path.stat().st_size == 0:
        raise PolypsegError(f"The video {path} is empty (0 bytes).")
    return _CaptureSource(str(path), f"the video {path}", live=False)


# ---------------------------------------------------------------------------------------------------
# drawing


def draw_overlay(image: np.ndarray, mask: np.ndarray, area_fraction: float, fps: float | None,
                 alert: bool = False) -> np.ndarray:
    """The frame with the mask's fill and contour and a caption: polyp area and the live fps; with
    ``alert`` an amber border."""
    out = overlay(image, mask)
    scale = max(0.4, image.shape[1] / 900)
    text = f"polyp {100 * area_fraction:.1f}%" + (f"  {fps:.1f} fps" if fps else "")
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    pad = max(2, int(4 * scale))
    cv2.rectangle(out, (0, 0), (tw + 2 * pad, th + base + 2 * pad), (0, 0, 0), cv2.FILLED)
    color = GREEN if area_fraction > 0 else (255, 255, 255)
    cv2.putText(out, text, (pad, pad + th), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)
    if alert:
        b = max(3, image.shape[1] // 100)
        out[:b], out[-b:], out[:, :b], out[:, -b:] = AMBER, AMBER, AMBER, AMBER
    return out


def jpeg_thumbnail(image: np.ndarray, width: int = THUMBNAIL_WIDTH) -> bytes:
    """RGB -> a small JPEG ``width`` pixels wide (never enlarged)."""
    h, w = image.shape[:2]
    if w > width:
        image = cv2.resize(image, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise PolypsegError("OpenCV could not encode an alert thumbnail as JPEG.")
    return buf.tobytes()


def write_clip(frames: Iterable[np.ndarray], path: str | Path, fps: float = DEFAULT_FPS) -> Path:
    """RGB frames (all of one size; odd sizes lose their last row or column) -> a video file (H.264 for
    .mp4, MJPG for .avi), written atomically."""
    path = Path(path)
    check_video_suffix(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path, keep_suffix=True)
    writer = None
    try:
        for frame in frames:
            if writer is None:
                writer = open_writer(tmp, _even_size(frame), fps)
            writer.write(frame[: writer.size[1], : writer.size[0]])
        if writer is None:
            raise PolypsegError(f"No frames to write into {path}.")
        writer.close()
        publish(tmp, path)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return path


def check_video_suffix(path: Path) -> None:
    if path.suffix.lower() not in VIDEO_FORMATS:
        raise PolypsegError(f"Write the overlay video as .mp4 or .avi (.mp4 is H.264, which browsers play; "
                            f".avi is MJPG), not '{path.name}'.")


def _even_size(image: np.ndarray) -> tuple[int, int]:
    """(width, height) cut to even numbers: 4:2:0 video cannot hold an odd width or height."""
    h, w = image.shape[:2]
    return w - w % 2, h - h % 2


class _H264Writer:
    """RGB frames -> H.264 (yuv420p) in MP4 through PyAV's libx264."""

    def __init__(self, path: Path, size: tuple[int, int], fps: float):
        self.size = size
        # faststart: the index goes to the front, so a browser starts playing before the whole file arrived
        self.container = av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"})
        try:
            self.stream = self.container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            self.stream.width, self.stream.height = size
            self.stream.pix_fmt = "yuv420p"
            self.stream.options = dict(H264_OPTIONS)
            self.stream.codec_context.thread_count = 1
        except BaseException:
            self.container.close()
            raise
        self.closed = False

    def write(self, rgb: np.ndarray) -> None:
        self.container.mux(self.stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))

    def close(self) -> None:
        """Flush the encoder and write the MP4 index: without it the file does not play. Idempotent."""
        if self.closed:
            return
        self.closed = True
        try:
            self.container.mux(self.stream.encode(None))
        finally:
            self.container.close()


class _MjpgWriter:
    """RGB frames -> MJPG in AVI through OpenCV."""

    def __init__(self, path: Path, size: tuple[int, int], fps: float):
        self.size = size
        self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
        if not self.writer.isOpened():
            raise PolypsegError(
                f"OpenCV cannot write a video into {path.parent}. Check that the folder is writable."
            )

    def write(self, rgb: np.ndarray) -> None:
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        self.writer.release()


def open_writer(path: Path, size: tuple[int, int], fps: float):
    """A video writer for ``path`` by its suffix (.mp4: H.264, .avi: MJPG), frames of ``size`` (w, h)."""
    check_video_suffix(path)
    try:
        return (_H264Writer if path.suffix.lower() == ".mp4" else _MjpgWriter)(path, size, fps)
    except (av.FFmpegError, OSError) as err:
        raise PolypsegError(f"Cannot write the video {path}: {err}. Check that the folder is writable.") from None


# ---------------------------------------------------------------------------------------------------
# the pipeline


class _Encoder(threading.Thread):
    """Draws, encodes and logs frames from ``inbox`` until it receives _END; follows the alerts and writes
    each alert's thumbnail (the overlay frame at its peak) into ``alerts_tmp`` when the alert ends."""

    def __init__(self, inbox: queue.Queue, video_tmp: Path, csv_tmp: Path, alerts_tmp: Path, fps: float,
                 threshold: float, rule: AlertRule, stats: VideoStats, progress, finish):
        super().__init__(name="polypseg-encode", daemon=True)
        self.finish = finish  # Predictor.finish: padded output -> the frame's Prediction
        self.inbox, self.video_tmp, self.csv_tmp, self.alerts_tmp = inbox, video_tmp, csv_tmp, alerts_tmp
        self.fps, self.threshold = fps, threshold
        self.stats, self.progress = stats, progress
        self.tracker = AlertTracker(rule)
        stats.rule, stats.events = rule, self.tracker.events
        self.peak_frame: np.ndarray | None = None  # the open alert's peak overlay frame (not a copy)
        self.error: BaseException | None = None
        self.done_times: deque[float] = deque(maxlen=30)

    def run(self) -> None:
        writer = None
        try:
            with open(self.csv_tmp, "w", newline="") as f:
                log = csv.DictWriter(f, fieldnames=CSV_FIELDS, lineterminator="\n")
                log.writeheader()
                while (item := self.inbox.get()) is not _END:
                    index, t_ms, image, padded, fitted, latency_ms = item
                    if writer is None:
                        self.stats.size = _even_size(image)
                        writer = open_writer(self.video_tmp, self.stats.size, self.fps)
                    begin = time.perf_counter()
                    prediction = self.finish(padded, fitted, image.shape[:2])
                    latency_ms += 1000 * (time.perf_counter() - begin)
                    self.stats.latencies_ms.append(latency_ms)
                    mask = prediction.mask(self.threshold)
                    row, state = track_frame(self.tracker, index, t_ms, frame_stats(prediction, mask))
                    row["latency_ms"] = round(latency_ms, 2)
                    if state.ended:
                        self._thumbnail()
                    self.done_times.append(time.perf_counter())
                    frame = draw_overlay(image, mask, row["area_fraction"], self._live_fps(), state.alert)
                    w, h = self.stats.size
                    if frame.shape[:2] != (h, w):  # a frame folder with mixed sizes, or an odd size
                        frame = frame[:h, :w] if frame.shape[0] >= h and frame.shape[1] >= w else cv2.resize(frame, (w, h))
                    if state.peak:
                        self.peak_frame = frame  # a new array every frame, never written to again: no copy
                    writer.write(frame)
                    log.writerow(row)
                    self.stats.frames += 1
                    self.progress.update(1)
        except BaseException as err:  # reported by the main thread
            self.error = err
            # keep taking frames so that the inference stage never blocks on a full queue
            while self.inbox.get() is not _END:
                pass
        finally:
            self._close(writer)

    def _close(self, writer) -> None:
        try:  # an alert still on ends with the stream (Ctrl-C and errors included)
            self.stats.duration_ms = self.tracker.duration_ms
            if self.tracker.close() is not None:
                self._thumbnail()
        except BaseException as err:
            self.error = self.error or err
        if writer is None:
            return
        try:
            writer.close()
        except BaseException as err:  # e.g. a full disk while the index was written
            self.error = self.error or err

    def _thumbnail(self) -> None:
        """The alert that just ended: its peak frame as ``alert-NNN.jpg``."""
        if self.peak_frame is not None:
            (self.alerts_tmp / thumbnail_name(len(self.tracker.events))).write_bytes(jpeg_thumbnail(self.peak_frame))
        self.peak_frame = None

    def _live_fps(self) -> float | None:
        t = self.done_times
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) >= 5 and t[-1] > t[0] else None


def _decode(source: _Source, prepare, outbox: queue.Queue, stop: threading.Event, max_frames: int | None,
            stats: VideoStats, errors: list) -> None:
    """Decoder thread: frames, prepared for the network, into ``outbox``; counts undecodable ones; live
    sources drop the oldest waiting frame when the queue is full."""
    try:
        taken = 0
        for index, image, t_ms in source.frames():
            if stop.is_set():
                break
            if image is _BAD:
                stats.skipped += 1
                continue
            taken += 1
            begin = time.perf_counter()
            x, fitted = prepare(image)
            item = (index, t_ms, image, x, fitted, 1000 * (time.perf_counter() - begin))
            if source.live:
                while True:
                    try:
                        outbox.put_nowait(item)
                        break
                    except queue.Full:
                        try:
                            outbox.get_nowait()
                            stats.dropped += 1
                        except queue.Empty:
                            pass
            else:
                while not stop.is_set():
                    try:
                        outbox.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        pass
            if max_frames is not None and taken >= max_frames:
                break
    except BaseException as err:
        errors.append(err)
    finally:
        source.close()
        while True:  # the end marker must get through even if the queue is full
            try:
                outbox.put(_END, timeout=0.1)
                break
            except queue.Full:
                if stop.is_set():
                    try:
                        outbox.get_nowait()
                    except queue.Empty:
                        pass


def run_video(
    source: str | int | Path,
    predictor: Predictor,
    out_path: str | Path = "overlay.mp4",
    csv_path: str | Path | None = None,
    max_frames: int | None = None,
    show_progress: bool = True,
    threshold: float | None = None,
    fps: float | None = None,
    alerts: AlertRule | None = None,
) -> VideoStats:
    """Segment every frame of ``source`` with ``predictor`` and write the overlay video ``out_path``
    (.mp4: H.264, which browsers play; .avi: MJPG) at the source's frame rate (``fps`` overrides; frame
    folders: 25, which also times their frames) and beside it:

    - the per-frame CSV ``csv_path`` (default ``NAME.csv``): frame (index in the source), time_ms (the
      frame's timestamp), polyp_score, polyp_present, area_fraction, mean_confidence (mean probability
      inside the mask), smoothed_score, alert (0/1) and latency_ms (preprocessing + network + resizing
      back, for that frame; time waiting in queues not included);
    - ``NAME.events.csv``: one row per alert (``EVENT_FIELDS``), and ``NAME.alerts/alert-NNN.jpg``, the
      overlay frame at each alert's peak (largest area), 240 px wide;
    - ``NAME.summary.json``: frames, duration, frame rate, alerts, alerts per minute, share of time
      alerted, the rule and the model's operating point.

    ``alerts``: the alert rule (default ``AlertRule()``; its threshold, when None, is the model's
    operating point). Preprocessing runs in the decoder thread and resizing back and the alerts in the
    encoder thread, so the calling thread does nothing but run the network. The returned stats carry the
    same events and summary as the files.

    Ctrl-C stops the run and keeps what was done (``interrupted`` in the returned stats). A source with
    no decodable frame raises PolypsegError and leaves no file behind.
    """
    check_threshold(threshold)
    rule = (alerts or AlertRule()).resolved(predictor.operating_point)
    if max_frames is not None and max_frames < 1:
        raise PolypsegError(f"--max-frames must be 1 or more, got {max_frames}.")
    if fps and not 0 < fps <= 1000:
        raise PolypsegError(f"The frame rate must lie between 0 and 1000 frames per second, got {fps}.")
    out, csv_out = output_paths(out_path, csv_path)
    events_csv, alerts_dir, summary_json = alert_paths(out)
    src = open_source(source)
    src.fps = fps or src.fps
    stats = VideoStats(source=str(source), output=out, csv=csv_out, events_csv=events_csv, alerts_dir=alerts_dir,
                       summary_json=summary_json, model=predictor.runtime)
    try:
        for p in (out, csv_out):
            p.parent.mkdir(parents=True, exist_ok=True)
        video_tmp, csv_tmp = temp_path(out, keep_suffix=True), temp_path(csv_out, keep_suffix=True)
        alerts_tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{alerts_dir.name}.", suffix=".tmp"))
        try:
            error = _run_pipeline(src, predictor, video_tmp, csv_tmp, alerts_tmp, src.fps,
                                  predictor.threshold if threshold is None else threshold, rule, max_frames,
                                  stats, show_progress)
            # Both threads have stopped, the writer is closed and an alert still on was ended: what is
            # there is a playable file and its alerts, published even after an error. The video first (a
            # CSV never appears without its video), the summary last.
            if stats.frames > 0:
                stats.summary = video_summary(stats, predictor.operating_point)
                publish(video_tmp, out)
                publish(csv_tmp, csv_out)
                publish_folder(alerts_tmp, alerts_dir, keep=bool(stats.events))
                atomic_write_text(events_csv, events_csv_text(stats.events, alerts_dir.name))
                atomic_write_text(summary_json, json.dumps(stats.summary, indent=2) + "\n")
        finally:
            video_tmp.unlink(missing_ok=True)
            csv_tmp.unlink(missing_ok=True)
            shutil.rmtree(alerts_tmp, ignore_errors=True)
    finally:
        src.close()
    if error is not None:
        raise error
    if stats.frames == 0 and not stats.interrupted:
        if stats.skipped:
            raise PolypsegError(
                f"None of the {stats.skipped} frame(s) of {source} could be decoded; nothing was written."
            )
        raise PolypsegError(f"{source} holds no frames; nothing was written.")
    return stats


def output_paths(out_path: str | Path, csv_path: str | Path | None) -> tuple[Path, Path]:
    """The video and CSV paths, checked (with the alerts' paths beside the video) before any frame is
    decoded."""
    out = Path(out_path)
    check_video_suffix(out)
    csv_out = Path(csv_path) if csv_path is not None else out.with_suffix(".csv")
    events_csv, alerts_dir, summary_json = alert_paths(out)
    if out.resolve() == csv_out.resolve():
        raise PolypsegError("The video and the CSV need different file names.")
    if csv_out.resolve() in (events_csv.resolve(), summary_json.resolve(), alerts_dir.resolve()):
        raise PolypsegError(f"{csv_out.name} is the name of the alerts' file beside the video; name the per-frame "
                            "CSV (--csv) otherwise.")
    check_writable(out, "the overlay video (-o)")
    check_writable(csv_out, "the per-frame CSV (--csv)")
    check_writable(events_csv, "the alerts' events CSV (beside the video)")
    check_writable(alerts_dir, "the alerts' thumbnails (beside the video)", folder=True)
    check_writable(summary_json, "the summary JSON (beside the video)")
    return out, csv_out


def alert_paths(out: Path) -> tuple[Path, Path, Path]:
    """Beside the video ``NAME.mp4``: ``NAME.events.csv``, the thumbnails' folder ``NAME.alerts`` and
    ``NAME.summary.json``."""
    return out.with_suffix(".events.csv"), out.with_suffix(".alerts"), out.with_suffix(".summary.json")


def track_frame(tracker: AlertTracker, index: int, t_ms: float, stats: dict) -> tuple[dict, FrameState]:
    """One frame's CSV row (``CSV_FIELDS`` but latency) and alert state: ``stats`` is ``frame_stats``'s dict.
    Times are rounded to the CSV's 1 us and kept increasing; the tracker sees the CSV's rounded figures, so
    the events are what ``alerts.track`` gives on the CSV. polypseg.batch calls it too."""
    last = tracker.last_ms
    t_ms = round(t_ms, 3) if last is None or round(t_ms, 3) > last else round(last + 0.001, 3)
    row = {"frame": index, "time_ms": t_ms, **stats}
    state = tracker.update(row["time_ms"], row["polyp_score"], row["area_fraction"], index)
    row.update(smoothed_score=round(state.smoothed, 6), alert=int(state.alert))
    return row, state


def thumbnail_name(number: int) -> str:
    return f"alert-{number:03d}.jpg"


def events_csv_text(events: list[AlertEvent], folder: str) -> str:
    rows = []
    for i, event in enumerate(events, 1):
        row = {k: round(v, 6 if k in ("peak_score", "peak_area") else 3) if isinstance(v, float) else v
               for k, v in event.as_dict().items()}
        rows.append({"index": i, **row, "thumbnail": f"{folder}/{thumbnail_name(i)}"})
    return csv_text(rows, EVENT_FIELDS)


def video_summary(stats: VideoStats, operating_point: float) -> dict:
    """What ``NAME.summary.json`` holds (and ``VideoStats.summary``)."""
    duration = stats.duration_ms
    figures = summary(stats.events, duration)
    return {
        "source": stats.source, "frames": stats.frames, "skipped": stats.skipped, "dropped": stats.dropped,
        "interrupted": stats.interrupted, "duration_ms": round(duration, 3),
        "fps": round(1000 * stats.frames / duration, 3) if duration > 0 else None,
        "alerts": figures["alerts"], "alerts_per_minute": round(figures["alerts_per_minute"], 4),
        "alerted_share": round(figures["alerted_share"], 6),
        "mean_alert_ms": None if figures["mean_alert_ms"] is None else round(figures["mean_alert_ms"], 3),
        "median_alert_ms": None if figures["median_alert_ms"] is None else round(figures["median_alert_ms"], 3),
        "rule": stats.rule.as_dict(), "operating_point": round(float(operating_point), 6), "model": stats.model,
    }


def publish_folder(tmp: Path, path: Path, keep: bool) -> None:
    """Put the finished folder ``tmp`` at ``path`` (with ``keep``; else only remove an old ``path``): the
    old folder is moved aside first, so readers see the old one or the new one."""
    old = None
    if path.is_dir():
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
        os.replace(path, old / path.name)
    if keep:
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700 folders
        os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _run_pipeline(src: _Source, predictor: Predictor, video_tmp: Path, csv_tmp: Path, alerts_tmp: Path,
                  fps: float, threshold: float, rule: AlertRule, max_frames: int | None, stats: VideoStats,
                  show_progress: bool) -> BaseException | None:
    """Decode (thread) -> infer (this thread) -> encode (thread) into the temporary files; fills ``stats``.
    Ctrl-C ends it early with ``stats.interrupted``; any other error of the three stages is returned once
    both threads have stopped."""
    total = src.total if max_frames is None or src.total is None else min(src.total, max_frames)
    bar = progress_bar(total, desc="video", unit="frame", enabled=show_progress)
    # A live source keeps at most one frame waiting, so that the overlay shows the newest frame.
    frames_in: queue.Queue = queue.Queue(maxsize=1 if src.live else QUEUE_SIZE)
    frames_out: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
    stop = threading.Event()
    decode_errors: list[BaseException] = []
    decoder = threading.Thread(
        target=_decode, args=(src, predictor.prepare, frames_in, stop, max_frames, stats, decode_errors),
        name="polypseg-decode", daemon=True,
    )
    encoder = _Encoder(frames_out, video_tmp, csv_tmp, alerts_tmp, fps, threshold, rule, stats, bar,
                       predictor.finish)
    error: BaseException | None = None
    start = time.perf_counter()
    decoder.start()
    encoder.start()
    try:
        _infer(predictor, frames_in, frames_out, encoder)
    except KeyboardInterrupt:
        stats.interrupted = True
    except BaseException as err:
        error = err
    finally:
        stop.set()
        frames_out.put(_END)  # the encoder finishes the frames it has, then closes the writer
        encoder.join()
        decoder.join(timeout=5)
        stats.seconds = time.perf_counter() - start
        bar.close()
    return error or encoder.error or (decode_errors[0] if decode_errors else None)


def _infer(predictor: Predictor, frames_in: queue.Queue, frames_out: queue.Queue, encoder: _Encoder) -> None:
    """The network on every prepared frame, until the decoder's end marker or an encoder error."""
    while (item := frames_in.get()) is not _END:
        *frame, x, fitted, latency = item  # frame: index, time, image
        begin = time.perf_counter()
        padded = predictor.infer(x)
        latency += 1000 * (time.perf_counter() - begin)
        frames_out.put((*frame, padded, fitted, latency))
        if encoder.error is not None:
            return
