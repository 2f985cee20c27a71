"""Evaluate a trained run on the test side of a split, or on every pair of a folder, and report.

Outputs (one folder, written into a temporary folder beside it and renamed at the end):
``per_image.csv``, ``summary.json``, ``report.md`` (with its figure files) and a self-contained
``report.html`` (figures embedded). The decision threshold is the checkpoint's (0.5, or chosen on
the validation side by ``train --choose-threshold``) or a given one: never chosen on the evaluated images.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from . import metrics
from .data import Pair, index_dataset, load_pair, read_image, scan_frames, usable_pairs
from .errors import PolypsegError
from .config import Config
from .files import check_writable
from .model import read_checkpoint_meta
from .predict import Predictor, resolve_model, score_sources
from .progress import progress as progress_lines
from .progress import text_table
from .splits import SIDES, leak_sentence, leak_text, load_split, split_pairs, with_index
from .viz import GREEN, YELLOW, overlay

SUMMARY_FORMAT = "polypseg-eval/1"
# The keyword options of evaluate() and evaluate_sets(), with their defaults.
EVAL_OPTIONS: dict[str, Any] = dict(tta=False, threshold=None, bootstrap=1000, pranet_mdice=False, gallery=8,
                                    device="cpu", seed=0, progress=True, skip_bad=False, backend="torch", onnx=None)


def _prepare(run, runtime: dict[str, Any], threshold: float | None, bootstrap: int):
    """(predictor, checkpoint file, threshold, where the threshold came from), the inputs checked.
    ``runtime``: how the model runs (tta, device, backend, onnx), as the summary records it."""
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise PolypsegError(f"The threshold must lie between 0 and 1, got {threshold}.")
    if bootstrap < 0:
        raise PolypsegError(f"The number of bootstrap resamples must be 0 or more, got {bootstrap}.")
    weights = resolve_model(run)
    predictor = Predictor(weights, device=runtime["device"], tta=runtime["tta"], backend=runtime["backend"],
                          onnx_path=runtime["onnx"])
    if threshold is None:
        threshold = predictor.threshold
        from_validation = read_checkpoint_meta(weights).get("metrics", {}).get("threshold_from") == "validation"
        if from_validation:
            source = "checkpoint, chosen on the validation side"
        else:
            source = "0.5, the default" if predictor.config.threshold is None else "checkpoint config, not tuned"
    else:
        source = "given"
    return predictor, weights, float(threshold), source


def _write_folder(out: Path, fill) -> Any:
    """``fill(tmp)`` into a new temporary folder beside ``out``, then put it at ``out``; on any failure the
    temporary folder is removed and ``out`` is left as it was. Returns what ``fill`` returns."""
    check_writable(out, "the evaluation (-o)", folder=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()  # unlike mkdtemp, honours the umask: the finished folder is as readable as any other
    try:
        result = fill(tmp)
        _replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def evaluate(
    run: str | Path,
    data: str | Path | None = None,
    split: str | Path | None = None,
    all_pairs: bool = False,
    out: str | Path | None = None,
    tta: bool = False,
    threshold: float | None = None,
    bootstrap: int = 1000,
    pranet_mdice: bool = False,
    gallery: int = 8,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    skip_bad: bool = False,
    backend: str = "torch",
    onnx: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate ``run`` and write its evaluation folder; returns the summary (as in summary.json).

    Images: the test side of the run's ``split.json`` (or of ``split``), or with ``all_pairs`` every
    pair of ``data`` (default: the run's data folder), of any size: the model sees each frame at its
    input size, the metrics compare at the frame's own size. ``bootstrap``: resamples for the 95%
    intervals (0: none), drawn with ``seed``. ``gallery``: how many frames (half best, half worst)
    the report shows. A run trained on several folders is evaluated on each folder's test side
    (``evaluate_sets``). Unreadable pairs are an error, or left out (and listed) with ``skip_bad``.
    ``backend``/``onnx``: evaluate the model as it is deployed, e.g. ``onnxruntime`` with its int8 file.
    """
    if all_pairs and split is not None:
        raise PolypsegError("Give either a split file or --all (every pair of the folder), not both.")
    if out is not None:
        check_writable(out, "the evaluation (-o)", folder=True)  # before the model loads
    weights = resolve_model(run)
    run_cfg = Config.from_dict(read_checkpoint_meta(weights)["config"])
    if data is None and split is None and not all_pairs and (isinstance(run_cfg.data, list) or run_cfg.negatives):
        return evaluate_sets(run, None, out=out, tta=tta, threshold=threshold, bootstrap=bootstrap,
                             pranet_mdice=pranet_mdice, gallery=gallery, device=device, seed=seed,
                             progress=progress, skip_bad=skip_bad, backend=backend, onnx=onnx)
    runtime = _runtime(tta=tta, device=device, backend=backend, onnx=onnx)
    predictor, weights, threshold, source = _prepare(run, runtime, threshold, bootstrap)
    run_dir = weights.parent
    cfg = predictor.config
    index = index_dataset(data if data is not None else cfg.data)
    if all_pairs:
        pairs = list(index.pairs)
        selection = {"name": Path(index.root).name, "side": "all", "split": None, "leak": None,
                     "leak_text": "Leak: no split; every pair of the folder is evaluated."}
    else:
        pairs, selection = _select(index, run_dir, split)
    pairs = _usable(pairs, skip_bad, selection)
    selection["seen_in_training"] = _seen_in_training(run_dir, index, cfg, data, [p.id for p in pairs])
    out = Path(out) if out is not None else run_dir / f"eval-{selection['name']}"
    return _write_folder(out, lambda tmp: _evaluate_set(
        tmp, out, predictor, pairs, selection, index, threshold, source, weights, runtime, bootstrap,
        pranet_mdice, gallery, seed, progress))


def _runtime(tta: bool, device: str, backend: str, onnx: str | Path | None) -> dict[str, Any]:
    """How the model runs in an evaluation, as its summary records it."""
    return dict(tta=tta, device=device, backend=backend, onnx=None if onnx is None else str(onnx))


