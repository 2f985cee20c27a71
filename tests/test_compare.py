"""polypseg compare: paired per-image differences of two evaluations, on hand-made evaluation folders."""

import csv
import json

import numpy as np
import pytest

from polypseg.cli import main
from polypseg.compare import compare
from polypseg.errors import PolypsegError


def _write_set(folder, data, dice: dict[str, float]):
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"data": str(data)}))
    with (folder / "per_image.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "dice", "iou"])
        for i, d in dice.items():
            w.writerow([i, d, d / (2 - d)])


def test_paired_difference_by_hand(tmp_path):
    data = tmp_path / "clinic"
    # A on 4 images; B better by 0.1 on three and worse by 0.2 on one: mean difference (0.3 - 0.2) / 4
    _write_set(tmp_path / "a" / "clinic-test", data, {"1": 0.5, "2": 0.6, "3": 0.7, "4": 0.8})
    _write_set(tmp_path / "b" / "clinic-test", data, {"1": 0.6, "2": 0.7, "3": 0.8, "4": 0.6})
    (row,) = compare(tmp_path / "a", tmp_path / "b", resamples=500)
    assert row["set"] == "clinic-test" and row["images"] == 4
    assert row["a"] == pytest.approx(0.65) and row["b"] == pytest.approx(0.675)
    assert row["diff"] == pytest.approx(0.025)
    assert (row["b_higher"], row["b_lower"]) == (3, 1)
    lo, hi = row["ci"]
    # resampling 4 differences: the interval lies within their range and around the mean
    assert -0.2 - 1e-9 <= lo < 0.025 < hi <= 0.1 + 1e-9


def test_sets_match_by_data_folder_and_image_id(tmp_path):
    kvasir, clinic = tmp_path / "kvasir", tmp_path / "clinic"
    # A evaluated all of a folder, B only its test side; a third folder reuses the ids but is another set
    _write_set(tmp_path / "a" / "kvasir-all", kvasir, {"x": 0.5, "y": 0.5, "z": 0.5})
    _write_set(tmp_path / "a" / "clinic-all", clinic, {"x": 0.9})
    _write_set(tmp_path / "b" / "kvasir-test", kvasir, {"y": 0.7, "z": 0.9})
    rows = compare(tmp_path / "a", tmp_path / "b", resamples=100)
    assert [(r["set"], r["images"]) for r in rows] == [("kvasir-all ~ kvasir-test", 2)]
    assert rows[0]["diff"] == pytest.approx(0.3)
    # any per-image column can be compared
    iou = compare(tmp_path / "a", tmp_path / "b", metric="iou", resamples=100)[0]
    assert iou["a"] == pytest.approx(0.5 / 1.5)


def test_nothing_shared_or_no_evaluation_is_a_clear_error(tmp_path, capsys):
    _write_set(tmp_path / "a" / "s", tmp_path / "one", {"1": 0.5})
    _write_set(tmp_path / "b" / "s", tmp_path / "two", {"1": 0.5})
    with pytest.raises(PolypsegError, match="share no image"):
        compare(tmp_path / "a", tmp_path / "b")
    with pytest.raises(PolypsegError, match="Unknown metric"):
        compare(tmp_path / "a", tmp_path / "b", metric="nope")
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(tmp_path / "empty"), str(tmp_path / "b")]) == 2
    assert "holds no per_image.csv" in capsys.readouterr().err


def test_cli_prints_the_table(tmp_path, capsys):
    rng = np.random.default_rng(0)
    dice = {str(i): float(v) for i, v in enumerate(rng.uniform(0.3, 0.9, 20))}
    _write_set(tmp_path / "a", tmp_path / "d", dice)  # single-set folders
    _write_set(tmp_path / "b", tmp_path / "d", {i: min(1.0, v + 0.05) for i, v in dice.items()})
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "+0.050 (+0.050 to +0.050)" in out and "20 / 0" in out
