"""The video pipeline on short clips assembled from one CVC-ClinicDB sequence, with the tiny model."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from polypseg.alerts import AlertRule, track
from polypseg.data import index_dataset
from polypseg.media import read_image
from polypseg.errors import PolypsegError
from polypseg.predict import Prediction, Predictor
from polypseg.exam import EVENT_FIELDS, FRAME_FIELDS
from polypseg.video import run_video
from polypseg.viz import draw_frame
from polypseg.media import open_source, write_clip

N = 12


@pytest.fixture(scope="module")
def sequence(request):
    """The first N frames of CVC-ClinicDB's sequence 2, as RGB arrays."""
    data_dir = request.getfixturevalue("data_dir")
    pairs = [p for p in index_dataset(data_dir).pairs if p.sequence == 2][:N]
    assert len(pairs) == N
    return [read_image(p.image) for p in pairs]


def _video_info(path):
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened()
    decoded = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        decoded += 1
        size = (frame.shape[1], frame.shape[0])
    cap.release()
    return decoded, size


def _rows(path):
    with path.open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == FRAME_FIELDS
        return list(reader)


def _leftovers(folder, *keep):
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def _outputs(name, alerts=False, video="mp4"):
    """The files run_video leaves for the video NAME.mp4 (with ``alerts``: the thumbnails' folder too)."""
    return sorted([f"{name}.frames.csv", f"{name}.{video}", f"{name}.events.csv", f"{name}.summary.json",
                   f"{name}.timeline.png"]
                  + ([f"{name}.alerts"] if alerts else []))


@pytest.mark.parametrize("size,backend", [(None, "torch"), ((350, 270), "onnxruntime")])
def test_video_file_gives_playable_overlay_and_csv(sequence, tiny_checkpoint, tmp_path, size, backend):
    frames = sequence if size is None else [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in sequence]
    clip = write_clip(frames, tmp_path / "clip.mp4", fps=25)
    out_dir = tmp_path / "out"
    stats = run_video(clip, Predictor(tiny_checkpoint, backend=backend), out_dir / "overlay.mp4", show_progress=False)

    w, h = size or (384, 288)
    assert (stats.frames, stats.skipped, stats.size) == (N, 0, (w, h))
    assert _video_info(out_dir / "overlay.mp4") == (N, (w, h))
    rows = _rows(out_dir / "overlay.frames.csv")
    assert [int(r["frame"]) for r in rows] == list(range(N))
    assert all(float(r["latency_ms"]) > 0 and r["polyp_present"] in ("0", "1") for r in rows)
    # the raw mask's figures whatever the verdict; an outline only while an alert is on
    assert all((r["mean_confidence"] == "") == (float(r["area_fraction"]) == 0) for r in rows)
    assert all(r["outlined"] == str(int(r["alert"] == r["polyp_present"] == "1")) for r in rows)
    assert _leftovers(out_dir, "overlay.alerts") == _outputs("overlay")
    assert all(p.stat().st_mode & 0o644 == 0o644 for p in out_dir.iterdir())
    assert [float(r["time_ms"]) for r in rows] == pytest.approx([40 * i for i in range(N)])  # the file's 25 fps


def _codec_and_frames(path):
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.codec_context.name, sum(1 for _ in container.decode(stream))


def test_mp4_outputs_are_h264_that_browsers_play(sequence, tiny_checkpoint, tmp_path):
    odd = [f[:287, :383] for f in sequence[:5]]  # 4:2:0 needs even sizes: the last row and column go
    clip = write_clip(odd, tmp_path / "clip.mp4", fps=25)
    assert _codec_and_frames(clip) == ("h264", 5)
    assert _video_info(clip) == (5, (382, 286))
    out = tmp_path / "out" / "o.mp4"
    stats = run_video(clip, Predictor(tiny_checkpoint, backend="onnxruntime"), out, show_progress=False)
    assert stats.frames == 5 and _codec_and_frames(out) == ("h264", 5)
    assert _leftovers(out.parent, "o.alerts") == _outputs("o")


def test_csv_matches_the_model(sequence, tiny_checkpoint, tmp_path):
    clip = write_clip(sequence[:4], tmp_path / "clip.avi", fps=10)
    predictor = Predictor(tiny_checkpoint)
    t = float(np.median(predictor.predict_prob(sequence[0])))
    stats = run_video(clip, predictor, tmp_path / "o.avi", csv_path=tmp_path / "log.csv", threshold=t,
                      show_progress=False)
    assert stats.frames == 4 and _video_info(tmp_path / "o.avi")[0] == 4
    first = _rows(tmp_path / "log.csv")[0]
    # MJPG in the clip changed the pixels a little: compare with the decoded frame, not the original
    cap = cv2.VideoCapture(str(clip))
    decoded = cv2.cvtColor(cap.read()[1], cv2.COLOR_BGR2RGB)
    cap.release()
    prob = predictor.predict_prob(decoded)
    mask = prob >= t
    assert float(first["area_fraction"]) == pytest.approx(mask.mean(), abs=1e-5)
    assert float(first["mean_confidence"]) == pytest.approx(prob[mask].mean(), abs=1e-5)


