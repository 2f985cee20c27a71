"""`polypseg batch`: an archive of exams (videos and frame folders) segmented on Ray Data.

The pipeline: one row per exam -> ``map_batches(decode_exams)`` decodes it into batches of frame rows
(raw RGB bytes) -> ``map_batches`` with ``FrameSegmenter``, a callable class held by a pool of actors, each
loading the model once with its own ONNX Runtime thread count -> rows of per-frame figures (and the
shown mask, bit-packed, where there is one) streamed back to this process. Both stages ask for the same
CPUs, so Ray Data fuses them: a worker decodes an exam and segments its frames as they are decoded. Here each exam's frames are gathered; when
the last one has arrived, the exam goes through ``polypseg.exam`` as in ``polypseg video`` (the same
alert rule, outlines only while an alert is on, one writer and one naming) and its folder is written under
a temporary name and renamed: the per-frame CSV, events, thumbnails, timeline and summary, and, when
asked, the overlay video. Pictures (thumbnails, the overlay) need the frames again: the exam is decoded a
second time here only when it has an alert or an overlay was asked for.

Ray runs embedded (started by the command, every core of this machine) or joins a cluster (``address``);
sources must be readable at the same path on every node. A worker that dies is restarted by Ray Data
and its batch run again; frames are keyed by (exam, index), so none counts twice. A finished exam's
folder holds ``summary.json``, so a rerun skips it; an exam that fails (unreadable file, no video
stream, no decodable frame) goes to ``errors.csv`` with its reason and the others go on. At the end the
archive's ``archive.csv`` and ``index.html`` cover every finished exam, this run's and earlier ones'.
"""

from __future__ import annotations

import html
import json
import logging
import os
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .alerts import AlertRule
from .config import Config
from .errors import PolypsegError
from .exam import ExamLog, ExamWriter, FrameResult, check_outlines, exam_files, mask_figures, thumbnail_name
from .files import atomic_write_text, check_writable, csv_text, publish_folder
from .media import IMAGE_SUFFIXES, VIDEO_SUFFIXES, even_size, open_source, open_writer
from .model import load_checkpoint, read_checkpoint_meta
from .predict import Predictor, resolve_model
from .progress import progress_bar
from .runtime import check_precision, export_bytes, exported_from, file_sha256, int8_session
from .viz import draw_frame
LIST_SUFFIXES = (".txt", ".lst", ".list")
DONE = "summary.json"  # written last into an exam's folder, which is renamed into place when complete
ARCHIVE_FIELDS = ("exam", "source", "frames", "skipped", "duration_s", "alerts", "alerts_per_minute",
                  "alerted_share", "polyp_frame_share", "peak_score", "first_alert_s")
ERROR_FIELDS = ("exam", "source", "reason")
WAIT_FOR_WORKERS_S = 600
INSTALL_HINT = "polypseg batch runs on Ray Data: install it with pip install 'polypseg[scale]' (or pip install 'ray[data]')."
log = logging.getLogger("polypseg.batch")


@dataclass(frozen=True)
class BatchSettings:
    """One batch run's settings: the model and how it runs, the alert rule (its operating point filled in),
    the site profile it came from, what is outlined, the mask threshold, and Ray's share of the work
    (``workers`` is known once the cluster is up). Recorded in ``batch.json`` and on the archive page."""

    model: str
    backend: str
    precision: str
    rule: AlertRule
    site: str | None
    outlines: str
    threshold: float
    address: str | None
    batch_size: int
    threads_per_worker: int
    overlay: bool
    workers: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rule": self.rule.as_dict(), "operating_point": self.rule.operating_point}


@dataclass(frozen=True)
class Exam:
    """One recorded exam: ``name`` is its folder under ``OUT/exams`` (its path below the input folder,
    without a video suffix), ``source`` the video file or frame folder."""

    name: str
    source: str


