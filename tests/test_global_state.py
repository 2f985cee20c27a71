"""Importing or calling polypseg leaves the process as it found it: matplotlib's backend, torch's thread
count, warnings filters, logging levels and handlers. Checked in a fresh interpreter, so that imports count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polypseg

SRC = Path(polypseg.__file__).resolve().parents[1]

SCRIPT = r"""
import importlib, json, logging, pathlib, sys, warnings
# Third-party packages first: what they do on import is theirs, not polypseg's.
import cv2, lightning, lightning.pytorch.callbacks, lightning.pytorch.loggers, matplotlib, numpy, onnxruntime
import scipy.ndimage, segmentation_models_pytorch, timm, torch, albumentations, tifffile, tqdm, safetensors.torch, av
matplotlib.use("svg")  # a backend of the caller's choosing, not the one polypseg would pick
torch.set_num_threads(2)

def state():
    loggers = {name: (lg.level, len(lg.handlers), lg.propagate)
               for name, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    return {"backend": matplotlib.get_backend().lower(), "threads": torch.get_num_threads(),
            "filters": [repr(f) for f in warnings.filters],
            "root": (logging.root.level, len(logging.root.handlers)), "loggers": loggers}

before = state()
package = pathlib.Path(sys.argv[1])
for path in sorted(p for p in package.glob("*.py") if p.stem != "__main__"):  # __main__ runs the CLI
    importlib.import_module("polypseg" + ("" if path.stem == "__init__" else "." + path.stem))
after_import = state()

from polypseg.config import Config
from polypseg.model import build_model, save_checkpoint
from polypseg.predict import Predictor
from polypseg.train import plot_curves
out = pathlib.Path(sys.argv[2])
plot_curves([{"epoch": 0, "train_loss": 1.0, "val_loss": 1.1, "val_dice": 0.2, "val_iou": 0.1},
             {"epoch": 1, "train_loss": 0.8, "val_loss": 0.9, "val_dice": 0.3, "val_iou": 0.2}], out / "curve.png")
cfg = Config(encoder="tu-test_efficientnet", encoder_weights="none", height=64, width=96)
save_checkpoint(build_model(cfg), cfg, out / "best")
Predictor(out / "best.safetensors", threads=1).predict_prob(numpy.zeros((50, 70, 3), numpy.uint8))
after_calls = state()
# Loggers created by the imports (new names) do not count; levels and handlers of the existing ones do.
def changed(a, b):
    diff = {k: v for k, v in a.items() if k != "loggers" and b[k] != v}
    diff.update({name: (lv, b["loggers"][name]) for name, lv in a["loggers"].items() if b["loggers"].get(name) != lv})
    new = {name: lv for name, lv in b["loggers"].items() if name not in a["loggers"]
           and name.split(".")[0] != "polypseg" and (lv[0] != 0 or lv[1])}
    diff.update({f"new {name}": lv for name, lv in new.items()})
    return diff
print(json.dumps({"import": repr(changed(before, after_import)), "calls": repr(changed(after_import, after_calls)),
                  "curve": (out / "curve.png").stat().st_size > 0}))
"""


def test_import_and_calls_leave_global_state_alone(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env.pop("MPLBACKEND", None)
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(SRC / "polypseg"), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"import": "{}", "calls": "{}", "curve": True}
