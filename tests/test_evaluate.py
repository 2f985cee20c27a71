"""End-to-end evaluation of a tiny untrained run on a handful of real CVC-ClinicDB frames."""

from __future__ import annotations

import csv
import json
import shutil

import cv2
import numpy as np
import pytest

from polypseg import metrics
from polypseg.data import index_dataset, load_pair
from polypseg.media import read_image, read_mask
from polypseg.errors import PolypsegError
from polypseg.evaluate import evaluate
from polypseg.report import format_summary_table
from polypseg.predict import Predictor
from polypseg.splits import Split, save_split

FRAMES = ("001", "100", "101", "300")


def _split(data_dir, train, test) -> Split:
    seq = {p.id: p.sequence for p in index_dataset(data_dir).pairs}
    return Split(
        strategy="random", seed=0, train=list(train), val=[], test=list(test), params={}, leak={},
        sequences={i: seq[i] for i in (*train, *test)},
    )


def _rows(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _folder(tmp_path, data_dir, size=None):
    """A dataset folder of FRAMES (optionally resized to size = (width, height)) plus one frame whose
    mask is empty."""
    root = tmp_path / "frames"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in FRAMES:
        image, mask = read_image(data_dir / "images" / f"{i}.png"), read_mask(data_dir / "masks" / f"{i}.png")[0]
        if size:
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
        cv2.imwrite(str(root / "images" / f"{i}.png"), image[:, :, ::-1])
        cv2.imwrite(str(root / "masks" / f"{i}.png"), mask * 255)
    shutil.copy(root / "images" / f"{FRAMES[0]}.png", root / "images" / "nopolyp.png")
    empty = np.zeros(cv2.imread(str(root / "masks" / f"{FRAMES[0]}.png"), 0).shape, np.uint8)
    cv2.imwrite(str(root / "masks" / "nopolyp.png"), empty)
    return root


def test_evaluate_test_side_of_the_run_split(tiny_checkpoint, data_dir):
    save_split(_split(data_dir, train=("099", "002"), test=("100", "101", "300")), tiny_checkpoint / "split.json")
    summary = evaluate(tiny_checkpoint, bootstrap=200, pranet_mdice=True, gallery=2, progress=False)
    out = tiny_checkpoint / "eval-test"
    assert summary["out"] == str(out)
    assert sorted(p.name for p in out.iterdir()) == [
        "dice_hist.png", "gallery.jpg", "per_image.csv", "per_sequence.png", "report.html", "report.md",
        "summary.json", "threshold_curve.png",
    ]
    assert [p.name for p in tiny_checkpoint.iterdir() if p.name.startswith(".")] == []

    rows = _rows(out / "per_image.csv")
    assert [r["id"] for r in rows] == ["100", "101", "300"]
    assert [r["sequence"] for r in rows] == ["5", "5", "15"]
    for r in rows:
        assert sum(int(r[k]) for k in ("tp", "fp", "fn", "tn")) == 288 * 384
        assert {*metrics.METRICS, "hd95", "hd95_one_empty", "pranet_mdice", "gt_empty", "pred_empty"} <= set(r)

    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["n_images"] == 3 and summary["selection"]["side"] == "test"
    assert summary["threshold"] == 0.5 and summary["threshold_source"] == "0.5, the default"
    assert summary["metrics"]["per-image"]["dice"] == pytest.approx(np.mean([float(r["dice"]) for r in rows]), abs=1e-6)
    # the intervals come from these images' counts, with the seed and resamples asked for
    counts = np.array([[int(r[k]) for k in ("tp", "fp", "fn", "tn")] for r in rows])
    hd = np.array([float(r["hd95"]) for r in rows])
    for reduction in metrics.REDUCTIONS:
        expected = metrics.bootstrap_ci(counts, reduction, 200, 0, extra={"hd95": hd} if reduction == "per-image" else None)
        assert set(summary["ci"][reduction]) == set(expected)
        for name, bounds in expected.items():
            assert summary["ci"][reduction][name] == pytest.approx(list(bounds), abs=1e-5)
    # a mean over resampled images lies between the worst and the best image
    dice = [float(r["dice"]) for r in rows]
    lo, hi = summary["ci"]["per-image"]["dice"]
    assert min(dice) - 1e-6 <= lo < hi <= max(dice) + 1e-6
    # '099' (train) and '100', '101' (test) are all in sequence 5: the leak is stated
    assert summary["selection"]["leak"]["train_test"] == 1
    assert summary["selection"]["seen_in_training"] == 0
    assert set(summary["per_sequence"]) == {"5", "15"}
    assert len(summary["gallery"]) == 2
    # the curve is computed independently of the thresholded masks; at 0.5 both must agree
    curve = summary["threshold_curve"]
    at_half = curve["thresholds"].index(0.5)
    assert curve["dice_per_image"][at_half] == pytest.approx(summary["metrics"]["per-image"]["dice"])
    assert curve["dice_micro"][at_half] == pytest.approx(summary["metrics"]["micro"]["dice"])

    html = (out / "report.html").read_text()
    assert html.count("src=\"data:image/png;base64,") == 3 and html.count("src=\"data:image/jpeg;base64,") == 1
    md = (out / "report.md").read_text()
    assert "LEAK: 1 of 3 sequences" in md and "(gallery.jpg)" in md and "2TP / (2TP + FP + FN)" in md
    table = format_summary_table(summary)
    assert "mDice" in table and "LEAK" in table and "PraNet" in table

    # a given split, with a threshold: its own folder, and frames the run trained on are counted
    save_split(_split(data_dir, train=(), test=("002", "300")), tiny_checkpoint / "other.json")
    again = evaluate(
        tiny_checkpoint, split=tiny_checkpoint / "other.json", threshold=0.3, bootstrap=0, gallery=0, progress=False
    )
    assert again["out"] == str(tiny_checkpoint / "eval-other-test")
    assert again["threshold"] == 0.3 and again["threshold_source"] == "given" and again["ci"] is None
    assert again["selection"]["seen_in_training"] == 1
    assert "1 of the evaluated frames were used in training" in format_summary_table(again)


def test_evaluate_all_pairs_of_odd_sized_frames(tiny_checkpoint, data_dir, tmp_path):
    root = _folder(tmp_path, data_dir, size=(350, 270))
    out = tmp_path / "eval-odd"
    summary = evaluate(tiny_checkpoint, data=root, all_pairs=True, out=out, bootstrap=50, gallery=4, progress=False)
    rows = _rows(out / "per_image.csv")
    assert [r["id"] for r in rows] == [*FRAMES, "nopolyp"]
    assert all((r["height"], r["width"]) == ("270", "350") for r in rows)
    # the frame without a polyp counts at frame level only: segmentation means run over polyp frames
    assert [r["gt_empty"] for r in rows] == ["0", "0", "0", "0", ""]
    assert [r["polyp"] for r in rows] == ["1", "1", "1", "1", "0"]
    assert summary["selection"]["side"] == "all" and summary["per_sequence"] == {}
    assert summary["n_seg_images"] == 4 and summary["frame"]["n_polyp_free"] == 1
    dice = [float(r["dice"]) for r in rows[:4]]
    assert summary["metrics"]["per-image"]["dice"] == pytest.approx(sum(dice) / 4)
    assert out.stat().st_mode & 0o777 == root.stat().st_mode & 0o777  # as readable as a folder made by hand

    # the numbers are those of the prediction at the frame's own size
    predictor = Predictor(tiny_checkpoint)
    pair = index_dataset(root).pairs[1]
    image, mask = load_pair(pair)
    prob = predictor.predict_prob(image)
    assert prob.shape == (270, 350)
    tp, fp, fn, tn = metrics.confusion(prob >= 0.5, mask)
    assert [int(rows[1][k]) for k in ("tp", "fp", "fn", "tn")] == [tp, fp, fn, tn]
    assert float(rows[1]["hd95"]) == pytest.approx(metrics.hd95(prob >= 0.5, mask)[0], abs=1e-5)

    # running again replaces the folder, leaving nothing else behind
    evaluate(tiny_checkpoint, data=root, all_pairs=True, out=out, bootstrap=0, gallery=0, progress=False)
    assert not (out / "gallery.jpg").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval-odd", "frames", "tiny-run"]


def test_choose_threshold_from_predictor_and_pairs(tiny_checkpoint, data_dir):
    predictor = Predictor(tiny_checkpoint)
    pairs = [p for p in index_dataset(data_dir).pairs if p.id in FRAMES[:2]]
    t, curve = metrics.choose_threshold(predictor, pairs)
    items = [(predictor.predict_prob(img), m) for img, m in map(load_pair, pairs)]
    assert (t, curve) == metrics.choose_threshold(items)
    assert t in metrics.DEFAULT_THRESHOLDS and len(curve["dice_per_image"]) == len(metrics.DEFAULT_THRESHOLDS)
    with pytest.raises(PolypsegError, match="No validation images"):
        metrics.choose_threshold(predictor, [])


def test_bad_inputs_raise_and_leave_no_output(tiny_checkpoint, data_dir, tmp_path):
    with pytest.raises(PolypsegError):
        evaluate(tmp_path / "no-such-run", progress=False)
    with pytest.raises(PolypsegError, match="no split.json"):
        evaluate(tiny_checkpoint, progress=False)
    with pytest.raises(PolypsegError, match="not both"):
        evaluate(tiny_checkpoint, split="x.json", all_pairs=True, progress=False)
    with pytest.raises(PolypsegError, match="between 0 and 1"):
        evaluate(tiny_checkpoint, all_pairs=True, threshold=1.5, progress=False)

    split = _split(data_dir, train=("001",), test=("100",))
    split.test = ["100", "999x"]
    split.sequences["999x"] = 99
    save_split(split, tiny_checkpoint / "split.json")
    before = sorted(p.name for p in tiny_checkpoint.iterdir())
    with pytest.raises(PolypsegError, match="not in"):
        evaluate(tiny_checkpoint, progress=False)
    assert sorted(p.name for p in tiny_checkpoint.iterdir()) == before

    # a failure while predicting (an unreadable image) removes the half-made folder
    root = _folder(tmp_path, data_dir)
    (root / "images" / "300.png").write_bytes(b"not a png")
    with pytest.raises(PolypsegError):
        evaluate(tiny_checkpoint, data=root, all_pairs=True, out=tmp_path / "ev", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames", "tiny-run"]


def test_evaluate_runs_the_deployed_onnx_file(tiny_checkpoint, data_dir, tmp_path):
    from polypseg.export import export_onnx

    exported = export_onnx(tiny_checkpoint, check_frames=2, data=data_dir, verbose=False)
    common = dict(data=data_dir, split=None, bootstrap=0, gallery=0, progress=False)
    save_split(_split(data_dir, train=(), test=("100", "300", "480")), tiny_checkpoint / "split.json")
    ref = evaluate(tiny_checkpoint, out=tmp_path / "torch", **common)
    ort = evaluate(tiny_checkpoint, out=tmp_path / "ort", backend="onnxruntime", onnx=exported, **common)
    assert (ref["backend"], ref["onnx"]) == ("torch", None)
    assert (ort["backend"], ort["onnx"]) == ("onnxruntime", str(exported))
    assert ort["metrics"]["per-image"]["dice"] == pytest.approx(ref["metrics"]["per-image"]["dice"], abs=0.02)
    assert f"onnxruntime ({exported})" in format_summary_table(ort)
    assert f"onnxruntime ({exported})" in (tmp_path / "ort" / "report.md").read_text()
    assert "onnxruntime" not in format_summary_table(ref)
    with pytest.raises(PolypsegError, match="backend onnxruntime"):
        evaluate(tiny_checkpoint, out=tmp_path / "bad", onnx=exported, **common)
    assert not (tmp_path / "bad").exists()
