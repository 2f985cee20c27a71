"""Several data sets in one run: PraNet sides without sequences, joined indexes, per-folder splits and
leaks, a user's own split list, evaluation on several test sets, and the toolbox measures."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polypseg.cli import main
from polypseg.config import PRESETS, Config, from_preset
from polypseg.data import index_dataset
from polypseg.errors import PolypsegError
from polypseg.metrics import SodMeasures
from polypseg.splits import SIDES, load_split, make_split, save_split, with_index

CLINIC = ("001", "002", "026", "027", "051", "052", "068", "069")  # sequences 1, 1, 2, 2, 3, 3, 4, 4
CLINIC_TEST = ("026", "069")


def clinic_like(data_dir: Path, root: Path) -> Path:
    """A few CVC-ClinicDB frames with sequences.csv and PraNet marks (two of them test)."""
    for kind in ("images", "masks"):
        (root / kind).mkdir(parents=True)
        for f in CLINIC:
            shutil.copy(data_dir / kind / f"{f}.png", root / kind / f"{f}.png")
    seq = {r["id"]: r["sequence"] for r in csv.DictReader(open(data_dir / "sequences.csv"))}
    rows = ["id,sequence,pranet_split"] + [f"{f},{seq[f]},{'test' if f in CLINIC_TEST else 'train'}" for f in CLINIC]
    (root / "sequences.csv").write_text("\n".join(rows) + "\n")
    return root


def kvasir_like(data_dir: Path, root: Path) -> Path:
    """Kvasir-SEG as distributed: JPEGs of mixed sizes with noisy JPEG masks, pranet_split.csv, no sequences."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    names = ["cju0a", "cju0b", "cju0c", "cju0d"]
    for name, frame, size in zip(names, ("100", "200", "300", "400"), [(330, 480), (620, 530), (500, 500), (384, 288)]):
        Image.open(data_dir / "images" / f"{frame}.png").resize(size).save(root / "images" / f"{name}.jpg", quality=90)
        Image.open(data_dir / "masks" / f"{frame}.png").convert("RGB").resize(size).save(root / "masks" / f"{name}.jpg")
    (root / "pranet_split.csv").write_text("id,pranet_split\ncju0a,train\ncju0b,train\ncju0c,test\ncju0d,train\n")
    return root


@pytest.fixture
def two_folders(data_dir, tmp_path) -> tuple[Path, Path]:
    return clinic_like(data_dir, tmp_path / "clinic"), kvasir_like(data_dir, tmp_path / "kvasir")


def test_pranet_split_csv_gives_sides_without_sequences(two_folders):
    index = index_dataset(two_folders[1])
    assert not index.has_sequences
    assert index.pranet == {"cju0a": "train", "cju0b": "train", "cju0c": "test", "cju0d": "train"}
    split = make_split(index, "pranet")
    assert (split.train, split.test) == (["cju0a", "cju0b", "cju0d"], ["cju0c"])
    assert not split.leak["known"]


def test_two_folders_are_read_together_with_qualified_ids(two_folders):
    clinic, kvasir = two_folders
    index = index_dataset([clinic, kvasir])
    assert len(index.pairs) == len(CLINIC) + 4
    assert index.pairs[0].id == "clinic/001" and index.pairs[-1].id == "kvasir/cju0d"
    assert {p.source for p in index.pairs} == {"clinic", "kvasir"}
    assert list(index.sources) == ["clinic", "kvasir"]
    with pytest.raises(PolypsegError, match="same name"):
        index_dataset([clinic, clinic])


def test_pranet_split_of_two_folders_keeps_each_folders_sides_and_leak(two_folders, tmp_path):
    index = index_dataset(list(two_folders))
    split = make_split(index, "pranet")
    assert split.test == ["clinic/026", "clinic/069", "kvasir/cju0c"]
    assert split.train == ["clinic/001", "clinic/002", "clinic/027", "clinic/051", "clinic/052", "clinic/068",
                           "kvasir/cju0a", "kvasir/cju0b", "kvasir/cju0d"]
    sides = [set(getattr(split, side)) for side in SIDES]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    # sequences 2 (026 test, 027 train) and 4 (068 train, 069 test) straddle; Kvasir's leak is unknown
    per = split.leak["per_folder"]
    assert per["clinic"]["known"] and per["clinic"]["sequences"] == [2, 4] and per["clinic"]["train_test"] == 2
    assert per["kvasir"]["known"] is False
    text = split.summary()
    assert "clinic: LEAK: 2 of 4 sequences" in text and "kvasir: Leak: UNKNOWN" in text

    again = load_split(save_split(split, tmp_path / "split.json"))
    assert (again.train, again.test, again.leak) == (split.train, split.test, split.leak)
    assert json.loads((tmp_path / "split.json").read_text())["folders"]["kvasir"]["sequences"] is None


def test_sequence_split_of_two_folders_needs_sequences_in_each(two_folders):
    index = index_dataset(list(two_folders))
    with pytest.raises(PolypsegError, match="Splitting the data folder 'kvasir'.*no sequence information"):
        make_split(index, "sequence", val=0)
    with pytest.raises(PolypsegError, match="k-fold splits take one data folder"):
        make_split(index, "kfold")


