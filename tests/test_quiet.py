"""Issue 16: polyp-free frames as data, the crop to the endoscopic image, empty masks in losses and
metrics, the frame-level measures, and the verdict carried by every prediction."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from polypseg import metrics
from polypseg.config import Config
from polypseg.crop import Box, blank_corner, endoscope_box, paste_back, picture
from polypseg.data import index_dataset, load_pair, scan_frames
from polypseg.media import read_image
from polypseg.datacheck import check_dataset
from polypseg.errors import PolypsegError
from polypseg.model import build_model, save_checkpoint
from polypseg.predict import Predictor, describe
from polypseg.splits import make_split
from polypseg.train import make_loss, negatives_sampler, weighted_mask_loss

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CORNER = (0.36, 0.36)


def _tower_frame(image: np.ndarray, panel: int = 200, box: bool = True) -> np.ndarray:
    """``image`` as a tower would send it: a black side panel on the left with white clock text and a
    teal scope-guide box, black borders around the picture, and a green box in the picture's corner."""
    h, w = image.shape[:2]
    frame = np.zeros((h + 40, w + panel + 30, 3), np.uint8)
    frame[20:20 + h, panel + 10:panel + 10 + w] = image
    cv2.putText(frame, "12:34:56", (10, 40), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2)
    frame[h // 2:h // 2 + 90, 10:panel - 20] = (40, 180, 150)  # scope guide
    if box:  # a scope-position box inside the picture's lower-left corner
        frame[20 + h - 60:20 + h, panel + 10:panel + 10 + 70] = (30, 200, 60)
    return frame


@pytest.fixture
def clinic_frame(data_dir) -> np.ndarray:
    """A CVC-ClinicDB frame cut to its picture (its own black border removed)."""
    image = read_image(data_dir / "images" / "001.png")
    for _ in range(2):  # cut twice: the picture alone, as the crop finds it
        b = endoscope_box(image)
        image = np.ascontiguousarray(image[b.top:b.bottom, b.left:b.right])
    return image


# ---------------------------------------------------------------------------------------------------
# the crop


def test_endoscope_box_finds_the_picture_beside_a_panel_and_inside_borders(clinic_frame):
    h, w = clinic_frame.shape[:2]
    frame = _tower_frame(clinic_frame)
    assert endoscope_box(frame) == Box(20, 20 + h, 210, 210 + w)
    # cutting the cut picture again changes nothing; a frame that is all picture, and a black one, are used whole
    b = endoscope_box(clinic_frame)
    assert endoscope_box(clinic_frame[b.top:b.bottom, b.left:b.right]) == Box(0, b.height, 0, b.width)
    assert endoscope_box(np.full((90, 120, 3), 150, np.uint8)) == Box(0, 90, 0, 120)
    assert endoscope_box(np.zeros((100, 120, 3), np.uint8)) == Box(0, 100, 0, 120)


def test_corner_is_blacked_out_and_the_mask_maps_back_to_the_frame():
    image = np.full((100, 200, 3), 90, np.uint8)
    out = blank_corner(image, (0.3, 0.25))
    assert (out[70:, :50] == 0).all() and (out[:70] == 90).all() and (out[:, 50:] == 90).all()
    assert (image == 90).all()  # the input is not changed
    prob = np.ones((100, 200), np.float32)
    full = paste_back(prob, Box(10, 110, 30, 230), (120, 260), (0.3, 0.25))
    assert full.shape == (120, 260) and full.sum() == 100 * 200 - 30 * 50
    assert full[:10].sum() == 0 and full[:, :30].sum() == 0 and full[110:].sum() == 0


def test_verdict_and_mask_do_not_change_when_a_panel_and_a_box_are_added(tiny_config, clinic_frame, tmp_path):
    cfg = tiny_config.replace(crop=True, corner=CORNER, aux_head=True, verdict="head", operating_point=0.4)
    torch.manual_seed(0)
    save_checkpoint(build_model(cfg), cfg, tmp_path / "m", epoch=0)
    predictor = Predictor(tmp_path / "m.safetensors")
    # the same picture, plain and boxed: the box lies in the corner every frame has blacked out
    h, w = clinic_frame.shape[:2]
    boxed = clinic_frame.copy()
    boxed[h - 60:, :70] = (30, 200, 60)
    plain, tower = predictor.predict(clinic_frame), predictor.predict(_tower_frame(clinic_frame))
    assert predictor.predict(boxed).prob.tobytes() == plain.prob.tobytes()
    assert tower.prob.shape == (h + 40, w + 230)
    np.testing.assert_array_equal(tower.prob[20:20 + h, 210:210 + w], plain.prob)
    assert tower.prob[:, :210].max() == 0  # nothing outside the picture
    assert tower.score == plain.score and tower.polyp_present == plain.polyp_present
    assert plain.head is not None and plain.score == plain.head
    # what the model saw: the picture with its corner blacked out
    seen, box = picture(_tower_frame(clinic_frame), True, CORNER)
    assert box == Box(20, 20 + h, 210, 210 + w) and seen.shape[:2] == (h, w)
    assert seen[h - 60:, :70].max() == 0


# ---------------------------------------------------------------------------------------------------
# polyp-free frames as data


def test_polyp_free_folders_are_read_checked_and_split_with_sequences_whole(data_dir, tmp_path):
    neg = tmp_path / "free"
    for seq in ("seqA", "seqB", "seqC", "seqD", "seqE"):
        (neg / seq).mkdir(parents=True)
        for n in range(4):
            cv2.imwrite(str(neg / seq / f"{seq}_{n}.jpg"), np.full((40, 50, 3), 60 + n, np.uint8))
    index = scan_frames(neg, polyp=False)
    assert len(index.pairs) == 20 and index.kind == "frames" and index.sequence_source == "sub-folders"
    assert {p.sequence for p in index.pairs} == {1, 2, 3, 4, 5} and all(p.polyp is False for p in index.pairs)
    image, mask = load_pair(index.pairs[0])
    assert mask.shape == image.shape[:2] and not mask.any()

    report = check_dataset(neg, negatives=True)
    assert report.usable and report.polyp_free == 20 and report.sequences == 5
    assert "polyp-free frames" in report.table()
    assert "no mask" in " ".join(check_dataset(neg).warnings)  # not said to be polyp-free: the user is told
    with pytest.raises(PolypsegError, match="--negatives"):
        index_dataset(neg)

    both = index_dataset(data_dir, negatives=[neg])
    split = make_split(both, "sequence", val=0.2, test=0.3, seed=0)
    sides = {i: side for side in ("train", "val", "test") for i in getattr(split, side)}
    free = [p for p in both.pairs if p.source == "free"]
    for seq in {p.sequence for p in free}:  # every polyp-free sequence lies on one side
        assert len({sides[p.id] for p in free if p.sequence == seq}) == 1
    assert split.leak["per_folder"]["free"]["train_test"] == 0


def test_frame_level_set_reads_positives_without_masks_and_negatives(tmp_path):
    root = tmp_path / "centre"
    for part, n in (("positives", 3), ("negatives/seq1", 2), ("negatives/seq2", 2)):
        (root / part).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(root / part / f"{part.replace('/', '_')}_{i}.jpg"), np.full((30, 40, 3), 80, np.uint8))
    index = index_dataset(root)
    assert [p.polyp for p in index.pairs] == [True] * 3 + [False] * 4
    assert all(p.mask is None for p in index.pairs)
    with pytest.raises(PolypsegError, match="no mask"):
        load_pair(index.pairs[0])  # a polyp frame without a mask cannot be scored for Dice


