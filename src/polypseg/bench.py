"""The inference benchmark: per-frame latency of torch eager vs ONNX Runtime (fp32, int8), the
end-to-end fps of the video pipeline under several runtime settings (median and spread over repeated
runs), and the cost per frame of each pipeline stage alone, on real frames. Called by `polypseg benchmark`
and benchmarks/bench_inference.py; the numbers in docs/benchmark-cpu.json come from here.

Machines are shared and noisy: one run of the pipeline says little, so every setting runs ``repeats``
times, the settings taking turns (a slow minute hits all of them alike), and the table gives the median
with the min-max range."""

from __future__ import annotations

import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import DEFAULT_DATA, Config
from .data import index_dataset
from .errors import PolypsegError
from .export import export_onnx, load_checkpoint_config, spread, write_int8
from .model import build_model, save_checkpoint
from .predict import DEFAULT_MODEL, Predictor
from .runtime import SPIN_DEFAULT, cpu_cores
from .media import open_source, open_writer, read_image, write_clip
from .video import run_video
from .viz import draw_frame

BENCH_ENCODERS = ("resnet50", "tu-tf_efficientnet_lite0")
REALTIME_ENCODER = "tu-tf_efficientnet_lite0"


def _time(fn: Callable[[np.ndarray], Any], frames: list[np.ndarray], iterations: int, warmup: int) -> np.ndarray:
    for i in range(warmup):
        fn(frames[i % len(frames)])
    times = []
    for i in range(iterations):
        start = time.perf_counter()
        fn(frames[i % len(frames)])
        times.append(time.perf_counter() - start)
    return 1000 * np.asarray(times)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def benchmark(
    quick: bool = False,
    data: str | Path = DEFAULT_DATA,
    encoders: Sequence[str] = BENCH_ENCODERS,
    height: int = 288,
    width: int = 384,
    int8: bool = False,
    iterations: int | None = None,
    threads: int | None = None,
    video: bool = True,
    video_frames: int | None = None,
    verbose: bool = True,
    repeats: int | None = None,
    video_model: str | Path | None = None,
) -> dict[str, Any]:
    """Per-frame latency (median, p90) and fps of torch eager vs ONNX Runtime (and int8 with ``int8``)
    for DeepLabV3+ with each of ``encoders`` (random weights) at ``height x width`` on real frames of
    ``data``, and the end-to-end fps of the video pipeline (``run_video``, the real-time encoder) on a
    clip built from the dataset's frames. Prints a table (``verbose``) and returns the numbers.

    The video pipeline runs the shipped real-time model (``video_model``: another checkpoint) ``repeats``
    times per setting: ONNX Runtime with 1, 2 and all threads, spinning on and off, and torch (``quick``:
    ONNX Runtime with the default spinning only), and the int8 file beside it (``NAME.int8.onnx``, which
    `polypseg video` runs by default; the shipped model has one) or, with ``int8`` where there is none, an
    int8 file calibrated here, on all threads; then
    each stage alone (decode, preprocess, inference, resize back + overlay, H.264 encode) with the default
    setting.

    Latency covers what ``Predictor.predict_prob`` does for one frame: preprocessing, the network and
    resizing the probabilities back. ``quick``: few iterations, a short clip (for development).
    """
    import onnxruntime as ort

    repeats = (2 if quick else 5) if repeats is None else repeats
    if repeats < 1:
        raise PolypsegError(f"--repeats must be 1 or more, got {repeats}.")
    thread_choices = [threads] if threads else sorted({1, min(2, cpu_cores()), cpu_cores()})
    threads = threads or cpu_cores()
    iterations = iterations or (5 if quick else 40)
    warmup = 2 if quick else 5
    pairs = index_dataset(data).pairs
    frames = [read_image(p.image) for p in spread(pairs, 8)]
    say: Callable[[str], None] = print if verbose else (lambda _: None)
    header = (f"CPU: {cpu_name()}, {cpu_cores()} cores available, {threads} inference thread(s); torch {torch.__version__}, "
              f"onnxruntime {ort.__version__}; DeepLabV3+ at {height}x{width}, batch 1, random weights; "
              f"{iterations} timed frames after {warmup} warm-up")
    say(header)
    rows: list[dict[str, Any]] = []
    result: dict[str, Any] = {"header": header, "rows": rows, "video": [], "stages": []}
    with tempfile.TemporaryDirectory(prefix="polypseg-bench-") as tmp:
        checkpoints = {}
        for encoder in encoders:
            cfg = Config(arch="deeplabv3plus", encoder=encoder, encoder_weights="none", height=height,
                         width=width, data=str(data))
            torch.manual_seed(0)
            ckpt = save_checkpoint(build_model(cfg), cfg, Path(tmp) / encoder / "best")
            checkpoints[encoder] = ckpt
            onnx_file = export_onnx(ckpt, check_frames=1, data=data, verbose=False)
            variants = [("torch eager", dict(backend="torch")),
                        ("onnxruntime", dict(backend="onnxruntime", onnx_path=onnx_file))]
            if int8:
                q = _int8_file(onnx_file, ckpt, data, 16 if quick else 64)
                variants.append(("onnxruntime int8", dict(backend="onnxruntime", onnx_path=q)))
            base = None
            for name, kwargs in variants:
                predictor = Predictor(ckpt, threads=threads, **kwargs)
                ms = _time(predictor.predict_prob, frames, iterations, warmup)
                fps = 1000 / ms.mean()
                base = base or fps
                rows.append({"model": encoder, "runtime": name, "median_ms": float(np.median(ms)),
                             "p90_ms": float(np.percentile(ms, 90)), "fps": fps, "vs_torch": fps / base})
                del predictor
        if video:
            n = video_frames or (50 if quick else 200)
            clip = benchmark_clip(pairs, n, Path(tmp) / "clip.mp4")
            model, label = _video_model(video_model, checkpoints, height, width)
            if model is not None or DEFAULT_MODEL.is_file():
                settings = video_settings(thread_choices, quick)
                weights = model if model is not None else DEFAULT_MODEL
                if weights.with_suffix(".int8.onnx").is_file():  # the file `polypseg video` runs by default
                    settings.append(dict(backend="onnxruntime", threads=threads, spin=SPIN_DEFAULT, precision="int8"))
                elif int8:  # the video model's own int8 file, calibrated on its training frames
                    fp32 = export_onnx(weights, out_path=Path(tmp) / "model.onnx", check_frames=1, verbose=False)
                    q = _int8_file(fp32, weights, None, 16 if quick else 64)
                    settings.append(dict(backend="onnxruntime", threads=threads, spin=SPIN_DEFAULT, onnx_path=q))
                result["video"] = video_runs(clip, model, label, settings, repeats, Path(tmp))
                result["stages"] = stage_costs(clip, Predictor(model, backend="onnxruntime", threads=threads),
                                               Path(tmp) / "stages.mp4")
    say(format_benchmark(result))
    return result


