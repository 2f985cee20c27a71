"""Predict polyp masks for images: one frame in, a probability map at the frame's own size out.

``Predictor`` runs a checkpoint with torch (eager) or ONNX Runtime behind one interface; ``predict_paths``
writes a mask, an overlay and optionally the probability map for every image of files or folders.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from .config import Config
from .errors import PolypsegError
from .files import atomic_write, atomic_write_text
from .model import load_checkpoint, resolve_checkpoint
from .transforms import from_output, to_input
from .viz import overlay

BACKENDS = ("torch", "onnxruntime")
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
DEFAULT_MODEL = PRETRAINED_DIR / "realtime.safetensors"
# Keys of the metadata every ONNX file written by polypseg carries (see polypseg.export).
ONNX_CONFIG_KEY = "polypseg.config"
ONNX_SHA256_KEY = "polypseg.checkpoint_sha256"


def cpu_cores() -> int:
    """CPU cores this process may run on (not the machine's total under a container's affinity mask)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def resolve_model(checkpoint: str | Path | None) -> Path:
    """A run folder or checkpoint file -> its weights file; ``None`` -> the shipped real-time model."""
    if checkpoint is not None:
        return resolve_checkpoint(checkpoint)
    if not (DEFAULT_MODEL.is_file() and DEFAULT_MODEL.with_suffix(".json").is_file()):
        raise PolypsegError(
            f"No model was given and the shipped real-time model ({DEFAULT_MODEL.name} with its .json in "
            f"{PRETRAINED_DIR}) is not installed. Pass a model with --run (a run folder written by "
            "`polypseg train`, or a .safetensors checkpoint with its .json beside it), or install a polypseg "
            "release that ships the model."
        )
    return DEFAULT_MODEL


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _torch_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise PolypsegError(f"Unknown device '{device}'. Use cpu, cuda or cuda:N.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PolypsegError(f"Device '{device}' was asked for but torch sees no CUDA GPU here. Use --device cpu.")
    return dev


def ort_session(model: str | Path | bytes, device: str = "cpu", threads: int | None = None):
    """An ONNX Runtime session tuned for one-frame latency: all graph optimisations, sequential
    execution, ``threads`` intra-op threads (default: every core this process may use)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise PolypsegError(
            "The onnxruntime backend needs ONNX Runtime: pip install 'polypseg[onnx]'."
        ) from None
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads or cpu_cores()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: ORT warns about every initialiser it folds
    dev = _torch_device(device)
    providers: list = ["CPUExecutionProvider"]
    if dev.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise PolypsegError(
                f"Device '{device}' with --backend onnxruntime needs onnxruntime-gpu (this onnxruntime has "
                f"{', '.join(ort.get_available_providers())}). Install onnxruntime-gpu, or use --backend torch."
            )
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": dev.index or 0}))
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, opts, providers=providers)
    except Exception as err:  # ORT raises its own exception types for unreadable or invalid files
        raise PolypsegError(
            f"ONNX Runtime cannot load the model {'(in memory)' if isinstance(model, bytes) else model}: {err}. "
            "Export it again with `polypseg export`."
        ) from None


def onnx_metadata(session) -> dict[str, str]:
    return dict(session.get_modelmeta().custom_metadata_map)


class Predictor:
    """A loaded model that maps RGB uint8 frames of any size to polyp probability maps.

    ``checkpoint``: a run folder or .safetensors file; ``None`` is the shipped real-time model (or, with
    ``backend="onnxruntime"`` and ``onnx_path``, the ONNX file alone, which carries its config).
    ``backend``: ``torch`` (eager, ``inference_mode``) or ``onnxruntime``. The onnxruntime backend uses
    ``onnx_path``, else the ``.onnx`` beside the checkpoint when it was exported from these weights, else
    exports the checkpoint in memory (a few seconds; `polypseg export` saves that time).
    ``tta=True`` averages the probabilities of the frame and its horizontal and vertical flips, run as
    one batch of three. ``threads``: intra-op threads (default: torch's setting / every core for ORT).
    """

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        device: str = "cpu",
        tta: bool = False,
        backend: str = "torch",
        onnx_path: str | Path | None = None,
        threads: int | None = None,
    ):
        if backend not in BACKENDS:
            raise PolypsegError(f"Unknown backend '{backend}'. Valid: {', '.join(BACKENDS)}.")
        self.backend = backend
        self.tta = tta
        self.device = _torch_device(device)
        self.model: torch.nn.Module | None = None
        self.session = None
        if backend == "torch":
            if onnx_path is not None:
                raise PolypsegError("An ONNX file runs with --backend onnxruntime, not torch.")
            self.checkpoint: Path | None = resolve_model(checkpoint)
            self.model, self.config = load_checkpoint(self.checkpoint, device=self.device)
            if self.config.channels_last:
                self.model = self.model.to(memory_format=torch.channels_last)
        else:
            self._init_onnx(checkpoint, onnx_path, device, threads)
        if threads is not None and backend == "torch":
            torch.set_num_threads(threads)

    def _init_onnx(self, checkpoint, onnx_path, device: str, threads: int | None) -> None:
        if onnx_path is not None:
            onnx_path = Path(onnx_path)
            if not onnx_path.is_file():
                raise PolypsegError(f"The ONNX file {onnx_path} does not exist. Write it with `polypseg export`.")
            self.session = ort_session(onnx_path, device, threads)
            meta = onnx_metadata(self.session)
            if ONNX_CONFIG_KEY not in meta:
                raise PolypsegError(
                    f"{onnx_path} was not written by `polypseg export` (it lacks the polypseg config), so its "
                    "input size and normalisation are unknown. Export the run with `polypseg export`."
                )
            self.checkpoint = resolve_model(checkpoint) if checkpoint is not None else None
            if self.checkpoint is not None and meta.get(ONNX_SHA256_KEY) != file_sha256(self.checkpoint):
                raise PolypsegError(
                    f"{onnx_path} was exported from other weights than {self.checkpoint}. Export this checkpoint "
                    "again (`polypseg export`), or pass only the ONNX file."
                )
            self.config = Config.from_dict(json.loads(meta[ONNX_CONFIG_KEY]))
            return
        self.checkpoint = resolve_model(checkpoint)
        beside = self.checkpoint.with_suffix(".onnx")
        if beside.is_file():
            session = ort_session(beside, device, threads)
            if onnx_metadata(session).get(ONNX_SHA256_KEY) == file_sha256(self.checkpoint):
                self.session = session
        if self.session is None:
            from .export import export_bytes

            model, self.config = load_checkpoint(self.checkpoint)
            self.session = ort_session(export_bytes(model, self.config, self.checkpoint), device, threads)
        self.config = Config.from_dict(json.loads(onnx_metadata(self.session)[ONNX_CONFIG_KEY]))

    @property
    def threshold(self) -> float:
        return self.config.threshold

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Normalised float32 N x 3 x H x W (H, W multiples of 32) -> float32 N x H x W probabilities."""
        if self.session is not None:
            return self.session.run(None, {self.session.get_inputs()[0].name: x})[0][:, 0]
        with torch.inference_mode():
            t = torch.from_numpy(x).to(self.device)
            if self.config.channels_last:
                t = t.contiguous(memory_format=torch.channels_last)
            return torch.sigmoid(self.model(t))[:, 0].float().cpu().numpy()

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """RGB uint8 H x W x 3 -> (normalised 3 x H' x W' input padded to /32, fitted size): step 1 of 3."""
        return to_input(image, self.config)

    def infer(self, x: np.ndarray) -> np.ndarray:
        """One prepared input -> its padded H' x W' probabilities (averaged over flips with TTA): step 2."""
        if not self.tta:
            return self.forward(x[None])[0]
        p = self.forward(np.ascontiguousarray(np.stack([x, x[:, :, ::-1], x[:, ::-1, :]])))
        return (p[0] + p[1][:, ::-1] + p[2][::-1, :]) / 3

    @staticmethod
    def finish(prob: np.ndarray, fitted: tuple[int, int], image_hw: tuple[int, int]) -> np.ndarray:
        """Padded probabilities -> float32 probabilities at the frame's own size: step 3."""
        return from_output(np.ascontiguousarray(prob, dtype=np.float32), fitted, image_hw)

    def predict_prob(self, image: np.ndarray) -> np.ndarray:
        """RGB uint8 H x W x 3 -> float32 H x W probabilities of 'polyp'."""
        x, fitted = self.prepare(image)
        return self.finish(self.infer(x), fitted, image.shape[:2])

    def predict_mask(self, image: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """RGB uint8 H x W x 3 -> bool H x W polyp mask at the model's (or the given) threshold."""
        t = self.threshold if threshold is None else threshold
        return self.predict_prob(image) >= t


# ---------------------------------------------------------------------------------------------------
# per-frame figures, shared with polypseg.video


STATS_FIELDS = ("polyp_present", "area_fraction", "mean_confidence")


def frame_stats(prob: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """Whether a polyp is predicted, the fraction of the frame it covers, and the mean probability
    inside the mask (empty when there is no mask)."""
    area = int(mask.sum())
    return {
        "polyp_present": int(area > 0),
        "area_fraction": round(area / mask.size, 6),
        "mean_confidence": round(float(prob[mask].mean()), 6) if area else "",
    }


def check_threshold(threshold: float | None) -> None:
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise PolypsegError(f"The threshold must lie between 0 and 1, got {threshold}.")


# ---------------------------------------------------------------------------------------------------
# predict for files and folders


PROB_FORMATS = ("png", "npy")


def folder_images(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (not hidden ones), numbered names in numeric order."""
    from .data import IMAGE_SUFFIXES, _image_files, id_sort_key

    try:
        files = _image_files(folder)
    except PolypsegError as err:
        below = [p.name for p in sorted(folder.iterdir())
                 if p.is_dir() and any(q.suffix.lower() in IMAGE_SUFFIXES for q in p.iterdir())]
        if below:
            raise PolypsegError(f"{err} Its sub-folders {', '.join(below)} hold images: name one of them.") from None
        raise
    return [files[k] for k in sorted(files, key=id_sort_key)]


def collect_images(inputs: Sequence[str | Path] | str | Path) -> list[Path]:
    """Image files named directly or found in the named folders (not recursive), in a stable order."""
    from .data import IMAGE_SUFFIXES

    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += folder_images(item)
        elif item.is_file():
            if item.suffix.lower() not in IMAGE_SUFFIXES:
                raise PolypsegError(f"{item} is not an image file polypseg reads ({', '.join(IMAGE_SUFFIXES)}).")
            found.append(item)
        else:
            raise PolypsegError(f"{item} does not exist. Give image files or folders of images.")
    by_stem: dict[str, list[Path]] = {}
    for p in found:
        by_stem.setdefault(p.stem, []).append(p)
    clashes = [paths for paths in by_stem.values() if len(paths) > 1]
    if clashes:
        shown = "; ".join(" and ".join(map(str, paths)) for paths in clashes[:3])
        raise PolypsegError(
            f"{len(clashes)} output name(s) would clash, e.g. {shown}: outputs are named after the image "
            "file's name. Predict those inputs into separate output folders."
        )
    return found


def _write_png(path: Path, array: np.ndarray) -> None:
    """RGB (or gray) uint8 -> PNG, atomically."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise PolypsegError(f"OpenCV could not encode {path.name} as PNG.")
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buf.tobytes()))


def _write_npy(path: Path, array: np.ndarray) -> None:
    data = io.BytesIO()
    np.save(data, array)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data.getvalue()))


def predict_paths(
    inputs: Sequence[str | Path] | str | Path,
    checkpoint: str | Path | None = None,
    out_dir: str | Path = "predictions",
    backend: str = "torch",
    device: str = "cpu",
    save_prob: bool | str = False,
    tta: bool = False,
    threshold: float | None = None,
    onnx_path: str | Path | None = None,
    threads: int | None = None,
    show_progress: bool = True,
) -> list[Path]:
    """Predict every image of ``inputs`` (files or folders of images) and write into ``out_dir``:
    ``masks/NAME.png`` (0/255), ``overlays/NAME.png`` (translucent fill and contour over the image),
    with ``save_prob`` (True or ``"png"``: 8-bit PNG, probability x 255; ``"npy"``: float32 array)
    ``probs/NAME.png|npy``, and ``predictions.csv`` (one row per image: present, area, confidence).

    Every file is written atomically. An image that cannot be read is skipped; after the others are
    done a PolypsegError names it. Returns the mask paths, in input order.
    """
    check_threshold(threshold)
    prob_format = "png" if save_prob is True else (save_prob or None)
    if prob_format is not None and prob_format not in PROB_FORMATS:
        raise PolypsegError(f"Unknown probability map format '{save_prob}'. Valid: {', '.join(PROB_FORMATS)}.")
    images = collect_images(inputs)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PolypsegError(f"{out} is a file; give a folder for the predictions (-o).")
    predictor = Predictor(checkpoint, device=device, tta=tta, backend=backend, onnx_path=onnx_path, threads=threads)
    t = predictor.threshold if threshold is None else threshold
    from .data import read_image

    folders = {"mask": out / "masks", "overlay": out / "overlays"}
    if prob_format:
        folders["prob"] = out / "probs"
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    written, rows, failed = [], [], []
    for path in tqdm(images, desc="predict", unit="img", disable=not show_progress):
        try:
            image = read_image(path)
        except PolypsegError as err:
            failed.append(f"{path} ({err})")
            continue
        prob = predictor.predict_prob(image)
        mask = prob >= t
        name = path.stem + ".png"
        _write_png(folders["mask"] / name, mask.astype(np.uint8) * 255)
        _write_png(folders["overlay"] / name, overlay(image, mask))
        if prob_format == "png":
            _write_png(folders["prob"] / name, np.round(prob * 255).astype(np.uint8))
        elif prob_format == "npy":
            _write_npy(folders["prob"] / (path.stem + ".npy"), prob.astype(np.float32))
        rows.append({"image": str(path), "height": image.shape[0], "width": image.shape[1], **frame_stats(prob, mask)})
        written.append(folders["mask"] / name)
    if rows:
        atomic_write_text(out / "predictions.csv", _csv_text(rows))
    if failed:
        raise PolypsegError(
            f"{len(failed)} of {len(images)} image(s) could not be read and were skipped (the other "
            f"{len(written)} were written to {out}): " + "; ".join(failed[:5])
        )
    return written


def _csv_text(rows: Iterable[dict[str, Any]]) -> str:
    rows = list(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------
# one frame described: what the web app, the HTTP API and the Python API report for a frame


def mask_polygons(mask: np.ndarray, tolerance: float = 1.0) -> list[list[list[int]]]:
    """The outer contour of every region of ``mask`` as a polygon ``[[x, y], ...]`` in pixels, simplified
    by ``tolerance`` pixels (Douglas-Peucker), largest region first. Holes are not traced: a polyp's mask
    has none worth drawing, and outer contours are what an overlay draws."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    contours = sorted(contours, key=cv2.contourArea, reverse=True)
    return [cv2.approxPolyDP(c, tolerance, True)[:, 0, :].tolist() for c in contours]


def describe(prob: np.ndarray, threshold: float, polygons: bool = True) -> dict[str, Any]:
    """A probability map at ``threshold`` -> what is seen: ``polyp_present``, ``area_fraction`` (of the
    frame), ``regions`` (connected regions, 8-connectivity), ``confidence`` (mean probability inside the
    mask; ``None`` without a mask), ``max_probability`` and, with ``polygons``, each region's outline."""
    check_threshold(threshold)
    mask = prob >= threshold
    area = int(mask.sum())
    regions = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1 if area else 0
    out: dict[str, Any] = {
        "height": int(prob.shape[0]),
        "width": int(prob.shape[1]),
        "threshold": float(threshold),
        "polyp_present": area > 0,
        "area_fraction": round(area / mask.size, 6),
        "regions": int(regions),
        "confidence": round(float(prob[mask].mean()), 4) if area else None,
        "max_probability": round(float(prob.max()), 4),
    }
    if polygons:
        out["polygons"] = mask_polygons(mask)
    return out
