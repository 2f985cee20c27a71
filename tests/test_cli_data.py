"""`polypseg data check` and `polypseg data split` through cli.main."""

from __future__ import annotations

import json
import shutil

from polypseg.cli import main
from polypseg.splits import load_split


def small_folder(data_dir, root, frames=("001", "002", "026")):
    for kind in ("images", "masks"):
        (root / kind).mkdir(parents=True)
        for f in frames:
            shutil.copy(data_dir / kind / f"{f}.png", root / kind / f"{f}.png")
    return root


def assert_one_paragraph_error(err: str, *needles: str) -> None:
    assert err.startswith("polypseg: error: ") and "Traceback" not in err
    assert "\n\n" not in err.strip()
    for needle in needles:
        assert needle in err.replace("\n  ", " ")


def test_data_check_usable_and_unusable(data_dir, tmp_path, capsys):
    root = small_folder(data_dir, tmp_path / "good")
    assert main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "pairs" in out and "384x288 (3)" in out and "usable" in out
    bad = root / "masks" / "026.png"
    bad.write_bytes(bad.read_bytes()[:300])
    assert main(["data", "check", str(root)]) == 1
    assert "problem: Cannot read" in capsys.readouterr().out


def test_data_check_missing_folder_exits_2(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "nope")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_one_paragraph_error(captured.err, "nope does not exist")


def test_data_split_writes_the_file_and_prints_the_leak(data_dir, tmp_path, capsys):
    out = tmp_path / "splits" / "random.json"
    assert main(["data", "split", str(data_dir), "--strategy", "random", "--seed", "1", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "LEAK: 29 of 29 sequences" in printed and "267" in printed and "345" in printed
    split = load_split(out)
    assert (split.strategy, split.seed, len(split.train), len(split.test)) == ("random", 1, 267, 345)
    out = tmp_path / "kfold.json"
    assert main(["data", "split", str(data_dir), "--strategy", "kfold", "--k", "3", "-o", str(out)]) == 0
    assert len(json.loads(out.read_text())["folds"]) == 3
    assert load_split(out, fold=2).test


def test_data_split_bad_input_exits_2_and_writes_nothing(data_dir, tmp_path, capsys):
    root = small_folder(data_dir, tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    cases = [
        (["--strategy", "sequence"], ["no sequence information", "--strategy random"]),
        (["--strategy", "random", "--train", "2.5"], ["--train 2.5 is neither a whole number"]),
        (["--strategy", "random", "--train", "3", "--test", "1"], ["out of 3"]),
    ]
    for flags, needles in cases:
        assert main(["data", "split", str(root), *flags, "-o", str(out / "split.json")]) == 2
        assert_one_paragraph_error(capsys.readouterr().err, *needles)
    assert list(out.iterdir()) == []
