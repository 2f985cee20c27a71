"""Metrics against values worked out by hand on tiny masks."""

from __future__ import annotations

import numpy as np
import pytest

from polypseg import metrics

GT = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], np.uint8)  # 4 polyp pixels
PRED = np.array([[1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]], bool)  # tp 3, fp 2, fn 1, tn 10
EMPTY = np.zeros((4, 4), np.uint8)


def test_confusion_counts_by_hand():
    assert metrics.confusion(PRED, GT).tolist() == [3, 2, 1, 10]
    assert metrics.confusion(EMPTY, EMPTY).tolist() == [0, 0, 0, 16]
    with pytest.raises(ValueError):
        metrics.confusion(PRED, GT[:3])


def test_every_metric_by_hand():
    s = {k: float(v) for k, v in metrics.scores(metrics.confusion(PRED, GT)).items()}
    expected = {
        "dice": 6 / 9,
        "iou": 3 / 6,
        "bg_iou": 10 / 13,
        "miou2": (3 / 6 + 10 / 13) / 2,
        "precision": 3 / 5,
        "recall": 3 / 4,
        "specificity": 10 / 12,
        "f2": 15 / (15 + 4 + 2),
        "accuracy": 13 / 16,
    }
    assert s == pytest.approx(expected)
    # F2 from its usual definition, (1 + 4) P R / (4 P + R)
    p, r = 3 / 5, 3 / 4
    assert s["f2"] == pytest.approx(5 * p * r / (4 * p + r))


def test_empty_ground_truth_and_prediction():
    both = metrics.scores(metrics.confusion(EMPTY, EMPTY))
    assert {k: float(v) for k, v in both.items()} == {k: 1.0 for k in metrics.METRICS}

    miss = {k: float(v) for k, v in metrics.scores(metrics.confusion(EMPTY, GT)).items()}  # nothing predicted
    assert miss["dice"] == miss["iou"] == miss["recall"] == miss["f2"] == 0.0
    assert miss["precision"] == 0.0  # denominator 0, masks disagree
    assert miss["specificity"] == 1.0 and miss["bg_iou"] == 12 / 16

    alarm = {k: float(v) for k, v in metrics.scores(metrics.confusion(PRED, EMPTY)).items()}  # no polyp there
    assert alarm["dice"] == alarm["iou"] == alarm["precision"] == 0.0
    assert alarm["recall"] == 0.0  # denominator 0, masks disagree
    assert alarm["specificity"] == pytest.approx(11 / 16)

    full = np.ones((4, 4), np.uint8)  # all polyp, all predicted: background terms have empty denominators
    all_polyp = {k: float(v) for k, v in metrics.scores(metrics.confusion(full, full)).items()}
    assert all_polyp["bg_iou"] == all_polyp["specificity"] == all_polyp["miou2"] == 1.0
    for values in (both, miss, alarm, all_polyp):
        assert all(np.isfinite(float(v)) for v in values.values())


def test_micro_and_per_image_differ():
    # image A: large polyp found perfectly; image B: small polyp missed
    big = np.zeros((4, 4), np.uint8)
    big[:3, :3] = 1
    small = np.zeros((4, 4), np.uint8)
    small[0, 0] = 1
    counts = np.stack([metrics.confusion(big, big), metrics.confusion(EMPTY, small)])
    per_image = metrics.reduce(counts, "per-image")
    micro = metrics.reduce(counts, "micro")
    assert per_image["dice"] == pytest.approx((1 + 0) / 2)
    assert micro["dice"] == pytest.approx(18 / (18 + 1))  # tp 9, fn 1
    assert per_image["iou"] == pytest.approx(0.5) and micro["iou"] == pytest.approx(9 / 10)
    with pytest.raises(ValueError):
        metrics.reduce(counts, "macro")


