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
from dataclasses import replace
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
              out: str | Path | None = None, verdict: str | None = None) -> Path:
    """Choose the verdict's operating point of a trained model again.

    Without ``negatives``: on the run folder's own validation side (``sensitivity``: the share of validation
    polyp frames to keep flagged; ``choose_threshold``: pick the mask threshold there too, else 0.5; both
    default to the run's), for a run whose training ended early or to move the point; ``verdict``: choose
    it for another score source (``Config.verdict``, e.g. ``logit``), the point chosen anew. With ``negatives``
    (folders of polyp-free frames the model never trained on): the lowest point that keeps ``specificity``
    of them quiet (see ``calibrate_on_negatives``). Returns the run folder or the checkpoint written."""
    if negatives:
        if sensitivity is not None or choose_threshold is not None:
            raise PolypsegError("--negatives chooses the operating point for a specificity on those frames; "
                                "--sensitivity and --choose-threshold work on a run's validation side. Use one or the other.")
        return calibrate_on_negatives(run, negatives, specificity, out, verdict=verdict)
    if verdict is not None:
        _set_verdict(run, verdict)
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
    if read_checkpoint_meta(run / "best.safetensors")["metrics"].get("operating_point_from") and cfg.operating_point is not None:
        cfg = cfg.replace(operating_point=None)  # a point chosen before (not one given): chosen again below
        update_checkpoints(run, {"operating_point": None}, {})
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


def _set_verdict(run: str | Path, verdict: str) -> None:
    """The run folder's (or checkpoint's) verdict set to ``verdict``, its operating point cleared (to be
    chosen again)."""
    run = Path(run)
    if not (run / "best.safetensors").is_file():
        raise PolypsegError(f"--verdict changes a run folder's score source; '{run}' is not a run folder. For a "
                            "checkpoint or a shipped model, copy it with --negatives ... -o OUT first.")
    Config.load(run / "config.json").replace(verdict=verdict)  # checked before anything is written
    update_checkpoints(run, {"verdict": verdict, "operating_point": None}, {})


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
        if cfg.operating_point is None:
            _choose_operating_point(run, [p for p in val_pairs if p.mask is not None or p.polyp is False])
        else:
            print(f"operating point {cfg.operating_point:.3f} as given (not chosen on the validation side)")


SHARED_KEYS = ("operating_point", "verdict")  # what config.json and the checkpoints always agree on