def _int8_file(onnx_file: Path, weights: Path, data, n: int) -> Path:
    """The int8 copy of ``onnx_file`` (NAME.int8.onnx beside it), calibrated on ``n`` training frames of the
    checkpoint ``weights`` (from ``data``, else its own data folder)."""
    return write_int8(onnx_file, weights, load_checkpoint_config(weights), data, n)[0]


def _video_model(video_model, checkpoints: dict, height: int, width: int) -> tuple[Path | None, str]:
    """The checkpoint the video rows run (None: the shipped model) and its label."""
    if video_model is not None:
        cfg = load_checkpoint_config(Path(video_model))
        return Path(video_model), f"{cfg.encoder} ({cfg.height}x{cfg.width} input)"
    if DEFAULT_MODEL.is_file():  # the trained model `video` uses by default, at its own input size
        cfg = load_checkpoint_config(DEFAULT_MODEL)
        return None, f"shipped real-time model ({cfg.encoder}, {cfg.height}x{cfg.width} input)"
    if REALTIME_ENCODER in checkpoints:
        return checkpoints[REALTIME_ENCODER], f"{REALTIME_ENCODER} ({height}x{width} input, random weights)"
    return None, ""


def benchmark_clip(pairs, n: int, path: Path) -> Path:
    """The video benchmarks' clip: the first ``n`` frames of ``pairs`` in sequence order, H.264 at 25 fps."""
    ordered = sorted(pairs, key=lambda p: (p.sequence or 0, p.id))[:n]
    return write_clip((read_image(p.image) for p in ordered), path, fps=25)


def video_settings(thread_choices: Sequence[int], quick: bool) -> list[dict[str, Any]]:
    """The runtime settings the video pipeline is compared under, as Predictor keyword arguments."""
    spins = (SPIN_DEFAULT,) if quick else (True, False)
    settings = [dict(backend="onnxruntime", threads=t, spin=spin) for t in thread_choices for spin in spins]
    if not quick:
        settings.append(dict(backend="torch", threads=max(thread_choices)))
    return settings


