"""Predict polyp masks for images: one frame in, a probability map at the frame's own size out.

``Predictor`` runs a checkpoint with torch (eager) or ONNX Runtime behind one interface; ``predict_paths``
writes a mask, an overlay and optionally the probability map for every image of files or folders.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch

from .config import Config
from .crop import Box, paste_back, picture
from .media import check_image_size, collect_images, read_image
from .errors import PolypsegError
from .exam import mask_figures
from .files import atomic_write, atomic_write_text, check_writable, csv_text
from .model import resolve_checkpoint
from .progress import progress
from .runtime import check_precision, onnx_backend, torch_backend, torch_device
from .transforms import from_output, to_input
from .viz import overlay

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
DEFAULT_MODEL = PRETRAINED_DIR / "realtime.safetensors"


def shipped_models() -> dict[str, Path]:
    """The models installed with polypseg, by name (``realtime``, ...): weights with their .json in
    ``PRETRAINED_DIR``."""
    return {w.stem: w for w in sorted(PRETRAINED_DIR.glob("*.safetensors")) if w.with_suffix(".json").is_file()}


def model_card(weights: str | Path | None) -> Path | None:
    """A shipped model's card (``NAME.md`` beside its weights in ``PRETRAINED_DIR``), None for any other."""
    if weights is None:
        return None
    weights = Path(weights).resolve()
    card = weights.with_suffix(".md")
    return card if weights.parent == PRETRAINED_DIR.resolve() and card.is_file() else None


def card_row(card: Path, name: str) -> str | None:
    """The value of row ``name`` of a model card's table (``| name | value |``), without code marks."""
    for line in card.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0] == name:
            return cells[1].replace("`", "")
    return None


def format_models_table() -> str:
    """The shipped models, a line each: name, network, input, verdict, the test mDice in their JSON, the int8
    file `video` and `serve` run (`runtime.onnx_backend`), card."""
    from .model import read_checkpoint_meta
    from .progress import text_table

    rows = [["name", "network", "input", "verdict (polyp score >= operating point)", "test mDice (per image)",
             "int8 file (video, serve, batch)", "card"]]
    for name, weights in shipped_models().items():
        meta = read_checkpoint_meta(weights)
        cfg, metrics = meta["config"], meta.get("metrics", {})
        mdice = ", ".join(f"{k.removeprefix('test_mdice_per_image_')} {v:.3f}" for k, v in metrics.items()
                          if k.startswith("test_mdice_per_image"))
        card, int8 = model_card(weights), weights.with_suffix(".int8.onnx")
        rows.append([name, f"{cfg['arch']} / {cfg['encoder']}", f"{cfg['height']}x{cfg['width']}",
                     f"{cfg.get('verdict', 'peak')} >= {Config.from_dict(cfg).effective_operating_point:.4f}", mdice or "-",
                     int8.name if int8.is_file() else "-", str(card) if card else "-"])
    return "\n".join(text_table(rows)) if len(rows) > 1 else "No shipped model is installed."


def resolve_model(checkpoint: str | Path | None) -> Path:
    """A run folder or checkpoint file -> its weights file; a shipped model's name (``realtime``) -> its
    weights; ``None`` -> the shipped real-time model."""
    if checkpoint is not None:
        if isinstance(checkpoint, str) and not Path(checkpoint).exists():  # a path that is there wins
            shipped = shipped_models()
            if checkpoint in shipped:
                return shipped[checkpoint]
            if "/" not in checkpoint and "." not in checkpoint:  # a bare name, not a mistyped path
                raise PolypsegError(
                    f"'{checkpoint}' is neither a shipped model ({', '.join(shipped) or 'none installed'}) nor a "
                    "run folder or checkpoint file. Pass one of those names, or a path."
                )
        return resolve_checkpoint(checkpoint)
    if not (DEFAULT_MODEL.is_file() and DEFAULT_MODEL.with_suffix(".json").is_file()):
        raise PolypsegError(
            f"No model was given and the shipped real-time model ({DEFAULT_MODEL.name} with its .json in "
            f"{PRETRAINED_DIR}) is not installed. Pass a model with --run (a run folder written by "
            "`polypseg train`, or a .safetensors checkpoint with its .json beside it), or install a polypseg "
            "release that ships the model."
        )
    return DEFAULT_MODEL