def test_a_users_csv_is_a_split_with_its_leak_counted(two_folders, tmp_path):
    clinic = two_folders[0]
    path = tmp_path / "hospital.csv"
    path.write_text("id,side\n1,train\n2,train\n26,val\n27,test\n51,test\n52,\n")
    split = load_split(path)
    assert (split.strategy, split.train, split.val, split.test) == ("custom", ["001", "002"], ["026"], ["027", "051"])
    counted = with_index(split, index_dataset(clinic))
    assert counted.leak["sequences"] == [2]  # 026 (val) and 027 (test) share sequence 2
    path.write_text("id,side\n001,train\n002,holdout\n")
    with pytest.raises(PolypsegError, match="line 3: the side 'holdout' is not train, val or test"):
        load_split(path)


def test_data_flag_repeats_and_the_pranet_preset_names_both_folders(two_folders, tmp_path, capsys):
    assert PRESETS["pranet"]["split_strategy"] == "pranet" and len(PRESETS["pranet"]["data"]) == 2
    cfg = from_preset("pranet")
    assert isinstance(cfg.data, list) and cfg.data[1].endswith("kvasir-seg")
    assert Config(data=["only"]).data == "only"  # one folder stays a plain path
    clinic, kvasir = two_folders
    out = tmp_path / "s.json"
    assert main(["data", "split", str(clinic), str(kvasir), "--strategy", "pranet", "-o", str(out)]) == 0
    assert "kvasir: Leak: UNKNOWN" in capsys.readouterr().out
    from polypseg.cli import _config_from_args, build_parser

    args = build_parser().parse_args(["train", "--data", str(clinic), "--data", str(kvasir), "-o", "x"])
    assert _config_from_args(args).data == [str(clinic), str(kvasir)]


def test_evaluate_on_several_test_sets_prints_one_row_each(two_folders, tiny_config, tmp_path, capsys):
    import torch

    from polypseg.evaluate import evaluate_sets
    from polypseg.model import build_model, save_checkpoint

    clinic, kvasir = two_folders
    cfg = tiny_config.replace(data=[str(clinic), str(kvasir)])
    run = tmp_path / "run"
    torch.manual_seed(0)
    save_checkpoint(build_model(cfg), cfg, run / "best", epoch=0, metrics={})
    save_split(make_split(index_dataset(cfg.data), "pranet"), run / "split.json")

    result = evaluate_sets(run, None, bootstrap=20, gallery=2, progress=False)
    names = [t["selection"]["name"] for t in result["test_sets"]]
    assert names == ["clinic-test", "kvasir-test"]
    assert [t["n_images"] for t in result["test_sets"]] == [2, 1]
    assert [t["selection"]["seen_in_training"] for t in result["test_sets"]] == [0, 0]
    assert set(result["test_sets"][0]["sod"]) == {"wfm", "sm", "mean_em", "max_em", "mae"}
    report = (run / "eval-sets" / "report.md").read_text()
    assert "## clinic-test" in report and "## kvasir-test" in report and "S-measure" in report
    assert (run / "eval-sets" / "kvasir-test" / "per_image.csv").is_file()

    # the CLI: every pair of one folder and the test side of another, one table
    assert main(["evaluate", "--run", str(run), "--test-set", str(kvasir), "--test-set", f"{clinic}:test",
                 "--bootstrap", "0", "-o", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.split()[:1] in (["kvasir-all"], ["clinic-test"])]
    assert len(table) == 2 and table[0].split()[1] == "4" and table[1].split()[1] == "2"
    assert "kvasir-all: Leak: no split" in out
    # a trained-on folder counts its training frames
    assert main(["evaluate", "--run", str(run), "--test-set", f"{clinic}:train", "--bootstrap", "0",
                 "-o", str(tmp_path / "ev2")]) == 0
    assert "6 frames" in capsys.readouterr().out


def test_toolbox_measures_on_a_hand_checked_image():
    gt = np.zeros((8, 8), np.uint8)
    gt[2:6, 2:6] = 1  # 16 polyp pixels of 64
    perfect = SodMeasures()
    perfect.add(gt.astype(float), gt)
    r = perfect.results()
    assert r["mae"] == 0 and r["wfm"] == pytest.approx(1) and r["sm"] == pytest.approx(1)
    # MATLAB's E-measure divides by (pixels - 1): a perfect map scores 64/63 at its best threshold
    assert r["max_em"] == pytest.approx(64 / 63)

    flat = SodMeasures()
    flat.add(np.full((8, 8), 0.25), gt)  # a constant map is not min-max normalised: 0.25 -> 64/255
    r = flat.results()
    p = 64 / 255
    assert r["mae"] == pytest.approx((48 * p + 16 * (1 - p)) / 64)

    empty_gt = SodMeasures()
    empty_gt.add(np.full((8, 8), 0.25), np.zeros((8, 8), np.uint8))
    # S-measure of a mask without object is 1 - mean(prediction)
    assert empty_gt.results()["sm"] == pytest.approx(1 - p)
