"""Print the Markdown results table of finished `polypseg reproduce` runs.

Usage: .venv/bin/python scripts/results_table.py runs/results/*   (each a run folder with eval-test/)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


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

if __name__ == "__main__":
    print(HEADER)
    for arg in sys.argv[1:]:
        run = Path(arg)
        if (run / "eval-test" / "summary.json").is_file():
            print(row(run))
