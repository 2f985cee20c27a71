"""Segment video: decode -> infer -> encode as three stages joined by bounded queues.

The source is a video file, a folder of frames, a camera index or a stream URL (``media.open_source``).
Decoding and encoding run in their own threads (their C code runs outside the GIL), inference in the
calling thread, so the pipeline goes as fast as the model. Frames cross the queues as small typed records
(``DecodedFrame``, ``InferredFrame``). What happens to each result is ``polypseg.exam``'s, shared with batch
and serve: the alert rule, what the picture outlines (only while an alert is on, by default), the per-frame
rows, the events with their thumbnails, the timeline and the summary, written with one naming beside the
overlay video. The overlay shows the outline, its area and an amber border while an alert is on; the
processing speed goes to the terminal and the stats, never into the picture.

Every output is written under a temporary name and renamed at the end; the video writer is closed
(encoder flushed, MP4 index written) and an alert still on is ended in every case, so an error or Ctrl-C
after the first frame still leaves a playable file and the alerts of the frames done so far. A frame
that cannot be decoded is counted and skipped. Live sources (cameras, streams) drop the oldest waiting
frame when the model falls behind, so the overlay never lags further and further behind the scope.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .alerts import AlertEvent, AlertRule
from .errors import PolypsegError
from .exam import ExamFiles, ExamLog, ExamWriter, check_outlines, files_beside, frame_result
from .files import check_writable
from .media import BAD, Source, check_video_suffix, even_size, open_source, open_writer
from .predict import Predictor, check_threshold
from .progress import progress_bar
from .viz import draw_frame

QUEUE_SIZE = 4
_END = object()  # ends a queue


@dataclass
class VideoStats:
    """What a run of the pipeline did: frames processed, skipped (undecodable) and dropped (a live source
    outrunning the model), wall time and latencies (``processing_fps``: frames per second of wall time), the
    rule, events and summary (as in the files) and where the files are."""

    source: str
    output: Path | None
    files: ExamFiles | None = None
    frames: int = 0  # frames processed and written
    skipped: int = 0  # frames that could not be decoded
    dropped: int = 0  # live sources: frames dropped because the model fell behind
    seconds: float = 0.0
    size: tuple[int, int] | None = None  # (width, height) of the written video
    interrupted: bool = False
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    rule: AlertRule | None = None  # the alert rule used, its operating point filled in
    duration_ms: float = 0.0  # of the source's frames, by their timestamps (the last one lasting one frame step)
    events: list[AlertEvent] = field(default_factory=list)  # the alerts, as in the events CSV
    summary: dict = field(default_factory=dict)  # as in the summary JSON
    model: str = ""  # what ran the frames (Predictor.runtime), e.g. 'onnxruntime int8 (realtime.int8.onnx)'

    @property
    def processing_fps(self) -> float:
        """Frames per second through the whole pipeline (decode, inference, encode), by the wall clock."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def csv(self) -> Path | None:
        return None if self.files is None else self.files.frames

    @property
    def latency_median_ms(self) -> float:
        return float(np.median(self.latencies_ms)) if self.latencies_ms else math.nan

    @property
    def latency_p90_ms(self) -> float:
        return float(np.percentile(self.latencies_ms, 90)) if self.latencies_ms else math.nan

    def __str__(self) -> str:
        text = f"model: {self.model}\n" if self.model else ""
        text += (f"{self.frames} frames in {self.seconds:.1f} s ({self.processing_fps:.1f} fps end to end; "
                 f"inference latency median {self.latency_median_ms:.1f} ms, p90 {self.latency_p90_ms:.1f} ms)")
        if self.skipped:
            text += f"; {self.skipped} frame(s) could not be decoded and were skipped"
        if self.dropped:
            text += f"; {self.dropped} frame(s) dropped because the model fell behind the live source"
        if self.interrupted:
            text += "; stopped by Ctrl-C"
        s = self.summary
        if s:
            text += (f"\n{s['alerts']} alert(s) in {s['duration_ms'] / 1000:.1f} s of video "
                     f"({s['alerts_per_minute']:.2f} per minute, alerted {100 * s['alerted_share']:.1f}% of the time; "
                     f"operating point {s['operating_point']:.4g}"
                     + (f", site '{s['site']}'" if s.get("site") else "") + ")")
        if self.files is None:
            return text
        f = self.files
        return (f"{text}\nvideo: {self.output}\nper-frame CSV: {f.frames}\nalerts: {f.events}"
                f"\ntimeline: {f.timeline}\nsummary: {f.summary}")


