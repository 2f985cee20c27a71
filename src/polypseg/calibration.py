"""What a trained model's outputs mean: the mask threshold and the verdict's operating point, chosen on
frames the model never trained on and stored in its checkpoint.

After training, on the run's validation side (``finish_run``: the threshold on its polyp frames, the
operating point for a stated sensitivity where it holds polyp-free frames too). Later, ``calibrate`` does
it again, or chooses the operating point for a stated specificity on folders of polyp-free frames the
model never saw (``--negatives``): the only way for a model whose training used every polyp frame there
is, the shipped ones, to get an operating point that is not "any pixel drawn". Never on test frames.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from .config import Config
from .data import data_folders, index_dataset, load_pair, scan_frames
from .datacheck import usable_pairs
from .errors import PolypsegError
from .files import atomic_write
from .metrics import frame_counts, frame_rates, operating_point_for, operating_point_for_specificity, roc_auc
from .model import read_checkpoint_meta, write_checkpoint_meta
from .progress import progress as progress_lines
from .splits import resolve_split


def calibrate(run: str | Path, sensitivity: float | None = None, choose_threshold: bool | None = None,
              negatives: list[str] | None = None, specificity: float | None = None,
              out: str | Path | None = None) -> Path:
    """Choose the verdict's operating point of a trained model again.

    Without ``negatives``: on the run folder's own validation side (``sensitivity``: the share of validation
    polyp frames to keep flagged; ``choose_threshold``: pick the mask threshold there too, else 0.5; both
    default to the run's), for a run whose training ended early or to move the point. With ``negatives``
    (folders of polyp-free frames the model never trained on): the lowest point that keeps ``specificity``
    of them quiet (see ``calibrate_on_negatives``). Returns the run folder or the checkpoint written."""
    if negatives:
        if sensitivity is not None or choose_threshold is not None:
            raise PolypsegError("--negatives chooses the operating point for a specificity on those frames; "
                                "--sensitivity and --choose-threshold work on a run's validation side. Use one or the other.")
        return calibrate_on_negatives(run, negatives, specificity, out)
    if specificity is not None or out is not None:
        raise PolypsegError("--specificity and -o go with --negatives DIR (polyp-free frames the model never "
                            "trained on). Without it the run's validation side is used, for --sensitivity.")
    run = Path(run)
    if not (run / "split.json").is_file() or not (run / "best.safetensors").is_file():
        raise PolypsegError(f"'{run}' is not a trained run folder (split.json and best.safetensors). For a "
                            "checkpoint or a shipped model, choose its point on polyp-free frames: --negatives DIR "
                            "--specificity S -o OUT.safetensors.")
    if sensitivity is not None and not 0 < sensitivity <= 1:
        raise PolypsegError(f"--sensitivity must lie in (0, 1], got {sensitivity}.")
    cfg = Config.load(run / "config.json")
    if sensitivity is not None:
        cfg = cfg.replace(verdict_sensitivity=float(sensitivity))
    if choose_threshold is not None:
        cfg = cfg.replace(choose_threshold=bool(choose_threshold))
    cfg.save(run / "config.json")
    update_checkpoints(run, {"verdict_sensitivity": cfg.verdict_sensitivity,
                             "choose_threshold": cfg.choose_threshold}, {})
    index = index_dataset(cfg.data, negatives=cfg.negatives)
    split = resolve_split(cfg.replace(split=str(run / "split.json")), index)
    if not split.val:
        raise PolypsegError(f"The run {run} has no validation side to calibrate on.")
    by_id = {p.id: p for p in index.pairs}
    finish_run(run, [by_id[i] for i in split.val])
    return run


def finish_run(run: Path, val_pairs) -> None:
    """After training, on the validation side only: the mask threshold on its polyp frames (with
    ``choose_threshold`` and none given; else 0.5), then, where it holds polyp-free frames too, the
    verdict's operating point (if none was given) for the config's sensitivity; both are stored in the
    best and last checkpoints."""
    cfg = Config.load(run / "config.json")
    polyp_pairs = [p for p in val_pairs if p.mask is not None and p.polyp is not False]
    if cfg.threshold is not None:
        print(f"decision threshold {cfg.threshold:.2f} as given (not chosen on the validation side)")
    elif cfg.choose_threshold and polyp_pairs:
        _choose_threshold(run, polyp_pairs)
    else:
        if read_checkpoint_meta(run / "best.safetensors")["config"].get("threshold") is not None:
            update_checkpoints(run, {"threshold": None}, {"threshold_from": "default"})  # an earlier choice undone
        print("decision threshold 0.50, the default (--choose-threshold picks one on the validation side)")
    if any(p.polyp is False for p in val_pairs):
        if cfg.verdict_threshold is None:
            _choose_operating_point(run, [p for p in val_pairs if p.mask is not None or p.polyp is False])
        else:
            print(f"operating point {cfg.verdict_threshold:.3f} as given (not chosen on the validation side)")


def update_checkpoints(run: Path, changes: dict, metrics: dict) -> None:
    """Config ``changes`` and ``metrics`` written into the run folder's best and last checkpoints."""
    for name in ("best", "last"):
        meta = read_checkpoint_meta(run / f"{name}.safetensors")
        cfg = Config.from_dict(meta["config"]).replace(**changes)
        write_checkpoint_meta(run / f"{name}.safetensors", cfg, meta["epoch"], {**meta["metrics"], **metrics})