def _some_counts(n=30, seed=1):
    rng = np.random.default_rng(seed)
    counts = []
    for _ in range(n):
        gt = rng.random((8, 8)) < rng.uniform(0.1, 0.5)
        pred = gt ^ (rng.random((8, 8)) < rng.uniform(0.0, 0.4))
        counts.append(metrics.confusion(pred, gt))
    return np.stack(counts)


def test_bootstrap_is_deterministic_and_contains_the_estimate():
    counts = _some_counts()
    hd = np.arange(len(counts), dtype=float)
    for reduction in metrics.REDUCTIONS:
        a = metrics.bootstrap_ci(counts, reduction, resamples=500, seed=3, extra={"hd95": hd})
        b = metrics.bootstrap_ci(counts, reduction, resamples=500, seed=3, extra={"hd95": hd})
        c = metrics.bootstrap_ci(counts, reduction, resamples=500, seed=4, extra={"hd95": hd})
        assert a == b and a != c
        assert set(a) == set(metrics.METRICS) | {"hd95"}
        estimate = metrics.reduce(counts, reduction)
        for name in ("dice", "iou", "miou2", "precision", "recall"):
            lo, hi = a[name]
            assert lo < estimate[name] < hi
        assert a["hd95"][0] < hd.mean() < a["hd95"][1]


def test_hd95_hand_known_distances():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[0, 0] = True
    b[3, 4] = True
    assert metrics.hd95(a, b) == (5.0, False)

    lines_a = np.zeros((12, 10), bool)
    lines_b = np.zeros((12, 10), bool)
    lines_a[2, :] = True
    lines_b[5, :] = True  # every point 3 px from the other line
    assert metrics.hd95(lines_a, lines_b) == (3.0, False)

    square = np.zeros((12, 12), bool)
    square[3:9, 3:9] = True
    assert metrics.hd95(square, square) == (0.0, False)
    # a 2x2 square centred in the 6x6 one: inner -> outer is 2 px everywhere; outer -> inner is
    # 2 (8 pixels), sqrt(5) (8) and 2*sqrt(2) (the 4 corners), whose 95th percentile is 2*sqrt(2)
    inner = np.zeros((12, 12), bool)
    inner[5:7, 5:7] = True
    assert metrics.hd95(square, inner)[0] == pytest.approx(2 * np.sqrt(2))
    assert metrics.hd95(inner, square)[0] == pytest.approx(2 * np.sqrt(2))

    empty = np.zeros((3, 4), bool)
    one = empty.copy()
    one[1, 1] = True
    assert metrics.hd95(empty, empty) == (0.0, False)
    assert metrics.hd95(one, empty) == (5.0, True)  # the diagonal of a 3x4 image
    assert metrics.hd95(empty, one) == (5.0, True)


def test_threshold_counts_match_direct_thresholding():
    rng = np.random.default_rng(0)
    prob = rng.random((9, 7)).astype(np.float32)
    gt = rng.random((9, 7)) < 0.4
    t = np.array([0.0, 0.1, 0.25, 0.5, float(prob[0, 0]), 0.9, 1.0])
    t.sort()
    got = metrics.threshold_counts(prob, gt, t)
    want = np.stack([metrics.confusion(prob >= x, gt) for x in t])
    assert (got == want).all()
    with pytest.raises(ValueError):
        metrics.threshold_counts(prob, gt, t[::-1])


def test_pranet_threshold_averaged_dice_by_hand():
    gt = np.array([[1, 0], [0, 0]], np.uint8)
    prob = np.array([[1.0, 0.6], [0.0, 0.0]])  # already min-max normalised; 0.6 * 255 = 153
    curve = metrics.pranet_dice_curve(prob, gt)
    assert len(curve) == 256
    # threshold 0: all four pixels predicted -> 2/5; 1/255..153/255: two pixels -> 2/3; above: one -> 1
    assert curve[0] == pytest.approx(0.4)
    assert curve[1] == curve[153] == pytest.approx(2 / 3)
    assert curve[154] == curve[255] == pytest.approx(1.0)
    assert curve.mean() == pytest.approx((0.4 + 153 * 2 / 3 + 102 * 1.0) / 256)
    # min-max normalisation makes the map's scale irrelevant
    assert metrics.pranet_dice_curve(prob * 0.5 + 0.2, gt) == pytest.approx(curve)
    raw = metrics.pranet_dice_curve(prob * 0.5, gt, normalize=False)  # 8-bit levels 128 and 76
    assert (raw[50], raw[100], raw[200]) == pytest.approx((2 / 3, 1.0, 0.0))


