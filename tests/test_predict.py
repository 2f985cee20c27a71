"""predict: masks, overlays and probability maps for files and folders, with the tiny untrained model."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from polypseg import predict
from polypseg.media import read_image
from polypseg.errors import PolypsegError
from polypseg.model import read_checkpoint_meta
from polypseg.predict import Predictor, predict_paths

FRAMES = ("001", "150", "300")
ODD = (333, 257)  # width, height: neither the model's aspect nor a multiple of 32


@pytest.fixture
def images(tmp_path, data_dir):
    """A folder of three real frames and one resized to an odd size."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in FRAMES:
        shutil.copy(data_dir / "images" / f"{i}.png", folder / f"{i}.png")
    odd = cv2.resize(read_image(data_dir / "images" / "200.png"), ODD, interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(folder / "odd.jpg"), odd[:, :, ::-1])
    return folder


def _median_threshold(predictor, image):
    # The untrained model's probabilities sit near 0.5; a threshold at their median gives masks with
    # both classes, so the comparison below means something.
    return float(np.median(predictor.predict_prob(image)))


def test_predict_folder_writes_the_models_masks(images, tiny_checkpoint, tmp_path):
    predictor = Predictor(tiny_checkpoint)
    t = _median_threshold(predictor, read_image(images / "001.png"))
    out = tmp_path / "out"
    written = predict_paths([images], predictor, out, save_prob="npy", threshold=t, show_progress=False)

    names = ["001", "150", "300", "odd"]
    assert written == [out / "masks" / f"{n}.png" for n in names]
    for name, src in zip(names, ["001.png", "150.png", "300.png", "odd.jpg"]):
        image = read_image(images / src)
        mask = cv2.imread(str(out / "masks" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == image.shape[:2] and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(mask == 255, predictor.predict_mask(image, threshold=t))
        prob = np.load(out / "probs" / f"{name}.npy")
        np.testing.assert_allclose(prob, predictor.predict_prob(image), atol=1e-6)
        over = cv2.imread(str(out / "overlays" / f"{name}.png"))
        assert over.shape == image.shape
        assert not np.array_equal(over[:, :, ::-1], image)  # the mask is drawn on it
    assert mask.shape == (ODD[1], ODD[0])
    assert 0 < (cv2.imread(str(out / "masks" / "001.png"), 0) > 0).mean() < 1

    with (out / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == [str(images / s) for s in ["001.png", "150.png", "300.png", "odd.jpg"]]
    first = cv2.imread(str(out / "masks" / "001.png"), 0) > 0
    assert float(rows[0]["area_fraction"]) == pytest.approx(first.mean(), abs=1e-6)
    assert float(rows[0]["mean_confidence"]) >= t
    assert not list(out.rglob(".*.tmp*"))


def test_probability_png_and_single_file(images, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    predict_paths(images / "150.png", Predictor(tiny_checkpoint), out, save_prob=True, show_progress=False)
    prob = cv2.imread(str(out / "probs" / "150.png"), cv2.IMREAD_UNCHANGED)
    expected = Predictor(tiny_checkpoint).predict_prob(read_image(images / "150.png"))
    assert prob.dtype == np.uint8
    assert np.abs(prob.astype(int) - np.round(expected * 255)).max() <= 1
    assert sorted(p.name for p in out.iterdir()) == ["masks", "overlays", "predictions.csv", "probs"]


def test_unreadable_image_is_named_after_the_others_are_done(images, tiny_checkpoint, tmp_path):
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    out = tmp_path / "out"
    with pytest.raises(PolypsegError, match="broken.png"):
        predict_paths(images, Predictor(tiny_checkpoint), out, show_progress=False)
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["001.png", "150.png", "300.png", "odd.png"]


@pytest.mark.parametrize("case", ["missing", "empty-folder", "not-an-image", "clash", "threshold", "prob-format"])
def test_input_errors_are_explained_before_anything_is_written(case, images, tiny_checkpoint, tmp_path):
    kwargs = {}
    inputs = [images]
    if case == "missing":
        inputs = [tmp_path / "nothing-here"]
    elif case == "empty-folder":
        (tmp_path / "empty").mkdir()
        inputs = [tmp_path / "empty"]
    elif case == "not-an-image":
        (tmp_path / "notes.txt").write_text("hello")
        inputs = [tmp_path / "notes.txt"]
    elif case == "clash":
        other = tmp_path / "other"
        other.mkdir()
        shutil.copy(images / "001.png", other / "001.png")
        inputs = [images, other]
    elif case == "threshold":
        kwargs["threshold"] = 1.5
    else:
        kwargs["save_prob"] = "tiff"
    out = tmp_path / "out"
    with pytest.raises(PolypsegError):
        predict_paths(inputs, Predictor(tiny_checkpoint), out, show_progress=False, **kwargs)
    assert not out.exists()


def test_default_model_is_the_packaged_one(tiny_checkpoint, tmp_path, monkeypatch, data_dir):
    missing = tmp_path / "pretrained" / "realtime.safetensors"
    monkeypatch.setattr(predict, "DEFAULT_MODEL", missing)
    with pytest.raises(PolypsegError, match="--run"):
        Predictor()

    missing.parent.mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copy(tiny_checkpoint / f"best{suffix}", missing.with_suffix(suffix))
    image = read_image(data_dir / "images" / "001.png")
    np.testing.assert_array_equal(Predictor().predict_prob(image), Predictor(tiny_checkpoint).predict_prob(image))


def test_shipped_models_by_name(tiny_checkpoint, tmp_path, monkeypatch):
    shelf = tmp_path / "pretrained"
    shelf.mkdir()
    for name in ("realtime", "accurate"):
        for suffix in (".safetensors", ".json"):
            shutil.copy(tiny_checkpoint / f"best{suffix}", shelf / f"{name}{suffix}")
    (shelf / "half.safetensors").write_bytes(b"")  # weights without their .json are no model
    (shelf / "realtime.int8.onnx").write_bytes(b"")
    (shelf / "accurate.md").write_text("| | |\n|---|---|\n| training data | the accurate one's |\n")
    monkeypatch.setattr(predict, "PRETRAINED_DIR", shelf)
    assert predict.model_card(shelf / "accurate.safetensors") == shelf / "accurate.md"
    assert predict.card_row(shelf / "accurate.md", "training data") == "the accurate one's"
    assert predict.model_card(shelf / "realtime.safetensors") is None  # no card written
    assert predict.model_card(tiny_checkpoint / "best.safetensors") is None  # not shipped
    table = predict.format_models_table().splitlines()
    assert [line.split()[0] for line in table[2:]] == ["accurate", "realtime"] and table[2].endswith("accurate.md")
    assert "peak >= 0.5000" in table[2]  # no point chosen: any pixel at the mask threshold
    int8_column = [re.split(r"\s{2,}", line)[5] for line in table[2:]]
    assert int8_column == ["-", "realtime.int8.onnx"]  # the int8 file, where there is one
    assert list(predict.shipped_models()) == ["accurate", "realtime"]
    assert predict.resolve_model("accurate") == shelf / "accurate.safetensors"
    assert Predictor("realtime").checkpoint == shelf / "realtime.safetensors"
    with pytest.raises(PolypsegError, match=r"neither a shipped model \(accurate, realtime\)"):
        predict.resolve_model("fastest")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "realtime").mkdir()  # a folder of that name is what the user means
    with pytest.raises(PolypsegError, match="holds no checkpoint"):
        predict.resolve_model("realtime")


@pytest.mark.parametrize("name", sorted(predict.shipped_models()))
def test_each_shipped_model_loads_predicts_and_has_its_own_card(name, data_dir):
    from polypseg.serve import model_info

    predictor = Predictor(name)
    frame = read_image(data_dir / "images" / "001.png")
    result = predictor.predict(frame)
    assert result.prob.shape == frame.shape[:2] and predictor.config.verdict == "logit"  # a logit, any real number
    assert result.polyp_present == (result.score >= predictor.operating_point)
    card = predict.model_card(predictor.checkpoint)
    assert card == predict.PRETRAINED_DIR.resolve() / f"{name}.md"
    text = card.read_text()
    assert f"`{name}`" in text.splitlines()[0]  # the card's title names its model
    info = model_info(predictor)
    assert info["name"] == f"polypseg {name} model (shipped)" and info["card"] == text
    assert info["training_data"] == predict.card_row(card, "training data") and "Kvasir-SEG" in info["training_data"]
    # its operating point was chosen on polyp-free frames of a folder it never trained on, and the card says so
    chosen = read_checkpoint_meta(predictor.checkpoint)["metrics"]
    assert chosen["operating_point_from"] == "polyp-free frames"
    assert not {Path(d).name for d in predictor.config.data} & set(chosen["operating_point_folders"])
    assert f"{predictor.operating_point:.4f}" in text


def test_shipped_model_segments_frames_it_never_saw(data_dir):
    """The packaged model and its split: test frames (sequences it never trained on) get real masks."""
    from polypseg.media import read_mask
    from polypseg.metrics import confusion, reduce
    from polypseg.splits import load_split

    split = load_split(predict.DEFAULT_MODEL.parent / "split.json")
    assert not set(split.test) & set(split.train + split.val)
    predictor = Predictor()
    assert predictor.config.encoder == "tu-tf_efficientnet_lite0"
    # its CVC-ClinicDB test frames (ids "cvc-clinicdb/NNN" when it trained on several data sets)
    clinic = [i.rpartition("/")[2] for i in split.test if i.rpartition("/")[0] in ("", "cvc-clinicdb")]
    ids = clinic[:: len(clinic) // 6][:6]
    counts = []
    for i in ids:
        prob = predictor.predict_prob(read_image(data_dir / "images" / f"{i}.png"))
        counts.append(confusion(prob >= predictor.threshold, read_mask(data_dir / "masks" / f"{i}.png")[0]))
    assert reduce(np.stack(counts), "per-image")["dice"] > 0.6


def test_bad_backend_and_device(tiny_checkpoint):
    with pytest.raises(PolypsegError, match="backend"):
        Predictor(tiny_checkpoint, backend="tensorrt")
    with pytest.raises(PolypsegError, match="device"):
        Predictor(tiny_checkpoint, device="gpu0")


def test_a_jpeg_stored_sideways_is_read_and_predicted_upright(rotated_jpeg, data_dir, tiny_checkpoint, tmp_path):
    """Issue 32: a JPEG whose EXIF Orientation says "turn me" is read as viewers show it."""
    original = read_image(data_dir / "images" / "322.png")
    image = read_image(rotated_jpeg)
    assert image.shape == original.shape == (288, 384, 3)  # stored 288 wide and 384 high
    assert np.abs(image.astype(int) - original).mean() < 3  # the same frame, up to JPEG's loss
    # turned the other way it would be a different picture, not only a compressed one
    assert np.abs(np.rot90(image, 2).astype(int) - original).mean() > 20

    out = tmp_path / "out"
    predictor = Predictor(tiny_checkpoint)
    written = predict_paths([rotated_jpeg], predictor, out, show_progress=False)
    mask = cv2.imread(str(written[0]), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (288, 384)
    np.testing.assert_array_equal(mask == 255, predictor.predict_mask(image))
    with (out / "predictions.csv").open() as f:
        row = next(csv.DictReader(f))
    assert (row["height"], row["width"], row["skipped"]) == ("288", "384", "")


def test_too_small_and_unreadable_images_are_skipped_and_listed_with_the_reason(images, tiny_checkpoint, tmp_path):
    """Issue 32: under data.MIN_IMAGE_SIDE (32) pixels on a side an image is refused; predictions.csv lists
    every input, the skipped ones with why."""
    from polypseg.media import MIN_IMAGE_SIDE

    assert MIN_IMAGE_SIDE == 32
    frame = read_image(images / "001.png")
    cv2.imwrite(str(images / "p-tiny.png"), frame[:1, :1])  # 1x1
    cv2.imwrite(str(images / "q-thin.png"), frame[:31, :200])  # 200 wide, 31 high: one row short
    cv2.imwrite(str(images / "r-least.png"), frame[:32, :32])  # the least that is segmented
    (images / "s-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    out = tmp_path / "out"
    with pytest.raises(PolypsegError, match=r"3 of 8 image\(s\) could not be used") as err:
        predict_paths(images, Predictor(tiny_checkpoint), out, show_progress=False)
    assert "1x1 pixels, too small" in str(err.value) and "predictions.csv" in str(err.value)
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["001.png", "150.png", "300.png", "odd.png",
                                                                  "r-least.png"]
    with (out / "predictions.csv").open() as f:
        rows = {Path(r["image"]).name: r for r in csv.DictReader(f)}
    assert list(rows) == ["001.png", "150.png", "300.png", "odd.jpg", "p-tiny.png", "q-thin.png", "r-least.png",
                          "s-broken.png"]
    assert "1x1 pixels, too small to segment" in rows["p-tiny.png"]["skipped"]
    assert "200x31 pixels, too small to segment" in rows["q-thin.png"]["skipped"]
    assert "Cannot read the image" in rows["s-broken.png"]["skipped"]
    assert (rows["r-least.png"]["height"], rows["r-least.png"]["width"], rows["r-least.png"]["skipped"]) == ("32", "32", "")
    assert all(rows[n]["polyp_score"] == "" and rows[n]["height"] == "" for n in ("p-tiny.png", "s-broken.png"))
    assert all(rows[n]["skipped"] == "" and rows[n]["polyp_score"] != "" for n in ("001.png", "odd.jpg"))


def test_cli_predict_on_a_too_small_image_exits_2_with_the_reason(data_dir, tiny_checkpoint, tmp_path, capsys):
    from polypseg.cli import main

    tiny = tmp_path / "tiny.png"
    cv2.imwrite(str(tiny), read_image(data_dir / "images" / "001.png")[:1, :1])
    assert main(["predict", str(tiny), "-o", str(tmp_path / "out"), "--run", str(tiny_checkpoint),
                 "--backend", "torch"]) == 2
    err = capsys.readouterr().err
    assert "polypseg: error: 1 of 1 image(s) could not be used" in err
    assert "1x1 pixels, too small to segment: polypseg needs at least 32x32" in " ".join(err.split())
