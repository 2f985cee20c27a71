"""The verdict's operating point chosen for a specificity on polyp-free frames the model never trained on
(`polypseg calibrate --negatives DIR --specificity S`): hand-checked thresholds, the checkpoint it writes,
and its refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from polypseg import metrics
from polypseg.calibration import calibrate
from polypseg.cli import main
from polypseg.media import read_image
from polypseg.errors import PolypsegError
from polypseg.evaluate import evaluate_sets
from polypseg.predict import Predictor

SPLIT = '{"train": ["001", "002"], "test": ["003"]}'
NEGATIVES = Path(__file__).resolve().parents[2] / "shared" / "data" / "hyperkvasir-negatives" / "images"


def test_operating_point_for_specificity_on_hand_made_scores():
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.05])
    labels = np.array([0] * 10 + [1, 1])  # the two polyp frames play no part
    point = metrics.operating_point_for_specificity(scores, labels, 0.9)  # at most 1 of 10 flagged: only 0.95
    assert 0.9 < point <= 0.95 and point == pytest.approx(0.9)
    assert (scores[:10] >= point).sum() == 1
    assert 0.8 < metrics.operating_point_for_specificity(scores, labels, 0.8) < 0.9  # 0.9 and 0.95 flagged
    assert metrics.operating_point_for_specificity(scores, labels, 0.95) > 0.95  # floor(0.5) = 0 flagged
    # ties: at most 2 of 4 may be flagged, the three at 0.5 cannot be split, so none of them is
    tied = metrics.operating_point_for_specificity(np.array([0.5, 0.5, 0.5, 0.1]), np.zeros(4), 0.5)
    assert tied > 0.5 and (np.array([0.5, 0.5, 0.5, 0.1]) >= tied).sum() == 0
    with pytest.raises(PolypsegError, match="No polyp-free frame"):
        metrics.operating_point_for_specificity(scores[10:], labels[10:], 0.9)
    with pytest.raises(PolypsegError, match="specificity must lie"):
        metrics.operating_point_for_specificity(scores, labels, 1.0)


@pytest.fixture
def negatives_dir(tmp_path) -> Path:
    """Six real polyp-free HyperKvasir frames in a folder of their own."""
    folder = tmp_path / "free" / "images"
    folder.mkdir(parents=True)
    for path in sorted(NEGATIVES.glob("*.jpg"))[:6]:
        shutil.copy(path, folder / path.name)
    return folder.parent


def test_calibrated_checkpoint_holds_the_point_and_the_same_weights(tiny_checkpoint, negatives_dir, tmp_path):
    (tiny_checkpoint / "split.json").write_text(SPLIT)  # travels with the weights
    out = calibrate(tiny_checkpoint, negatives=[str(negatives_dir)], specificity=0.5,
                    out=tmp_path / "cal" / "model.safetensors")
    source = tiny_checkpoint / "best.safetensors"
    assert out.read_bytes() == source.read_bytes()
    assert (out.parent / "split.json").read_text() == SPLIT
    # the point recomputed by hand from the model's own scores: at most 3 of the 6 frames flagged
    scores = np.sort([Predictor(source).predict(read_image(p)).score
                      for p in sorted((negatives_dir / "images").glob("*.jpg"))])
    assert len(set(scores)) == 6
    calibrated = Predictor(out)
    assert scores[2] < calibrated.operating_point <= scores[3]
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["config"]["operating_point"] == calibrated.operating_point
    assert meta["metrics"]["operating_point_from"] == "polyp-free frames"
    assert (meta["metrics"]["operating_point_frames"], meta["metrics"]["operating_point_flagged"]) == (6, 3)
    # evaluation on the same frames says where the point came from and reproduces the 50%
    summary = evaluate_sets(out, None, negative_sets=[str(negatives_dir)], out=tmp_path / "ev", bootstrap=0,
                            gallery=0, progress=False)
    frame = summary["test_sets"][0]["frame"]
    assert frame["specificity"] == 0.5
    assert frame["operating_point_source"] == "chosen for specificity 0.50 on 6 polyp-free frames of free"


def test_a_run_folder_is_updated_in_place(tiny_checkpoint, negatives_dir):
    shutil.copy(tiny_checkpoint / "best.safetensors", tiny_checkpoint / "last.safetensors")
    shutil.copy(tiny_checkpoint / "best.json", tiny_checkpoint / "last.json")
    assert Predictor(tiny_checkpoint).operating_point == 0.5  # peak at the mask threshold: any pixel drawn
    assert calibrate(tiny_checkpoint, negatives=[str(negatives_dir)], specificity=0.5) == tiny_checkpoint
    points = {Predictor(tiny_checkpoint / f"{n}.safetensors").operating_point for n in ("best", "last")}
    assert len(points) == 1 and points != {0.5}
    # config.json holds the same operating point as the checkpoints (issue 30: one setting, one value)
    peak_point = points.pop()
    assert json.loads((tiny_checkpoint / "config.json").read_text())["operating_point"] == peak_point
    # and the score source can change: the point is chosen again for the logit score, in all three files
    calibrate(tiny_checkpoint, negatives=[str(negatives_dir)], specificity=0.5, verdict="logit")
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    best = json.loads((tiny_checkpoint / "best.json").read_text())["config"]
    assert config["verdict"] == best["verdict"] == "logit" and config["operating_point"] == best["operating_point"]
    assert Predictor(tiny_checkpoint).operating_point == best["operating_point"] != peak_point


def test_calibration_refuses_what_would_mislead(tiny_checkpoint, negatives_dir, data_dir, tmp_path, capsys):
    with pytest.raises(PolypsegError, match="-o OUT.safetensors"):  # a checkpoint is never changed in place
        calibrate(tiny_checkpoint / "best.safetensors", negatives=[str(negatives_dir)], specificity=0.9)
    with pytest.raises(PolypsegError, match="never saw"):  # the model's own training folder
        calibrate(tiny_checkpoint, negatives=[str(data_dir)], specificity=0.9, out=tmp_path / "x.safetensors")
    with pytest.raises(PolypsegError, match="--specificity S"):
        calibrate(tiny_checkpoint, negatives=[str(negatives_dir)], out=tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
    # from the command line: a specificity without polyp-free frames to choose it on
    assert main(["calibrate", "--run", str(tiny_checkpoint), "--specificity", "0.9"]) == 2
    assert "--specificity and -o go with --negatives" in capsys.readouterr().err


def test_an_onnx_file_exported_before_a_calibration_runs_with_the_new_point(tiny_checkpoint, negatives_dir):
    """The ONNX file beside a checkpoint holds its weights; the verdict, the operating point and the mask
    threshold are the checkpoint JSON's, which `calibrate` rewrites after the export."""
    from polypseg.export import export_onnx

    shutil.copy(tiny_checkpoint / "best.safetensors", tiny_checkpoint / "last.safetensors")
    shutil.copy(tiny_checkpoint / "best.json", tiny_checkpoint / "last.json")
    export_onnx(tiny_checkpoint)
    assert (tiny_checkpoint / "best.onnx").is_file()
    calibrate(tiny_checkpoint, negatives=[str(negatives_dir)], specificity=0.5, verdict="logit")
    fresh = Predictor(tiny_checkpoint, backend="onnxruntime")
    assert fresh.onnx_path == tiny_checkpoint / "best.onnx"  # the exported file ran, not an export in memory
    assert (fresh.config.verdict, fresh.operating_point) == ("logit", Predictor(tiny_checkpoint).operating_point)
