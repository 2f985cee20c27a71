"""Print the Markdown results table of finished `polypseg reproduce` runs, and for k-fold runs of one model
the mean and spread over folds and the metrics of all their test frames pooled (each frame tested once).

Usage: .venv/bin/python scripts/results_table.py runs/results/*   (each a run folder with eval-test/)
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from polypseg.metrics import bootstrap_ci, reduce


def ci(summary: dict, metric: str) -> str:
    value = summary["metrics"]["per-image"][metric]
    bounds = (summary.get("ci") or {}).get("per-image", {}).get(metric)
    return f"{value:.3f} ({bounds[0]:.3f}-{bounds[1]:.3f})" if bounds else f"{value:.3f}"


def row(run: Path) -> str:
    summary = json.loads((run / "eval-test" / "summary.json").read_text())
    record = json.loads((run / "reproduce.json").read_text()) if (run / "reproduce.json").is_file() else {}
    cfg = summary["model"]
    split = json.loads((run / "split.json").read_text())
    leak = summary["selection"].get("leak") or {}
    straddle = leak.get("train_test", "?")
    n_seq = len(set((split.get("sequences") or {}).values())) or "?"
    protocol = split["strategy"] + (f" fold {split['fold']}" if split.get("fold") is not None else "")
    sizes = f"{len(split['train'])}/{len(split['val'])}/{len(split['test'])}"
    model = f"{cfg['arch']} / {cfg['encoder'].removeprefix('tu-')} ({cfg['encoder_weights']}) {cfg['height']}x{cfg['width']}"
    m = summary["metrics"]
    minutes = record.get("train_seconds", float("nan")) / 60
    return (
        f"| {protocol} | {sizes} | {straddle} of {n_seq} | {model} | {cfg['epochs']} | {ci(summary, 'dice')} | "
        f"{ci(summary, 'iou')} | {m['micro']['iou']:.3f} | {m['per-image']['miou2']:.3f} | {m['micro']['miou2']:.3f} | "
        f"{summary['threshold']:.2f} | {minutes:.1f} | `{run.name}` |"
    )


HEADER = (
    "| protocol | train/val/test frames | sequences on train and test | model (weights) input | epochs "
    "| mDice per-image (95% CI) | mIoU per-image (95% CI) | polyp IoU micro | two-class mIoU per-image "
    "| two-class mIoU micro | threshold | train min | run |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)

def model_name(summary: dict) -> str:
    cfg = summary["model"]
    return (f"{cfg['arch']} / {cfg['encoder'].removeprefix('tu-')} ({cfg['encoder_weights']}) "
            f"{cfg['height']}x{cfg['width']}, {cfg['epochs']} epochs")


def kfold_summary(runs: list[Path]) -> str:
    """Mean (sample SD, range) of the folds' per-image mDice and mIoU, and the per-image metrics of every
    fold's test frames pooled, with a bootstrap CI over those frames."""
    folds = [json.loads((r / "eval-test" / "summary.json").read_text()) for r in runs]
    lines = []
    for metric, label in (("dice", "mDice"), ("iou", "mIoU")):
        values = [f["metrics"]["per-image"][metric] for f in folds]
        lines.append(f"{label} per fold: mean {statistics.mean(values):.3f}, SD {statistics.stdev(values):.3f}, "
                     f"range {min(values):.3f}-{max(values):.3f} ({', '.join(f'{v:.3f}' for v in values)})")
    counts = []
    for r in runs:
        with open(r / "eval-test" / "per_image.csv", newline="") as f:
            counts += [[int(row[k]) for k in ("tp", "fp", "fn", "tn")] for row in csv.DictReader(f)]
    counts = np.array(counts)
    pooled, bounds = reduce(counts, "per-image"), bootstrap_ci(counts, "per-image")
    text = ", ".join(f"{label} {pooled[m]:.3f} ({bounds[m][0]:.3f}-{bounds[m][1]:.3f})"
                     for m, label in (("dice", "mDice"), ("iou", "mIoU"), ("miou2", "two-class mIoU")))
    lines.append(f"all {len(counts)} test frames of the {len(runs)} folds pooled, per image: {text}")
    return "\n".join(f"- {line}" for line in lines)


if __name__ == "__main__":
    print(HEADER)
    kfold = defaultdict(list)
    for arg in sys.argv[1:]:
        run = Path(arg)
        if (run / "eval-test" / "summary.json").is_file():
            print(row(run))
            if json.loads((run / "split.json").read_text())["strategy"] == "kfold":
                kfold[model_name(json.loads((run / "eval-test" / "summary.json").read_text()))].append(run)
    for name, runs in kfold.items():
        if len(runs) > 1:
            print(f"\nk-fold by sequence, {name}, {len(runs)} folds:\n{kfold_summary(runs)}")
