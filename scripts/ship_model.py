"""Write a finished `polypseg reproduce` run's best checkpoint as the shipped real-time model: fp16
safetensors + JSON in src/polypseg/pretrained/, its test metrics copied into the JSON, and the run's
split.json beside it (so `evaluate` and `export --int8` use the frames the model never saw).

Usage: .venv/bin/python scripts/ship_model.py runs/results/lite0-sequence-e40
Then check the fp16 file gives the run's figures (the test side of the split.json beside it):
  polypseg evaluate --run src/polypseg/pretrained/realtime.safetensors --data DATA -o runs/eval-shipped
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from polypseg.files import atomic_write_text
from polypseg.model import load_checkpoint, read_checkpoint_meta, save_checkpoint

OUT = Path(__file__).resolve().parents[1] / "src" / "polypseg" / "pretrained" / "realtime.safetensors"


def ship(run: Path, out: Path = OUT) -> Path:
    summary = json.loads((run / "eval-test" / "summary.json").read_text())
    split = json.loads((run / "split.json").read_text())
    model, cfg = load_checkpoint(run / "best.safetensors")
    meta = read_checkpoint_meta(run / "best.safetensors")
    per_image, micro = summary["metrics"]["per-image"], summary["metrics"]["micro"]
    n_seq = len({split["sequences"][i] for i in split["test"]}) if split.get("sequences") else "?"
    metrics = {
        **meta["metrics"],
        "test_mdice_per_image": per_image["dice"],
        "test_miou_per_image": per_image["iou"],
        "test_two_class_miou_micro": micro["miou2"],
        "test_split": f"{split['strategy']} (seed {split.get('seed', '?')}), {len(split['test'])} frames of "
        f"{n_seq} sequences, none seen in training"
        if summary["selection"].get("leak", {}).get("train_test") == 0
        else f"{split['strategy']}, {len(split['test'])} frames (sequences on both sides)",
    }
    atomic_write_text(out.parent / "split.json", (run / "split.json").read_text())
    return save_checkpoint(model, cfg, out, epoch=meta["epoch"], metrics=metrics, half=True)


if __name__ == "__main__":
    print(ship(Path(sys.argv[1])))