def test_frame_folder_with_a_corrupt_frame(sequence, tiny_checkpoint, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(sequence[:8]):
        cv2.imwrite(str(folder / f"{i:03d}.png"), frame[:, :, ::-1])
    good = (folder / "004.png").read_bytes()
    (folder / "004.png").write_bytes(good[: len(good) // 3])  # truncated in the middle of the pixels
    out = tmp_path / "out.mp4"
    stats = run_video(folder, Predictor(tiny_checkpoint), out, max_frames=None, show_progress=False)
    assert (stats.frames, stats.skipped) == (7, 1)
    assert _video_info(out) == (7, (384, 288))
    assert [int(r["frame"]) for r in _rows(out.with_suffix(".frames.csv"))] == [0, 1, 2, 3, 5, 6, 7]


def test_max_frames(sequence, tiny_checkpoint, tmp_path):
    clip = write_clip(sequence, tmp_path / "clip.mp4")
    stats = run_video(clip, Predictor(tiny_checkpoint), tmp_path / "o.mp4", max_frames=3, show_progress=False)
    assert stats.frames == 3 and _video_info(tmp_path / "o.mp4")[0] == 3


def _garbage(path):
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())


def _zero_frames(path):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (64, 48))
    writer.release()


def _all_frames_broken(folder):
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")


@pytest.mark.parametrize("make,name", [
    (_garbage, "garbage.mp4"), (lambda p: p.write_bytes(b""), "empty.mp4"),
    (_zero_frames, "zero.mp4"), (_all_frames_broken, "broken"),
])
def test_unusable_sources_raise_and_leave_nothing(make, name, tiny_checkpoint, tmp_path):
    source = tmp_path / name
    make(source)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(PolypsegError):
        run_video(source, Predictor(tiny_checkpoint), out_dir / "o.mp4", show_progress=False)
    assert _leftovers(out_dir) == []


@pytest.mark.parametrize("failure", [KeyboardInterrupt, RuntimeError])
def test_interrupted_run_keeps_a_playable_file(failure, sequence, tiny_checkpoint, tmp_path):
    clip = write_clip(sequence, tmp_path / "clip.mp4")

    class FailsOnFifth(Predictor):
        calls = 0

        def infer(self, x):
            self.calls += 1
            if self.calls == 5:
                raise failure("stop")
            return super().infer(x)

    out = tmp_path / "out" / "o.mp4"
    kwargs = dict(predictor=FailsOnFifth(tiny_checkpoint), out_path=out, show_progress=False)
    if failure is KeyboardInterrupt:
        stats = run_video(clip, **kwargs)
        assert stats.interrupted and stats.frames == 4
    else:
        with pytest.raises(RuntimeError):
            run_video(clip, **kwargs)
    assert _video_info(out) == (4, (384, 288))
    assert len(_rows(out.with_suffix(".frames.csv"))) == 4
    assert _leftovers(out.parent, "o.alerts") == _outputs("o")
    assert json.loads(out.with_suffix(".summary.json").read_text())["frames"] == 4


def test_source_errors(tiny_checkpoint, tmp_path):
    with pytest.raises(PolypsegError, match="does not exist"):
        open_source(tmp_path / "missing.mp4")
    (tmp_path / "empty-folder").mkdir()
    with pytest.raises(PolypsegError, match="no image files"):
        open_source(tmp_path / "empty-folder")
    with pytest.raises(PolypsegError, match="camera 57"):
        open_source("57")
    with pytest.raises(PolypsegError, match=".mp4 or .avi"):
        run_video(tmp_path, Predictor(tiny_checkpoint), out_path=tmp_path / "o.mov")


class _Scripted(Predictor):
    """The tiny model's masks with hand-made polyp scores (verdict at 0.5), frame by frame; Ctrl-C while
    inferring frame ``stop_at`` (1-based)."""

    def __init__(self, run, scores, stop_at=None):
        super().__init__(run)
        self.scores, self.stop_at, self.calls, self.done = scores, stop_at, 0, 0

    def infer(self, x):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        return super().infer(x)

    def finish(self, out, geometry, image_hw):
        p = super().finish(out, geometry, image_hw)
        score = self.scores[self.done]
        self.done += 1
        return Prediction(p.prob, score, score >= 0.5, p.head)


# 25 fps (40 ms a frame): above at frames 3-9, a blip at 15-16 (40 ms < onset), above from frame 18 to the end
SCRIPT = [0.1] * 3 + [0.9] * 7 + [0.1] * 5 + [0.9] * 2 + [0.1] + [0.9] * 6
RULE = AlertRule(operating_point=0.5, smoothing_ms=0, onset_ms=80, release_ms=80)


def _events_file(path):
    with path.open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == EVENT_FIELDS
        return list(reader)


@pytest.fixture
def frame_folder(sequence, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(sequence + sequence):
        cv2.imwrite(str(folder / f"{i:03d}.png"), frame[:, :, ::-1])
    return folder


def test_alerts_files_agree_with_each_other_and_the_per_frame_csv(frame_folder, tiny_checkpoint, tmp_path):
    out = tmp_path / "out" / "o.avi"
    stats = run_video(frame_folder, _Scripted(tiny_checkpoint, SCRIPT), out, alerts=RULE, show_progress=False)
    assert stats.frames == len(SCRIPT) == 24
    # by hand: crossing at frame 3 (120 ms), raised at 200 ms, below from 400 ms, lowered at 480 ms; the
    # blip held back; crossing at 720 ms, raised at 800 ms, still on at the end: ends one frame after the last
    assert [(e.first_crossing_ms, e.start_ms, e.end_ms) for e in stats.events] == [(120, 200, 480), (720, 800, 960)]

    rows = _rows(out.with_suffix(".frames.csv"))
    assert [int(r["alert"]) for r in rows] == [5 <= i < 12 or i >= 20 for i in range(24)]
    assert [float(r["polyp_score"]) for r in rows] == SCRIPT
    _, recomputed = track([float(r["time_ms"]) for r in rows], [float(r["polyp_score"]) for r in rows], RULE,
                          areas=[float(r["area_fraction"]) for r in rows])
    assert recomputed == stats.events  # peak_frame: positions, here the frames' own indices

    events = _events_file(out.with_suffix(".events.csv"))
    assert [int(e["index"]) for e in events] == [1, 2]
    for row, event in zip(events, stats.events):
        for name, value in event.as_dict().items():
            assert float(row[name]) == pytest.approx(value, abs=1e-3)
        thumb = cv2.imread(str(out.parent / row["thumbnail"]))
        assert thumb is not None and thumb.shape[:2] == (180, 240)
    assert sorted(p.name for p in (out.parent / "o.alerts").iterdir()) == ["alert-001.jpg", "alert-002.jpg"]

    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary == stats.summary
    assert (summary["frames"], summary["duration_ms"], summary["source_fps"], summary["alerts"]) == (24, 960, 25, 2)
    assert "fps" not in summary and summary["processing_fps"] == pytest.approx(stats.processing_fps, abs=1e-3)
    assert summary["processing_fps"] > 0
    assert summary["alerts_per_minute"] == pytest.approx(2 / (960 / 60000))
    assert summary["alerted_share"] == pytest.approx((280 + 160) / 960)
    assert summary["rule"] == {"operating_point": 0.5, "smoothing_ms": 0, "onset_ms": 80, "release_ms": 80}
    assert _leftovers(out.parent) == _outputs("o", alerts=True, video="avi")

    # the overlay's amber border while an alert is on (MJPG: compare roughly)
    cap = cv2.VideoCapture(str(out))
    frames = [cv2.cvtColor(cap.read()[1], cv2.COLOR_BGR2RGB) for _ in range(24)]
    cap.release()
    bottom = [f[-2:].reshape(-1, 3).mean(axis=0) for f in frames]
    amber = np.array([255, 176, 0])
    assert [bool(np.abs(b - amber).max() < 40) for b in bottom] == [r["alert"] == "1" for r in rows]


def test_interrupted_run_ends_the_open_alert(frame_folder, tiny_checkpoint, tmp_path):
    out = tmp_path / "o.mp4"
    stats = run_video(frame_folder, _Scripted(tiny_checkpoint, SCRIPT, stop_at=23), out, alerts=RULE,
                      show_progress=False)
    assert stats.interrupted and stats.frames == 22  # frames 0-21: the second alert was on from frame 20
    assert [(e.start_ms, e.end_ms) for e in stats.events] == [(200, 480), (800, 880)]
    assert len(_events_file(out.with_suffix(".events.csv"))) == 2
    assert json.loads(out.with_suffix(".summary.json").read_text())["interrupted"] is True
    assert len(list((tmp_path / "o.alerts").iterdir())) == 2


def test_default_rule_takes_the_model_operating_point(sequence, tiny_checkpoint, tmp_path):
    clip = write_clip(sequence[:4], tmp_path / "clip.mp4")
    predictor = Predictor(tiny_checkpoint)
    stats = run_video(clip, predictor, tmp_path / "o.mp4", show_progress=False)
    assert stats.rule == AlertRule().resolved(predictor.operating_point)
    assert stats.summary["operating_point"] == pytest.approx(predictor.operating_point)
    with pytest.raises(PolypsegError, match="onset"):
        run_video(clip, predictor, tmp_path / "p.mp4", alerts=AlertRule(onset_ms=-5))


def test_video_runs_the_shipped_int8_file_by_default_and_says_so(frame_folder, tmp_path, capsys, monkeypatch):
    """`polypseg video` defaults to --precision auto: the real-time model's shipped int8 file, named in the
    output and the summary (on a CPU with VNNI); --precision fp32 runs the fp32 network instead."""
    from polypseg import runtime
    from polypseg.cli import main

    monkeypatch.setattr(runtime, "int8_caveat", lambda capabilities=None: None)

    out = tmp_path / "int8.mp4"
    assert main(["video", str(frame_folder), "-o", str(out), "--max-frames", "3", "--no-progress"]) == 0
    assert "model: onnxruntime int8 (realtime.int8.onnx)" in capsys.readouterr().out
    assert json.loads(out.with_suffix(".summary.json").read_text())["model"] == "onnxruntime int8 (realtime.int8.onnx)"
    out = tmp_path / "fp32.mp4"
    assert main(["video", str(frame_folder), "-o", str(out), "--max-frames", "3", "--no-progress",
                 "--precision", "fp32"]) == 0
    assert "model: onnxruntime (exported in memory)" in capsys.readouterr().out


def test_overlay_shows_the_polyp_area_but_not_the_processing_speed(frame_folder, tiny_checkpoint, tmp_path):
    """Issue 32: the exported video's caption is "polyp X%" alone; the frames per second processed are the
    terminal's and the stats' (they differ run to run, and are not part of the exam)."""
    out = tmp_path / "o.avi"
    stats = run_video(frame_folder, _Scripted(tiny_checkpoint, [0.9] * 24), out, max_frames=12, alerts=RULE,
                      show_progress=False)
    assert stats.frames == 12 and stats.processing_fps > 0 and "fps end to end" in str(stats)
    cap = cv2.VideoCapture(str(out))
    last = [cap.read()[1] for _ in range(12)][-1]  # by then the old caption had its fps figure
    cap.release()
    # the alert is on, so the outline and its caption "polyp X%" are drawn: the frame is exactly what the
    # contract draws (viz.draw_frame), with nothing else burned in (MJPG: compared roughly)
    row = _rows(out.with_suffix(".frames.csv"))[-1]
    assert row["alert"] == row["outlined"] == "1"
    image = read_image(sorted(frame_folder.iterdir())[11])
    mask = Predictor(tiny_checkpoint).predict_prob(image) >= 0.5
    expected = cv2.cvtColor(draw_frame(image, mask, "shown", alert=True), cv2.COLOR_RGB2BGR)
    assert np.abs(last.astype(int) - expected).mean() < 4
    caption = slice(4, 15), slice(60, 200)  # right of "polyp X%": the old caption's fps figure sat here
    assert np.abs(last[caption].astype(int) - expected[caption]).mean() < 6


def test_a_text_file_named_mp4_gets_polypsegs_message_without_ffmpegs_noise(tiny_checkpoint, tmp_path, capfd):
    """Issue 32: `polypseg video notes.mp4` says what is wrong in polypseg's words; FFmpeg inside OpenCV
    would print "moov atom not found" first."""
    from polypseg.cli import main

    fake = tmp_path / "notes.mp4"
    fake.write_text("these are meeting notes, not a video\n" * 20)
    capfd.readouterr()
    cap = cv2.VideoCapture(str(fake))  # what OpenCV alone prints: the noise this test looks for
    assert not cap.isOpened()
    cap.release()
    assert "moov atom not found" in capfd.readouterr().err

    out = tmp_path / "out" / "o.mp4"
    assert main(["video", str(fake), "-o", str(out), "--run", str(tiny_checkpoint), "--backend", "torch",
                 "--no-progress"]) == 2
    captured = capfd.readouterr()
    assert captured.err.startswith("polypseg: error: Cannot open the video")
    assert "not a video FFmpeg can read" in captured.err
    assert "moov" not in captured.err + captured.out and "mov,mp4" not in captured.err
    assert not out.parent.exists() or _leftovers(out.parent) == []
