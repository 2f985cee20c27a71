"""Segmentation metrics as plain functions over confusion counts, with the reduction always named.

Counts are int64 arrays whose last axis is ``(tp, fp, fn, tn)`` for the polyp class: shape ``(4,)``
for one image, ``(N, 4)`` for N images, ``(N, T, 4)`` for N images at T thresholds.

Two reductions:
- ``micro``: counts summed over all images, then the metric (every pixel weighs the same).
- ``per-image``: the metric on each image, then the mean (every image weighs the same). The polyp
  literature's "mDice" and "mIoU" (PraNet and after) are per-image means of the polyp class.

Empty rule (never NaN): when a ratio's denominator is zero, its value is 1 if prediction and ground
truth agree on every pixel of that image (no false positive and no false negative), otherwise 0.
So both masks empty gives Dice = IoU = precision = recall = F2 = 1; nothing predicted on a frame
with a polyp gives precision = 0; a false alarm on a frame without polyp gives recall = 0 (and
Dice = IoU = 0, as the formulas already say).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from scipy import ndimage

from .errors import PolypsegError

EMPTY_RULE = (
    "When a metric's denominator is zero it is 1 if prediction and ground truth agree on every pixel "
    "(both masks empty, for the polyp metrics), otherwise 0: never NaN."
)
HD95_RULE = (
    "HD95 is 0 when both masks are empty; when exactly one is empty it is the image diagonal "
    "(the largest distance possible), and such images are counted."
)

# name -> (label, definition); the order is the order of tables and CSV columns.
METRICS: dict[str, tuple[str, str]] = {
    "dice": ("Dice (F1)", "2TP / (2TP + FP + FN)"),
    "iou": ("IoU (polyp)", "TP / (TP + FP + FN)"),
    "miou2": ("mIoU (polyp + background)", "mean of polyp IoU and background IoU"),
    "bg_iou": ("IoU (background)", "TN / (TN + FN + FP)"),
    "precision": ("precision", "TP / (TP + FP)"),
    "recall": ("recall (sensitivity)", "TP / (TP + FN)"),
    "specificity": ("specificity", "TN / (TN + FP)"),
    "f2": ("F2", "5TP / (5TP + 4FN + FP): F-beta with beta = 2, favouring recall"),
    "accuracy": ("pixel accuracy", "(TP + TN) / all pixels"),
}
REDUCTIONS = ("per-image", "micro")
DEFAULT_THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)


def confusion(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Binary masks (bool or {0,1}) of one shape -> int64 ``(tp, fp, fn, tn)``."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    code = 2 * gt.astype(bool).ravel().astype(np.int64) + pred.astype(bool).ravel()
    tn, fp, fn, tp = np.bincount(code, minlength=4)
    return np.array([tp, fp, fn, tn], dtype=np.int64)


def threshold_counts(score: np.ndarray, gt: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """``(tp, fp, fn, tn)`` of the mask ``score >= t`` for every t in the ascending ``thresholds``: (T, 4).

    One pass over the pixels: each pixel is predicted for the thresholds at or below its score.
    """
    thresholds = np.asarray(thresholds)
    if np.any(np.diff(thresholds) <= 0):
        raise ValueError("thresholds must be strictly ascending")
    g = gt.astype(bool).ravel()
    level = np.searchsorted(thresholds, score.ravel(), side="right")  # number of thresholds <= score
    n_levels = len(thresholds) + 1
    # predicted at threshold j <=> level > j: reverse cumulative sums of the level histograms
    pos = np.cumsum(np.bincount(level[g], minlength=n_levels)[::-1])[::-1][1:]
    neg = np.cumsum(np.bincount(level[~g], minlength=n_levels)[::-1])[::-1][1:]
    n_pos, n_neg = int(g.sum()), int(g.size - g.sum())
    return np.stack([pos, neg, n_pos - pos, n_neg - neg], axis=-1).astype(np.int64)


def _ratio(num: np.ndarray, den: np.ndarray, perfect: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    out = np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)
    return np.where(den > 0, out, perfect.astype(np.float64))


def scores(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric of ``METRICS`` for each count row (the empty rule applied): arrays of counts.shape[:-1]."""
    c = np.asarray(counts, dtype=np.int64)
    tp, fp, fn, tn = c[..., 0], c[..., 1], c[..., 2], c[..., 3]
    perfect = (fp == 0) & (fn == 0)
    out = {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, perfect),
        "iou": _ratio(tp, tp + fp + fn, perfect),
        "bg_iou": _ratio(tn, tn + fn + fp, perfect),
        "precision": _ratio(tp, tp + fp, perfect),
        "recall": _ratio(tp, tp + fn, perfect),
        "specificity": _ratio(tn, tn + fp, perfect),
        "f2": _ratio(5 * tp, 5 * tp + 4 * fn + fp, perfect),
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn, perfect),
    }
    out["miou2"] = (out["iou"] + out["bg_iou"]) / 2
    return {name: out[name] for name in METRICS}