def _runtime_text(summary: dict[str, Any]) -> str:
    """'TTA off' and, unless it is torch, the runtime and the ONNX file the frames ran through."""
    text = f"TTA {'on (flips)' if summary['tta'] else 'off'}"
    backend = summary.get("backend", "torch")
    if backend != "torch":
        text += f", {backend}" + (f" ({summary['onnx']})" if summary.get("onnx") else "")
    return text


def _usable(pairs: list[Pair], skip_bad: bool, selection: dict[str, Any]) -> list[Pair]:
    """The pairs that can be read, checked before any prediction; bad ones are an error unless skipped."""
    good, bad = usable_pairs(pairs, skip_bad=skip_bad, what=f"evaluation ({selection['name']})")
    selection["left_out"] = [{"id": c.pair.id, "problem": " ".join(c.problems)} for c in bad]
    if not good:
        raise PolypsegError(f"No usable image/mask pair is left to evaluate in {selection['name']}.")
    return good


def _evaluate_set(folder, out, predictor, pairs, selection, index, threshold, source, weights, runtime,
                  bootstrap, pranet_mdice, gallery, seed, progress) -> dict[str, Any]:
    """Evaluate one set into ``folder`` (its per-image CSV, figures, summary and reports); ``out`` is where
    the folder will end up."""
    summary = _evaluate_into(folder, predictor, pairs, threshold, bootstrap, pranet_mdice, gallery, seed, progress)
    summary.update(
        run=str(weights.parent), checkpoint=str(weights), data=str(index.root), selection=selection,
        threshold=float(threshold), threshold_source=source, **runtime,
        model=predictor.config.to_dict(), out=str(out),
    )
    _write_summary(folder, summary)
    _write_reports(folder, summary)
    return summary


def parse_test_set(spec: str) -> tuple[str, str | None]:
    """``DIR`` -> (DIR, None): every pair of the folder; ``DIR:SIDE`` -> (DIR, SIDE): the frames of that
    folder on SIDE (train, val or test) of the run's split."""
    folder, sep, side = str(spec).rpartition(":")
    if sep and side in SIDES:
        return folder, side
    if sep and folder and "/" not in side:
        raise PolypsegError(f"'{spec}': the part after ':' must be train, val or test (the side of the run's split).")
    return str(spec), None


def _test_set(spec: str, run_dir: Path, cfg, polyp_free: bool = False) -> tuple[Any, list[Pair], dict[str, Any]]:
    """(the folder's index, its pairs to evaluate, a description) for one test set. ``polyp_free``: the
    folder holds polyp-free frames without masks (so does a folder the run trained on as --negatives)."""
    folder, side = parse_test_set(spec)
    trained_free = {str(Path(n).resolve()) for n in cfg.negatives}
    if polyp_free or str(Path(folder).resolve()) in trained_free:
        index = scan_frames(folder, polyp=False)
    else:
        index = index_dataset(folder)
    path = run_dir / "split.json"
    run_split = load_split(path) if path.is_file() else None
    if side is None:
        pairs = list(index.pairs)
        selection = {"name": f"{index.name}-all", "side": "all", "split": None, "leak": None,
                     "leak_text": "Leak: no split; every pair of the folder is evaluated."}
    else:
        if run_split is None:
            raise PolypsegError(f"The run {run_dir} has no split.json, so '{spec}' names no frames. Give the folder alone.")
        ids = _ids_in_folder(run_split, getattr(run_split, side), index)
        if not ids:
            raise PolypsegError(
                f"The run's split puts no frame of {index.root} on its {side} side. Give the folder alone to "
                "evaluate every pair of it."
            )
        by_id = {p.id: p for p in index.pairs}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise PolypsegError(f"The run's split names {len(missing)} frames missing from {index.root} (e.g. {missing[:3]}).")
        pairs = [by_id[i] for i in ids]
        leak = run_split.leak.get("per_folder", {}).get(index.name, run_split.leak)
        info = run_split.folders[index.name] if run_split.folders else {"sequences": run_split.sequences}
        selection = {
            "name": f"{index.name}-{side}", "side": side,
            "split": {"strategy": run_split.strategy, "seed": run_split.seed, "fold": run_split.fold, "path": str(path)},
            "leak": leak, "leak_text": leak_sentence(leak, info.get("sequences")),
        }
    if run_split is not None:
        trained = set(_ids_in_folder(run_split, run_split.train + run_split.val, index))
        selection["seen_in_training"] = sum(p.id in trained for p in pairs)
    else:
        selection["seen_in_training"] = None
    return index, pairs, selection


def _ids_in_folder(split, ids: list[str], index) -> list[str]:
    """The ids of ``split`` that name frames of ``index``'s folder, in that folder's own naming."""
    if split.folders:
        prefix = index.name + "/"
        return [i[len(prefix):] for i in ids if i.startswith(prefix)]
    if split.data and Path(split.data).resolve() != Path(index.root).resolve():
        return []  # another folder may reuse the run's frame names
    return list(ids)


