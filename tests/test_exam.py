"""What the endoscopist sees is what the verdict says (polypseg.exam): the contract on hand-made score
sequences, on a real clip with the shipped model, and the logit score's resolution."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from polypseg.alerts import AlertRule
from polypseg.data import index_dataset
from polypseg.errors import PolypsegError
from polypseg.exam import ExamLog, FrameResult, outline_style
from polypseg.media import read_image, write_clip
from polypseg.metrics import operating_point_for
from polypseg.predict import Predictor, logit, top_logit

CENTRE_A = "polypgen-centre-a"
RULE = AlertRule(operating_point=0.5, smoothing_ms=0, onset_ms=80, release_ms=80)  # 2 frames at 25 fps


def _frames(scores, fps=25.0):
    return [FrameResult(i, 1000 * i / fps, s, s >= 0.5, 0.1, 0.8) for i, s in enumerate(scores)]


def test_outline_styles_by_hand():
    # streams: the alert decides; single images: the verdict; research: every raw outline, the hidden ones as "raw"
    assert [outline_style("alert", p, a) for p, a in [(0, 0), (1, 0), (0, 1), (1, 1)]] == [None, None, None, "shown"]
    assert [outline_style("verdict", p, a) for p, a in [(0, 0), (1, 0), (0, 1), (1, 1)]] == [None, "shown", None, "shown"]
    assert [outline_style("all", p, a) for p, a in [(0, 0), (1, 0), (0, 1), (1, 1)]] == ["raw", "raw", "raw", "shown"]
    with pytest.raises(PolypsegError, match="Unknown outline mode"):
        ExamLog(RULE, "everything")


def test_a_blip_the_rule_holds_back_is_not_drawn():
    # 25 fps: a one-frame blip at frame 2 (under the 80 ms onset), then a polyp from frame 6 to 11
    scores = [0.1, 0.1, 0.9, 0.1, 0.1, 0.1] + [0.9] * 6 + [0.1] * 4
    log = ExamLog(RULE)
    steps = [log.add(f) for f in _frames(scores)]
    log.close()
    # by hand: crossing at frame 6 (240 ms), alert at 320 ms (frame 8); below from frame 12 (480 ms), off at 560 ms
    assert [s.row["alert"] for s in steps] == [0] * 8 + [1] * 6 + [0] * 2
    # the blip (frame 2) is not drawn, nor frames 12-13, which the release keeps under the alert after the polyp
    assert [s.row["outlined"] for s in steps] == [0] * 8 + [1] * 4 + [0] * 4
    assert [s.row["polyp_present"] for s in steps] == [int(x >= 0.5) for x in scores]  # the verdict is kept
    research = ExamLog(RULE, "all")
    styles = [research.add(f).style for f in _frames(scores)]
    assert styles[2] == "raw" and styles[8] == "shown" and styles[0] == "raw"
    summary = log.summary(source="hand-made")
    assert (summary["alerts"], summary["outlined_share"], summary["polyp_frame_share"]) == (1, 4 / 16, 7 / 16)


def _green(frame: np.ndarray) -> np.ndarray:
    """Pixels of the outline's green (0, 255, 0), as H.264 leaves them: strongly green, little red or blue."""
    r, g, b = (frame[..., i].astype(int) for i in range(3))
    return (g > 170) & (r < 110) & (b < 110)


@pytest.fixture(scope="module")
def exam_clip(data_dir, tmp_path_factory):
    """20 polyp-free frames of another hospital (polypgen-centre-a, sequence 1), 20 polyp frames of
    CVC-ClinicDB's first sequence, 20 polyp-free frames of sequence 2; all at 384x288, 25 fps."""
    negatives = data_dir.parent / CENTRE_A / "negatives"
    if not negatives.is_dir():
        pytest.skip(f"{negatives} is not here")
    free = [sorted((negatives / s).glob("*.jpg"))[:20] for s in ("seq1", "seq2")]
    polyp = [p.image for p in index_dataset(data_dir).pairs[:20]]
    frames = [cv2.resize(read_image(p), (384, 288), interpolation=cv2.INTER_AREA) for p in free[0] + polyp + free[1]]
    return write_clip(frames, tmp_path_factory.mktemp("exam") / "exam.mp4", fps=25), frames