@dataclass
class BatchResult:
    out: Path
    done: list[str] = field(default_factory=list)  # exams finished by this run
    skipped: list[str] = field(default_factory=list)  # finished before (resumed)
    errors: list[dict[str, str]] = field(default_factory=list)
    frames: int = 0
    seconds: float = 0.0
    frames_by_node: dict[str, int] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        text = (f"{len(self.done)} exam(s) done, {len(self.skipped)} already done before, {len(self.errors)} failed; "
                f"{self.frames} frames in {self.seconds:.1f} s ({self.fps:.1f} fps) on {len(self.frames_by_node)} node(s)")
        if self.errors:
            text += f"\nfailed exams and why: {self.out / 'errors.csv'}"
        return f"{text}\narchive: {self.out / 'archive.csv'} and {self.out / 'index.html'}"


# ---------------------------------------------------------------------------------------------------
# finding exams


def _is_video(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES


def _has_images(folder: Path) -> bool:
    return any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") for p in folder.iterdir())


def _exams_below(root: Path) -> list[tuple[str, Path]]:
    """(name, source) of every video and every folder holding images below ``root``, recursively."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(folder)
        rel = here.relative_to(root)
        for name in sorted(files):
            path = here / name
            if _is_video(path) and not name.startswith("."):
                found.append(((rel / path.stem).as_posix(), path))
        if _has_images(here):
            found.append((root.name if rel == Path(".") else rel.as_posix(), here))
    return found


def _list_file(path: Path) -> list[tuple[str, Path]]:
    found = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        item = Path(line) if Path(line).is_absolute() else path.parent / line
        if not (_is_video(item) or (item.is_dir() and _has_images(item))):
            raise PolypsegError(f"Line {number} of {path} names {line}, which is neither a video "
                                f"({', '.join(VIDEO_SUFFIXES[:4])}, ...) nor a folder of images.")
        found.append((item.stem if item.is_file() else item.name, item))
    return found


def find_exams(inputs: list[str | Path]) -> list[Exam]:
    """Every exam in ``inputs``: folders (searched recursively for videos and folders of frames), video
    files, and list files (``.txt``: one video or frame folder per line, relative to the list's folder;
    ``#`` comments). Names that clash get ``-2``, ``-3``, ... in input order."""
    found: list[tuple[str, Path]] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            below = _exams_below(path)
            if not below:
                raise PolypsegError(f"{path} holds no video ({', '.join(VIDEO_SUFFIXES[:4])}, ...) and no folder of images.")
            found += below
        elif _is_video(path):
            found.append((path.stem, path))
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            found += _list_file(path)
        elif path.exists():
            raise PolypsegError(f"{path} is not a video ({', '.join(VIDEO_SUFFIXES)}), a folder or a list file "
                                f"({', '.join(LIST_SUFFIXES)}).")
        else:
            raise PolypsegError(f"{path} does not exist. Give folders of exams, video files or a list file.")
    exams, seen = [], Counter()
    for name, source in found:
        seen[name] += 1
        exams.append(Exam(name if seen[name] == 1 else f"{name}-{seen[name]}", str(source.resolve())))
    if not exams:
        raise PolypsegError("No exams were found in the inputs.")
    return exams


# ---------------------------------------------------------------------------------------------------
# the two Ray Data stages (run in Ray's worker processes)


def _row(exam: str, kind: str, index: int = 0, time_ms: float = 0.0, note: str = "", frame: bytes = b"",
         height: int = 0, width: int = 0) -> dict[str, Any]:
    return {"exam": exam, "kind": kind, "index": index, "time_ms": time_ms, "note": note, "frame": frame,
            "height": height, "width": width}


def decode_exam(row: dict[str, Any], fps: float | None = None):
    """flat_map: one exam -> its frames as rows (``kind`` "frame", raw RGB bytes), then one "end" row
    (``index``: the frame count; ``note``: JSON with skipped frames and the frame rate), or one "error"
    row with the reason instead."""
    import cv2

    cv2.setNumThreads(1)
    exam = row["exam"]
    try:
        src = open_source(row["source"])
    except Exception as err:  # noqa: BLE001 - any reason is reported per exam
        yield _row(exam, "error", note=str(err) or type(err).__name__)
        return
    try:
        src.fps = fps or src.fps
        frames = skipped = 0
        for index, image, t_ms in src.frames():
            if not isinstance(image, np.ndarray):
                skipped += 1
                continue
            frames += 1
            yield _row(exam, "frame", index, float(t_ms), frame=np.ascontiguousarray(image).tobytes(),
                       height=image.shape[0], width=image.shape[1])
    except Exception as err:  # noqa: BLE001
        yield _row(exam, "error", note=f"decoding stopped: {err or type(err).__name__}")
        return
    finally:
        src.close()
    if frames == 0:
        reason = f"none of its {skipped} frame(s) could be decoded" if skipped else "no frames (no video stream?)"
        yield _row(exam, "error", note=reason)
    else:
        yield _row(exam, "end", frames, note=json.dumps({"skipped": skipped, "fps": src.fps}))


def _columns(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    return {k: np.asarray([r[k] for r in rows], dtype=object if k in ("exam", "kind", "note", "frame") else None)
            for k in rows[0]}


def decode_exams(batch: dict[str, np.ndarray], fps: float | None = None, chunk: int = 32):
    """map_batches (one exam per batch): ``decode_exam``'s rows in batches of ``chunk`` frames. A
    map_batches rather than a flat_map, so that Ray Data fuses it with the model stage."""
    for exam, source in zip(batch["exam"], batch["source"]):
        rows = []
        for row in decode_exam({"exam": str(exam), "source": str(source)}, fps):
            rows.append(row)
            if len(rows) == chunk:
                yield _columns(rows)
                rows = []
        if rows:
            yield _columns(rows)


RESULT_COLUMNS = ("exam", "kind", "index", "time_ms", "note", "polyp_score", "area_fraction", "mean_confidence",
                  "latency_ms", "mask", "height", "width", "node")


class FrameSegmenter:
    """map_batches callable class: the model, loaded once per actor from the checkpoint's bytes, with
    ``threads`` inference threads; frames of one size in a batch go through the network together."""

    def __init__(self, model_files: dict[str, bytes], backend: str, threads: int, threshold: float | None,
                 precision: str = "fp32"):
        import cv2
        import ray

        cv2.setNumThreads(1)
        self.folder = Path(tempfile.mkdtemp(prefix="polypseg-batch-model-"))
        for name, data in model_files.items():
            (self.folder / name).write_bytes(data)
        self.predictor = Predictor(self.folder / "model.safetensors", backend=backend, threads=threads,
                                   precision=precision)
        self.threshold = self.predictor.threshold if threshold is None else threshold
        self.node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["exam"])
        out: dict[str, list] = {k: [] for k in RESULT_COLUMNS}
        groups: dict[tuple, list] = defaultdict(list)
        prepared = {}
        for i in range(n):
            if batch["kind"][i] != "frame":
                continue
            h, w = int(batch["height"][i]), int(batch["width"][i])
            image = np.frombuffer(batch["frame"][i], np.uint8).reshape(h, w, 3)
            begin = time.perf_counter()
            x, geometry = self.predictor.prepare(image)
            prepared[i] = (geometry, (h, w), time.perf_counter() - begin)
            groups[x.shape].append((i, x))
        results = {}
        for items in groups.values():
            begin = time.perf_counter()
            probs, heads = self.predictor.forward(np.stack([x for _, x in items]))
            share = (time.perf_counter() - begin) / len(items)
            for j, (i, _) in enumerate(items):
                geometry, hw, spent = prepared[i]
                begin = time.perf_counter()
                prediction = self.predictor.finish((probs[j], None if heads is None else float(heads[j])), geometry, hw)
                mask, area, confidence = mask_figures(prediction.prob, self.threshold)  # raw: the driver draws
                stats = {"polyp_score": float(prediction.score), "area_fraction": area,
                         "mean_confidence": "" if confidence is None else confidence}
                results[i] = (stats, mask, 1000 * (spent + share + time.perf_counter() - begin))
        for i in range(n):
            for k in ("exam", "kind", "index", "time_ms", "note", "height", "width"):
                out[k].append(batch[k][i])
            stats, mask, latency = results.get(i, ({}, None, 0.0))
            out["polyp_score"].append(stats.get("polyp_score", 0.0))
            out["area_fraction"].append(stats.get("area_fraction", 0.0))
            confidence = stats.get("mean_confidence", "")
            out["mean_confidence"].append(np.nan if confidence == "" else confidence)
            out["latency_ms"].append(round(latency, 2))
            out["mask"].append(np.packbits(mask).tobytes() if mask is not None and mask.any() else b"")
            out["node"].append(self.node)
        return {k: np.asarray(v, dtype=object if k in ("mask", "exam", "kind", "note", "node") else None)
                for k, v in out.items()}

    def __del__(self):
        shutil.rmtree(getattr(self, "folder", ""), ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# one exam's outputs, written here as soon as its last frame has arrived


def _mask(row: dict[str, Any]) -> np.ndarray:
    h, w = int(row["height"]), int(row["width"])
    if not row["mask"]:
        return np.zeros((h, w), bool)
    return np.unpackbits(np.frombuffer(row["mask"], np.uint8), count=h * w).reshape(h, w).astype(bool)


def _results(frames: list[dict], operating_point: float) -> list[FrameResult]:
    """The frames' figures as ``exam.FrameResult``s; the verdict at the run's operating point."""
    return [FrameResult(int(f["index"]), float(f["time_ms"]), float(f["polyp_score"]),
                        float(f["polyp_score"]) >= operating_point, float(f["area_fraction"]),
                        None if np.isnan(f["mean_confidence"]) else float(f["mean_confidence"]), float(f["latency_ms"]))
            for f in frames]


def _pictures(exam: Exam, fps: float, indices: list[int]):
    """The exam decoded again: (index, RGB picture or None) for each of ``indices``, in order."""
    src = open_source(exam.source)
    src.fps = fps
    try:
        decoded = ((i, image) for i, image, _t in src.frames() if isinstance(image, np.ndarray))
        current = next(decoded, None)
        for index in indices:
            while current is not None and current[0] < index:
                current = next(decoded, None)
            yield index, (current[1] if current is not None and current[0] == index else None)
    finally:
        src.close()


def write_exam(exam: Exam, frames: list[dict], end: dict, rule: AlertRule, exams_dir: Path, overlay: bool,
               outlines: str = "alert", about: dict | None = None) -> dict:
    """One exam's frames (in frame order) through ``exam.ExamLog`` and ``exam.ExamWriter`` into its folder
    (written under a temporary name, then renamed); returns its summary."""
    final = exams_dir / exam.name
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    results = _results(frames, rule.operating_point)
    probe = ExamLog(rule, outlines)  # pictures are needed for the alerts' thumbnails or the overlay only
    for r in results:
        probe.add(r)
    probe.close()
    writer = ExamWriter(exam_files(tmp), ExamLog(rule, outlines))
    try:
        if overlay or probe.events:
            for f, result, (_, image) in zip(frames, results, _pictures(exam, end["fps"], [r.index for r in results])):
                step = writer.log.add(result)
                drawn = None if image is None else draw_frame(image, _mask(f), step.style, step.state.alert)
                if overlay and drawn is not None:
                    if writer.video is None:
                        size = even_size(drawn)
                        writer.open_video(tmp / "overlay.mp4", lambda path: open_writer(path, size, end["fps"]))
                    w, h = writer.video.size
                    drawn = drawn[:h, :w]
                writer.frame(step, drawn)
        else:
            for result in results:
                writer.frame(writer.log.add(result), None)
        errors = writer.close_stream()
        if errors:
            raise errors[0]
        summary = writer.finish({"exam": exam.name, "source": exam.source, "skipped": end["skipped"],
                                 "processing_fps": None, **(about or {})})
        os.chmod(tmp, 0o755)
        publish_folder(tmp, final, keep=True)
        return summary
    finally:
        writer.discard()
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# the archive's summary


def _archive_rows(exams: list[Exam], exams_dir: Path) -> list[dict]:
    rows = []
    for exam in exams:
        path = exams_dir / exam.name / DONE
        if not path.is_file():
            continue
        s = json.loads(path.read_text())
        first = s.get("first_alert_ms")
        rows.append({"exam": exam.name, "source": exam.source, "frames": s["frames"], "skipped": s["skipped"],
                     "duration_s": round(s["duration_ms"] / 1000, 3), "alerts": s["alerts"],
                     "alerts_per_minute": s["alerts_per_minute"], "alerted_share": s["alerted_share"],
                     "polyp_frame_share": s["polyp_frame_share"], "peak_score": s["peak_score"],
                     "first_alert_s": "" if first is None else round(first / 1000, 3)})
    return rows


def _archive_html(rows: list[dict], errors: list[dict], settings: BatchSettings) -> str:
    e = html.escape
    minutes = sum(r["duration_s"] for r in rows) / 60
    alerts = sum(r["alerts"] for r in rows)
    head = (f"<p>{len(rows)} exam(s) done, {len(errors)} failed; {sum(r['frames'] for r in rows)} frames, "
            f"{minutes:.1f} min of video; {alerts} alert(s), {alerts / minutes if minutes else 0:.2f} per minute "
            f"overall. Model {e(settings.model)} ({e(settings.backend)} {e(settings.precision)}), "
            f"operating point {settings.rule.operating_point:.4g}; alert rule {e(json.dumps(settings.rule.as_dict()))}.</p>")
    lines = []
    for r in sorted(rows, key=lambda r: (-r["alerts_per_minute"], r["exam"])):
        link = e(f"exams/{r['exam']}")
        thumb = (f'<img src="{link}/alerts/{thumbnail_name(1)}" alt="first alert of {e(r["exam"])}">'
                 if r["alerts"] else "")
        lines.append(
            f'<tr><td><a href="{link}/">{e(r["exam"])}</a></td><td>{r["duration_s"]:.1f}</td><td>{r["frames"]}</td>'
            f'<td>{r["alerts"]}</td><td>{r["alerts_per_minute"]:.2f}</td><td>{100 * r["alerted_share"]:.1f}%</td>'
            f'<td>{100 * r["polyp_frame_share"]:.1f}%</td><td>{r["first_alert_s"]}</td>'
            f'<td><img src="{link}/timeline.png" alt="polyp score of {e(r["exam"])} over time"></td><td>{thumb}</td></tr>')
    failed = "".join(f"<tr><td>{e(x['exam'])}</td><td>{e(x['source'])}</td><td>{e(x['reason'])}</td></tr>" for x in errors)
    failed = f"<h2>Failed exams</h2><table><tr><th>exam</th><th>source</th><th>reason</th></tr>{failed}</table>" if errors else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>polypseg batch</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse}} td,th{{border-bottom:1px solid #ddd;
padding:3px 8px;text-align:left;vertical-align:middle}} td img{{height:70px}}</style></head><body>
<h1>polypseg batch</h1>{head}
<p>Exams by alerts per minute, most first. The timeline: polyp score over time, the operating point dashed, alerts
shaded amber. The picture: the first alert's peak frame.</p>
<table><tr><th>exam</th><th>duration (s)</th><th>frames</th><th>alerts</th><th>alerts / min</th><th>time alerted</th>
<th>polyp frames</th><th>first alert (s)</th><th>polyp score</th><th>first alert</th></tr>
{chr(10).join(lines)}</table>{failed}</body></html>
"""


# ---------------------------------------------------------------------------------------------------
# the command


def _model_files(weights: Path, backend: str, precision: str) -> dict[str, bytes]:
    """The checkpoint's files, sent to every worker through Ray's object store (no shared disk needed);
    for ONNX Runtime also the ONNX file it runs: by ``precision`` the int8 file beside the checkpoint,
    else the fp32 one beside it or exported here once rather than by each worker."""
    files = {"model.safetensors": weights.read_bytes(), "model.json": weights.with_suffix(".json").read_bytes()}
    if backend == "onnxruntime" and int8_session(weights, precision) is not None:
        files["model.int8.onnx"] = weights.with_suffix(".int8.onnx").read_bytes()
    elif backend == "onnxruntime":
        beside = weights.with_suffix(".onnx")
        if exported_from(weights, beside) is not None:
            files["model.onnx"] = beside.read_bytes()
        else:
            model, cfg = load_checkpoint(weights)
            files["model.onnx"] = export_bytes(model, cfg, weights)
    return files


def _start_ray(address: str | None, num_cpus: int | None):
    try:
        import ray
    except ImportError:
        raise PolypsegError(INSTALL_HINT) from None
    try:
        import ray.data  # noqa: F401
    except ImportError as err:
        raise PolypsegError(f"{INSTALL_HINT} ({err})") from None
    if ray.is_initialized():
        return ray, False
    kwargs = dict(log_to_driver=False, logging_level=logging.WARNING, configure_logging=True)
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise PolypsegError(f"Cannot start or join {where}: {err}. Check the address (ray start --head prints "
                            "it) and that the cluster runs the same Ray and Python versions.") from None
    return ray, True


def _append_log(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")


def run_batch(
    inputs: list[str | Path],
    out: str | Path,
    checkpoint: str | Path | None = None,
    backend: str = "onnxruntime",
    precision: str = "auto",
    address: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    batch_size: int = 16,
    overlay: bool = False,
    rule: AlertRule | None = None,
    site: str | None = None,
    alert_overrides: dict | None = None,
    outlines: str = "alert",
    threshold: float | None = None,
    fps: float | None = None,
    show_progress: bool = True,
    num_cpus: int | None = None,
) -> BatchResult:
    """Segment every exam in ``inputs`` (see ``find_exams``) on Ray Data into ``out``:
    ``exams/NAME/`` per exam (``frames.csv``, ``events.csv``, ``alerts/``, ``summary.json``,
    ``timeline.png``, with ``overlay`` also ``overlay.mp4``), ``archive.csv``, ``index.html``,
    ``errors.csv`` (exams that failed, with the reason), ``batch.json`` (this run's settings, frames per
    node) and ``batch.log``.

    ``address``: a Ray cluster to join (default: start one here with ``num_cpus``, default every core).
    ``workers``: model actors (default: the cluster's CPUs / ``threads``); ``threads``: inference threads
    per actor (default 1). ``precision`` (onnxruntime): ``auto`` runs the int8 file beside the checkpoint
    where there is one (the real-time model ships one), as ``polypseg video`` does. The alert rule: ``rule``
    when given, else ``alert_overrides`` (operating_point, smoothing_ms, onset_ms, release_ms) over the site
    profile ``site`` over the defaults (``sites.rule_for``); every frame's verdict is at the rule's operating
    point; ``outlines`` as ``polypseg video`` (``exam.OUTLINES``). Exams already done in ``out`` are skipped.
    """
    check_precision(backend, precision)
    if batch_size < 1:
        raise PolypsegError(f"--batch-size must be 1 or more, got {batch_size}.")
    for name, value in (("--workers", workers), ("--threads", threads)):
        if value is not None and value < 1:
            raise PolypsegError(f"{name} must be 1 or more, got {value}.")
    out = Path(out)
    exams = find_exams(inputs)
    check_writable(out, "the batch output folder (-o)", folder=True)
    weights = resolve_model(checkpoint)
    cfg = Config.from_dict(read_checkpoint_meta(weights)["config"])
    check_outlines(outlines)
    if rule is None:
        from .sites import load, rule_for

        profile = load(weights, site, file_sha256(weights)) if site is not None else None
        rule = rule_for(profile, cfg.effective_operating_point, **(alert_overrides or {}))
    rule = rule.resolved(cfg.effective_operating_point)
    exams_dir = out / "exams"
    exams_dir.mkdir(parents=True, exist_ok=True)
    for stale in exams_dir.rglob(".*.tmp"):  # an earlier run stopped while writing
        shutil.rmtree(stale, ignore_errors=True)
    result = BatchResult(out)
    todo = []
    for exam in exams:
        if (exams_dir / exam.name / DONE).is_file():
            result.skipped.append(exam.name)
        else:
            todo.append(exam)
    logfile = out / "batch.log"
    _append_log(logfile, f"start: {len(exams)} exam(s), {len(result.skipped)} already done, {len(todo)} to do")
    threads = threads or 1
    settings = BatchSettings(model=str(weights), backend=backend, precision=precision, rule=rule, site=site,
                             outlines=outlines, threshold=cfg.decision_threshold if threshold is None else threshold,
                             address=address, batch_size=batch_size, threads_per_worker=threads, overlay=overlay)
    start = time.perf_counter()
    if todo:
        ray, started = _start_ray(address, num_cpus)
        try:
            files = _model_files(weights, backend, precision)
            settings = replace(settings, workers=workers or max(1, int(ray.cluster_resources().get("CPU", 1) // threads)),
                               precision="int8" if "model.int8.onnx" in files else "fp32")  # what ran, auto resolved
            _run(ray, todo, result, settings, files, exams_dir, logfile, fps, show_progress)
        finally:
            if started:
                ray.shutdown()
    result.seconds = time.perf_counter() - start
    rows = _archive_rows(exams, exams_dir)
    atomic_write_text(out / "archive.csv", csv_text(rows, ARCHIVE_FIELDS))
    atomic_write_text(out / "errors.csv", csv_text(result.errors, ERROR_FIELDS))
    atomic_write_text(out / "index.html", _archive_html(rows, result.errors, settings))
    run = {**settings.as_dict(), "exams": len(exams), "done": len(result.done), "skipped": len(result.skipped),
           "failed": len(result.errors), "frames": result.frames, "seconds": round(result.seconds, 3),
           "fps": round(result.fps, 3), "frames_by_node": result.frames_by_node}
    atomic_write_text(out / "batch.json", json.dumps(run, indent=2) + "\n")
    _append_log(logfile, f"end: {result}".replace("\n", "; "))
    return result


def _checked(ray, batches, settings: BatchSettings):
    """The result batches; workers that cannot all start become a PolypsegError."""
    try:
        yield from batches
    except ray.exceptions.GetTimeoutError:
        raise PolypsegError(
            f"{settings.workers} model worker(s) with {settings.threads_per_worker} CPU(s) each did not all start "
            f"within {WAIT_FOR_WORKERS_S} s: the Ray cluster has too few free CPUs. Ask for fewer --workers or "
            "--threads.") from None


def _run(ray, todo: list[Exam], result: BatchResult, settings: BatchSettings, model_files: dict[str, bytes],
         exams_dir: Path, logfile: Path, fps: float | None, show_progress: bool) -> None:
    """The Ray Data pipeline, and each exam written as soon as all its frames are back."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    # Every model worker is up before the first exam is handed out (else the first one ready takes them
    # all); a cluster without the CPUs for them fails after this long instead of waiting for ever.
    ctx.wait_for_min_actors_s = WAIT_FOR_WORKERS_S
    ctx.target_max_block_size = 8 * 1024 * 1024  # a few dozen frames per block: frames flow, not exams
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    by_name = {e.name: e for e in todo}
    ds = ray.data.from_items([{"exam": e.name, "source": e.source} for e in todo], override_num_blocks=len(todo))
    # The same CPUs as the model stage, so that Ray Data fuses the two into one operator: each worker
    # decodes an exam and segments its frames in batches as they come, and no stage can wait for CPUs
    # that the other holds.
    # The model stage takes the decoder's batches as they are (batch_size None): with a batch size of its
    # own, Ray Data would bundle that many exams into one task, and one worker would get them all.
    ds = ds.map_batches(decode_exams, batch_size=1, fn_kwargs={"fps": fps, "chunk": settings.batch_size},
                        num_cpus=settings.threads_per_worker)
    ds = ds.map_batches(
        FrameSegmenter, batch_size=None, batch_format="numpy",
        fn_constructor_kwargs={"model_files": model_files, "backend": settings.backend,
                               "threads": settings.threads_per_worker, "threshold": settings.threshold,
                               "precision": settings.precision},
        compute=ray.data.ActorPoolStrategy(size=settings.workers, max_tasks_in_flight_per_actor=1),
        num_cpus=settings.threads_per_worker,
    )
    pending: dict[str, dict[int, dict]] = defaultdict(dict)
    ends: dict[str, dict] = {}
    failed: set[str] = set()
    exam_bar = progress_bar(len(todo), desc="exams", unit="exam", enabled=show_progress)
    frame_bar = progress_bar(None, desc="frames", unit="frame", enabled=show_progress)
    nodes: Counter = Counter()

    def fail(name: str, reason: str) -> None:
        failed.add(name)
        pending.pop(name, None)
        ends.pop(name, None)
        result.errors.append({"exam": name, "source": by_name[name].source, "reason": reason})
        _append_log(logfile, f"failed {name}: {reason}")
        exam_bar.update(1)

    try:
        batches = ds.iter_batches(batch_format="numpy", batch_size=None)
        for batch in _checked(ray, batches, settings):
            for i in range(len(batch["exam"])):
                name, kind = str(batch["exam"][i]), str(batch["kind"][i])
                if name in failed or name in result.done:
                    continue
                if kind == "error":
                    fail(name, str(batch["note"][i]))
                    continue
                if kind == "end":
                    ends[name] = {"frames": int(batch["index"][i]), **json.loads(str(batch["note"][i]))}
                else:
                    index = int(batch["index"][i])
                    if index not in pending[name]:  # a batch run again after a worker died: counted once
                        pending[name][index] = {k: batch[k][i] for k in RESULT_COLUMNS if k not in ("exam", "kind", "note")}
                        nodes[str(batch["node"][i])] += 1
                        frame_bar.update(1)
                if name in ends and len(pending[name]) == ends[name]["frames"]:
                    got = pending.pop(name)
                    frames = [got[k] for k in sorted(got)]
                    try:
                        s = write_exam(by_name[name], frames, ends.pop(name), settings.rule, exams_dir,
                                       settings.overlay, settings.outlines, {"model": settings.model, "site": settings.site})
                    except (PolypsegError, OSError, ValueError) as err:
                        fail(name, f"writing its outputs failed: {err}")
                        continue
                    result.done.append(name)
                    result.frames += len(frames)
                    _append_log(logfile, f"done {name}: {s['frames']} frames, {s['alerts']} alert(s)")
                    exam_bar.update(1)
    finally:
        exam_bar.close()
        frame_bar.close()
        result.frames_by_node = dict(nodes)
    for name in by_name:
        if name not in failed and name not in result.done:
            got, expected = len(pending.get(name, {})), ends.get(name, {}).get("frames")
            fail(name, f"only {got} of {expected if expected is not None else 'its'} frames came back")