def evaluate_sets(run: str | Path, test_sets: list[str] | None = None, out: str | Path | None = None,
                  negative_sets: list[str] | None = None, **options: Any) -> dict[str, Any]:
    """Evaluate ``run`` on several test sets, as the polyp literature reports: one row each.

    ``test_sets``: ``DIR`` (every pair of a folder) or ``DIR:SIDE`` (that folder's frames on a side of the
    run's split); default: the test side of each folder the run trained on (polyp-free ones included).
    ``negative_sets``: folders of polyp-free frames without masks, in the same ``DIR[:SIDE]`` form; a
    folder of ``positives/`` and ``negatives/`` frames is a test set of its own (frame level only). ``options``: the keyword
    options of ``evaluate`` (tta, threshold, bootstrap, ...). Writes one sub-folder per set (as ``evaluate``
    does) and a combined summary.json, report.md and report.html with a section per set.
    """
    unknown = sorted(set(options) - EVAL_OPTIONS.keys())
    if unknown:
        raise TypeError(f"evaluate_sets() got unknown options {unknown}; valid: {sorted(EVAL_OPTIONS)}")
    o = {**EVAL_OPTIONS, **options}
    if out is not None:
        check_writable(out, "the evaluation (-o)", folder=True)  # before the model loads
    threshold, bootstrap, pranet_mdice, gallery, seed, progress, skip_bad = (
        o[k] for k in ("threshold", "bootstrap", "pranet_mdice", "gallery", "seed", "progress", "skip_bad"))
    runtime = _runtime(o["tta"], o["device"], o["backend"], o["onnx"])
    predictor, weights, threshold, source = _prepare(run, runtime, threshold, bootstrap)
    run_dir = weights.parent
    cfg = predictor.config
    if not test_sets and not negative_sets:
        folders = (cfg.data if isinstance(cfg.data, list) else [cfg.data]) + list(cfg.negatives)
        test_sets = [f"{folder}:test" for folder in folders]
    # every spec checked before any work
    chosen = [_test_set(spec, run_dir, cfg) for spec in test_sets or []]
    chosen += [_test_set(spec, run_dir, cfg, polyp_free=True) for spec in negative_sets or []]
    names = [selection["name"] for _, _, selection in chosen]
    if len(set(names)) != len(names):
        raise PolypsegError(f"Two test sets have the same name ({', '.join(names)}); give each one once.")
    chosen = [(index, _usable(pairs, skip_bad, selection), selection) for index, pairs, selection in chosen]
    out = Path(out) if out is not None else run_dir / "eval-sets"

    def fill(tmp: Path) -> dict[str, Any]:
        sets = []
        for index, pairs, selection in chosen:
            sub = tmp / selection["name"]
            sub.mkdir()
            sets.append(_evaluate_set(sub, out / selection["name"], predictor, pairs, selection, index, threshold,
                                      source, weights, runtime, bootstrap, pranet_mdice, gallery, seed, progress))
        combined = {"format": SUMMARY_FORMAT, "run": str(run_dir), "checkpoint": str(weights), "out": str(out),
                    "test_sets": sets}
        _write_summary(tmp, combined)
        _write_combined_reports(tmp, combined)
        return combined

    return _write_folder(out, fill)


def _select(index, run_dir: Path, split) -> tuple[list[Pair], dict[str, Any]]:
    """The pairs to evaluate and a description of where they came from (split=None: the run's)."""
    path = Path(split) if split is not None else run_dir / "split.json"
    if split is None and not path.is_file():
        raise PolypsegError(
            f"The run {run_dir} has no split.json. Give the split whose test side to evaluate (--split FILE), "
            "or evaluate every pair of a folder (--all)."
        )
    s = with_index(load_split(path), index)  # a k-fold split saved by train records its fold
    if not s.test:
        raise PolypsegError(f"The split {path} has no test side. Make one with a test side (polypseg data split).")
    pairs = split_pairs(s, index)["test"]
    info = {"strategy": s.strategy, "seed": s.seed, "fold": s.fold, "path": str(path)}
    return pairs, {
        "name": "test" if split is None else f"{path.stem}-test",
        "side": "test", "split": info, "leak": s.leak, "leak_text": leak_text(s),
    }


def _seen_in_training(run_dir: Path, index, cfg, data, ids: list[str]) -> int | None:
    """How many evaluated frames the run trained or validated on (None: cannot tell)."""
    path = run_dir / "split.json"
    if not path.is_file():
        return None
    if data is not None:  # another folder may reuse the run's frame names: compare the dataset roots
        try:
            if index_dataset(cfg.data).root.resolve() != Path(index.root).resolve():
                return None
        except PolypsegError:
            return None
    s = load_split(path)
    return len(set(ids) & set(s.train + s.val))


def frame_label(pair: Pair, mask: np.ndarray | None) -> int:
    """1 when the frame shows a polyp (its mask is not empty, or it is a polyp frame without a mask)."""
    return int(pair.polyp) if pair.mask is None else int(mask.any())


SEG_COLUMNS = ("gt_empty", "pred_empty", "tp", "fp", "fn", "tn", *metrics.METRICS, "hd95", "hd95_one_empty")


