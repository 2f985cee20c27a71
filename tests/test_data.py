"""Data layer: layouts, pairing, sequences, reading quirks, bad inputs, data check, the torch Dataset.

Every layout is built in tmp_path from a few real CVC-ClinicDB frames.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from polypseg.data import PRANET_TEST_FRAMES, Pair, SegmentationDataset, index_dataset, load_pair
from polypseg.media import read_image, read_mask
from polypseg.datacheck import check_dataset
from polypseg.errors import PolypsegError

FRAMES = ("001", "002", "026")  # sequences 1, 1, 2


def png(data_dir: Path, kind: str, frame: str) -> np.ndarray:
    return np.asarray(Image.open(data_dir / kind / f"{frame}.png"))


def make_images_masks(data_dir: Path, root: Path, frames=FRAMES) -> Path:
    for kind in ("images", "masks"):
        (root / kind).mkdir(parents=True)
        for f in frames:
            shutil.copy(data_dir / kind / f"{f}.png", root / kind / f"{f}.png")
    return root


def make_cvc_original(data_dir: Path, root: Path, frames=FRAMES) -> Path:
    """The original distribution: Original/N.tif tagged grayscale but holding RGB, Ground Truth/N.tif."""
    (root / "Original").mkdir(parents=True)
    (root / "Ground Truth").mkdir()
    for f in frames:
        n = int(f)
        tifffile.imwrite(root / "Original" / f"{n}.tif", png(data_dir, "images", f), photometric="minisblack",
                         planarconfig="contig")
        tifffile.imwrite(root / "Ground Truth" / f"{n}.tif", png(data_dir, "masks", f))
    return root


def make_kaggle_png(data_dir: Path, root: Path, frames=FRAMES) -> Path:
    """The Kaggle mirror: PNG/Original/N.png and PNG/Ground Truth/N.png with three equal mask channels."""
    (root / "PNG" / "Original").mkdir(parents=True)
    (root / "PNG" / "Ground Truth").mkdir()
    for f in frames:
        n = int(f)
        shutil.copy(data_dir / "images" / f"{f}.png", root / "PNG" / "Original" / f"{n}.png")
        Image.open(data_dir / "masks" / f"{f}.png").convert("RGB").save(root / "PNG" / "Ground Truth" / f"{n}.png")
    return root


# ---------------------------------------------------------------------------------------------------
# Layouts


def test_images_masks_layout_pairs_sorted_without_sequences(data_dir, tmp_path):
    root = make_images_masks(data_dir, tmp_path, frames=("026", "002", "001"))
    index = index_dataset(root)
    assert index.layout == "images+masks"
    assert [p.id for p in index.pairs] == ["001", "002", "026"]
    assert index.pairs[0] == Pair("001", root / "images" / "001.png", root / "masks" / "001.png", None)
    assert not index.has_sequences and index.sequence_source is None
    assert index.unpaired_images == [] and index.unpaired_masks == []


def test_sequences_csv_maps_sequences_and_pranet_marks(data_dir, tmp_path):
    root = make_images_masks(data_dir, tmp_path, frames=("001", "026", "014"))
    shutil.copy(data_dir / "sequences.csv", root / "sequences.csv")
    index = index_dataset(root)
    assert index.sequence_source == "sequences.csv"
    assert {p.id: p.sequence for p in index.pairs} == {"001": 1, "014": 1, "026": 2}
    assert index.pranet == {"001": "train", "014": "test", "026": "train"}


def test_sequences_csv_missing_a_frame_is_an_error(data_dir, tmp_path):
    root = make_images_masks(data_dir, tmp_path)
    (root / "sequences.csv").write_text("id,sequence\n001,1\n002,1\n")
    with pytest.raises(PolypsegError, match=r"sequences\.csv gives no sequence for 1 .*026"):
        index_dataset(root)
    (root / "sequences.csv").write_text("id,sequence\n001,1\n002,one\n026,2\n")
    with pytest.raises(PolypsegError, match="line 3.*'one'"):
        index_dataset(root)


def test_cvc_original_tiffs_tagged_grayscale_load_in_colour(data_dir, tmp_path):
    root = make_cvc_original(data_dir, tmp_path)
    with pytest.raises(Exception):  # the quirk is real: Pillow cannot open these files
        Image.open(root / "Original" / "1.tif").load()
    index = index_dataset(root)
    assert index.layout == "cvc-original"
    assert [p.id for p in index.pairs] == ["001", "002", "026"]  # ids zero-padded like sequences.csv
    image, mask = load_pair(index.pairs[0])
    assert image.shape == (288, 384, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, png(data_dir, "images", "001"))
    np.testing.assert_array_equal(mask, png(data_dir, "masks", "001") // 255)


def test_kaggle_png_layout_one_level_down_with_rgb_masks(data_dir, tmp_path):
    make_kaggle_png(data_dir, tmp_path / "CVC-ClinicDB")
    make_cvc_original(data_dir, tmp_path / "CVC-ClinicDB" / "TIF", frames=("001",))
    (tmp_path / "CVC-ClinicDB" / "TIF" / "Original").rename(tmp_path / "CVC-ClinicDB" / "TIF" / "original")
    index = index_dataset(tmp_path)
    # PNG and TIF copies of the same frames: the PNG copy is used
    assert index.root == tmp_path / "CVC-ClinicDB" and index.layout == "kaggle-png"
    mask, nonbinary = read_mask(index.pairs[2].mask)
    assert mask.ndim == 2 and nonbinary == 0
    np.testing.assert_array_equal(mask, png(data_dir, "masks", "026") // 255)


def test_kaggle_tif_layout_with_lowercase_names(data_dir, tmp_path):
    make_cvc_original(data_dir, tmp_path / "TIF", frames=("002",))
    (tmp_path / "TIF" / "Ground Truth").rename(tmp_path / "TIF" / "ground truth")
    index = index_dataset(tmp_path)
    assert index.layout == "kaggle-tif" and [p.id for p in index.pairs] == ["002"]


def test_kvasir_jpeg_masks_are_noisy_and_binarised(data_dir, tmp_path):
    for kind in ("images", "masks"):
        (tmp_path / "Kvasir-SEG" / kind).mkdir(parents=True)
    name = "cju0qkwl35piu0993l0dewei2"
    image = tmp_path / "Kvasir-SEG" / "images" / f"{name}.jpg"
    Image.fromarray(png(data_dir, "images", "026")).save(image, quality=90)
    truth = png(data_dir, "masks", "026")
    Image.fromarray(np.repeat(truth[:, :, None], 3, axis=2)).save(
        tmp_path / "Kvasir-SEG" / "masks" / f"{name}.jpg", quality=75
    )
    index = index_dataset(tmp_path)
    assert [p.id for p in index.pairs] == [name]
    mask, nonbinary = read_mask(index.pairs[0].mask)
    assert nonbinary > 0
    assert set(np.unique(mask)) <= {0, 1}
    assert np.mean(mask == truth // 255) > 0.995
    report = check_dataset(tmp_path)
    assert report.usable and report.nonbinary_masks == 1 and report.nonbinary_pixels == nonbinary


def test_cvc_readme_table_gives_sequences_without_csv(tmp_path):
    # Pairing never opens files, so empty placeholders for all 612 frames are enough.
    for kind in ("Original", "Ground Truth"):
        (tmp_path / kind).mkdir()
        for n in range(1, 613):
            (tmp_path / kind / f"{n}.tif").touch()
    index = index_dataset(tmp_path)
    assert index.sequence_source == "CVC-ClinicDB README table"
    seq = {p.id: p.sequence for p in index.pairs}
    assert (seq["001"], seq["025"], seq["026"], seq["205"], seq["206"], seq["612"]) == (1, 1, 2, 10, 11, 29)
    assert len(set(seq.values())) == 29
    assert sorted(int(i) for i, side in index.pranet.items() if side == "test") == list(PRANET_TEST_FRAMES)
    # Any other numbering (another dataset) gets no sequences from CVC-ClinicDB's table.
    (tmp_path / "Original" / "612.tif").unlink()
    assert index_dataset(tmp_path).sequence_source is None


# ---------------------------------------------------------------------------------------------------
# Reading


def test_read_image_converts_gray_and_rgba(data_dir, tmp_path):
    rgb = png(data_dir, "images", "001")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgb)
    Image.fromarray(rgb[:, :, 0]).save(tmp_path / "gray.bmp")
    gray = read_image(tmp_path / "gray.bmp")
    assert gray.shape == (288, 384, 3)
    np.testing.assert_array_equal(gray[:, :, 2], rgb[:, :, 0])


def test_read_mask_keeps_01_masks_and_reads_palette_colour(tmp_path):
    values = np.zeros((8, 8), np.uint8)
    values[2:5, 3:6] = 1
    Image.fromarray(values).save(tmp_path / "01.png")
    mask, nonbinary = read_mask(tmp_path / "01.png")
    np.testing.assert_array_equal(mask, values)
    assert nonbinary == 0
    palette = Image.fromarray(values, mode="P")
    palette.putpalette([0, 0, 0, 200, 0, 0])  # index 1 is dark red: its gray value is below 128
    palette.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "palette.png")[0], values)


def test_read_mask_thresholds_at_128_and_counts_stray_values(tmp_path):
    Image.fromarray(np.array([[0, 11, 127, 128, 200, 255]], np.uint8)).save(tmp_path / "m.png")
    mask, nonbinary = read_mask(tmp_path / "m.png")
    assert mask.tolist() == [[0, 0, 0, 1, 1, 1]] and nonbinary == 4


# ---------------------------------------------------------------------------------------------------
# Bad input


def test_missing_empty_and_unknown_folders(tmp_path):
    with pytest.raises(PolypsegError, match="does not exist"):
        index_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PolypsegError, match="is empty"):
        index_dataset(tmp_path / "empty")
    (tmp_path / "other" / "pictures").mkdir(parents=True)
    with pytest.raises(PolypsegError, match=r"No known image/mask layout .*'pictures/'.*'images/' with 'masks/'"):
        check_dataset(tmp_path / "other")
    (tmp_path / "noimages" / "images").mkdir(parents=True)
    (tmp_path / "noimages" / "masks").mkdir()
    (tmp_path / "noimages" / "images" / "notes.txt").write_text("x")
    with pytest.raises(PolypsegError, match=r"noimages/images holds no image files"):
        index_dataset(tmp_path / "noimages")
    with pytest.raises(PolypsegError, match=r"images/ looks like one half of a dataset: .*noimages inst"):
        index_dataset(tmp_path / "noimages" / "images")


def test_no_pairs_names_the_files(data_dir, tmp_path):
    root = make_images_masks(data_dir, tmp_path, frames=("001",))
    (root / "masks" / "001.png").rename(root / "masks" / "001_mask.png")
    with pytest.raises(PolypsegError, match=r"No image in .*images has a mask .*001\.png.*001_mask\.png"):
        index_dataset(root)
    report = check_dataset(root)
    assert not report.usable and report.pairs == 0
    assert report.unpaired_masks == [root / "masks" / "001_mask.png"]


def test_ambiguous_ids_and_layouts(data_dir, tmp_path):
    root = make_images_masks(data_dir, tmp_path / "a", frames=("001",))
    shutil.copy(root / "images" / "001.png", root / "images" / "1.png")
    with pytest.raises(PolypsegError, match=r"001\.png and .*1\.png are the same frame"):
        index_dataset(root)
    make_images_masks(data_dir, tmp_path / "b" / "one", frames=("001",))
    make_images_masks(data_dir, tmp_path / "b" / "two", frames=("001",))
    with pytest.raises(PolypsegError, match=r"several datasets: one/ \(images\+masks\), two/"):
        index_dataset(tmp_path / "b")


def test_truncated_image_is_named_and_reported(data_dir, tmp_path):
    root = make_images_masks(data_dir, tmp_path)
    bad = root / "images" / "002.png"
    bad.write_bytes(bad.read_bytes()[:5000])
    with pytest.raises(PolypsegError, match=r"Cannot read the image .*002\.png"):
        read_image(bad)
    report = check_dataset(root)
    assert not report.usable
    assert [p for p, _ in report.unreadable] == [bad]
    assert any("002.png" in text for text in report.problems)


def test_mask_of_another_size_is_named_and_reported(data_dir, tmp_path):
    root = make_images_masks(data_dir, tmp_path)
    Image.open(root / "masks" / "026.png").resize((192, 144)).save(root / "masks" / "026.png")
    index = index_dataset(root)
    with pytest.raises(PolypsegError, match=r"mask .*026\.png is 192x144 but its image .* is 384x288"):
        load_pair(index.pairs[2])
    report = check_dataset(root)
    assert not report.usable and len(report.size_mismatches) == 1 and "026.png" in report.size_mismatches[0]


def test_mixed_image_sizes_are_usable_and_summed_up_in_one_line(data_dir, tmp_path):
    frames = ("001", "002", "026", "027", "051", "052")
    root = make_images_masks(data_dir, tmp_path, frames=frames)
    # Kvasir-SEG comes in 333 sizes: five sizes here, one of them twice
    for frame, size in zip(frames[1:], [(192, 144), (300, 250), (500, 400), (640, 480), (300, 250)]):
        for kind in ("images", "masks"):
            Image.open(root / kind / f"{frame}.png").resize(size).save(root / kind / f"{frame}.png")
    report = check_dataset(root)
    assert report.sizes == Counter({(384, 288): 1, (192, 144): 1, (300, 250): 2, (500, 400): 1, (640, 480): 1})
    assert report.usable and not report.problems
    line = next(row for row in report.table().splitlines() if row.startswith("image sizes"))
    assert "5 sizes, 192x144 to 640x480; most common 300x250 (2)" in line
    assert "aspect kept" in line


def test_check_reports_unpaired_empty_duplicate(data_dir, tmp_path):
    root = make_images_masks(data_dir, tmp_path)
    shutil.copy(root / "images" / "001.png", root / "images" / "100.png")  # a duplicate image...
    Image.fromarray(np.zeros((288, 384), np.uint8)).save(root / "masks" / "100.png")  # ...with an empty mask
    shutil.copy(root / "images" / "001.png", root / "images" / "200.png")  # no mask
    report = check_dataset(root)
    assert report.usable and report.pairs == 4
    assert report.empty_masks == ["100"]
    assert report.duplicate_images == [["001", "100"]]
    assert report.unpaired_images == [root / "images" / "200.png"]
    assert report.to_dict()["duplicate_images"] == [["001", "100"]]
    table = report.table()
    assert "pairs" in table and "warning: 1 images have no partner" in table and "No sequence information" in table


def test_check_real_data(data_dir):
    report = check_dataset(data_dir)
    assert report.pairs == 612
    assert report.sizes == Counter({(384, 288): 612})
    assert report.sequences == 29 and report.sequence_source == "sequences.csv"
    assert report.usable and report.problems == [] and report.warnings == []
    assert report.nonbinary_masks == 0 and report.empty_masks == [] and report.duplicate_images == []


# ---------------------------------------------------------------------------------------------------
# torch Dataset


def test_segmentation_dataset_without_and_with_transform(data_dir, tmp_path, tiny_config):
    from polypseg.transforms import eval_transform

    pairs = index_dataset(make_images_masks(data_dir, tmp_path)).pairs
    item = SegmentationDataset(pairs)[2]
    assert item["id"] == "026"
    assert item["image"].shape == (3, 288, 384) and item["image"].dtype.is_floating_point
    expected = png(data_dir, "images", "026").transpose(2, 0, 1) / 255  # only scaled, channels first
    np.testing.assert_allclose(item["image"].numpy(), expected, rtol=1e-6)
    assert item["mask"].shape == (1, 288, 384) and set(item["mask"].unique().tolist()) == {0.0, 1.0}
    item = SegmentationDataset(pairs, eval_transform(tiny_config))[0]
    assert item["image"].shape == (3, 64, 96) and item["mask"].shape == (1, 64, 96)
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0} and item["image"].min() < 0  # normalised