class Predictor:
    """A loaded model that maps RGB uint8 frames of any size to polyp probability maps.

    ``checkpoint``: a run folder or .safetensors file; ``None`` is the shipped real-time model (or, with
    ``backend="onnxruntime"`` and ``onnx_path``, the ONNX file alone, which carries its config).
    ``backend``: ``torch`` (eager, ``inference_mode``) or ``onnxruntime``. The onnxruntime backend uses
    ``onnx_path``, else the ``.onnx`` beside the checkpoint when it was exported from these weights, else
    exports the checkpoint in memory (a few seconds; `polypseg export` saves that time). ``precision``
    (onnxruntime): ``int8`` runs the ``.int8.onnx`` beside the checkpoint instead (the real-time model
    ships one), ``auto`` runs it where there is one; ``onnx_path`` and ``precision`` say which file ran.
    ``tta=True`` averages the probabilities of the frame and its horizontal and vertical flips, run as
    one batch of three. ``threads``: intra-op threads (torch: set during each call and restored after,
    default torch's setting; ORT: the session's, default every core). ``spin``: ORT only, whether its
    threads busy-wait for work (default ``runtime.SPIN_DEFAULT``).
    """

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        device: str = "cpu",
        tta: bool = False,
        backend: str = "torch",
        onnx_path: str | Path | None = None,
        threads: int | None = None,
        spin: bool | None = None,
        precision: str = "fp32",
        site: str | None = None,
    ):
        check_precision(backend, precision)
        self.backend = backend
        self.tta = tta
        self.device = torch_device(device)
        if backend == "torch":
            if onnx_path is not None:
                raise PolypsegError("An ONNX file runs with --backend onnxruntime, not torch.")
            self.checkpoint: Path | None = resolve_model(checkpoint)
            self.runner, self.config = torch_backend(self.checkpoint, device, threads)
        else:
            # An ONNX file alone carries its config: no checkpoint needed then.
            given = checkpoint is not None or onnx_path is None
            self.checkpoint = resolve_model(checkpoint) if given else None
            self.runner, self.config = onnx_backend(self.checkpoint, onnx_path, device, threads, spin, precision)
        self.onnx_path = Path(onnx_path) if onnx_path is not None else self.runner.path  # the file run, if any
        self.precision = self.runner.precision
        self.site = None
        if site is not None:
            from . import sites
            from .runtime import file_sha256

            if self.checkpoint is None:
                raise PolypsegError("A site profile belongs to a checkpoint: give the model (--run) beside the ONNX file.")
            self.site = sites.load(self.checkpoint, site, file_sha256(self.checkpoint))

    @property
    def model(self) -> torch.nn.Module | None:
        return self.runner.model

    @property
    def runtime(self) -> str:
        """What runs the frames, e.g. 'onnxruntime int8 (realtime.int8.onnx)' or 'torch'."""
        if self.backend == "torch":
            return "torch"
        where = self.onnx_path.name if self.onnx_path is not None else "exported in memory"
        skipped = f"; {self.runner.skipped}" if self.runner.skipped else ""
        return f"onnxruntime{' int8' if self.precision == 'int8' else ''} ({where}{skipped})"

    @property
    def session(self):
        return self.runner.session

    @property
    def threshold(self) -> float:
        return self.config.decision_threshold

    @property
    def operating_point(self) -> float:
        """The polyp score at or above which a frame is ``polyp_present``: the site's (``site``), else the one
        stored in the checkpoint."""
        return self.site.operating_point if self.site is not None else self.config.effective_operating_point

    def alert_rule(self, operating_point: float | None = None, smoothing_ms: float | None = None,
                   onset_ms: float | None = None, release_ms: float | None = None):
        """The alert rule video, serve and batch apply: what is given here, else the site's, else the
        defaults, on this predictor's operating point (``sites.rule_for``)."""
        from .sites import rule_for

        return rule_for(self.site, self.operating_point, operating_point=operating_point, smoothing_ms=smoothing_ms,
                        onset_ms=onset_ms, release_ms=release_ms)

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Normalised float32 N x 3 x H x W (H, W multiples of 32) -> (float32 N x H x W probabilities,
        float32 N head probabilities or None)."""
        return self.runner(x)

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, Geometry]:
        """RGB uint8 H x W x 3 -> (normalised 3 x H' x W' input padded to /32, where it came from): step 1
        of 3. With the config's ``crop``/``corner`` the input is the endoscopic image, corner blacked out."""
        cfg = self.config
        seen, box = picture(image, cfg.crop, cfg.corner)
        x, fitted = to_input(seen, cfg)
        return x, Geometry(box, fitted)

    def infer(self, x: np.ndarray) -> tuple[np.ndarray, float | None]:
        """One prepared input -> (its padded H' x W' probabilities, head probability or None), averaged
        over flips with TTA: step 2."""
        if not self.tta:
            prob, head = self.forward(x[None])
            return prob[0], None if head is None else float(head[0])
        p, head = self.forward(np.ascontiguousarray(np.stack([x, x[:, :, ::-1], x[:, ::-1, :]])))
        return (p[0] + p[1][:, ::-1] + p[2][::-1, :]) / 3, None if head is None else float(head.mean())

    def finish(self, out: tuple[np.ndarray, float | None], geometry: Geometry,
               image_hw: tuple[int, int]) -> Prediction:
        """Step 3: padded output -> the frame's ``Prediction`` (probabilities at the frame's own size, zero
        outside the endoscopic image; polyp score and verdict)."""
        padded, head = out
        seen_hw = (geometry.box.height, geometry.box.width)
        prob = from_output(np.ascontiguousarray(padded, dtype=np.float32), geometry.fitted, seen_hw)
        prob = paste_back(prob, geometry.box, tuple(image_hw[:2]), self.config.corner)
        score = polyp_score(self.config, prob, head)
        return Prediction(prob, score, score >= self.operating_point, head)

    def predict(self, image: np.ndarray) -> Prediction:
        """RGB uint8 H x W x 3 -> its ``Prediction``: probability map, polyp score, ``polyp_present``."""
        x, geometry = self.prepare(image)
        return self.finish(self.infer(x), geometry, image.shape[:2])

    def predict_prob(self, image: np.ndarray) -> np.ndarray:
        """RGB uint8 H x W x 3 -> float32 H x W probabilities of 'polyp'."""
        return self.predict(image).prob

    def predict_mask(self, image: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """RGB uint8 H x W x 3 -> bool H x W polyp mask at the model's (or the given) threshold."""
        t = self.threshold if threshold is None else threshold
        return self.predict_prob(image) >= t


class Geometry(NamedTuple):
    """Where a prepared input came from: the endoscopic image's box in the frame, and its fitted size."""

    box: Box
    fitted: tuple[int, int]


class Prediction(NamedTuple):
    """One frame's result: polyp probabilities at the frame's size, the polyp score, the verdict."""

    prob: np.ndarray
    score: float
    polyp_present: bool
    head: float | None = None  # the image-level head's probability, where the model has one

    def mask(self, threshold: float) -> np.ndarray:
        """The mask to show: pixels at or above ``threshold``, and none when the verdict is 'no polyp'."""
        return (self.prob >= threshold) & self.polyp_present


# The logit score: the mean logit of the map's top LOGIT_TOP_SHARE of pixels (at least one). Logits keep
# the spread that probabilities lose as a model grows confident (a peak of 0.9979 against 0.9999 is a
# logit of 6.2 against 9.2); the top 0.1% rather than the one top pixel makes it the mean of a small region
# (docs/quiet.md, "a score with resolution"). Probabilities come out of the network in float32, so logits
# read from them end near 16.6 (p = 1 - 2**-24): LOGIT_CEILING.
LOGIT_TOP_SHARE = 0.001
_P_EDGE = 2.0 ** -24
LOGIT_CEILING = float(np.log((1 - _P_EDGE) / _P_EDGE))


def logit(p: np.ndarray | float) -> np.ndarray | float:
    """Probabilities -> logits (float64), clipped to +-LOGIT_CEILING."""
    q = np.clip(np.asarray(p, np.float64), _P_EDGE, 1 - _P_EDGE)
    out = np.log(q) - np.log1p(-q)
    return float(out) if out.ndim == 0 else out


def top_logit(prob: np.ndarray, share: float = LOGIT_TOP_SHARE) -> float:
    """The mean logit of the ``share`` of pixels with the highest probability (at least one pixel)."""
    flat = prob.ravel()
    if not flat.size:
        return -LOGIT_CEILING
    k = max(1, int(round(share * flat.size)))
    return float(logit(np.partition(flat, flat.size - k)[flat.size - k:]).mean())


# The polyp scores a frame can have, by name (``Config.verdict`` picks one): the logit score, the highest
# pixel probability, the share of the frame at or above the mask threshold, the image-level head's probability.
_SCORES = {
    "logit": lambda prob, head, threshold: top_logit(prob),
    "peak": lambda prob, head, threshold: float(prob.max()) if prob.size else 0.0,
    "area": lambda prob, head, threshold: float((prob >= threshold).mean()),
    "head": lambda prob, head, threshold: float(head),
}


def score_sources(prob: np.ndarray, head: float | None, threshold: float) -> dict[str, float]:
    """Every polyp score a frame has (``head`` only for models with an image-level head)."""
    return {name: score(prob, head, threshold) for name, score in _SCORES.items() if name != "head" or head is not None}


def polyp_score(cfg: Config, prob: np.ndarray, head: float | None) -> float:
    """The frame's polyp score by ``cfg.verdict``: one of ``score_sources``, computed alone."""
    if cfg.verdict == "head" and head is None:
        raise PolypsegError("This model has no image-level head, so its verdict cannot be 'head'.")
    return _SCORES[cfg.verdict](prob, head, cfg.decision_threshold)


# ---------------------------------------------------------------------------------------------------
# per-frame figures, shared with polypseg.video


STATS_FIELDS = ("polyp_score", "operating_point", "polyp_present", "area_fraction", "mean_confidence", "outlined")


def frame_stats(prediction: Prediction, threshold: float, operating_point: float) -> dict[str, Any]:
    """The frame's polyp score, the operating point and the verdict, the fraction of the frame the raw mask
    at ``threshold`` covers and the mean probability inside it (empty without a mask), and whether its
    outline is drawn (single images: when the verdict is polyp; ``polypseg.exam``)."""
    _, area, confidence = mask_figures(prediction.prob, threshold)
    return {
        "polyp_score": round(float(prediction.score), 6),
        "operating_point": round(float(operating_point), 6),
        "polyp_present": int(prediction.polyp_present),
        "area_fraction": round(area, 6),
        "mean_confidence": "" if confidence is None else round(confidence, 6),
        "outlined": int(bool(prediction.polyp_present) and area > 0),
    }


def check_threshold(threshold: float | None) -> None:
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise PolypsegError(f"The threshold must lie between 0 and 1, got {threshold}.")


# ---------------------------------------------------------------------------------------------------
# predict for files and folders


PROB_FORMATS = ("png", "npy")


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
    predictor: Predictor,
    out_dir: str | Path = "predictions",
    save_prob: bool | str = False,
    threshold: float | None = None,
    show_progress: bool = True,
) -> list[Path]:
    """Predict every image of ``inputs`` (files or folders of images) with ``predictor`` and write into
    ``out_dir``: ``masks/NAME.png`` (0/255, the raw mask at the threshold whatever the verdict),
    ``overlays/NAME.png`` (translucent fill and contour over the image when the frame's verdict is polyp:
    ``polypseg.exam``'s contract for single images), with ``save_prob`` (True or ``"png"``: 8-bit PNG, probability x 255; ``"npy"``: float32
    array) ``probs/NAME.png|npy``, and ``predictions.csv`` (one row per image: score, operating point,
    verdict, the raw mask's area and confidence, whether the overlay outlines it;
    ``skipped``: why an image was not predicted, empty for the others).

    Every file is written atomically. An image that cannot be read, or is under ``data.MIN_IMAGE_SIDE``
    pixels on a side, is skipped (its row says why); after the others are done a PolypsegError names it.
    Returns the mask paths, in input order.
    """
    check_threshold(threshold)
    prob_format = "png" if save_prob is True else (save_prob or None)
    if prob_format is not None and prob_format not in PROB_FORMATS:
        raise PolypsegError(f"Unknown probability map format '{save_prob}'. Valid: {', '.join(PROB_FORMATS)}.")
    images = collect_images(inputs)
    out = Path(out_dir)
    check_writable(out, "the predictions (-o)", folder=True)
    t = predictor.threshold if threshold is None else threshold

    folders = {"mask": out / "masks", "overlay": out / "overlays"}
    if prob_format:
        folders["prob"] = out / "probs"
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    written, rows, failed = [], [], []
    for path in progress(images, desc="predict", unit="img", enabled=show_progress):
        try:
            image = read_image(path)
            check_image_size(image, f"The image {path}")
        except PolypsegError as err:
            failed.append(f"{path} ({err})")
            rows.append({"image": str(path), "skipped": " ".join(str(err).split())})
            continue
        prediction = predictor.predict(image)
        # the mask file stays raw (the verdict beside it, in predictions.csv); the picture follows the verdict
        prob, raw = prediction.prob, prediction.prob >= t
        name = path.stem + ".png"
        _write_png(folders["mask"] / name, raw.astype(np.uint8) * 255)
        _write_png(folders["overlay"] / name, overlay(image, prediction.mask(t)))
        if prob_format == "png":
            _write_png(folders["prob"] / name, np.round(prob * 255).astype(np.uint8))
        elif prob_format == "npy":
            _write_npy(folders["prob"] / (path.stem + ".npy"), prob.astype(np.float32))
        rows.append({"image": str(path), "height": image.shape[0], "width": image.shape[1],
                     **frame_stats(prediction, t, predictor.operating_point)})
        written.append(folders["mask"] / name)
    if rows:
        fields = ("image", "height", "width", *STATS_FIELDS, "skipped")
        atomic_write_text(out / "predictions.csv", csv_text([{**dict.fromkeys(fields, ""), **r} for r in rows], fields))
    if failed:
        raise PolypsegError(
            f"{len(failed)} of {len(images)} image(s) could not be used and were skipped (listed in "
            f"{out / 'predictions.csv'}; the other "
            f"{len(written)} were written to {out}): " + "; ".join(failed[:5])
        )
    return written