def test_no_outline_on_a_real_clip_unless_an_alert_is_on(exam_clip, tmp_path):
    """The shipped model on polyp-free frames of another hospital around a polyp: every green outline
    pixel of the overlay video sits on a frame whose alert is on and whose own verdict is polyp (the frames'
    own green counted out)."""
    from polypseg.video import run_video

    clip, frames = exam_clip
    out = tmp_path / "o.mp4"
    stats = run_video(clip, Predictor("realtime", backend="onnxruntime", precision="fp32"), out, show_progress=False)
    with open(out.with_suffix(".frames.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 60 == stats.frames
    cap = cv2.VideoCapture(str(out))
    drawn = [cv2.cvtColor(cap.read()[1], cv2.COLOR_BGR2RGB) for _ in rows]
    cap.release()
    own = [_green(f).sum() for f in frames]
    outline = [int(_green(d).sum()) - int(o) for d, o in zip(drawn, own)]
    for row, pixels in zip(rows, outline):
        assert row["outlined"] == str(int(row["alert"] == row["polyp_present"] == "1"))
        if row["outlined"] == "0":
            assert pixels < 15, row  # nothing drawn (a few pixels of H.264 noise at most)
    raw = [float(r["area_fraction"]) > 0 for r in rows]
    alerted = [r["alert"] == "1" for r in rows]
    # not a vacuous check: the model's raw mask fires on polyp-free frames the contract keeps clean, and the
    # polyp is outlined once its alert is on
    assert any(m and not a for m, a in zip(raw, alerted))
    assert any(pixels > 100 for pixels, a in zip(outline[20:40], alerted[20:40]) if a)


def test_the_logit_score_keeps_its_resolution_where_probabilities_saturate(data_dir):
    """On polyp frames the shipped model is sure of, the peak probability reads 1.00 (two decimals, as a page
    shows it) for most; the logit score keeps them apart, and operating points for 90%, 95% and 99%
    sensitivity are three different numbers."""
    predictor = Predictor("realtime", backend="onnxruntime", precision="fp32")
    pairs = [p for p in index_dataset(data_dir).pairs if p.sequence in (3, 4, 5)][:40]
    probs = [predictor.predict(read_image(p.image)).prob for p in pairs]
    peaks = np.array([p.max() for p in probs])
    scores = np.array([top_logit(p) for p in probs])
    assert (np.round(peaks, 2) == 1.0).mean() > 0.5  # saturated as shown
    assert len(set(np.round(scores, 2))) > 0.9 * len(scores)  # distinct as shown
    points = [operating_point_for(scores, np.ones(len(scores)), s) for s in (0.90, 0.95, 0.99)]
    assert points[0] > points[1] > points[2]
    # by hand: the mean logit of the top share of pixels; logits from float32 probabilities end at the ceiling
    grid = np.full((10, 100), 0.5, np.float32)
    grid[0, :3] = [0.9, 0.99, 0.999]
    assert top_logit(grid, share=0.002) == pytest.approx((np.log(99) + np.log(999)) / 2, abs=1e-4)  # float32 input
    assert logit(1.0) == pytest.approx(np.log(2.0**24 - 1)) and logit(0.5) == 0.0


def test_predict_files_keep_the_raw_mask_and_the_picture_follows_the_verdict(tiny_checkpoint, tiny_config, data_dir,
                                                                           tmp_path):
    """Single images: the overlay is drawn only when the frame's verdict is polyp; the mask file stays raw,
    with the verdict beside it in predictions.csv."""
    from polypseg.model import build_model, save_checkpoint
    from polypseg.predict import predict_paths

    quiet = tmp_path / "quiet"  # the tiny model with an operating point no frame reaches: every verdict "no polyp"
    save_checkpoint(build_model(tiny_config), tiny_config.replace(verdict="peak", operating_point=1.0), quiet / "best",
                    epoch=0, metrics={})
    image = data_dir / "images" / "001.png"
    out = tmp_path / "out"
    predict_paths([image], Predictor(quiet / "best.safetensors"), out, threshold=0.0, show_progress=False)
    mask = cv2.imread(str(out / "masks" / "001.png"), cv2.IMREAD_GRAYSCALE)
    drawn = cv2.imread(str(out / "overlays" / "001.png"))[:, :, ::-1]
    assert (mask == 255).all()  # raw: every pixel is at or above a threshold of 0
    assert np.array_equal(drawn, read_image(image))  # the verdict says no polyp: nothing drawn
    with open(out / "predictions.csv") as f:
        row = next(csv.DictReader(f))
    assert (row["polyp_present"], row["outlined"], float(row["area_fraction"])) == ("0", "0", 1.0)
    assert float(row["operating_point"]) == 1.0 and float(row["polyp_score"]) < 1.0
