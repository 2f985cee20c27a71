"""End to end through the `polypseg` command, on real CVC-ClinicDB frames and CPU: train a little,
evaluate, predict an image, run a short video."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np

from polypseg.cli import main
from polypseg.media import read_image
from polypseg.predict import Predictor


def test_train_evaluate_predict_video(tmp_path, data_dir, capsys):
    split = tmp_path / "split.json"
    assert main(["data", "split", str(data_dir), "--strategy", "sequence", "-o", str(split)]) == 0
    ids = json.loads(split.read_text())
    # keep the test small: a few frames of each side of the real sequence split
    small = {**ids, "train": ids["train"][:8], "val": ids["val"][:4], "test": ids["test"][:4]}
    split.write_text(json.dumps(small))

    run = tmp_path / "run"
    tiny = ["--encoder", "tu-test_efficientnet", "--encoder-weights", "none", "--height", "64", "--width", "96",
            "--batch-size", "4", "--num-workers", "0", "--accelerator", "cpu", "--lr", "3e-3"]
    assert main(["train", *tiny, "--data", str(data_dir), "--split", str(split), "--epochs", "3",
                 "-o", str(run)]) == 0
    out = capsys.readouterr().out
    assert "epoch   3/3" in out and "val Dice" in out
    assert (run / "best.safetensors").is_file()

    assert main(["evaluate", "--run", str(run), "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    assert "Dice" in out and "Leak: none" in out
    summary = json.loads((run / "eval-test" / "summary.json").read_text())
    assert summary["n_images"] == 4
    with open(run / "eval-test" / "per_image.csv") as f:
        assert sorted(r["id"] for r in csv.DictReader(f)) == sorted(small["test"])

    frame = data_dir / "images" / f"{small['test'][0]}.png"
    assert main(["predict", str(frame), "--run", str(run), "-o", str(tmp_path / "pred")]) == 0
    mask = cv2.imread(str(tmp_path / "pred" / "masks" / frame.name), cv2.IMREAD_GRAYSCALE)
    expected = Predictor(run).predict_mask(read_image(frame))
    assert mask.shape == (288, 384) and np.array_equal(mask > 0, expected)

    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(1, 9):  # the first frames of sequence 1, in order: a short real clip
        (frames / f"{i:03d}.png").write_bytes((data_dir / "images" / f"{i:03d}.png").read_bytes())
    video = tmp_path / "overlay.mp4"
    assert main(["video", str(frames), "--run", str(run), "-o", str(video), "--no-progress"]) == 0
    cap = cv2.VideoCapture(str(video))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, first = cap.read()
    cap.release()
    assert ok and n == 8 and first.shape[:2] == (288, 384)
    csv_path = video.with_suffix(".frames.csv")
    with open(csv_path) as f:
        assert len(list(csv.DictReader(f))) == 8
    # a run without an int8 file of its own: `video`'s --precision auto runs its fp32 network
    assert json.loads(video.with_suffix(".summary.json").read_text())["model"] == "onnxruntime (exported in memory)"


def test_user_errors_exit_2_with_one_paragraph(tmp_path, capsys):
    assert main(["evaluate", "--run", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("polypseg: error:") and "Traceback" not in err
    assert main(["train", "--encoder", "resnet5", "--encoder-weights", "none", "-o", str(tmp_path / "r")]) == 2
    assert "resnet50" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing written for a bad recipe