def _evaluate_into(
    tmp: Path, predictor: Predictor, pairs: list[Pair], threshold: float, bootstrap: int,
    pranet_mdice: bool, gallery: int, seed: int, progress: bool,
) -> dict[str, Any]:
    """Predict every frame, write per_image.csv and the figures into ``tmp``; the summary's numbers.

    Segmentation measures run over the polyp frames that have masks (the literature's mDice); every frame
    counts at frame level: its polyp score, verdict and shown area, against whether it shows a polyp."""
    thresholds = metrics.DEFAULT_THRESHOLDS
    rows, counts, curve_counts, hd, seg_index = [], [], [], [], []
    sod = metrics.SodMeasures()
    start = time.perf_counter()
    for pair in progress_lines(pairs, desc="evaluate", unit="img", enabled=progress):
        image, mask = load_pair(pair) if pair.mask is not None or pair.polyp is False else (read_image(pair.image), None)
        prediction = predictor.predict(image)
        prob = prediction.prob
        label = frame_label(pair, mask)
        shown = prediction.mask(threshold)
        sources = score_sources(prob, prediction.head, threshold)
        row: dict[str, Any] = {
            "id": pair.id, "sequence": pair.sequence, "height": image.shape[0], "width": image.shape[1],
            "polyp": label, "polyp_score": prediction.score, "polyp_present": int(prediction.polyp_present),
            "shown_area": float(shown.mean()), "head_score": sources.get("head"), "peak_probability": sources["peak"],
            "area_at_threshold": sources["area"], **{k: None for k in SEG_COLUMNS},
        }
        if label and pair.mask is not None:
            pred = prob >= threshold
            sod.add(prob, mask)
            c = metrics.confusion(pred, mask)
            distance, one_empty = metrics.hd95(pred, mask)
            curve_counts.append(metrics.threshold_counts(prob, mask, thresholds))
            row.update({
                "gt_empty": int(c[0] + c[2] == 0), "pred_empty": int(c[0] + c[1] == 0),
                **dict(zip(("tp", "fp", "fn", "tn"), c.tolist())),
                **{k: float(v) for k, v in metrics.scores(c).items()},
                "hd95": distance, "hd95_one_empty": int(one_empty),
                "dice_shown": float(metrics.scores(metrics.confusion(shown, mask))["dice"]),
            })
            if pranet_mdice:
                row["pranet_mdice"] = float(metrics.pranet_dice_curve(prob, mask).mean())
            counts.append(c)
            hd.append(distance)
            seg_index.append(len(rows))
        rows.append(row)
    seconds = time.perf_counter() - start
    keys = list(dict.fromkeys(k for r in rows for k in r))
    rows = [{k: r.get(k) for k in keys} for r in rows]
    seg_rows = [rows[i] for i in seg_index]

    summary: dict[str, Any] = {
        "format": SUMMARY_FORMAT,
        "n_images": len(rows),
        "n_seg_images": len(seg_rows),
        "frame": _frame_summary(rows, predictor, bootstrap, seed),
        "empty_rule": metrics.EMPTY_RULE,
        "timing": {"seconds": round(seconds, 3), "images_per_second": round(len(rows) / max(seconds, 1e-9), 3)},
        "metrics": None, "ci": None, "hd95": None, "pranet_mdice": None, "sod": None, "per_sequence": {},
        "threshold_curve": None, "n_gt_empty": 0, "n_pred_empty": 0,
    }
    if seg_rows:
        counts = np.stack(counts)
        hd = np.asarray(hd)
        summary.update({
            "n_gt_empty": sum(r["gt_empty"] for r in seg_rows),
            "n_pred_empty": sum(r["pred_empty"] for r in seg_rows),
            "metrics": {r: metrics.reduce(counts, r) for r in metrics.REDUCTIONS},
            "mdice_shown": float(np.mean([r["dice_shown"] for r in seg_rows])),
            "hd95": {
                "mean": float(hd.mean()), "median": float(np.median(hd)),
                "n_one_empty": sum(r["hd95_one_empty"] for r in seg_rows), "rule": metrics.HD95_RULE,
            },
            "pranet_mdice": float(np.mean([r["pranet_mdice"] for r in seg_rows])) if pranet_mdice else None,
            "sod": sod.results(),
            "per_sequence": _per_sequence(seg_rows),
            "threshold_curve": metrics.threshold_curve(np.stack(curve_counts), thresholds),
        })
        if bootstrap:
            summary["ci"] = {
                r: metrics.bootstrap_ci(counts, r, bootstrap, seed, extra={"hd95": hd} if r == "per-image" else None)
                for r in metrics.REDUCTIONS
            }
    if bootstrap:
        summary["bootstrap"] = {"resamples": bootstrap, "seed": seed, "level": 0.95}
    _write_csv(tmp / "per_image.csv", rows)
    seg_pairs = [pairs[i] for i in seg_index]
    summary["gallery"] = (_write_figures(tmp, seg_rows, summary, threshold, predictor, seg_pairs, gallery)
                          if seg_rows else [])
    summary["false_alarm_gallery"] = _write_frame_figures(tmp, rows, summary, threshold, predictor, pairs, gallery)
    return summary


# Frame-level figures people ask for first: polyp-free frames with a drawn polyp covering this share of the frame.
VISIBLE_AREA = 0.01
# The sensitivity of the target ("at the operating point that flags 95% of polyp frames").
TARGET_SENSITIVITY = 0.95


def _frame_summary(rows: list[dict[str, Any]], predictor: Predictor, bootstrap: int, seed: int) -> dict[str, Any]:
    """Frame level: sensitivity and specificity at the model's operating point, ROC AUC with a bootstrap
    interval, the ROC curve, and the false-alarm rate read off this set's ROC at 95% sensitivity."""
    labels = np.array([r["polyp"] for r in rows])
    score = np.array([r["polyp_score"] for r in rows], np.float64)
    counts = metrics.frame_counts(score, labels, predictor.operating_point)
    out: dict[str, Any] = {
        "n_polyp": int(labels.sum()), "n_polyp_free": int((labels == 0).sum()),
        "verdict": predictor.config.verdict, "operating_point": predictor.operating_point,
        "counts": counts, **metrics.frame_rates(counts),
        "auc": metrics.roc_auc(score, labels), "auc_ci": None, "roc": None, "fa_at_target": None,
        "target_sensitivity": TARGET_SENSITIVITY, "operating_point_source": _operating_point_source(predictor),
        "polyp_free_drawn": None, "polyp_free_drawn_visible": None,
    }
    # every score source the model has, judged on these frames (the verdict's source was fixed before)
    sources = {"peak": "peak_probability", "area": "area_at_threshold"}
    if rows and rows[0]["head_score"] is not None:
        sources["head"] = "head_score"
    out["auc_by_source"] = {name: metrics.roc_auc(np.array([r[col] for r in rows], np.float64), labels)
                            for name, col in sources.items()}
    free = labels == 0
    if free.any():
        area = np.array([r["shown_area"] for r in rows])[free]
        out["polyp_free_drawn"] = float((area > 0).mean())
        out["polyp_free_drawn_visible"] = float((area >= VISIBLE_AREA).mean())
    if out["auc"] is not None:
        out["roc"] = metrics.roc_points(score, labels)
        out["auc_ci"] = metrics.roc_auc_ci(score, labels, bootstrap, seed) if bootstrap else None
        point = metrics.operating_point_for(score, labels, TARGET_SENSITIVITY)
        out["fa_at_target"] = metrics.frame_rates(metrics.frame_counts(score, labels, point))["false_alarm_rate"]
    return out


