"""Evaluate a trained run on the test side of a split, or on every pair of a folder, and report.

Outputs (one folder, written into a temporary folder beside it and renamed at the end):
``per_image.csv``, ``summary.json``, ``report.md`` (with its figure files) and a self-contained
``report.html`` (figures embedded). The decision threshold is the checkpoint's (0.5, or chosen on
the validation side by ``train --choose-threshold``) or a given one: never chosen on the evaluated images.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics
from .data import Pair, index_dataset, load_pair, scan_frames
from .media import read_image
from .datacheck import usable_pairs
from .errors import PolypsegError
from .config import Config
from .files import check_writable
from .model import read_checkpoint_meta
from .predict import Predictor, resolve_model, score_sources
from .progress import progress as progress_lines
from .report import write_combined_reports, write_figures, write_frame_figures, write_reports
from .splits import SIDES, leak_sentence, leak_text, load_split, split_pairs, with_index

SUMMARY_FORMAT = "polypseg-eval/1"
# The keyword options of evaluate() and evaluate_sets(), with their defaults.
EVAL_OPTIONS: dict[str, Any] = dict(tta=False, threshold=None, bootstrap=1000, pranet_mdice=False, gallery=8,
                                    device="cpu", seed=0, progress=True, skip_bad=False, backend="torch", onnx=None,
                                    precision="fp32")


def _prepare(run, runtime: dict[str, Any], threshold: float | None, bootstrap: int):
    """(predictor, checkpoint file, threshold, where the threshold came from), the inputs checked.
    ``runtime``: how the model runs (tta, device, backend, onnx, precision), as the summary records it; the
    ONNX file and the precision that ran are written back into it."""
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise PolypsegError(f"The threshold must lie between 0 and 1, got {threshold}.")
    if bootstrap < 0:
        raise PolypsegError(f"The number of bootstrap resamples must be 0 or more, got {bootstrap}.")
    weights = resolve_model(run)
    predictor = Predictor(weights, device=runtime["device"], tta=runtime["tta"], backend=runtime["backend"],
                          onnx_path=runtime["onnx"], precision=runtime["precision"])
    runtime.update(onnx=None if predictor.onnx_path is None else str(predictor.onnx_path), precision=predictor.precision)
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
    precision: str = "fp32",
) -> dict[str, Any]:
    """Evaluate ``run`` and write its evaluation folder; returns the summary (as in summary.json).

    Images: the test side of the run's ``split.json`` (or of ``split``), or with ``all_pairs`` every
    pair of ``data`` (default: the run's data folder), of any size: the model sees each frame at its
    input size, the metrics compare at the frame's own size. ``bootstrap``: resamples for the 95%
    intervals (0: none), drawn with ``seed``. ``gallery``: how many frames (half best, half worst)
    the report shows. A run trained on several folders is evaluated on each folder's test side
    (``evaluate_sets``). Unreadable pairs are an error, or left out (and listed) with ``skip_bad``.
    ``backend``/``onnx``/``precision``: evaluate the model as it is deployed, e.g. ``onnxruntime`` with
    its int8 file (``precision="int8"``, or that file as ``onnx``).
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
                             progress=progress, skip_bad=skip_bad, backend=backend, onnx=onnx, precision=precision)
    runtime = dict(tta=tta, device=device, backend=backend, onnx=onnx, precision=precision)
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
    write_reports(folder, summary)
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
    runtime = {k: o[k] for k in ("tta", "device", "backend", "onnx", "precision")}
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
        write_combined_reports(tmp, combined)
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
            "top_logit": sources["logit"], "area_at_threshold": sources["area"], **{k: None for k in SEG_COLUMNS},
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
    summary["gallery"] = (write_figures(tmp, seg_rows, summary, threshold, predictor, seg_pairs, gallery)
                          if seg_rows else [])
    summary["false_alarm_gallery"] = write_frame_figures(tmp, rows, summary, threshold, predictor, pairs, gallery)
    return summary


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
    sources = {"logit": "top_logit", "peak": "peak_probability", "area": "area_at_threshold"}
    if rows and rows[0]["head_score"] is not None:
        sources["head"] = "head_score"
    out["auc_by_source"] = {name: metrics.roc_auc(np.array([r[col] for r in rows], np.float64), labels)
                            for name, col in sources.items()}
    free = labels == 0
    if free.any():
        area = np.array([r["shown_area"] for r in rows])[free]
        out["polyp_free_drawn"] = float((area > 0).mean())
        out["polyp_free_drawn_visible"] = float((area >= metrics.VISIBLE_AREA).mean())
    if out["auc"] is not None:
        out["roc"] = metrics.roc_points(score, labels)
        out["auc_ci"] = metrics.roc_auc_ci(score, labels, bootstrap, seed) if bootstrap else None
        point = metrics.operating_point_for(score, labels, TARGET_SENSITIVITY)
        out["fa_at_target"] = metrics.frame_rates(metrics.frame_counts(score, labels, point))["false_alarm_rate"]
    # polyp-free frames flagged, sequence by sequence (at the operating point, and at the 95% reading)
    by_sequence: dict[str, list[float]] = {}
    for r, s in zip(rows, score):
        if not r["polyp"] and r["sequence"] not in (None, ""):
            by_sequence.setdefault(str(r["sequence"]), []).append(s)
    out["flagged_by_sequence"] = {
        seq: {"frames": len(v), "flagged": float((np.array(v) >= predictor.operating_point).mean()),
              "flagged_at_target": None if out["auc"] is None else float((np.array(v) >= point).mean())}
        for seq, v in sorted(by_sequence.items(), key=lambda kv: (len(kv[0]), kv[0]))}
    return out


def _operating_point_source(predictor: Predictor) -> str:
    cfg = predictor.config
    if cfg.operating_point is None:
        return "default (no validation choice)"
    meta = read_checkpoint_meta(predictor.checkpoint) if predictor.checkpoint is not None else {}
    chosen = meta.get("metrics", {})
    if chosen.get("operating_point_from") == "validation":
        return f"chosen on the validation side for sensitivity {cfg.verdict_sensitivity:.2f}"
    if chosen.get("operating_point_from") == "polyp-free frames":
        return (f"chosen for specificity {chosen['operating_point_specificity']:.2f} on "
                f"{chosen['operating_point_frames']} polyp-free frames of {', '.join(chosen['operating_point_folders'])}")
    return "given"


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