# ---------------------------------------------------------------------------------------------------
# the pipeline


@dataclass(frozen=True)
class DecodedFrame:
    """A frame on its way through the pipeline: its index in the source, timestamp (ms), the RGB picture,
    the network's input and where it came from (``Predictor.prepare``), and the milliseconds spent on it so
    far (preparation; then the network)."""

    index: int
    t_ms: float
    image: np.ndarray
    x: np.ndarray
    geometry: Any
    latency_ms: float


@dataclass(frozen=True)
class InferredFrame:
    """A frame after the network: the decoded frame and the network's padded output."""

    frame: DecodedFrame
    out: Any
    latency_ms: float


class _Encoder(threading.Thread):
    """Finishes, tracks, draws, encodes and logs frames from ``inbox`` until it receives _END, through one
    ``exam.ExamLog`` and ``exam.ExamWriter`` (rows, alerts, thumbnails, the overlay video)."""

    def __init__(self, inbox: queue.Queue, writer: ExamWriter, video_path: Path, fps: float, threshold: float,
                 stats: VideoStats, progress, finish):
        super().__init__(name="polypseg-encode", daemon=True)
        self.finish = finish  # Predictor.finish: padded output -> the frame's Prediction
        self.inbox, self.writer, self.video_path = inbox, writer, video_path
        self.fps, self.threshold = fps, threshold
        self.stats, self.progress = stats, progress
        self.error: BaseException | None = None

    def run(self) -> None:
        writer, log = self.writer, self.writer.log
        try:
            while (item := self.inbox.get()) is not _END:
                frame, image = item.frame, item.frame.image
                if writer.video is None:
                    self.stats.size = even_size(image)
                    writer.open_video(self.video_path, lambda tmp: open_writer(tmp, self.stats.size, self.fps))
                begin = time.perf_counter()
                prediction = self.finish(item.out, frame.geometry, image.shape[:2])
                latency_ms = item.latency_ms + 1000 * (time.perf_counter() - begin)
                self.stats.latencies_ms.append(latency_ms)
                result, mask = frame_result(frame.index, frame.t_ms, prediction.prob, prediction.score,
                                            log.rule.operating_point, self.threshold, latency_ms)
                step = log.add(result)
                drawn = draw_frame(image, mask, step.style, step.state.alert)
                w, h = self.stats.size
                if drawn.shape[:2] != (h, w):  # a frame folder with mixed sizes, or an odd size
                    drawn = drawn[:h, :w] if drawn.shape[0] >= h and drawn.shape[1] >= w else cv2.resize(drawn, (w, h))
                writer.frame(step, drawn)
                self.stats.frames += 1
                self.progress.update(1)
        except BaseException as err:  # reported by the main thread
            self.error = err
            # keep taking frames so that the inference stage never blocks on a full queue
            while self.inbox.get() is not _END:
                pass
        finally:
            # an alert still on ends with the stream (Ctrl-C and errors included); the video is closed
            self.stats.duration_ms = log.duration_ms
            errors = writer.close_stream()
            self.error = self.error or (errors[0] if errors else None)