def update_checkpoints(run: Path, changes: dict, metrics: dict) -> None:
    """Config ``changes`` and ``metrics`` written into the run folder's best and last checkpoints; the verdict
    and its operating point into ``config.json`` too, so that all three hold the same point (a chosen mask
    threshold stays in the checkpoints: config.json keeps what was given)."""
    for name in ("best", "last"):
        meta = read_checkpoint_meta(run / f"{name}.safetensors")
        cfg = Config.from_dict(meta["config"]).replace(**changes)
        write_checkpoint_meta(run / f"{name}.safetensors", cfg, meta["epoch"], {**meta["metrics"], **metrics})
    shared = {k: v for k, v in changes.items() if k in SHARED_KEYS}
    if (run / "config.json").is_file() and shared:
        Config.load(run / "config.json").replace(**shared).save(run / "config.json")


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
    update_checkpoints(run, {"operating_point": point}, metrics)
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
                           out: str | Path | None = None, progress: bool = True, verdict: str | None = None) -> Path:
    """The verdict's operating point for ``specificity``: the lowest polyp score at which at most
    ``1 - specificity`` of the polyp-free frames in ``negatives`` are flagged. The folders must be none the
    model trained or validated on. ``model``: a run folder (its best and last checkpoints are updated in
    place unless ``out`` is given), a checkpoint or a shipped model's name (``out`` required: the weights are
    copied byte for byte beside the new JSON, and the ``split.json`` beside them where the folder has none).
    ``verdict``: the score source to choose the point for (default: the model's).
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
    if verdict is not None:
        cfg = cfg.replace(verdict=verdict, operating_point=None)
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
    predictor.config = cfg
    scores = np.array([predictor.predict(load_pair(p)[0]).score
                       for p in progress_lines(pairs, desc="calibrate", unit="img", enabled=progress)])
    point = operating_point_for_specificity(scores, np.zeros(len(scores)), specificity)
    flagged = int((scores >= point).sum())
    names = [Path(f).name for f in negatives]
    metrics = {**meta["metrics"], "operating_point_from": "polyp-free frames",
               "operating_point_specificity": float(specificity), "operating_point_frames": len(pairs),
               "operating_point_folders": names, "operating_point_flagged": flagged}
    changes = {"operating_point": point, "verdict": cfg.verdict}
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


def validation_polyp_scores(weights: Path, predictor, progress: bool = True) -> np.ndarray | None:
    """The polyp scores of the model's own validation polyp frames (its run's split.json, beside the weights),
    or None when it has no validation side or its data is not on this machine."""
    split_file = weights.parent / "split.json"
    if not split_file.is_file():
        return None
    cfg = predictor.config
    try:
        index = index_dataset(cfg.data)
        split = resolve_split(cfg.replace(split=str(split_file), negatives=[]), index)
    except (PolypsegError, KeyError):  # the data is elsewhere, or not the data the split names
        return None
    by_id = {p.id: p for p in index.pairs}
    pairs = [by_id[i] for i in split.val if i in by_id and by_id[i].mask is not None and by_id[i].polyp is not False]
    if not pairs:
        return None
    scores = [predictor.predict(load_pair(p)[0]).score
              for p in progress_lines(pairs, desc="validation polyp frames", unit="img", enabled=progress)]
    return np.array(scores, np.float64)


def calibrate_site(model: str | Path, name: str, sources: list[str | Path], *,
                   false_alerts_per_minute: float | None = None, flagged_share: float | None = None,
                   onset_ms: float | None = None, fps: float | None = None, precision: str = "fp32",
                   progress: bool = True):
    """A site profile for ``model`` (run folder, checkpoint or shipped name): every frame of ``sources`` (the
    site's polyp-free exam videos or folders of polyp-free frames; a folder's frames are timed at ``fps``,
    default 25) scored, then ``sites.choose`` for the target, with the sensitivity on the model's validation
    polyp frames where it has them. Saved beside the weights (``sites.site_path``); returns (profile, path)."""
    from .media import open_source
    from .predict import Predictor, resolve_model
    from .runtime import file_sha256
    from . import sites

    sites.check_name(name)
    if not sources:
        raise PolypsegError("Give the site's polyp-free video (--site-video CLIP, repeatable) or folders of its "
                            "polyp-free frames.")
    weights = resolve_model(str(model))
    predictor = Predictor(weights, backend="torch" if precision == "fp32" else "onnxruntime", precision=precision)
    clips = []
    for source in sources:
        src = open_source(source)
        if fps:
            src.fps = fps
        times, scores = [], []
        try:
            for _index, image, t_ms in progress_lines(src.frames(), desc=f"site {Path(str(source)).name}", unit="frame", total=src.total,
                                                      enabled=progress):
                if isinstance(image, np.ndarray):
                    times.append(t_ms)
                    scores.append(predictor.predict(image).score)
        finally:
            src.close()
        if not scores:
            raise PolypsegError(f"No frame of {source} could be read.")
        clips.append(sites.Clip(np.array(times, np.float64), np.array(scores, np.float64)))
    polyp_scores = validation_polyp_scores(weights, predictor, progress)
    profile = sites.choose(name, clips, polyp_scores, false_alerts_per_minute=false_alerts_per_minute,
                           flagged_share=flagged_share, onset_ms=onset_ms)
    profile = replace(profile, verdict=predictor.config.verdict, model_sha256=file_sha256(weights),
                      sources=[str(s) for s in sources])
    return profile, sites.save(profile, weights)
