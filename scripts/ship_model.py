"""Write a finished `polypseg reproduce` run's best checkpoint as the shipped real-time model: fp16
safetensors + JSON in src/polypseg/pretrained/, its test metrics copied into the JSON, and the run's
split.json beside it (so `evaluate` and `export --int8` use the frames the model never saw).

Usage: .venv/bin/python scripts/ship_model.py RUN [NAME]   (evaluated: RUN/eval-test or RUN/eval-sets;
NAME: the shipped model's name, default realtime; every shipped model shares the one split.json, so a run
trained on another split is refused)
Then check the fp16 file gives the run's figures (the test side of the split.json beside it):
  polypseg evaluate --run src/polypseg/pretrained/realtime.safetensors --data DATA -o runs/eval-shipped
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from polypseg.files import atomic_write_text
from polypseg.model import load_checkpoint, read_checkpoint_meta, save_checkpoint

SHELF = Path(__file__).resolve().parents[1] / "src" / "polypseg" / "pretrained"


def _single_test_metrics(summary: dict, split: dict) -> dict:
    per_image, micro = summary["metrics"]["per-image"], summary["metrics"]["micro"]
    n_seq = len({split["sequences"][i] for i in split["test"]}) if split.get("sequences") else "?"
    return {
        "test_mdice_per_image": per_image["dice"],
        "test_miou_per_image": per_image["iou"],
        "test_two_class_miou_micro": micro["miou2"],
        "test_split": f"{split['strategy']} (seed {split.get('seed', '?')}), {len(split['test'])} frames of "
        f"{n_seq} sequences, none seen in training"
        if summary["selection"].get("leak", {}).get("train_test") == 0
        else f"{split['strategy']}, {len(split['test'])} frames (sequences on both sides)",
    }


def _sets_test_metrics(combined: dict, split: dict) -> dict:
    """A run trained on several folders: mDice and mIoU of each folder's test side."""
    out = {"test_split": f"{split['strategy']} (seed {split.get('seed', '?')}) of {', '.join(split['folders'])}"}
    for t in combined["test_sets"]:
        name = t["selection"]["name"]
        if t.get("metrics"):  # sets of polyp-free frames (or polyp frames without masks) have none
            out[f"test_mdice_per_image_{name}"] = t["metrics"]["per-image"]["dice"]
            out[f"test_miou_per_image_{name}"] = t["metrics"]["per-image"]["iou"]
        frame = t.get("frame") or {}
        for key in ("sensitivity", "specificity", "auc", "fa_at_target"):
            if frame.get(key) is not None:
                out[f"test_frame_{key}_{name}"] = frame[key]
    return out


def ship(run: Path, name: str = "realtime") -> Path:
    out = SHELF / f"{name}.safetensors"
    split = json.loads((run / "split.json").read_text())
    shared = out.parent / "split.json"
    if shared.is_file() and any(json.loads(shared.read_text())[k] != split[k] for k in ("train", "val", "test")):
        raise SystemExit(f"{run} was trained on another split than the shipped models' {shared}")
    if (run / "eval-sets" / "summary.json").is_file():
        test = _sets_test_metrics(json.loads((run / "eval-sets" / "summary.json").read_text()), split)
    else:
        test = _single_test_metrics(json.loads((run / "eval-test" / "summary.json").read_text()), split)
    model, cfg = load_checkpoint(run / "best.safetensors")
    meta = read_checkpoint_meta(run / "best.safetensors")
    if not shared.is_file():
        atomic_write_text(shared, (run / "split.json").read_text())
    # A run without a validation side logs NaN for it: leave those out (JSON has no NaN).
    kept = {k: v for k, v in meta["metrics"].items() if not (isinstance(v, float) and math.isnan(v))}
    return save_checkpoint(model, cfg, out, epoch=meta["epoch"], metrics={**kept, **test}, half=True)


if __name__ == "__main__":
    print(ship(Path(sys.argv[1]), *sys.argv[2:3]))
