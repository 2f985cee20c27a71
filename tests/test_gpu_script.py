"""scripts/gpu.sh --smoke: the GPU run's every step (install check, train the accurate recipe, evaluate,
time every model) end to end on the CPU with a tiny network, into a results folder that appears whole."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _gpu_sh(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["bash", str(REPO / "scripts" / "gpu.sh"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_smoke_mode_runs_every_step_into_one_results_folder(tmp_path):
    out = tmp_path / "results"
    proc = _gpu_sh("--smoke", "-o", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not Path(f"{out}.partial").exists()
    for name in ("realtime-gpu", "accurate-gpu"):  # both recipes trained and evaluated
        assert (out / name / "best.safetensors").is_file() or (out / name / "last.safetensors").is_file()
        config = json.loads((out / name / "config.json").read_text())
        # the hospitals presets: structure loss, polyp-free frames and views, the hospitals' artefacts, logit verdict
        assert config["encoder"] == "tu-test_efficientnet" and config["loss"] == "structure"
        assert (config["polyp_free_views"], config["augment"], config["verdict"]) == (True, "hospitals", "logit")
        assert config["negatives"] and config["negatives"][0].endswith("hyperkvasir-negatives")
        summary = json.loads((out / f"{name}-eval" / "summary.json").read_text())
        assert 0.0 <= summary["test_sets"][0]["metrics"]["per-image"]["dice"] <= 1.0
    rows = list(csv.DictReader((out / "timing.csv").open()))
    timed = {(r["model"], r["batch"], r["runtime"]) for r in rows if r["median_ms"]}
    for model in ("realtime", "accurate", "realtime-gpu", "accurate-gpu"):  # the shipped ones and the two trained
        for batch in ("1", "2"):
            assert {(model, batch, "torch eager fp32"), (model, batch, "onnxruntime CPU")} <= timed
    assert all(float(r["images_per_s"]) > 0 for r in rows if r["median_ms"])
    assert "done: results in" in (out / "gpu.log").read_text()

    again = _gpu_sh("--smoke", "-o", str(out))  # never over an earlier result
    assert again.returncode == 2 and "already exists" in again.stderr


def test_unknown_option_is_refused():
    proc = _gpu_sh("--fast")
    assert proc.returncode == 2 and "unknown option '--fast'" in proc.stderr