def _choose_operating_point(run: Path, val_pairs) -> None:
    """The verdict's operating point: the highest polyp score that keeps ``verdict_sensitivity`` of the
    validation polyp frames flagged. Every score source's frame-level AUC is recorded beside it, so the
    choice of ``verdict`` is made on numbers (docs/training-log.md)."""
    from .predict import Predictor, score_sources

    predictor = Predictor(run / "best.safetensors")
    cfg = predictor.config
    labels, rows = [], []
    for pair in val_pairs:
        image, mask = load_pair(pair)
        pred = predictor.predict(image)
        labels.append(float(mask.any()))
        rows.append(score_sources(pred.prob, pred.head, cfg.decision_threshold))
    labels = np.array(labels)
    sources = {name: np.array([r[name] for r in rows]) for name in rows[0]}
    aucs = {name: roc_auc(v, labels) for name, v in sources.items()}
    point = operating_point_for(sources[cfg.verdict], labels, cfg.verdict_sensitivity)
    rates = frame_rates(frame_counts(sources[cfg.verdict], labels, point))
    metrics = {f"val_frame_auc_{name}": auc for name, auc in aucs.items()}
    metrics.update(operating_point_from="validation", val_frames_polyp=int(labels.sum()),
                   val_frames_polyp_free=int((labels == 0).sum()), val_sensitivity=rates["sensitivity"],
                   val_specificity=rates["specificity"])
    update_checkpoints(run, {"verdict_threshold": point}, metrics)
    shown = ", ".join(f"{name} {auc:.3f}" for name, auc in aucs.items() if auc is not None)
    print(f"verdict '{cfg.verdict}': operating point {point:.4f} chosen on the validation side for sensitivity "
          f"{cfg.verdict_sensitivity:.2f} ({int(labels.sum())} polyp, {int((labels == 0).sum())} polyp-free frames: "
          f"sensitivity {rates['sensitivity']:.3f}, specificity {rates['specificity']:.3f}); frame AUC {shown}")


def _choose_threshold(run: Path, val_pairs) -> None:
    """Pick the decision threshold on the validation side's polyp frames and store it in the checkpoints."""
    from .metrics import choose_threshold
    from .predict import Predictor

    predictor = Predictor(run / "best.safetensors")
    threshold, _curve = choose_threshold(predictor, val_pairs)
    update_checkpoints(run, {"threshold": float(threshold)}, {"threshold_from": "validation"})
    print(f"decision threshold chosen on the validation side: {threshold:.2f}")


