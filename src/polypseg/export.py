"""ONNX export with dynamic height and width, checked against torch; int8 static quantisation; the
inference benchmark (torch eager vs ONNX Runtime, and the video pipeline).

An exported file maps a normalised ``N x 3 x H x W`` float32 input (``H`` and ``W`` multiples of 32,
any size) to ``N x 1 x H x W`` polyp probabilities (the sigmoid is part of the graph). Its metadata
carries the run's config (input size, normalisation, threshold) and the checkpoint's sha256, so the
file alone is enough to predict and a stale export is recognised.

Exporter: the TorchScript exporter (``dynamo=False``). With torch 2.14 both exporters give ONNX files
of the same speed for smp models with dynamic H/W, but the dynamo exporter took minutes of CPU for
DeepLabV3+/EfficientNet-Lite0 where TorchScript takes about 2 s; dynamo is the fallback for torch
builds without the TorchScript exporter.
"""

from __future__ import annotations

import io
import json
import platform
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import DEFAULT_DATA, Config
from .errors import PolypsegError
from .files import atomic_write
from .model import build_model, load_checkpoint, save_checkpoint
from .predict import DEFAULT_MODEL, ONNX_CONFIG_KEY, ONNX_SHA256_KEY, Predictor, cpu_cores, file_sha256, ort_session, resolve_model
from .transforms import to_input

OPSET = 17
CHECK_TOLERANCE = 1e-3  # max abs difference of probabilities, ONNX Runtime vs torch
INT8_KEY = "polypseg.int8"