def test_shared_polypgen_centre_is_a_frame_level_set():
    root = SHARED / "polypgen-centre-a"
    if not root.is_dir():
        pytest.skip("polypgen-centre-a not in ../shared/data")
    index = index_dataset(root)
    assert sum(p.polyp for p in index.pairs) == 250 and sum(p.polyp is False for p in index.pairs) == 250


# ---------------------------------------------------------------------------------------------------
# empty masks in losses and metrics


@pytest.mark.parametrize("loss", ["dice+bce", "structure", "focal", "lovasz", "tversky"])
def test_every_loss_is_finite_on_empty_masks_and_weighs_polyp_free_frames(loss):
    cfg = Config(encoder="tu-test_efficientnet", encoder_weights="none", height=64, width=64, loss=loss)
    fn = make_loss(cfg)
    logits = torch.randn(4, 1, 64, 64, requires_grad=True)
    mask = torch.zeros(4, 1, 64, 64)
    mask[:2, :, 10:30, 10:30] = 1
    polyp = torch.tensor([1.0, 1.0, 0.0, 0.0])
    value = fn(logits, torch.zeros_like(mask))  # all empty
    assert torch.isfinite(value)
    value.backward()
    assert torch.isfinite(logits.grad).all()
    only_polyp = weighted_mask_loss(fn, logits, mask, polyp, 0.0)
    assert torch.allclose(only_polyp, fn(logits[:2], mask[:2]))
    half = weighted_mask_loss(fn, logits, mask, polyp, 0.5)
    assert torch.allclose(half, fn(logits[:2], mask[:2]) + 0.5 * fn(logits[2:], mask[2:]))
    assert weighted_mask_loss(fn, logits[2:], mask[2:], polyp[2:], 0.0) == 0  # a batch of polyp-free frames only