def _decode(source: Source, prepare, outbox: queue.Queue, stop: threading.Event, max_frames: int | None,
            stats: VideoStats, errors: list) -> None:
    """Decoder thread: frames, prepared for the network, into ``outbox``; counts undecodable ones; live
    sources drop the oldest waiting frame when the queue is full."""
    try:
        taken = 0
        for index, image, t_ms in source.frames():
            if stop.is_set():
                break
            if image is BAD:
                stats.skipped += 1
                continue
            taken += 1
            begin = time.perf_counter()
            x, geometry = prepare(image)
            item = DecodedFrame(index, t_ms, image, x, geometry, 1000 * (time.perf_counter() - begin))
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
    outlines: str = "alert",
    files: ExamFiles | None = None,
) -> VideoStats:
    """Segment every frame of ``source`` with ``predictor`` and write the overlay video ``out_path``
    (.mp4: H.264, which browsers play; .avi: MJPG) at the source's frame rate (``fps`` overrides; frame
    folders: 25, which also times their frames) and beside it the exam's files (``exam.files_beside``):

    - ``NAME.frames.csv`` (or ``csv_path``): one row per frame (``exam.FRAME_FIELDS``): its index in the
      source, timestamp, polyp score and verdict, the raw mask's area and mean probability, the smoothed
      score, whether an alert is on, whether the outline is drawn, and the latency (preprocessing + network
      + resizing back; time waiting in queues not included);
    - ``NAME.events.csv``: one row per alert, and ``NAME.alerts/alert-NNN.jpg``, the overlay frame at each
      alert's peak (largest area), 240 px wide;
    - ``NAME.timeline.png`` (score, operating point and alerts over time) and ``NAME.summary.json``;
    ``files``: the exam's files elsewhere (``exam.exam_files(FOLDER)``: an exam's own folder, as batch and
    serve write it).

    What the picture shows follows ``exam``'s contract: ``outlines="alert"`` (default) draws an outline only
    while an alert is on, ``"all"`` also the raw outlines the rule holds back, in magenta (research).
    ``alerts``: the alert rule (default ``predictor.alert_rule()``: the site's or the defaults; an operating
    point of None is the predictor's). Preprocessing runs in the decoder thread and resizing back and the
    alerts in the encoder thread, so the calling thread does nothing but run the network. The returned stats
    carry the same events and summary as the files.

    Ctrl-C stops the run and keeps what was done (``interrupted`` in the returned stats). A source with
    no decodable frame raises PolypsegError and leaves no file behind.
    """
    check_threshold(threshold)
    check_outlines(outlines)
    rule = (alerts or predictor.alert_rule()).resolved(predictor.operating_point)
    if max_frames is not None and max_frames < 1:
        raise PolypsegError(f"--max-frames must be 1 or more, got {max_frames}.")
    if fps and not 0 < fps <= 1000:
        raise PolypsegError(f"The frame rate must lie between 0 and 1000 frames per second, got {fps}.")
    out, files = output_paths(out_path, csv_path, files)
    src = open_source(source)
    src.fps = fps or src.fps
    stats = VideoStats(source=str(source), output=out, files=files, model=predictor.runtime, rule=rule)
    try:
        writer = ExamWriter(files, ExamLog(rule, outlines))
        stats.events = writer.log.events
        try:
            error = _run_pipeline(src, predictor, writer, out, src.fps,
                                  predictor.threshold if threshold is None else threshold, max_frames,
                                  stats, show_progress)
            # Both threads have stopped, the writer is closed and an alert still on was ended: what is
            # there is a playable file and its alerts, published even after an error.
            if stats.frames > 0:
                stats.summary = writer.finish(_about(stats, predictor))
        finally:
            writer.discard()
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


def _about(stats: VideoStats, predictor: Predictor) -> dict:
    """What the summary says of the run beside the exam's figures (``ExamLog.summary``)."""
    return {"source": stats.source, "skipped": stats.skipped, "dropped": stats.dropped,
            "interrupted": stats.interrupted,
            "processing_fps": round(stats.processing_fps, 3) if stats.seconds > 0 else None,
            "model": stats.model, "site": predictor.site.name if predictor.site is not None else None}


def output_paths(out_path: str | Path, csv_path: str | Path | None,
                 files: ExamFiles | None = None) -> tuple[Path, ExamFiles]:
    """The video and the exam's files (default: beside it), checked before any frame is decoded."""
    out = Path(out_path)
    check_video_suffix(out)
    if files is not None and csv_path is not None:
        raise PolypsegError("Give the per-frame CSV's path or the exam's files, not both.")
    files = files if files is not None else files_beside(out, csv_path)
    if out.resolve() == files.frames.resolve():
        raise PolypsegError("The video and the CSV need different file names.")
    if files.frames.resolve() in [p.resolve() for p in files.all() if p != files.frames]:
        raise PolypsegError(f"{files.frames.name} is the name of another of the exam's files beside the video; name "
                            "the per-frame CSV (--csv) otherwise.")
    check_writable(out, "the overlay video (-o)")
    check_writable(files.frames, "the per-frame CSV (--csv)")
    for path in files.all():
        if path != files.frames:
            check_writable(path, f"the exam's {path.name} (beside the video)", folder=path == files.alerts)
    return out, files


def _run_pipeline(src: Source, predictor: Predictor, writer: ExamWriter, video_path: Path, fps: float,
                  threshold: float, max_frames: int | None, stats: VideoStats,
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
    encoder = _Encoder(frames_out, writer, video_path, fps, threshold, stats, bar, predictor.finish)
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
    while (frame := frames_in.get()) is not _END:
        begin = time.perf_counter()
        out = predictor.infer(frame.x)
        frames_out.put(InferredFrame(frame, out, frame.latency_ms + 1000 * (time.perf_counter() - begin)))
        if encoder.error is not None:
            return