class _Probabilities(torch.nn.Module):
    """The network with its sigmoid: the ONNX file outputs probabilities."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(image))


def _torchscript_export(module: torch.nn.Module, sample: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated and smp's shape checks emit tracer warnings; the export
        # is checked against torch below instead.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (sample,), buf, input_names=["image"], output_names=["prob"], opset_version=OPSET,
            dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                          "prob": {0: "batch", 2: "height", 3: "width"}},
            dynamo=False,
        )
    return buf.getvalue()


def _dynamo_export(module: torch.nn.Module, sample: torch.Tensor) -> bytes:
    dim = torch.export.Dim
    shapes = {"image": {0: dim("batch", min=1, max=64), 2: 32 * dim("h32", min=1, max=256),
                        3: 32 * dim("w32", min=1, max=256)}}
    program = torch.onnx.export(
        module, (sample,), input_names=["image"], output_names=["prob"], dynamic_shapes=shapes,
        dynamo=True, verbose=False,
    )
    return program.model_proto.SerializeToString()


def export_bytes(
    model: torch.nn.Module, cfg: Config, checkpoint: str | Path | None = None, dynamo: bool | None = None
) -> bytes:
    """The serialised ONNX model of ``model`` (probabilities out, dynamic batch, height and width), with
    the polypseg metadata. ``dynamo=None``: the TorchScript exporter, or dynamo where it is missing."""
    import onnx

    module = _Probabilities(model.to("cpu").eval()).eval()
    sample = torch.zeros(1, cfg.in_channels, cfg.height, cfg.width)
    if dynamo is None:
        try:
            blob = _torchscript_export(module, sample)
        except (ImportError, AttributeError, NotImplementedError, TypeError):  # torch without TorchScript export
            blob = _dynamo_export(module, sample)
    else:
        blob = _dynamo_export(module, sample) if dynamo else _torchscript_export(module, sample)
    proto = onnx.load_from_string(blob)
    meta = {
        ONNX_CONFIG_KEY: json.dumps(cfg.to_dict()),
        "polypseg.input": "image: float32 N x 3 x H x W, RGB scaled to [0, 1] then (x - mean) / std; "
                          "H and W multiples of 32",
        "polypseg.output": "prob: float32 N x 1 x H x W polyp probabilities",
        "polypseg.torch": torch.__version__,
    }
    if checkpoint is not None:
        meta[ONNX_SHA256_KEY] = file_sha256(checkpoint)
    _set_metadata(proto, meta)
    return proto.SerializeToString()


def _set_metadata(proto, values: dict[str, str]) -> None:
    kept = {p.key: p.value for p in proto.metadata_props if p.key not in values}
    del proto.metadata_props[:]
    for key, value in {**kept, **values}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


# ---------------------------------------------------------------------------------------------------
# frames for checks, calibration and the int8 comparison


def _side_pairs(weights: Path, cfg: Config, data: str | Path | None, side: str) -> tuple[list, str]:
    """The pairs of one side ("train" or "test") of the run's split.json, else of the classic PraNet
    split, else every pair; with a description of which it was."""
    from .data import index_dataset

    index = index_dataset(data if data is not None else cfg.data)
    split_file = weights.parent / "split.json"
    if split_file.is_file():
        from .splits import load_split, split_pairs

        pairs = split_pairs(load_split(split_file), index)[side]
        if pairs:
            return pairs, f"{side} side of {split_file}"
    if index.pranet:
        pairs = [p for p in index.pairs if index.pranet.get(p.id) == side]
        if pairs:
            return pairs, f"{side} side of the PraNet split of {index.root}"
    return list(index.pairs), f"all pairs of {index.root}"


def _spread(items: Sequence, n: int | None) -> list:
    """``n`` items evenly spread over ``items`` (all of them for None or n >= len)."""
    if n is None or n >= len(items):
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def _check_frames(weights: Path, cfg: Config, data, n: int) -> tuple[list[np.ndarray], str]:
    from .data import read_image

    try:
        pairs, where = _side_pairs(weights, cfg, data, "test")
    except PolypsegError:
        if data is not None:
            raise
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, (cfg.height, cfg.width, 3), dtype=np.uint8) for _ in range(n)]
        return frames, f"synthetic noise: no dataset at {cfg.data} (pass --data to check on real frames)"
    return [read_image(p.image) for p in _spread(pairs, n)], where


def _check_inputs(frames: list[np.ndarray], cfg: Config) -> list[np.ndarray]:
    """Each frame as the model sees it, and its centre square too: two input sizes, so the check
    covers the dynamic height and width."""
    inputs = []
    for frame in frames:
        h, w = frame.shape[:2]
        s = min(h, w)
        square = frame[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        inputs += [to_input(frame, cfg)[0][None], to_input(np.ascontiguousarray(square), cfg)[0][None]]
    return inputs


def max_difference(model: torch.nn.Module, session, inputs: list[np.ndarray]) -> float:
    """Largest absolute difference of probabilities between torch and an ONNX Runtime session."""
    worst = 0.0
    name = session.get_inputs()[0].name
    with torch.inference_mode():
        for x in inputs:
            ref = torch.sigmoid(model(torch.from_numpy(x))).numpy()
            worst = max(worst, float(np.abs(session.run(None, {name: x})[0] - ref).max()))
    return worst


# ---------------------------------------------------------------------------------------------------
# export


def default_onnx_path(checkpoint: str | Path | None) -> Path:
    """Beside the checkpoint (RUN/best.onnx for RUN/best.safetensors); ./realtime.onnx for the shipped model."""
    return resolve_model(checkpoint).with_suffix(".onnx") if checkpoint is not None else Path("realtime.onnx")


def int8_path_for(onnx_path: str | Path) -> Path:
    p = Path(onnx_path)
    return p.with_name(p.stem + ".int8.onnx")


def export_onnx(
    checkpoint: str | Path | None = None,
    out_path: str | Path | None = None,
    int8: bool = False,
    check_frames: int = 4,
    data: str | Path | None = None,
    calibration_frames: int = 64,
    compare_frames: int | None = None,
    dynamo: bool | None = None,
    verbose: bool = True,
) -> Path:
    """Export a run's model to ONNX and return the path of the file asked for.

    ``out_path`` defaults to the checkpoint's name with ``.onnx`` (RUN/best.onnx), where the
    onnxruntime backend finds it. Before anything is written the file is checked against torch on
    ``check_frames`` real frames (test side of the run's split, from ``data`` or the run's data folder)
    at two input sizes; the max abs difference of probabilities is printed (``verbose``) and must be
    below 1e-3. With ``int8`` a statically quantised copy is also written (``NAME.int8.onnx``,
    calibrated on ``calibration_frames`` training frames), its test Dice and speed are compared with
    the fp32 file (``compare_int8`` on ``compare_frames`` test frames, default all), and its path is
    returned.
    """
    say: Callable[[str], None] = print if verbose else (lambda _: None)
    weights = resolve_model(checkpoint)
    out = Path(out_path) if out_path is not None else default_onnx_path(checkpoint)
    if out.suffix.lower() != ".onnx":
        raise PolypsegError(f"The ONNX file name must end in .onnx, got '{out}'.")
    if out.is_dir():
        raise PolypsegError(f"{out} is a folder; give a file name ending in .onnx.")
    model, cfg = load_checkpoint(weights)
    blob = export_bytes(model, cfg, weights, dynamo=dynamo)
    frames, where = _check_frames(weights, cfg, data, check_frames)
    inputs = _check_inputs(frames, cfg)
    diff = max_difference(model, ort_session(blob), inputs)
    sizes = ", ".join(sorted({f"{x.shape[2]}x{x.shape[3]}" for x in inputs}))
    if not diff < CHECK_TOLERANCE:
        raise PolypsegError(
            f"The ONNX export of {weights} differs from torch by {diff:.3g} (probabilities, tolerance "
            f"{CHECK_TOLERANCE}); nothing was written. Try the other exporter (dynamo={not dynamo})."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: Path(tmp).write_bytes(blob))
    say(f"ONNX check vs torch on {len(frames)} frame(s) ({where}), input sizes {sizes}: "
        f"max abs difference of probabilities {diff:.2e}")
    say(f"written: {out}")
    if not int8:
        return out
    target = int8_path_for(out)
    try:
        calib_pairs, calib_where = _side_pairs(weights, cfg, data, "train")
    except PolypsegError as err:
        raise PolypsegError(f"int8 calibration needs training frames: {err} Pass the dataset with --data.") from None
    quantize_int8(out, target, _calibration_inputs(calib_pairs, cfg, calibration_frames), calib_where)
    say(f"written: {target} (int8, calibrated on {min(calibration_frames, len(calib_pairs))} frames, {calib_where})")
    say(format_int8_report(compare_int8(weights, out, target, data=data, max_frames=compare_frames)))
    return target


# ---------------------------------------------------------------------------------------------------
# int8


def _calibration_inputs(pairs: Sequence, cfg: Config, n: int) -> list[np.ndarray]:
    from .data import read_image

    return [to_input(read_image(p.image), cfg)[0][None] for p in _spread(pairs, n)]


def quantize_int8(fp32_path: str | Path, int8_path: str | Path, inputs: Sequence[np.ndarray], where: str = "") -> Path:
    """Static int8 quantisation (QDQ, per-channel int8 weights, uint8 activations, MinMax calibration on
    ``inputs``) of an fp32 ONNX file, written atomically to ``int8_path``; the metadata is kept."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not inputs:
        raise PolypsegError("int8 calibration needs at least one frame.")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(inputs)

        def get_next(self):
            x = next(self.items, None)
            return None if x is None else {"image": x}

    fp32 = onnx.load(str(fp32_path))
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        # Shape inference and graph optimisation first, as ORT's quantisation guide recommends.
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        quantized = Path(tmp) / "int8.onnx"
        quantize_static(
            str(pre), str(quantized), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        )
        proto = onnx.load(str(quantized))
    _set_metadata(proto, {**{p.key: p.value for p in fp32.metadata_props},
                          INT8_KEY: f"static, {len(inputs)} calibration frames ({where})"})
    int8_path = Path(int8_path)
    atomic_write(int8_path, lambda t: Path(t).write_bytes(proto.SerializeToString()))
    return int8_path


