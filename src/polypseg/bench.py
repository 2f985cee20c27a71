"""The inference benchmark: per-frame latency of torch eager vs ONNX Runtime (fp32, int8) and the
end-to-end fps of the video pipeline, on real frames. Called by `polypseg benchmark` and
benchmarks/bench_inference.py; the numbers in docs/benchmark-cpu.json come from here."""

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
from .data import index_dataset, read_image
from .export import calibration_inputs, export_onnx, int8_path_for, load_checkpoint_config, quantize_int8, side_pairs, spread
from .model import build_model, save_checkpoint
from .predict import DEFAULT_MODEL, Predictor
from .runtime import cpu_cores
from .video import run_video, write_clip

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


def _cpu_name() -> str:
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
) -> dict[str, Any]:
    """Per-frame latency (median, p90) and fps of torch eager vs ONNX Runtime (and int8 with ``int8``)
    for DeepLabV3+ with each of ``encoders`` (random weights) at ``height x width`` on real frames of
    ``data``, and the end-to-end fps of the video pipeline (``run_video``, the real-time encoder) on a
    clip built from the dataset's frames. Prints a table (``verbose``) and returns the numbers.

    Latency covers what ``Predictor.predict_prob`` does for one frame: preprocessing, the network and
    resizing the probabilities back. ``quick``: few iterations, a short clip (for development).
    """
    import onnxruntime as ort

    threads = threads or cpu_cores()
    iterations = iterations or (5 if quick else 40)
    warmup = 2 if quick else 5
    pairs = index_dataset(data).pairs
    frames = [read_image(p.image) for p in spread(pairs, 8)]
    say: Callable[[str], None] = print if verbose else (lambda _: None)
    header = (f"CPU: {_cpu_name()}, {cpu_cores()} cores available, {threads} inference thread(s); torch {torch.__version__}, "
              f"onnxruntime {ort.__version__}; DeepLabV3+ at {height}x{width}, batch 1, random weights; "
              f"{iterations} timed frames after {warmup} warm-up")
    say(header)
    rows: list[dict[str, Any]] = []
    result: dict[str, Any] = {"header": header, "rows": rows, "video": []}
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
                calib_pairs, where = side_pairs(ckpt, cfg, data, "train")
                q = quantize_int8(onnx_file, int8_path_for(onnx_file),
                                  calibration_inputs(calib_pairs, cfg, 16 if quick else 64), where)
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
        if video and REALTIME_ENCODER in checkpoints:
            n = video_frames or (50 if quick else 200)
            clip_pairs = sorted(pairs, key=lambda p: (p.sequence or 0, p.id))[:n]
            clip = write_clip((read_image(p.image) for p in clip_pairs), Path(tmp) / "clip.mp4", fps=25)
            runs = [(f"{REALTIME_ENCODER} ({height}x{width} input)", checkpoints[REALTIME_ENCODER], b)
                    for b in (("onnxruntime",) if quick else ("onnxruntime", "torch"))]
            if DEFAULT_MODEL.is_file():  # the trained model `video` uses by default, at its own input size
                cfg = load_checkpoint_config(DEFAULT_MODEL)
                label = f"shipped real-time model ({cfg.encoder}, {cfg.height}x{cfg.width} input)"
                runs += [(label, None, b) for b in (("onnxruntime",) if quick else ("onnxruntime", "torch"))]
            for i, (label, ckpt, backend) in enumerate(runs):
                predictor = Predictor(ckpt, backend=backend, threads=threads)
                stats = run_video(clip, predictor, Path(tmp) / f"out-{i}.mp4", show_progress=False)
                result["video"].append({"model": label, "runtime": backend, "frames": stats.frames,
                                        "fps": stats.fps, "latency_median_ms": stats.latency_median_ms,
                                        "latency_p90_ms": stats.latency_p90_ms})
    say(format_benchmark(result))
    return result


def format_benchmark(result: dict[str, Any]) -> str:
    lines = ["| model | runtime | median ms | p90 ms | fps | vs torch |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['runtime']} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | "
                     f"{r['fps']:.1f} | {r['vs_torch']:.2f}x |")
    if result["video"]:
        lines += ["", "| video pipeline (decode -> infer -> encode) | runtime | frames | end-to-end fps | "
                      "latency median ms | p90 ms |", "|---|---|---|---|---|---|"]
        for v in result["video"]:
            lines.append(f"| {v['model']} | {v['runtime']} | {v['frames']} | {v['fps']:.1f} | "
                         f"{v['latency_median_ms']:.1f} | {v['latency_p90_ms']:.1f} |")
    return "\n".join(lines)
