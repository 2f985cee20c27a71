"""benchmarks/bench_encoders.py end to end on a tiny untrained encoder: one row per model, fps a number."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_encoders.py"


def test_bench_encoders_prints_one_row_per_encoder():
    done = subprocess.run([sys.executable, str(SCRIPT), "--encoder", "tu-test_efficientnet", "--height", "64",
                           "--width", "96", "--repeats", "1", "--threads", "1"],
                          capture_output=True, text=True, timeout=300, cwd=SCRIPT.parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| tu-")]
    assert len(rows) == 1
    assert re.fullmatch(r"\| tu-test_efficientnet \| untrained, 64x96 \| [0-9.]+ \([0-9.]+-[0-9.]+\) \|", rows[0])


def test_bench_encoders_asks_for_something_to_time():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--encoder or --model" in done.stderr