def test_empty_masks_follow_the_stated_rule_in_the_metrics():
    empty = np.zeros((4, 4), bool)
    alarm = empty.copy()
    alarm[0, 0] = True
    quiet = metrics.scores(metrics.confusion(empty, empty))
    assert quiet["dice"] == quiet["iou"] == quiet["recall"] == 1.0
    fired = metrics.scores(metrics.confusion(alarm, empty))
    assert fired["dice"] == fired["recall"] == 0.0 and fired["specificity"] == pytest.approx(15 / 16)
    assert not any(np.isnan(v) for v in fired.values())


# ---------------------------------------------------------------------------------------------------
# frame-level measures, by hand


def test_frame_level_measures_on_a_hand_checked_set():
    # 4 polyp frames, 4 polyp-free ones
    score = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.2, 0.1, 0.05])
    label = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    counts = metrics.frame_counts(score, label, 0.5)
    assert counts == {"tp": 3, "fn": 1, "fp": 1, "tn": 3}
    assert metrics.frame_rates(counts) == {"sensitivity": 0.75, "specificity": 0.75, "false_alarm_rate": 0.25}
    # pairs (polyp, polyp-free) ranked right: 0.9 and 0.8 beat all 4; 0.6 and 0.3 beat 3 each -> 14 of 16
    assert metrics.roc_auc(score, label) == pytest.approx(14 / 16)
    assert metrics.roc_auc(score[:4], label[:4]) is None  # one kind only
    lo, hi = metrics.roc_auc_ci(score, label, resamples=200, seed=0)
    assert 0.0 <= lo <= 14 / 16 <= hi <= 1.0
    # the highest threshold that keeps 75% / 100% of the polyp frames flagged
    assert metrics.operating_point_for(score, label, 0.75) == 0.6
    assert metrics.operating_point_for(score, label, 1.0) == 0.3
    assert metrics.operating_point_for(score, label, 0.95) == 0.3
    with pytest.raises(PolypsegError, match="No polyp frame"):
        metrics.operating_point_for(score[4:], label[4:], 0.95)


