"""The main job: train a recipe on its split, evaluate the test side, print the results table."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from .config import Config
from .evaluate import evaluate, format_summary_table
from .train import train


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA), torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}"


def reproduce(cfg: Config, out_dir: str | Path, tta: bool = False, device: str = "cpu") -> dict:
    """Train ``cfg`` into ``out_dir``, evaluate its test side, print the table; returns the summary.

    The wall times and the machine go into ``RUN/reproduce.json`` beside the evaluation.
    """
    start = time.time()
    run = train(cfg, out_dir)
    trained = time.time() - start
    summary = evaluate(run, tta=tta, device=device)
    record = {
        "train_seconds": round(trained, 1),
        "total_seconds": round(time.time() - start, 1),
        "machine": machine(),
        "evaluation": summary["out"],
    }
    (Path(run) / "reproduce.json").write_text(json.dumps(record, indent=2) + "\n")
    print()
    print(format_summary_table(summary))
    print(f"training: {trained / 60:.1f} min on {record['machine']}; run folder: {run}")
    return summary
