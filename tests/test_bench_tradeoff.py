"""benchmarks/bench_tradeoff.py's table and picture from hand-made measurements (no model is run)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_tradeoff.py"


@pytest.fixture(scope="module")
def tradeoff():
    spec = importlib.util.spec_from_file_location("bench_tradeoff", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ROWS = [
    {"candidate": "realtime", "run": "realtime", "Kvasir-SEG test": 0.880, "CVC-ClinicDB test": 0.876,
     "ClinicDB -> all Kvasir-SEG": 0.822, "fps": 34.9, "fps_range": (33.8, 35.2)},
    {"candidate": "big", "run": "runs/big", "Kvasir-SEG test": 0.9012, "CVC-ClinicDB test": 0.9, "fps": 12.04,
     "fps_range": (11.0, 12.5)},
]


def test_table_has_a_row_per_candidate_and_marks_what_was_not_measured(tradeoff):
    lines = tradeoff.table(ROWS).splitlines()
    assert lines[0].split()[0] == "candidate" and set(lines[1]) <= {"-", " "}
    assert lines[2].split() == ["realtime", "0.880", "0.876", "0.822", "34.9", "(33.8-35.2)", "realtime"]
    assert lines[3].split() == ["big", "0.901", "0.900", "-", "12.0", "(11.0-12.5)", "runs/big"]


def test_picture_is_written(tradeoff, tmp_path):
    out = tmp_path / "tradeoff.png"
    tradeoff.draw(ROWS, out, "hand-made")
    image = np.asarray(Image.open(out).convert("RGB"))
    assert image.shape[0] > 300 and image.shape[1] > 500
    assert (image.std(axis=2) > 30).sum() > 100  # coloured markers, not a blank canvas
    assert not list(tmp_path.glob("*.tmp"))


def test_candidate_specs_are_checked(tradeoff):
    assert tradeoff.pairs_of(["a=runs/a", "b=realtime", "q=realtime@x/realtime.int8.onnx"]) == {
        "a": ("runs/a", None), "b": ("realtime", None), "q": ("realtime", "x/realtime.int8.onnx")}
    for bad in ("runs/a", "a=realtime@", "=runs/a"):
        with pytest.raises(SystemExit, match="NAME=RUN"):
            tradeoff.pairs_of([bad])