def test_evaluate_reports_frame_level_columns_for_polyp_free_frames(tiny_checkpoint, data_dir, tmp_path):
    from polypseg.evaluate import evaluate_sets
    from polypseg.report import format_sets_table

    neg = tmp_path / "free" / "images"
    neg.mkdir(parents=True)
    for n in range(3):
        cv2.imwrite(str(neg / f"f{n}.png"), cv2.imread(str(data_dir / "images" / f"{n + 100:03d}.png")) // 3)
    clinic = tmp_path / "clinic"
    for sub in ("images", "masks"):
        (clinic / sub).mkdir(parents=True)
        for n in ("001", "002"):
            (clinic / sub / f"{n}.png").write_bytes((data_dir / sub / f"{n}.png").read_bytes())
    summary = evaluate_sets(tiny_checkpoint, [str(clinic)], out=tmp_path / "ev", negative_sets=[str(tmp_path / "free")],
                            bootstrap=50, gallery=2, progress=False)
    clinic_set, free_set = summary["test_sets"]
    assert clinic_set["frame"]["n_polyp"] == 2 and clinic_set["frame"]["specificity"] is None
    f = free_set["frame"]
    assert f["n_polyp_free"] == 3 and free_set["metrics"] is None and f["auc"] is None
    rows = (tmp_path / "ev" / free_set["selection"]["name"] / "per_image.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("id,sequence,height,width,polyp,polyp_score")
    flagged = sum(line.split(",")[6] == "1" for line in rows[1:])
    assert f["specificity"] == pytest.approx(1 - flagged / 3)
    assert (tmp_path / "ev" / free_set["selection"]["name"] / "false_alarms.jpg").is_file()
    table = format_sets_table(summary)
    assert "specificity" in table and "frame AUC" in table
    saved = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert saved["test_sets"][1]["frame"]["counts"]["tn"] + saved["test_sets"][1]["frame"]["counts"]["fp"] == 3


# ---------------------------------------------------------------------------------------------------
# the verdict


def test_describe_is_quiet_when_the_verdict_says_no_polyp(tiny_config, clinic_frame, tmp_path):
    cfg = tiny_config.replace(verdict="peak", operating_point=1.0)  # nothing reaches a peak of 1.0
    save_checkpoint(build_model(cfg), cfg, tmp_path / "m", epoch=0)
    predictor = Predictor(tmp_path / "m.safetensors")
    result = predictor.predict(clinic_frame)
    assert not result.polyp_present and result.score == pytest.approx(float(result.prob.max()))
    seen = describe(result, 0.0, operating_point=predictor.operating_point)
    assert seen["polyp_present"] is False and seen["area_fraction"] == 0 and seen["polygons"] == []
    assert seen["polyp_score"] == pytest.approx(result.score, abs=1e-4)
    # a bare probability map is judged by its peak at the threshold, as before verdicts existed
    assert describe(result.prob, 0.0)["polyp_present"] is True


def test_operating_point_defaults_and_bad_verdicts():
    base = dict(encoder="tu-test_efficientnet", encoder_weights="none")
    assert Config(**base).effective_operating_point == 0.5
    assert Config(**base, threshold=0.3).effective_operating_point == 0.3
    assert Config(**base, aux_head=True, verdict="head").effective_operating_point == 0.5
    assert Config(**base, operating_point=0.7).effective_operating_point == 0.7
    with pytest.raises(PolypsegError, match="image-level head"):
        Config(**base, verdict="head")
    with pytest.raises(PolypsegError, match="Unknown verdict"):
        Config(**base, verdict="vote")
    with pytest.raises(PolypsegError, match="negatives-fraction"):
        Config(**base, negatives_fraction=1.0)


def test_negatives_sampler_draws_the_asked_share(data_dir, tmp_path):
    pairs = index_dataset(data_dir).pairs[:30]
    free = [p.__class__(f"n{i}", p.image, None, None, polyp=False) for i, p in enumerate(pairs[:10])]
    sampler = negatives_sampler(pairs + free, 0.25, seed=0)
    drawn = list(sampler)
    assert len(drawn) == 40
    share = np.mean([i >= 30 for i in drawn])
    assert 0.1 < share < 0.4
    assert negatives_sampler(pairs, 0.25, seed=0) is None and negatives_sampler(pairs + free, None, 0) is None


def test_onnx_export_carries_the_head_and_matches_torch(tiny_config, clinic_frame, tmp_path):
    pytest.importorskip("onnxruntime")
    cfg = tiny_config.replace(crop=True, corner=CORNER, aux_head=True, verdict="head", operating_point=0.5)
    torch.manual_seed(0)
    save_checkpoint(build_model(cfg), cfg, tmp_path / "m", epoch=0)
    eager = Predictor(tmp_path / "m.safetensors").predict(clinic_frame)
    ort = Predictor(tmp_path / "m.safetensors", backend="onnxruntime").predict(clinic_frame)
    assert ort.head is not None and ort.score == pytest.approx(eager.score, abs=1e-4)
    assert ort.polyp_present == eager.polyp_present
    np.testing.assert_allclose(ort.prob, eager.prob, atol=1e-4)


def test_compare_frames_pairs_the_two_models_frame_by_frame(tmp_path):
    from polypseg.compare import compare, compare_frames, format_compare_frames

    label = [1, 1, 0, 0]
    scores = {"a": [0.9, 0.4, 0.5, 0.1], "b": [0.9, 0.8, 0.5, 0.1]}  # A ranks 3 of 4 pairs right, B all 4
    for name, sc in scores.items():
        folder = tmp_path / name / "centre-all"
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps({"data": str(tmp_path / "centre")}))
        lines = ["id,polyp,polyp_score,polyp_present,dice"]
        lines += [f"f{i},{y},{s},{int(s >= 0.5)}," for i, (y, s) in enumerate(zip(label, sc))]
        (folder / "per_image.csv").write_text("\n".join(lines) + "\n")
    [row] = compare_frames(tmp_path / "a", tmp_path / "b", resamples=100)
    assert (row["polyp"], row["polyp_free"]) == (2, 2)
    assert row["auc_a"] == pytest.approx(0.75) and row["auc_b"] == pytest.approx(1.0)
    assert row["auc_diff"] == pytest.approx(0.25) and row["auc_ci"][0] <= 0.25 <= row["auc_ci"][1]
    assert (row["sens_a"], row["sens_b"], row["spec_a"], row["spec_b"]) == (0.5, 1.0, 0.5, 0.5)
    assert "+0.250" in format_compare_frames([row])
    assert compare(tmp_path / "a", tmp_path / "b") == []  # no frame here has a Dice