def _operating_point_source(predictor: Predictor) -> str:
    cfg = predictor.config
    if cfg.verdict_threshold is None:
        return "default (no validation choice)"
    meta = read_checkpoint_meta(predictor.checkpoint) if predictor.checkpoint is not None else {}
    if meta.get("metrics", {}).get("operating_point_from") == "validation":
        return f"chosen on the validation side for sensitivity {cfg.verdict_sensitivity:.2f}"
    return "given"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _auc_text(frame: dict[str, Any]) -> str:
    if frame["auc"] is None:
        return "-"
    ci = frame.get("auc_ci")
    return f"{frame['auc']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _frame_blocks(summary) -> list[tuple]:
    f = summary["frame"]
    c = f["counts"]
    text = (f"Does the frame show a polyp? {f['n_polyp']} polyp frames, {f['n_polyp_free']} polyp-free frames. "
            f"Verdict '{f['verdict']}' (polyp score) at the operating point {f['operating_point']:.4f} "
            f"({f['operating_point_source']}; never chosen on these frames): sensitivity {_pct(f['sensitivity'])} "
            f"({c['tp']} of {c['tp'] + c['fn']} polyp frames flagged), specificity {_pct(f['specificity'])} "
            f"({c['tn']} of {c['tn'] + c['fp']} polyp-free frames left quiet).")
    if f["auc"] is not None:
        others = ", ".join(f"{k} {v:.3f}" for k, v in f.get("auc_by_source", {}).items() if v is not None)
        text += (f" ROC AUC {_auc_text(f)} (95% bootstrap interval, each kind of frame resampled on its own; "
                 f"AUC of every score source on these frames: {others}). "
                 f"Read off this set's own ROC, flagging {100 * f['target_sensitivity']:.0f}% of its polyp frames "
                 f"would flag {_pct(f['fa_at_target'])} of its polyp-free frames (a reading, not an operating point).")
    if f["polyp_free_drawn"] is not None:
        text += (f" Polyp-free frames with any polyp pixel shown: {_pct(f['polyp_free_drawn'])}; with the shown polyp "
                 f"covering at least {100 * VISIBLE_AREA:.0f}% of the frame: {_pct(f['polyp_free_drawn_visible'])}.")
    b: list[tuple] = [("h", 2, "Frame level"), ("p", text)]
    if f["roc"] is not None:
        b.append(("img", "roc.png", "ROC curve, polyp vs polyp-free frames"))
    if summary.get("false_alarm_gallery"):
        b += [("p", "The polyp-free frames the model scores highest (worst first): the frame, and what the mask "
                    "would draw at the threshold (yellow) whether or not the verdict shows it."),
              ("img", "false_alarms.jpg", "worst false alarms")]
    return b


def _write_frame_figures(tmp, rows, summary, threshold, predictor, pairs, gallery) -> list[str]:
    """roc.png (both kinds of frame present) and false_alarms.jpg: the polyp-free frames the model scores
    highest, worst first. Returns the ids the gallery shows."""
    frame = summary["frame"]
    if frame["roc"] is not None:
        fig = _figure(4.5, 4.2)
        ax = fig.add_subplot()
        roc = frame["roc"]
        ax.plot(roc["fpr"], roc["tpr"], label=f"AUC {frame['auc']:.3f}")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        if frame["sensitivity"] is not None and frame["false_alarm_rate"] is not None:
            ax.plot([frame["false_alarm_rate"]], [frame["sensitivity"]], "o", color="black",
                    label=f"operating point {frame['operating_point']:.3f}")
        ax.set(xlabel="polyp-free frames flagged (1 - specificity)", ylabel="polyp frames flagged (sensitivity)",
               xlim=(0, 1), ylim=(0, 1.01), title=f"{frame['n_polyp']} polyp, {frame['n_polyp_free']} polyp-free frames")
        ax.legend(loc="lower right")
        _save(fig, tmp / "roc.png")
    free = [i for i, r in enumerate(rows) if r["polyp"] == 0]
    if gallery <= 0 or not free:
        return []
    worst = sorted(free, key=lambda i: (-rows[i]["polyp_score"], rows[i]["id"]))[:gallery]
    lines = []
    for i in worst:
        image = read_image(pairs[i].image)
        prediction = predictor.predict(image)
        drawn = prediction.prob >= threshold
        caption = (f"{rows[i]['id']}   score {rows[i]['polyp_score']:.3f}   "
                   f"{'FLAGGED' if rows[i]['polyp_present'] else 'quiet'}   frame | what the mask would draw")
        lines.append(_gallery_line(image, [image, overlay(image, drawn, YELLOW)], caption))
    _write_jpeg(tmp / "false_alarms.jpg", lines)
    return [rows[i]["id"] for i in worst]


def _per_sequence(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    by_seq: dict[int, list[float]] = {}
    for r in rows:
        if r["sequence"] is not None:
            by_seq.setdefault(r["sequence"], []).append(r["dice"])
    return {str(s): {"n": len(v), "dice": float(np.mean(v))} for s, v in sorted(by_seq.items())}


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})