# ---------------------------------------------------------------------------------------------------
# one frame described: what the web app, the HTTP API and the Python API report for a frame


def mask_polygons(mask: np.ndarray, tolerance: float = 1.0) -> list[list[list[int]]]:
    """The outer contour of every region of ``mask`` as a polygon ``[[x, y], ...]`` in pixels, simplified
    by ``tolerance`` pixels (Douglas-Peucker), largest region first. Holes are not traced: a polyp's mask
    has none worth drawing, and outer contours are what an overlay draws."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    contours = sorted(contours, key=cv2.contourArea, reverse=True)
    return [cv2.approxPolyDP(c, tolerance, True)[:, 0, :].tolist() for c in contours]


def describe(result: Prediction | np.ndarray, threshold: float, polygons: bool = True,
             operating_point: float | None = None) -> dict[str, Any]:
    """A frame's ``Prediction`` (or a bare probability map) at ``threshold`` -> what is seen:
    ``polyp_present`` (the verdict), ``polyp_score`` and the ``operating_point`` it is judged at,
    ``area_fraction`` (of the frame), ``regions`` (connected regions, 8-connectivity), ``confidence``
    (mean probability inside the mask; ``None`` without a mask), ``max_probability`` and, with
    ``polygons``, each region's outline. When the verdict is 'no polyp' the mask, its regions and outlines
    are empty: the tool stays quiet. A bare map is judged by its peak probability at ``threshold``."""
    check_threshold(threshold)
    if isinstance(result, Prediction):
        prob, score, present = result.prob, result.score, bool(result.polyp_present)
        point = operating_point
    else:
        prob = result
        score = float(prob.max()) if prob.size else 0.0
        point = threshold if operating_point is None else operating_point
        present = score >= point
    mask = (prob >= threshold) & present
    area = int(mask.sum())
    regions = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1 if area else 0
    out: dict[str, Any] = {
        "height": int(prob.shape[0]),
        "width": int(prob.shape[1]),
        "threshold": float(threshold),
        "polyp_present": present,
        "polyp_score": round(score, 4),
        "operating_point": None if point is None else round(float(point), 4),
        "area_fraction": round(area / mask.size, 6),
        "regions": int(regions),
        "confidence": round(float(prob[mask].mean()), 4) if area else None,
        "max_probability": round(float(prob.max()), 4),
    }
    if polygons:
        out["polygons"] = mask_polygons(mask)
    return out
