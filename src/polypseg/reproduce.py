"""The main job: train a recipe on its split, evaluate the test side, print the results table."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from .config import Config
from .evaluate import evaluate
from .report import format_summary_table
from .files import atomic_write_text
from .train import train


def machine() -> str:
    """The hardware a figure was measured on, in words."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA), torch {torch.__version__}"
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} cores, torch {torch.__version__}"


def reproduce(cfg: Config, out_dir: str | Path, tta: bool = False, device: str = "cpu") -> dict:
    """Train ``cfg`` into ``out_dir``, evaluate its test side, print the table; returns the summary.

    The wall times and the machine go into ``RUN/reproduce.json`` beside the evaluation.
    """
    start = time.time()
    progress = sys.stderr.isatty()  # progress bars in a terminal, clean lines in a log file
    run = train(cfg, out_dir, progress=progress)
    trained = time.time() - start
    summary = evaluate(run, tta=tta, device=device, progress=progress)
    record = {
        "train_seconds": round(trained, 1),
        "total_seconds": round(time.time() - start, 1),
        "machine": machine(),
        "evaluation": summary["out"],
    }
    atomic_write_text(Path(run) / "reproduce.json", json.dumps(record, indent=2) + "\n")
    print()
    print(format_summary_table(summary))
    print(f"training: {trained / 60:.1f} min on {record['machine']}; run folder: {run}")
    return summary