def test_choose_threshold_on_a_constructed_case():
    # polyp pixels score 0.7, background 0.3 except a ring of 0.45: the best cut is in (0.45, 0.7]
    gt = np.zeros((8, 8), np.uint8)
    gt[2:6, 2:6] = 1
    prob = np.full((8, 8), 0.3, np.float32)
    prob[1:7, 1:7] = 0.45
    prob[2:6, 2:6] = 0.7
    items = [(prob, gt), (prob.T.copy(), gt.T.copy())]
    t, curve = metrics.choose_threshold(items, thresholds=np.array([0.2, 0.4, 0.5, 0.6, 0.8]))
    assert t == 0.5  # 0.5 and 0.6 both give Dice 1; the tie goes to the one nearest 0.5
    assert curve["dice_per_image"] == pytest.approx([32 / 80, 32 / 52, 1.0, 1.0, 0.0])
    assert curve["chosen"] == 0.5 and curve["reduction"] == "per-image"

    # micro and per-image choose differently: a big easy polyp and a small faint one
    big = np.zeros((10, 10), np.uint8)
    big[:, :6] = 1
    big_prob = np.where(big, 0.9, 0.35).astype(np.float32)  # 0.3 lets 40 background pixels in
    small = np.zeros((10, 10), np.uint8)
    small[0, 0] = 1
    small_prob = np.where(small, 0.32, 0.0).astype(np.float32)
    pairs = [(big_prob, big), (small_prob, small)]
    t_micro, _ = metrics.choose_threshold(pairs, thresholds=np.array([0.3, 0.5]), reduction="micro")
    t_image, _ = metrics.choose_threshold(pairs, thresholds=np.array([0.3, 0.5]), reduction="per-image")
    assert (t_micro, t_image) == (0.5, 0.3)


def _hd95_by_point_sets(a: np.ndarray, b: np.ndarray) -> float:
    """HD95 computed another way: outline pixels found by looking at the four neighbours (outside the
    image counts as background), all pairwise distances with scipy.spatial.distance.cdist."""
    from scipy.spatial.distance import cdist

    def outline(m):
        padded = np.pad(m, 1, constant_values=False)
        inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        return np.argwhere(m & ~inner)

    d = cdist(outline(a), outline(b))
    return float(max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95)))


def _disk(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


@pytest.mark.parametrize("case", ["shifted-disks", "l-shape-vs-box", "two-blobs-vs-one", "touching-border"])
def test_hd95_agrees_with_an_independent_implementation(case):
    shape = (40, 50)
    if case == "shifted-disks":
        a, b = _disk(shape, (20, 20), 9), _disk(shape, (23, 27), 7)
    elif case == "l-shape-vs-box":
        a = np.zeros(shape, bool)
        a[5:30, 5:12] = True
        a[23:30, 5:35] = True
        b = np.zeros(shape, bool)
        b[8:28, 8:30] = True
    elif case == "two-blobs-vs-one":
        a = _disk(shape, (10, 10), 5) | _disk(shape, (30, 40), 6)
        b = _disk(shape, (12, 12), 6)
    else:
        a = np.zeros(shape, bool)
        a[:15, :20] = True  # the image border is part of the outline
        b = _disk(shape, (8, 12), 8)
    expected = _hd95_by_point_sets(a, b)
    assert expected > 0
    assert metrics.hd95(a, b) == (pytest.approx(expected), False)
    assert metrics.hd95(b, a) == (pytest.approx(expected), False)