def video_runs(clip: Path, model: Path | None, label: str, settings: list[dict[str, Any]], repeats: int,
               tmp: Path) -> list[dict[str, Any]]:
    """``run_video`` on ``clip`` ``repeats`` times per setting, the settings taking turns; one row per
    setting with the median fps, its min-max and the median of the runs' median latencies."""
    predictors = [Predictor(model, **kw) for kw in settings]
    for predictor in predictors:  # warm up: the first runs of a session allocate its buffers
        x, _ = predictor.prepare(_grey_frame(predictor))
        for _ in range(3):
            predictor.infer(x)
    fps: list[list[float]] = [[] for _ in settings]
    latency: list[list[float]] = [[] for _ in settings]
    frames = 0
    for _ in range(repeats):
        for i, predictor in enumerate(predictors):
            stats = run_video(clip, predictor, tmp / f"out-{i}.mp4", show_progress=False)
            fps[i].append(stats.processing_fps)
            latency[i].append(stats.latency_median_ms)
            frames = stats.frames
    return [{"model": label, "runtime": predictors[i].runtime, "threads": kw["threads"],
             "spin": kw.get("spin") if kw["backend"] == "onnxruntime" else None, "frames": frames,
             "runs": repeats, "fps_all": fps[i], "fps_median": float(np.median(fps[i])),
             "fps_min": min(fps[i]), "fps_max": max(fps[i]), "latency_median_ms": float(np.median(latency[i]))}
            for i, kw in enumerate(settings)]


def _grey_frame(predictor: Predictor) -> np.ndarray:
    """A mid-grey frame of the model's input size, for warming up."""
    return np.full((predictor.config.height, predictor.config.width, 3), 128, np.uint8)


def stage_costs(clip: Path, predictor: Predictor, out: Path) -> list[dict[str, Any]]:
    """Median ms per frame of each pipeline stage run alone, one after the other on ``clip``: where the
    time of a frame goes. In the pipeline, decode + preprocess, inference and the rest overlap."""
    source = open_source(clip)
    images, decode = [], []
    try:
        frames = source.frames()
        while True:
            begin = time.perf_counter()
            item = next(frames, None)
            decode.append(time.perf_counter() - begin)
            if item is None:
                break
            images.append(item[1])
    finally:
        source.close()
    prepared, prep = _timed(predictor.prepare, images)
    probs, infer = _timed(lambda xf: predictor.infer(xf[0]), prepared)
    threshold = predictor.threshold

    def draw(item):
        (x, fitted), image, prob = item
        mask = predictor.finish(prob, fitted, image.shape[:2]).mask(threshold)
        return draw_frame(image, mask, "shown", alert=False)

    drawn, overlay_ms = _timed(draw, list(zip(prepared, images, probs)))
    writer = open_writer(out, (images[0].shape[1], images[0].shape[0]), 25)
    try:
        _, encode = _timed(writer.write, drawn)
    finally:
        writer.close()
    stages = [("decode (OpenCV)", decode[:-1]), ("preprocess (resize, normalise)", prep),
              (f"inference ({predictor.backend}, {_threads_label(predictor)})", infer),
              ("resize back + overlay", overlay_ms), ("encode (H.264, libx264)", encode)]
    return [{"stage": name, "ms_per_frame": 1000 * float(np.median(t))} for name, t in stages]


def _timed(fn: Callable[[Any], Any], items: list) -> tuple[list, list[float]]:
    results, times = [], []
    for item in items:
        begin = time.perf_counter()
        results.append(fn(item))
        times.append(time.perf_counter() - begin)
    return results, times


def _threads_label(predictor: Predictor) -> str:
    session = predictor.session
    if session is None:
        return "torch threads"
    opts = session.get_session_options()
    return f"{opts.intra_op_num_threads} thread(s)"


def format_benchmark(result: dict[str, Any]) -> str:
    lines = ["| model | runtime | median ms | p90 ms | fps | vs torch |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['runtime']} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | "
                     f"{r['fps']:.1f} | {r['vs_torch']:.2f}x |")
    if result["video"]:
        lines += ["", "| video pipeline (decode -> infer -> encode) | runtime | threads | spinning | runs | "
                      "frames | median fps | min-max fps | median latency ms |", "|---" * 9 + "|"]
        for v in result["video"]:
            spin = "" if v["spin"] is None else ("on" if v["spin"] else "off")
            lines.append(f"| {v['model']} | {v['runtime']} | {v['threads']} | {spin} | {v['runs']} | "
                         f"{v['frames']} | {v['fps_median']:.1f} | {v['fps_min']:.1f}-{v['fps_max']:.1f} | "
                         f"{v['latency_median_ms']:.1f} |")
    if result["stages"]:
        lines += ["", "| stage, run alone | median ms per frame |", "|---|---|"]
        lines += [f"| {st['stage']} | {st['ms_per_frame']:.1f} |" for st in result["stages"]]
    return "\n".join(lines)
