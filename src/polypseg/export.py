"""ONNX files: export a run (dynamic height and width) checked against torch, int8 static quantisation
and its comparison with fp32.

An exported file maps a normalised ``N x 3 x H x W`` float32 input (``H`` and ``W`` multiples of 32,
any size) to ``N x 1 x H x W`` polyp probabilities; the in-memory export and the metadata it carries
(config, checkpoint sha256) are ``polypseg.runtime``'s, shared with the onnxruntime backend.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import Config
from .data import index_dataset, load_pair
from .media import read_image
from .errors import PolypsegError
from .files import atomic_write, check_writable
from .model import load_checkpoint, read_checkpoint_meta
from .predict import Predictor, resolve_model
from .progress import progress
from .runtime import INT8_KEY, export_bytes, ort_session, set_metadata
from .transforms import to_input

CHECK_TOLERANCE = 1e-3  # max abs difference of probabilities, ONNX Runtime vs torch


# ---------------------------------------------------------------------------------------------------
# frames for checks, calibration and the int8 comparison


def side_pairs(weights: Path, cfg: Config, data: str | Path | None, side: str) -> tuple[list, str]:
    """The pairs of one side ("train" or "test") of the run's split.json, else of the classic PraNet
    split, else every pair; with a description of which it was."""
    index = index_dataset(data if data is not None else cfg.data)
    split_file = weights.parent / "split.json"
    if split_file.is_file():
        from .splits import load_split, split_pairs

        pairs = split_pairs(load_split(split_file), index)[side]
        if pairs:
            return pairs, f"{side} side of the split.json beside {weights.name}"  # no machine's absolute path
    if index.pranet:
        pairs = [p for p in index.pairs if index.pranet.get(p.id) == side]
        if pairs:
            return pairs, f"{side} side of the PraNet split of {index.root}"
    return list(index.pairs), f"all pairs of {index.root}"


def spread(items: Sequence, n: int | None) -> list:
    """``n`` items evenly spread over ``items`` (all of them for None or n >= len)."""
    if n is None or n >= len(items):
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def _check_frames(weights: Path, cfg: Config, data, n: int) -> tuple[list[np.ndarray], str]:
    try:
        pairs, where = side_pairs(weights, cfg, data, "test")
    except PolypsegError:
        if data is not None:
            raise
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, (cfg.height, cfg.width, 3), dtype=np.uint8) for _ in range(n)]
        return frames, f"synthetic noise: no dataset at {cfg.data} (pass --data to check on real frames)"
    return [read_image(p.image) for p in spread(pairs, n)], where


def _check_inputs(frames: list[np.ndarray], cfg: Config) -> list[np.ndarray]:
    """Each frame as the model sees it, its centre square and its middle half-height band: three input
    sizes (another width, another height), so the check covers the dynamic height and width."""
    inputs = []
    for frame in frames:
        h, w = frame.shape[:2]
        s = min(h, w)
        square = frame[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        band = frame[h // 4:h // 4 + h // 2]
        inputs += [to_input(np.ascontiguousarray(f), cfg)[0][None] for f in (frame, square, band)]
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
    at three input sizes; the max abs difference of probabilities is printed (``verbose``) and must be
    below 1e-3. With ``int8`` a statically quantised copy is also written (``NAME.int8.onnx``,
    calibrated on ``calibration_frames`` training frames) and run at the same input sizes (a file that
    fails there is removed and the error raised), its test Dice and speed are compared with
    the fp32 file (``compare_int8`` on ``compare_frames`` test frames, default all), and its path is
    returned.
    """
    say: Callable[[str], None] = print if verbose else (lambda _: None)
    weights = resolve_model(checkpoint)
    out = Path(out_path) if out_path is not None else default_onnx_path(checkpoint)
    if out.suffix.lower() != ".onnx":
        raise PolypsegError(f"The ONNX file name must end in .onnx, got '{out}'.")
    check_writable(out, "the ONNX file (-o)")
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
    target, calibrated = write_int8(out, weights, cfg, data, calibration_frames, verbose)
    try:  # the int8 file must run at every input size, not only at the calibration frames' one
        int8_diff = max_difference(model, ort_session(target), inputs)
    except Exception as err:  # ONNX Runtime's failures are its own exception types
        target.unlink(missing_ok=True)
        raise PolypsegError(
            f"The int8 file failed on the check inputs (sizes {sizes}), so it was removed: "
            f"{' '.join(str(err).split())[:300]}. The fp32 file {out} is fine."
        ) from None
    say(f"written: {target} (int8, calibrated on {calibrated}); "
        f"runs at input sizes {sizes}, max abs difference of probabilities from torch {int8_diff:.2e}")
    say(format_int8_report(compare_int8(weights, out, target, data=data, max_frames=compare_frames)))
    return target