def compare_int8(
    checkpoint: str | Path | None,
    fp32_path: str | Path,
    int8_path: str | Path,
    data: str | Path | None = None,
    max_frames: int | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Test Dice (per-image mean, the model's threshold) and per-frame latency of the fp32 and the int8
    ONNX files on the test side of the run's split (else the PraNet test side, else all pairs).

    Returns ``frames, side, dice_fp32, dice_int8, dice_change, ms_fp32, ms_int8, speedup`` (latency:
    median over the frames, preprocessing included; speedup = ms_fp32 / ms_int8).
    """
    from . import metrics
    from .data import load_pair

    weights = resolve_model(checkpoint)
    cfg = load_checkpoint_config(weights)
    pairs, where = _side_pairs(weights, cfg, data, "test")
    pairs = _spread(pairs, max_frames)
    result: dict[str, Any] = {"frames": len(pairs), "side": where}
    for name, path in (("fp32", fp32_path), ("int8", int8_path)):
        predictor = Predictor(weights, backend="onnxruntime", onnx_path=path, threads=threads)
        counts, times = [], []
        for pair in pairs:
            image, mask = load_pair(pair)
            start = time.perf_counter()
            prob = predictor.predict_prob(image)
            times.append(time.perf_counter() - start)
            counts.append(metrics.confusion(prob >= predictor.threshold, mask))
        result[f"dice_{name}"] = metrics.reduce(np.stack(counts), "per-image")["dice"]
        result[f"ms_{name}"] = 1000 * float(np.median(times))
    result["dice_change"] = result["dice_int8"] - result["dice_fp32"]
    result["speedup"] = result["ms_fp32"] / result["ms_int8"]
    return result


def load_checkpoint_config(weights: Path) -> Config:
    from .model import read_checkpoint_meta

    return Config.from_dict(read_checkpoint_meta(weights)["config"])


def format_int8_report(r: dict[str, Any]) -> str:
    return (
        f"int8 vs fp32 (ONNX Runtime) on {r['frames']} frames ({r['side']}): per-image Dice "
        f"{r['dice_fp32']:.4f} -> {r['dice_int8']:.4f} ({r['dice_change']:+.4f}); median latency "
        f"{r['ms_fp32']:.1f} -> {r['ms_int8']:.1f} ms ({r['speedup']:.2f}x)"
    )


# ---------------------------------------------------------------------------------------------------
# benchmark


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

    from .data import index_dataset, read_image

    threads = threads or cpu_cores()
    torch.set_num_threads(threads)
    iterations = iterations or (5 if quick else 40)
    warmup = 2 if quick else 5
    pairs = index_dataset(data).pairs
    frames = [read_image(p.image) for p in _spread(pairs, 8)]
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
                calib_pairs, where = _side_pairs(ckpt, cfg, data, "train")
                q = quantize_int8(onnx_file, int8_path_for(onnx_file),
                                  _calibration_inputs(calib_pairs, cfg, 16 if quick else 64), where)
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
            from .video import run_video, write_clip

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
                stats = run_video(clip, ckpt, Path(tmp) / f"out-{i}.mp4", backend=backend, show_progress=False,
                                  threads=threads)
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