def _trained_folders(cfg: Config) -> set[Path]:
    return {Path(d).resolve() for d in [*data_folders(cfg.data), *(cfg.negatives or [])]}


def calibrate_on_negatives(model: str | Path, negatives: list[str], specificity: float | None,
                           out: str | Path | None = None, progress: bool = True) -> Path:
    """The verdict's operating point for ``specificity``: the lowest polyp score at which at most
    ``1 - specificity`` of the polyp-free frames in ``negatives`` are flagged. The folders must be none the
    model trained or validated on. ``model``: a run folder (its best and last checkpoints are updated in
    place unless ``out`` is given), a checkpoint or a shipped model's name (``out`` required: the weights are
    copied byte for byte beside the new JSON, and the ``split.json`` beside them where the folder has none).
    What sensitivity the point keeps is for ``polypseg evaluate`` to say, on polyp frames. Returns the
    checkpoint written (or the run folder)."""
    from .predict import Predictor, resolve_model

    if specificity is None or not 0 < specificity < 1:
        raise PolypsegError("Say which share of the polyp-free frames the operating point keeps quiet: "
                            f"--specificity S with 0 < S < 1 (e.g. 0.95), got {specificity}.")
    weights = resolve_model(str(model))
    folder = Path(model)
    run = folder if all((folder / f"{n}.safetensors").is_file() for n in ("best", "last")) else None
    if run is None and out is None:
        raise PolypsegError(f"'{model}' is not a run folder: say where the calibrated checkpoint goes with "
                            "-o OUT.safetensors (its weights are copied unchanged).")
    if out is not None and Path(out).suffix != ".safetensors":
        raise PolypsegError(f"-o '{out}' must end in .safetensors (its .json is written beside it).")
    meta = read_checkpoint_meta(weights)
    cfg = Config.from_dict(meta["config"])
    seen = _trained_folders(cfg)
    for given in negatives:
        if Path(given).resolve() in seen:
            raise PolypsegError(f"The model trained on '{given}' (its config names it), so an operating point "
                                "chosen there would be too optimistic. Give polyp-free frames it never saw.")
    pairs = [p for given in negatives for p in scan_frames(given, polyp=False).pairs]
    pairs, _ = usable_pairs(pairs, skip_bad=False, what="the polyp-free frames to calibrate on")
    if not pairs:
        raise PolypsegError(f"No frame found in {', '.join(negatives)}.")
    predictor = Predictor(weights)
    scores = np.array([predictor.predict(load_pair(p)[0]).score
                       for p in progress_lines(pairs, desc="calibrate", unit="img", enabled=progress)])
    point = operating_point_for_specificity(scores, np.zeros(len(scores)), specificity)
    flagged = int((scores >= point).sum())
    names = [Path(f).name for f in negatives]
    metrics = {**meta["metrics"], "operating_point_from": "polyp-free frames",
               "operating_point_specificity": float(specificity), "operating_point_frames": len(pairs),
               "operating_point_folders": names, "operating_point_flagged": flagged}
    changes = {"verdict_threshold": point}
    if run is not None and out is None:
        update_checkpoints(run, changes, metrics)
        target = run
    else:
        target = Path(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.resolve() != weights.resolve():
            atomic_write(target, lambda tmp: shutil.copyfile(weights, tmp))
        split = weights.parent / "split.json"  # the split it trained on travels with it (DIR:test in evaluate)
        if split.is_file() and not (target.parent / "split.json").exists():
            atomic_write(target.parent / "split.json", lambda tmp: shutil.copyfile(split, tmp))
        write_checkpoint_meta(target, cfg.replace(**changes), meta["epoch"], metrics)
    print(f"verdict '{cfg.verdict}': operating point {point:.4f} chosen for specificity {specificity:.2f} on "
          f"{len(pairs)} polyp-free frames of {', '.join(names)} ({flagged} flagged, {flagged / len(pairs):.1%}); "
          f"written to {target}. The sensitivity it keeps shows on polyp frames: polypseg evaluate --run {target} "
          "--test-set DIR")
    return target