def _write_summary(tmp: Path, summary: dict[str, Any]) -> None:
    (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def _replace_folder(tmp: Path, out: Path) -> None:
    """Put the finished ``tmp`` at ``out``; an older evaluation there is replaced."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# Figures


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # the Agg canvas, no pyplot state

    return Figure(figsize=(width, height), dpi=100, layout="tight")


def _save(fig, path: Path) -> None:
    fig.savefig(path, format="png")


def _write_figures(tmp, rows, summary, threshold, predictor, pairs, gallery) -> list[str]:
    """dice_hist.png, threshold_curve.png, gallery.jpg and (sequences known) per_sequence.png.

    Returns the ids the gallery shows, worst first.
    """
    dice = np.array([r["dice"] for r in rows])
    fig = _figure(6, 3.5)
    ax = fig.add_subplot()
    ax.hist(dice, bins=np.linspace(0, 1, 21), color="tab:blue", edgecolor="white")
    ax.axvline(dice.mean(), color="black", linestyle="--", label=f"mean {dice.mean():.3f}")
    ax.set(xlabel="Dice per image", ylabel="images", xlim=(0, 1), title=f"Per-image Dice ({len(dice)} images)")
    ax.legend()
    _save(fig, tmp / "dice_hist.png")

    curve = summary["threshold_curve"]
    fig = _figure(6.5, 3.5)
    ax = fig.add_subplot()
    ax.plot(curve["thresholds"], curve["dice_per_image"], label="per-image mean Dice")
    ax.plot(curve["thresholds"], curve["dice_micro"], label="micro Dice")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold used {threshold:.2f}")
    ax.set(xlabel="threshold", ylabel="Dice", xlim=(0, 1), ylim=(0, 1),
           title="Dice vs threshold on these images (not used to choose it)")
    ax.legend()
    _save(fig, tmp / "threshold_curve.png")

    if summary["per_sequence"]:
        seqs = summary["per_sequence"]
        fig = _figure(max(4, 0.3 * len(seqs) + 1.5), 3.5)
        ax = fig.add_subplot()
        ax.bar(list(seqs), [v["dice"] for v in seqs.values()], color="tab:green")
        ax.set(xlabel="sequence", ylabel="mean Dice", ylim=(0, 1), title="Per-sequence mean Dice")
        ax.tick_params(axis="x", labelsize=7)
        _save(fig, tmp / "per_sequence.png")

    if gallery <= 0:
        return []
    chosen = _gallery_rows(rows, gallery)
    _write_gallery(tmp / "gallery.jpg", chosen, rows, predictor, pairs, threshold)
    return [rows[i]["id"] for i in chosen]


def _gallery_rows(rows: list[dict[str, Any]], k: int) -> list[int]:
    """Indices of the k/2 worst and k/2 best frames by Dice (all frames if there are at most k)."""
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["dice"], rows[i]["id"]))
    if len(order) <= k:
        return order
    return order[: k // 2] + order[len(order) - (k - k // 2):]


def _gallery_line(image: np.ndarray, panels: list[np.ndarray], caption: str, height: int = 192) -> np.ndarray:
    """One gallery row: ``panels`` side by side at ``height`` pixels, ``caption`` above them."""
    width = round(image.shape[1] * height / image.shape[0])
    resized = [cv2.resize(p, (width, height), interpolation=cv2.INTER_AREA) for p in panels]
    gap = np.full((height, 4, 3), 255, np.uint8)
    line = resized[0]
    for p in resized[1:]:
        line = np.hstack([line, gap, p])
    top = np.full((22, line.shape[1], 3), 255, np.uint8)
    cv2.putText(top, caption, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([top, line, np.full((6, line.shape[1], 3), 255, np.uint8)])


def _write_jpeg(path: Path, lines: list[np.ndarray]) -> None:
    width = max(line.shape[1] for line in lines)
    picture = np.vstack([np.pad(line, ((0, 0), (0, width - line.shape[1]), (0, 0)), constant_values=255)
                         for line in lines])
    _, jpeg = cv2.imencode(".jpg", picture[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    path.write_bytes(jpeg.tobytes())


def _write_gallery(path, chosen, rows, predictor, pairs, threshold) -> None:
    """One JPEG, a row per frame: the frame | ground truth (green) | prediction (yellow), captioned."""
    lines = []
    for i in chosen:
        image, mask = load_pair(pairs[i])
        pred = predictor.predict_prob(image) >= threshold
        text = f"{rows[i]['id']}   Dice {rows[i]['dice']:.3f}   frame | ground truth | prediction"
        if len(chosen) < len(rows):
            text = ("worst   " if chosen.index(i) < len(chosen) // 2 else "best   ") + text
        lines.append(_gallery_line(image, [image, overlay(image, mask, GREEN), overlay(image, pred, YELLOW)], text))
    _write_jpeg(path, lines)


# ---------------------------------------------------------------------------------------------------
# Text: terminal table, report.md and report.html from one list of blocks


def _ci_text(summary, reduction: str, name: str) -> str:
    if summary.get("metrics") is None:
        return "-"
    value = summary["metrics"][reduction][name]
    if not summary.get("ci"):
        return f"{value:.3f}"
    lo, hi = summary["ci"][reduction][name]
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]"


def _what_text(summary) -> str:
    sel = summary["selection"]
    if sel["side"] == "all":
        return f"every pair of {summary['data']}"
    s = sel["split"]
    fold = f", fold {s['fold']}" if s["fold"] is not None else ""
    return f"the test side of {s['path']} ({s['strategy']} split, seed {s['seed']}{fold})"


def _headline(summary) -> str:
    return (
        f"Headline: mDice {_ci_text(summary, 'per-image', 'dice')}, mIoU {_ci_text(summary, 'per-image', 'iou')} "
        "(per-image means of the polyp class, as PraNet and later papers report). Two-class mIoU (polyp and "
        f"background IoU averaged, another common reading of 'mIoU'): {_ci_text(summary, 'micro', 'miou2')} "
        f"micro, {_ci_text(summary, 'per-image', 'miou2')} per-image. Background IoU and pixel accuracy are "
        "high even for a model that predicts no polyp at all; judge a model by Dice and polyp IoU."
    )


def _leak_line(summary) -> str:
    """The split's leak sentence, plus how many evaluated frames the run itself trained on."""
    sel = summary["selection"]
    seen = sel.get("seen_in_training")
    if seen is None:
        return sel["leak_text"]
    if seen:
        return f"{sel['leak_text']} {seen} of the evaluated frames were used in training or validation."
    return f"{sel['leak_text']} None of the evaluated frames was used in training or validation."


def _blocks(summary) -> list[tuple]:
    """The report as ("h"|"p"|"table"|"img", ...) blocks, rendered to Markdown and HTML alike."""
    n = summary["n_images"]
    head: list[tuple] = [
        ("h", 1, "polypseg evaluation"),
        ("p", f"Run `{summary['run']}`, {n} images: {_what_text(summary)}. Threshold "
              f"{summary['threshold']:.2f} ({summary['threshold_source']}); never chosen on these images. "
              f"{_runtime_text(summary)}. Model {summary['model']['arch']} / "
              f"{summary['model']['encoder']} at {summary['model']['height']}x{summary['model']['width']}; "
              "metrics at each image's own size."),
        ("p", _leak_line(summary)),
    ]
    if summary.get("metrics") is None:
        return head + [("p", "No polyp frame with a mask here: segmentation measures are not computed.")] + _frame_blocks(summary)
    return head + _segmentation_blocks(summary) + _frame_blocks(summary)


def _segmentation_blocks(summary) -> list[tuple]:
    ci = summary.get("ci")
    b: list[tuple] = [
        ("h", 2, "Metrics"),
        ("p", _headline(summary)),
        ("p", "Per-image: the metric on each image, then the mean over images (the polyp literature's "
              "mDice and mIoU). Micro: confusion counts summed over all images, then the metric. "
              + (f"95% percentile bootstrap intervals over images ({summary['bootstrap']['resamples']} "
                 f"resamples, seed {summary['bootstrap']['seed']})." if ci else "No bootstrap intervals.")),
        ("table", ["metric", "per-image mean", "micro", "definition"],
         [[label, _ci_text(summary, "per-image", k), _ci_text(summary, "micro", k), definition]
          for k, (label, definition) in metrics.METRICS.items()]),
        ("p", f"HD95 (95th-percentile symmetric Hausdorff distance of the mask outlines, pixels): mean "
              f"{summary['hd95']['mean']:.1f}"
              + (f" [{ci['per-image']['hd95'][0]:.1f}, {ci['per-image']['hd95'][1]:.1f}]" if ci else "")
              + f", median {summary['hd95']['median']:.1f}; {summary['hd95']['n_one_empty']} image(s) with "
              f"exactly one empty mask. {summary['hd95']['rule']}"),
    ]
    if summary.get("sod"):
        b += [
            ("p", "The polyp papers' toolbox measures (pysodmetrics, as PraNet's MATLAB code: each probability "
                  "map min-max normalised, averaged over images):"),
            ("table", ["measure", "value", "definition"],
             [[label, f"{summary['sod'][k]:.3f}", definition] for k, (label, definition) in metrics.SOD_MEASURES.items()]),
        ]
    if summary["pranet_mdice"] is not None:
        b.append(("p", f"PraNet-style mDice (per-image Dice averaged over 256 thresholds of the min-max "
                       f"normalised map): {summary['pranet_mdice']:.3f}."))
    b += [
        ("p", f"Segmentation measures run over the {summary['n_seg_images']} polyp frames with masks (the "
              f"literature's mDice); polyp-free frames count at frame level (below). {summary['n_pred_empty']} "
              f"polyp frame(s) with nothing predicted. {summary['empty_rule']} mDice of the mask as shown (empty "
              f"where the verdict says no polyp): {summary['mdice_shown']:.3f}."),
        ("p", f"Time: {summary['timing']['seconds']:.1f} s, {summary['timing']['images_per_second']:.2f} "
              f"images/s on {summary['device']}."),
        ("h", 2, "Per-image Dice"),
        ("img", "dice_hist.png", "histogram of per-image Dice"),
        ("h", 2, "Threshold"),
        ("p", "Dice of these images at other thresholds, for reading only: the threshold used was fixed "
              "before this evaluation, and choosing it here would flatter the scores."),
        ("img", "threshold_curve.png", "Dice vs threshold"),
    ]
    if summary["per_sequence"]:
        seqs = summary["per_sequence"]
        b += [
            ("h", 2, "Per sequence"),
            ("img", "per_sequence.png", "mean Dice per sequence"),
            ("table", ["sequence", "images", "mean Dice"], [[s, v["n"], f"{v['dice']:.3f}"] for s, v in seqs.items()]),
        ]
    if summary.get("gallery"):
        b += [
            ("h", 2, "Worst and best frames"),
            ("p", "Each row: the frame, the ground truth (green), the prediction (yellow)."),
            ("img", "gallery.jpg", "worst and best frames"),
        ]
    return b


def _markdown(blocks) -> str:
    lines = []
    for kind, *a in blocks:
        if kind == "h":
            lines.append("#" * a[0] + " " + a[1])
        elif kind == "p":
            lines.append(a[0])
        elif kind == "table":
            header, rows = a
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
        elif kind == "img":
            lines.append(f"![{a[1]}]({a[0]})")
        lines.append("")
    return "\n".join(lines)


def _html(blocks, folder: Path) -> str:
    body = []
    for kind, *a in blocks:
        if kind == "h":
            body.append(f"<h{a[0]}>{html.escape(a[1])}</h{a[0]}>")
        elif kind == "p":
            body.append(f"<p>{html.escape(a[0]).replace('`', '')}</p>")
        elif kind == "table":
            header, rows = a
            head = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
            cells = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
            body.append(f"<table><tr>{head}</tr>{cells}</table>")
        elif kind == "img":
            data = base64.b64encode((folder / a[0]).read_bytes()).decode("ascii")
            mime = "image/jpeg" if a[0].endswith(".jpg") else "image/png"
            body.append(f'<p><img alt="{html.escape(a[1])}" src="data:{mime};base64,{data}"></p>')
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;line-height:1.4}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left}"
        "img{max-width:100%}"
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>polypseg evaluation</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _sets_table(sets: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """One row per test set: the literature's columns (per-image mDice and mIoU with CIs, the toolbox's
    measures), then how many of its frames the run trained on."""
    header = (["test set", "images", "mDice", "mIoU"] + [label for label, _ in metrics.SOD_MEASURES.values()]
              + ["polyp / free frames", "sensitivity", "specificity", "frame AUC", "flagged free @95% sens.",
                 "trained on"])
    rows = []
    for t in sets:
        seen = t["selection"].get("seen_in_training")
        f = t["frame"]
        rows.append([t["selection"]["name"], str(t["n_images"]), _ci_text(t, "per-image", "dice"),
                     _ci_text(t, "per-image", "iou")]
                    + [f"{t['sod'][k]:.3f}" if t.get("sod") else "-" for k in metrics.SOD_MEASURES]
                    + [f"{f['n_polyp']} / {f['n_polyp_free']}", _pct(f["sensitivity"]), _pct(f["specificity"]),
                       _auc_text(f), _pct(f["fa_at_target"])]
                    + ["?" if seen is None else f"{seen} frames"])
    return header, rows


def _combined_blocks(combined: dict[str, Any]) -> list[tuple]:
    sets = combined["test_sets"]
    first = sets[0]
    header, rows = _sets_table(sets)
    b: list[tuple] = [
        ("h", 1, "polypseg evaluation on several test sets"),
        ("p", f"Run `{combined['run']}`. Threshold {first['threshold']:.2f} ({first['threshold_source']}); "
              f"{_runtime_text(first)}. Model {first['model']['arch']} / {first['model']['encoder']} at "
              f"{first['model']['height']}x{first['model']['width']}; metrics at each image's own size. mDice and "
              "mIoU: per-image Dice and IoU of the polyp class, averaged over images, with 95% bootstrap "
              "intervals; the other columns as the polyp papers' toolbox computes them (pysodmetrics)."),
        ("table", header, rows),
    ]
    for t in sets:
        name = t["selection"]["name"]
        for kind, *a in _blocks(t):
            if kind == "h":
                b.append(("h", a[0] + 1, name if a[0] == 1 else a[1]))
            elif kind == "img":
                b.append(("img", f"{name}/{a[0]}", a[1]))
            else:
                b.append((kind, *a))
    return b


def _write_combined_reports(tmp: Path, combined: dict[str, Any]) -> None:
    blocks = _combined_blocks(combined)
    (tmp / "report.md").write_text(_markdown(blocks))
    (tmp / "report.html").write_text(_html(blocks, tmp))


def _write_reports(tmp: Path, summary: dict[str, Any]) -> None:
    blocks = _blocks(summary)
    (tmp / "report.md").write_text(_markdown(blocks))
    (tmp / "report.html").write_text(_html(blocks, tmp))


def format_sets_table(combined: dict[str, Any]) -> str:
    """One row per test set, aligned for a terminal, with each set's leak below."""
    header, rows = _sets_table(combined["test_sets"])
    lines = text_table([header, *rows])
    first = combined["test_sets"][0]
    lines += ["", f"threshold {first['threshold']:.2f} ({first['threshold_source']}); mDice/mIoU: per-image means "
                  "over polyp frames with masks, with 95% bootstrap intervals",
              f"frame level: verdict '{first['frame']['verdict']}' at operating point "
              f"{first['frame']['operating_point']:.4f} ({first['frame']['operating_point_source']}); frame AUC with "
              "95% bootstrap interval; 'flagged free @95% sens.': read off each set's own ROC"]
    lines += [f"{t['selection']['name']}: {_leak_line(t)}" for t in combined["test_sets"]]
    lines.append(f"report: {Path(combined['out']) / 'report.html'}")
    return "\n".join(lines)


def format_summary_table(summary: dict[str, Any]) -> str:
    """The terminal table: headline per-image mDice and mIoU with CIs, then every metric, then the leak."""
    if "test_sets" in summary:
        return format_sets_table(summary)
    n = summary["n_images"]
    f = summary["frame"]
    frame_line = (f"frame level: {f['n_polyp']} polyp / {f['n_polyp_free']} polyp-free frames; verdict '{f['verdict']}' "
                  f"at {f['operating_point']:.4f}: sensitivity {_pct(f['sensitivity'])}, specificity "
                  f"{_pct(f['specificity'])}, AUC {_auc_text(f)}")
    if summary.get("metrics") is None:
        return "\n".join([f"{n} images: {_what_text(summary)}", frame_line, "", _leak_line(summary),
                          f"report: {Path(summary['out']) / 'report.html'}"])
    width = max(len(label) for label, _ in metrics.METRICS.values()) + 2
    lines = [
        f"{n} images: {_what_text(summary)}",
        f"threshold {summary['threshold']:.2f} ({summary['threshold_source']}), {_runtime_text(summary)}"
        + (f", 95% CIs from {summary['bootstrap']['resamples']} bootstrap resamples" if summary.get("ci") else ""),
        "",
        f"mDice {_ci_text(summary, 'per-image', 'dice')}   mIoU {_ci_text(summary, 'per-image', 'iou')}   "
        "(per-image means, polyp class)",
        f"two-class mIoU (polyp + background) {_ci_text(summary, 'micro', 'miou2')} micro, "
        f"{_ci_text(summary, 'per-image', 'miou2')} per-image",
        "",
        f"{'metric':<{width}}{'per-image mean':<26}micro (pooled pixels)",
    ]
    for k, (label, _) in metrics.METRICS.items():
        lines.append(f"{label:<{width}}{_ci_text(summary, 'per-image', k):<26}{_ci_text(summary, 'micro', k)}")
    hd = summary["hd95"]
    lines.append(f"{'HD95 (pixels)':<{width}}{hd['mean']:.1f} mean, {hd['median']:.1f} median")
    for k, (label, _) in metrics.SOD_MEASURES.items() if summary.get("sod") else ():
        lines.append(f"{label:<{width}}{summary['sod'][k]:.3f}")
    if summary["pranet_mdice"] is not None:
        lines.append(f"{'PraNet mDice (256 thr.)':<{width}}{summary['pranet_mdice']:.3f}")
    lines += ["", frame_line, "", _leak_line(summary), f"report: {Path(summary['out']) / 'report.html'}"]
    return "\n".join(lines)