def reduce(counts: np.ndarray, reduction: str) -> dict[str, float]:
    """Metrics of a set of images, counts (N, 4): ``micro`` (pooled counts) or ``per-image`` (mean)."""
    counts = np.asarray(counts, dtype=np.int64)
    if reduction == "micro":
        return {k: float(v) for k, v in scores(counts.sum(axis=0)).items()}
    if reduction == "per-image":
        return {k: float(v.mean()) for k, v in scores(counts).items()}
    raise ValueError(f"unknown reduction {reduction!r}; valid: {', '.join(REDUCTIONS)}")


def bootstrap_ci(
    counts: np.ndarray,
    reduction: str,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    extra: dict[str, np.ndarray] | None = None,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap confidence intervals over images for every metric of ``reduce``.

    Images are drawn with replacement ``resamples`` times (numpy Generator seeded with ``seed``:
    deterministic); each draw is reduced like the real set. ``extra`` adds per-image values
    (e.g. hd95) whose mean gets an interval from the same draws.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = len(counts)
    times = _resample_times(n, resamples, seed)
    if reduction == "micro":
        draws = scores(times @ counts)
    elif reduction == "per-image":
        draws = {k: times @ v / n for k, v in scores(counts).items()}
    else:
        raise ValueError(f"unknown reduction {reduction!r}; valid: {', '.join(REDUCTIONS)}")
    for name, values in (extra or {}).items():
        draws[name] = times @ np.asarray(values, np.float64) / n
    return {k: _percentiles(v, level) for k, v in draws.items()}


def bootstrap_mean_ci(values: np.ndarray, resamples: int = 1000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-image ``values`` (e.g. paired differences)."""
    values = np.asarray(values, np.float64)
    return _percentiles(_resample_times(len(values), resamples, seed) @ values / len(values), level)


def _resample_times(n: int, resamples: int, seed: int) -> np.ndarray:
    """How often each of ``n`` images is drawn in each bootstrap resample: (resamples, n), seeded."""
    rng = np.random.default_rng(seed)
    return np.stack([np.bincount(rng.integers(0, n, size=n), minlength=n) for _ in range(resamples)])


def _percentiles(draws: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.percentile(draws, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(lo), float(hi)


# ---------------------------------------------------------------------------------------------------
# Frame level: does a frame show a polyp? Scores of polyp frames (label 1) against polyp-free ones (0).
# The frame-level figure people ask for first: polyp-free frames with a drawn polyp covering this share of the frame.
VISIBLE_AREA = 0.01


def frame_counts(scores_: np.ndarray, labels: np.ndarray, operating_point: float) -> dict[str, int]:
    """Frames flagged (score >= operating point) and missed, by label."""
    s, y = np.asarray(scores_, np.float64), np.asarray(labels).astype(bool)
    flagged = s >= operating_point
    return {"tp": int((flagged & y).sum()), "fn": int((~flagged & y).sum()),
            "fp": int((flagged & ~y).sum()), "tn": int((~flagged & ~y).sum())}


def frame_rates(counts: dict[str, int]) -> dict[str, float | None]:
    """Sensitivity (polyp frames flagged) and specificity (polyp-free frames left quiet); None where a set
    has no frame of that kind."""
    pos, neg = counts["tp"] + counts["fn"], counts["fp"] + counts["tn"]
    return {"sensitivity": counts["tp"] / pos if pos else None,
            "specificity": counts["tn"] / neg if neg else None,
            "false_alarm_rate": counts["fp"] / neg if neg else None}


def roc_auc(scores_: np.ndarray, labels: np.ndarray) -> float | None:
    """Frame-level ROC AUC (scikit-learn; ties count half); None unless both kinds of frame are there."""
    y = np.asarray(labels).astype(int)
    if y.min(initial=1) == y.max(initial=0):
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, np.asarray(scores_, np.float64)))


def roc_points(scores_: np.ndarray, labels: np.ndarray) -> dict[str, list[float]]:
    """The ROC curve: false-alarm rate, sensitivity and the score threshold of each point."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(np.asarray(labels).astype(int), np.asarray(scores_, np.float64))
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": np.minimum(thr, 1e9).tolist()}


def _stratified_draws(labels: np.ndarray, resamples: int, seed: int):
    """Index arrays of bootstrap draws, polyp and polyp-free frames resampled each within its own kind
    (every draw has both), seeded."""
    y = np.asarray(labels).astype(bool)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    rng = np.random.default_rng(seed)
    for _ in range(resamples):
        yield np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]


def roc_auc_ci(scores_: np.ndarray, labels: np.ndarray, resamples: int = 1000, seed: int = 0,
               level: float = 0.95, paired_with: np.ndarray | None = None) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the AUC (stratified draws: every one has both kinds of frame); with
    ``paired_with`` (another model's scores of the same frames), of the paired difference AUC(scores) -
    AUC(paired_with) over the same draws. None without both kinds."""
    s, y = np.asarray(scores_, np.float64), np.asarray(labels).astype(int)
    if y.min(initial=1) == y.max(initial=0) or resamples <= 0:
        return None
    from sklearn.metrics import roc_auc_score

    other = None if paired_with is None else np.asarray(paired_with, np.float64)
    draws = [roc_auc_score(y[i], s[i]) - (0.0 if other is None else roc_auc_score(y[i], other[i]))
             for i in _stratified_draws(y, resamples, seed)]
    return _percentiles(np.asarray(draws), level)


def operating_point_for(scores_: np.ndarray, labels: np.ndarray, sensitivity: float) -> float:
    """The highest score threshold that still flags at least ``sensitivity`` of the polyp frames (choose it
    on validation frames, never on test frames)."""
    pos = np.sort(np.asarray(scores_, np.float64)[np.asarray(labels).astype(bool)])
    if not len(pos):
        raise PolypsegError("No polyp frame to choose an operating point on. Use a split with a validation side.")
    if not 0.0 < sensitivity <= 1.0:
        raise PolypsegError(f"The sensitivity must lie in (0, 1], got {sensitivity}.")
    # flagging score >= t keeps every polyp frame from index k on: k <= n (1 - sensitivity)
    k = int(np.floor(len(pos) * (1.0 - sensitivity) + 1e-9))
    return float(pos[min(k, len(pos) - 1)])


def operating_point_for_specificity(scores_: np.ndarray, labels: np.ndarray, specificity: float) -> float:
    """The lowest score threshold that flags at most ``1 - specificity`` of the polyp-free frames (label 0):
    just above the score of the highest-scored polyp-free frame left quiet. Choose it on frames the model
    never trained on, never on test frames."""
    neg = np.sort(np.asarray(scores_, np.float64)[~np.asarray(labels).astype(bool)])
    if not len(neg):
        raise PolypsegError("No polyp-free frame to choose an operating point for a specificity on.")
    if not 0.0 < specificity < 1.0:
        raise PolypsegError(f"The specificity must lie in (0, 1), got {specificity}.")
    flagged = int(np.floor(len(neg) * (1.0 - specificity) + 1e-9))  # at most this many at or above the point
    return float(np.nextafter(neg[len(neg) - flagged - 1], np.inf))


def _surface(mask: np.ndarray) -> np.ndarray:
    # the mask's pixels with a 4-neighbour outside it (the image border counts as outside)
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(pred: np.ndarray, gt: np.ndarray) -> tuple[float, bool]:
    """Symmetric 95th-percentile Hausdorff distance in pixels between the masks' surfaces.

    The larger of the two directed 95th percentiles (each surface pixel's distance to the nearest
    surface pixel of the other mask). Returns ``(distance, one_empty)``; see ``HD95_RULE``.
    """
    p, g = pred.astype(bool), gt.astype(bool)
    if not p.any() and not g.any():
        return 0.0, False
    if not p.any() or not g.any():
        return float(np.hypot(*p.shape)), True
    sp, sg = _surface(p), _surface(g)
    to_g = ndimage.distance_transform_edt(~sg)[sp]
    to_p = ndimage.distance_transform_edt(~sp)[sg]
    return float(max(np.percentile(to_g, 95), np.percentile(to_p, 95))), False


def pranet_dice_curve(prob: np.ndarray, gt: np.ndarray, normalize: bool = True) -> np.ndarray:
    """Dice of one image at PraNet's 256 thresholds (0, 1/255, ..., 1; mask = map >= threshold).

    Mirrors the PraNet / Polyp-PVT evaluation: the map is min-max normalised per image (their test
    scripts do this before saving) and stored in 8 bits; ``normalize=False`` skips the min-max step.
    One difference: where PraNet's MATLAB code scores 0 whenever TP = 0, the empty rule here scores an
    empty prediction of an empty ground truth as 1 (identical on frames that show a polyp).
    """
    p = np.asarray(prob, np.float64)
    if normalize:
        p = (p - p.min()) / (p.max() - p.min() + 1e-8)
    q = np.clip(np.rint(p * 255), 0, 255)
    return scores(threshold_counts(q, gt, np.arange(256)))["dice"]


def threshold_curve(counts: np.ndarray, thresholds: np.ndarray) -> dict[str, list[float]]:
    """Counts (N, T, 4) of N images at T thresholds -> Dice per threshold, micro and per-image."""
    counts = np.asarray(counts, dtype=np.int64)
    return {
        "thresholds": [float(t) for t in thresholds],
        "dice_micro": scores(counts.sum(axis=0))["dice"].tolist(),
        "dice_per_image": scores(counts)["dice"].mean(axis=0).tolist(),
    }


def choose_threshold(
    source: Any,
    pairs: Iterable[Any] | None = None,
    thresholds: np.ndarray = DEFAULT_THRESHOLDS,
    reduction: str = "per-image",
) -> tuple[float, dict[str, Any]]:
    """The threshold that maximises Dice on validation data: ``(threshold, curve)``.

    ``source`` is an iterable of ``(probability map, mask)``, or a ``Predictor`` with ``pairs``
    (``data.Pair``s, read and predicted one at a time). Never call it on test data. ``reduction``
    names which Dice is maximised; ties go to the threshold nearest 0.5. ``curve`` is
    ``threshold_curve``'s dict plus ``chosen`` and ``reduction``.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; valid: {', '.join(REDUCTIONS)}")
    if pairs is not None:
        from .data import load_pair

        predictor, pairs = source, list(pairs)
        source = ((predictor.predict_prob(image), mask) for image, mask in map(load_pair, pairs))
    thresholds = np.asarray(thresholds, np.float64)
    counts = [threshold_counts(prob, mask, thresholds) for prob, mask in source]
    if not counts:
        raise PolypsegError(
            "No validation images to choose a decision threshold on. Use a split with a validation side."
        )
    curve = threshold_curve(np.stack(counts), thresholds)
    dice = np.asarray(curve["dice_micro" if reduction == "micro" else "dice_per_image"])
    best = np.flatnonzero(dice == dice.max())
    t = float(thresholds[best[np.argmin(np.abs(thresholds[best] - 0.5))]])
    return t, {**curve, "chosen": t, "reduction": reduction}


# ---------------------------------------------------------------------------------------------------
# The polyp toolbox's saliency-style measures (PraNet's MATLAB evaluation), through pysodmetrics

SOD_MEASURES: dict[str, tuple[str, str]] = {
    "wfm": ("weighted F-measure", "F-beta (beta 1) of error maps weighted by distance to the object (Margolin 2014)"),
    "sm": ("S-measure", "structural similarity of object and regions, alpha 0.5 (Fan 2017)"),
    "mean_em": ("mean E-measure", "enhanced alignment, averaged over 256 thresholds (Fan 2018)"),
    "max_em": ("max E-measure", "enhanced alignment at the best of 256 thresholds, over the whole set"),
    "mae": ("MAE", "mean absolute error between probability map and mask"),
}


class SodMeasures:
    """Accumulates S-measure, weighted F-measure, E-measure and MAE over a test set, as the polyp papers'
    toolbox does: each probability map is min-max normalised (MATLAB's ``mapminmax``), the measures are
    averaged over images, and max E-measure is the best threshold of the averaged curve."""

    def __init__(self) -> None:
        import py_sod_metrics as sod

        self._measures = {"sm": sod.Smeasure(), "wfm": sod.WeightedFmeasure(), "em": sod.Emeasure(), "mae": sod.MAE()}

    def add(self, prob: np.ndarray, gt: np.ndarray) -> None:
        """One image: probability map in [0, 1] and {0,1} mask of the same size."""
        pred = np.clip(np.round(prob * 255), 0, 255).astype(np.uint8)
        mask = gt.astype(np.uint8) * 255
        for m in self._measures.values():
            m.step(pred, mask)

    def results(self) -> dict[str, float]:
        curve = np.asarray(self._measures["em"].get_results()["em"]["curve"], dtype=np.float64)
        return {
            "wfm": float(self._measures["wfm"].get_results()["wfm"]),
            "sm": float(self._measures["sm"].get_results()["sm"]),
            "mean_em": float(curve.mean()),
            "max_em": float(curve.max()),
            "mae": float(self._measures["mae"].get_results()["mae"]),
        }