# ---------------------------------------------------------------------------------------------------
# int8


def write_int8(fp32_path: Path, weights: Path, cfg: Config, data, n: int, show_progress: bool = False) -> tuple[Path, str]:
    """NAME.int8.onnx beside ``fp32_path``, calibrated on ``n`` training frames of the checkpoint ``weights``
    (from ``data``, else its own data folder); returns its path and which frames calibrated it."""
    try:
        pairs, where = side_pairs(weights, cfg, data, "train")
    except PolypsegError as err:
        raise PolypsegError(f"int8 calibration needs training frames: {err} Pass the dataset with --data.") from None
    target = quantize_int8(fp32_path, int8_path_for(fp32_path), calibration_inputs(pairs, cfg, n, show_progress), where)
    return target, f"{min(n, len(pairs))} frames, {where}"


def calibration_inputs(pairs: Sequence, cfg: Config, n: int, show_progress: bool = False) -> list[np.ndarray]:
    """``n`` frames spread over ``pairs``, as the network's inputs."""
    chosen = progress(spread(pairs, n), desc="int8 calibration frames", unit="frame", enabled=show_progress)
    return [to_input(read_image(p.image), cfg)[0][None] for p in chosen]


def shape_arithmetic(model) -> list[str]:
    """The nodes of an ONNX graph that compute on tensor shapes, not on the image: everything that reads
    only Shape outputs, constants or other such nodes (in a topological graph). TF-"same" padding
    (EfficientNet-Lite's stem and strided convolutions) and size-matching resizes work this way; quantised,
    their integers are rounded to the calibration frames' scale and the file breaks on other input sizes
    (Concat of 63 and 64 rows), so they stay in float."""
    data = {i.name for i in model.graph.input}
    excluded = []
    for node in model.graph.node:
        if node.op_type != "Shape" and any(i in data for i in node.input):
            data.update(node.output)
        else:
            excluded.append(node.name)
    return excluded


def output_head(model) -> list[str]:
    """The nodes from the graph's last convolution to its outputs (the segmentation head's 1-channel
    convolution, its upsampling and the sigmoid), which stay in float. Quantised, the probabilities come
    out in steps of 1/255, and the verdict's score, the peak probability, lives in the last 0.5% below 1:
    the fp32 peaks 0.9949, 0.9960 and 0.9981 of three polyp-free frames all read 0.9961, and every polyp
    frame's 1.0. The head is about a thousandth of the network's work."""
    producer = {out: node for node in model.graph.node for out in node.output}
    excluded, todo = [], [o.name for o in model.graph.output]
    while todo:
        node = producer.get(todo.pop())
        if node is None or node.name in excluded:
            continue
        excluded.append(node.name)
        if node.op_type != "Conv":
            todo.extend(node.input)
    return excluded


def quantize_int8(fp32_path: str | Path, int8_path: str | Path, inputs: Sequence[np.ndarray], where: str = "") -> Path:
    """Static int8 quantisation (QDQ, per-channel int8 weights, uint8 activations, MinMax calibration on
    ``inputs``) of an fp32 ONNX file, written atomically to ``int8_path``; the metadata is kept. The shape
    arithmetic stays in float, so the file takes any input size, as the fp32 file does."""
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
        graph = onnx.load(str(pre))
        quantize_static(
            str(pre), str(quantized), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=shape_arithmetic(graph) + output_head(graph),
        )
        proto = onnx.load(str(quantized))
    set_metadata(proto, {**{p.key: p.value for p in fp32.metadata_props},
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

    weights = resolve_model(checkpoint)
    cfg = load_checkpoint_config(weights)
    pairs, where = side_pairs(weights, cfg, data, "test")
    pairs = spread(pairs, max_frames)
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
    return Config.from_dict(read_checkpoint_meta(weights)["config"])


def format_int8_report(r: dict[str, Any]) -> str:
    return (
        f"int8 vs fp32 (ONNX Runtime) on {r['frames']} frames ({r['side']}): per-image Dice "
        f"{r['dice_fp32']:.4f} -> {r['dice_int8']:.4f} ({r['dice_change']:+.4f}); median latency "
        f"{r['ms_fp32']:.1f} -> {r['ms_int8']:.1f} ms ({r['speedup']:.2f}x)"
    )
