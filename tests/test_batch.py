"""`polypseg batch` on Ray Data: finding exams, the worker stage against the one-process video pipeline,
a two-node cluster on this machine (ray.cluster_utils), a worker killed mid-run, resuming, failing exams.

Exams are short H.264 clips and frame folders made from CVC-ClinicDB sequences; the model is the tiny
untrained one (its figures are arbitrary but deterministic, which is all that equality needs)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from polypseg.alerts import AlertRule
from polypseg.batch import (
    ARCHIVE_FIELDS, DONE, ERROR_FIELDS, Exam, FrameSegmenter, _model_files, decode_exam, find_exams, run_batch,
    write_exam,
)
from polypseg.data import index_dataset
from polypseg.media import read_image
from polypseg.errors import PolypsegError
from polypseg.predict import Predictor, resolve_model
from polypseg.video import run_video
from polypseg.media import write_clip

ray = pytest.importorskip("ray", reason="the batch tests need the [scale] extra (ray[data])")


def _frames(data_dir, sequence: int, n: int):
    pairs = [p for p in index_dataset(data_dir).pairs if p.sequence == sequence][:n]
    assert len(pairs) == n
    return pairs


@pytest.fixture(scope="module")
def archive(tmp_path_factory, request):
    """An archive: two H.264 clips (one nested, 30 fps), a frame folder, and a file that is no video."""
    data_dir = request.getfixturevalue("data_dir")
    root = tmp_path_factory.mktemp("archive")
    write_clip([read_image(p.image) for p in _frames(data_dir, 2, 14)], root / "exam-a.mp4", fps=25)
    (root / "site-b").mkdir()
    write_clip([read_image(p.image) for p in _frames(data_dir, 5, 10)], root / "site-b" / "exam-b.mp4", fps=30)
    folder = root / "site-b" / "frames-c"
    folder.mkdir()
    for p in _frames(data_dir, 9, 8):
        shutil.copy(p.image, folder / p.image.name)
    (root / "broken.mp4").write_bytes(b"this is not a video" * 50)
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory, request):
    """The tiny untrained model as a checkpoint file (module scope: one ONNX export for all tests)."""
    import torch

    from polypseg.config import Config
    from polypseg.model import build_model, save_checkpoint

    cfg = Config(arch="deeplabv3plus", encoder="tu-test_efficientnet", encoder_weights="none", height=64,
                 width=96, data=str(request.getfixturevalue("data_dir")))
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("tiny") / "run"
    save_checkpoint(build_model(cfg), cfg, run / "best", epoch=0, metrics={})
    return run / "best.safetensors"


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _same_frames(batch_csv: Path, video_csv: Path) -> None:
    """The batch's per-frame CSV against `polypseg video`'s: same frames, times, verdicts and alerts;
    figures equal to float precision (a batch of frames through ONNX Runtime, not one at a time)."""
    a, b = _csv(batch_csv), _csv(video_csv)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        for k in ("frame", "time_ms", "polyp_present", "alert", "outlined"):
            assert x[k] == y[k], (k, x, y)
        for k in ("polyp_score", "area_fraction", "smoothed_score"):
            assert abs(float(x[k]) - float(y[k])) <= 2e-5, (k, x, y)
        assert (x["mean_confidence"] == "") == (y["mean_confidence"] == "")


# ---------------------------------------------------------------------------------------------------
# without Ray


def test_find_exams(archive, tmp_path):
    exams = find_exams([archive])
    assert [e.name for e in exams] == ["broken", "exam-a", "site-b/exam-b", "site-b/frames-c"]
    assert all(Path(e.source).is_absolute() for e in exams)
    # a list file, relative to its folder, with a comment; the same name twice gets -2
    listing = tmp_path / "exams.txt"
    listing.write_text(f"# two exams\n{archive / 'exam-a.mp4'}\n\n{archive / 'site-b' / 'frames-c'}\n")
    names = [e.name for e in find_exams([listing, archive / "exam-a.mp4"])]
    assert names == ["exam-a", "frames-c", "exam-a-2"]
    with pytest.raises(PolypsegError, match="does not exist"):
        find_exams([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(PolypsegError, match="no video"):
        find_exams([tmp_path / "empty"])
    listing.write_text(f"{tmp_path / 'empty'}\n")
    with pytest.raises(PolypsegError, match="Line 1 of .*neither a video"):
        find_exams([listing])


def test_decode_reports_a_broken_exam(archive):
    rows = list(decode_exam({"exam": "broken", "source": str(archive / "broken.mp4")}))
    assert [r["kind"] for r in rows] == ["error"] and "Cannot open the video" in rows[0]["note"]
    rows = list(decode_exam({"exam": "c", "source": str(archive / "site-b" / "frames-c")}))
    assert [r["kind"] for r in rows] == ["frame"] * 8 + ["end"]
    assert rows[-1]["index"] == 8 and json.loads(rows[-1]["note"]) == {"skipped": 0, "fps": 25.0}


def test_worker_stage_equals_the_video_pipeline(archive, model, tmp_path):
    """decode -> FrameSegmenter (batches of 4, one worker, no Ray) -> write_exam gives the CSV of
    `polypseg video` on the same clip, and the same alerts."""
    source = archive / "exam-a.mp4"
    rows = list(decode_exam({"exam": "a", "source": str(source)}))
    *frames, end = rows
    segmenter = FrameSegmenter(_model_files(model, "onnxruntime", "fp32"), "onnxruntime", threads=1, threshold=None)
    results = []
    for i in range(0, len(frames), 4):
        chunk = frames[i:i + 4] + ([end] if i + 4 >= len(frames) else [])
        batch = {k: np.asarray([r[k] for r in chunk], dtype=object if k in ("frame", "exam", "kind", "note") else None)
                 for k in chunk[0]}
        out = segmenter(batch)
        results += [{k: out[k][j] for k in out} for j in range(len(chunk)) if out["kind"][j] == "frame"]
    rule = AlertRule(onset_ms=80, release_ms=80).resolved(segmenter.predictor.operating_point)
    exams = tmp_path / "exams"
    summary = write_exam(Exam("a", str(source)), results, {"frames": 14, "skipped": 0, "fps": 25.0}, rule, exams,
                         overlay=True)
    video = run_video(source, Predictor(model, backend="onnxruntime", threads=1), tmp_path / "v.mp4",
                      show_progress=False, alerts=rule)
    _same_frames(exams / "a" / "frames.csv", tmp_path / "v.frames.csv")
    assert summary["alerts"] == video.summary["alerts"]
    # one meaning per name (issue 32): the clip's frame rate by its timestamps, as `polypseg video` says it;
    # how fast frames were processed is not known per exam on a pool of workers
    assert summary["source_fps"] == video.summary["source_fps"] == 25 and "fps" not in summary
    assert summary["processing_fps"] is None and video.summary["processing_fps"] > 0
    assert (exams / "a" / "events.csv").read_text() == (tmp_path / "v.events.csv").read_text().replace("v.alerts/", "alerts/")
    assert len(list((exams / "a" / "alerts").glob("*.jpg"))) == summary["alerts"]
    assert (exams / "a" / "overlay.mp4").stat().st_size > 0 and (exams / "a" / "timeline.png").stat().st_size > 0
    assert not list(exams.glob(".*.tmp"))  # the folder was renamed into place


def test_the_real_time_model_runs_its_int8_file_unless_told_otherwise(archive, model, tmp_path, monkeypatch):
    """--precision auto (the default, as in `polypseg video`) sends the shipped int8 file to the workers
    (on a CPU with VNNI); fp32 sends none; a model without one runs fp32, and int8 asked of it fails before
    anything is written."""
    from polypseg import runtime

    monkeypatch.setattr(runtime, "int8_caveat", lambda capabilities=None: None)
    weights = resolve_model("realtime")
    files = _model_files(weights, "onnxruntime", "auto")
    assert files["model.int8.onnx"] == weights.with_suffix(".int8.onnx").read_bytes() and "model.onnx" not in files
    segmenter = FrameSegmenter(files, "onnxruntime", threads=1, threshold=None, precision="int8")
    assert segmenter.predictor.runtime == "onnxruntime int8 (model.int8.onnx)"
    assert "model.int8.onnx" not in _model_files(weights, "onnxruntime", "fp32")
    assert set(_model_files(model, "onnxruntime", "auto")) == {"model.safetensors", "model.json", "model.onnx"}
    with pytest.raises(PolypsegError, match=r"export --run .* --int8"):
        _model_files(model, "onnxruntime", "int8")
    with pytest.raises(PolypsegError, match="add --backend onnxruntime"):
        run_batch([archive / "exam-a.mp4"], tmp_path / "out", checkpoint=model, backend="torch", precision="int8",
                  show_progress=False)
    assert not (tmp_path / "out").exists()


def test_missing_ray_says_how_to_install(archive, model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(PolypsegError, match=r"polypseg\[scale\]"):
        run_batch([archive / "exam-a.mp4"], tmp_path / "out", checkpoint=model, show_progress=False)
    assert not (tmp_path / "out" / "exams" / "exam-a").exists()


# ---------------------------------------------------------------------------------------------------
# on Ray


@pytest.fixture(scope="module")
def two_nodes():
    """A Ray cluster of two nodes on this machine, one CPU each (Ray's own test utility)."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_two_nodes_both_work_and_match_one_process(archive, model, two_nodes, tmp_path):
    out = tmp_path / "out"
    result = run_batch([archive], out, checkpoint=model, address=two_nodes.address, workers=2, threads=1,
                       batch_size=4, show_progress=False)
    assert sorted(result.done) == ["exam-a", "site-b/exam-b", "site-b/frames-c"]
    assert [e["exam"] for e in result.errors] == ["broken"]
    run = json.loads((out / "batch.json").read_text())
    assert len(run["frames_by_node"]) == 2 and all(n > 0 for n in run["frames_by_node"].values())
    assert run["precision"] == "fp32"  # auto, and this model has no int8 file
    assert sum(run["frames_by_node"].values()) == 14 + 10 + 8 == result.frames
    predictor = Predictor(model, backend="onnxruntime", threads=1)
    for name, source in (("exam-a", "exam-a.mp4"), ("site-b/exam-b", "site-b/exam-b.mp4"), ("site-b/frames-c", "site-b/frames-c")):
        video = tmp_path / "one" / name / "v.mp4"
        run_video(archive / source, predictor, video, show_progress=False)
        _same_frames(out / "exams" / name / "frames.csv", video.with_suffix(".frames.csv"))
        assert json.loads((out / "exams" / name / DONE).read_text())["frames"] == len(_csv(video.with_suffix(".frames.csv")))
    errors = _csv(out / "errors.csv")
    assert list(errors[0]) == list(ERROR_FIELDS) and "Cannot open the video" in errors[0]["reason"]
    archive_rows = _csv(out / "archive.csv")
    assert list(archive_rows[0]) == list(ARCHIVE_FIELDS) and len(archive_rows) == 3
    page = (out / "index.html").read_text()
    assert "exams/site-b/exam-b/timeline.png" in page and "Failed exams" in page

    # resume: a rerun does nothing but the failed exam again; an exam removed (and a stale temporary
    # folder left by a killed run) is done again, the others are not touched
    stamp = (out / "exams" / "exam-a" / DONE).stat().st_mtime_ns
    shutil.rmtree(out / "exams" / "site-b" / "frames-c")
    (out / "exams" / "site-b" / ".frames-c.x.tmp").mkdir()
    again = run_batch([archive], out, checkpoint=model, address=two_nodes.address, workers=2, batch_size=4,
                      show_progress=False)
    assert again.done == ["site-b/frames-c"] and sorted(again.skipped) == ["exam-a", "site-b/exam-b"]
    assert [e["exam"] for e in again.errors] == ["broken"]
    assert (out / "exams" / "exam-a" / DONE).stat().st_mtime_ns == stamp
    assert not list((out / "exams").rglob(".*.tmp"))
    assert len(_csv(out / "archive.csv")) == 3
    _same_frames(out / "exams" / "site-b" / "frames-c" / "frames.csv",
                 tmp_path / "one" / "site-b" / "frames-c" / "v.frames.csv")


def _segmenter_pids() -> list[int]:
    lines = subprocess.run(["ps", "-eo", "pid,stat,args"], capture_output=True, text=True).stdout.splitlines()
    return [int(line.split()[0]) for line in lines
            if "MapWorker(" in line and "FrameSegmenter" in line and "Z" not in line.split()[1]]


def test_a_killed_worker_and_every_exam_done_once(data_dir, model, tmp_path):
    """Embedded Ray (no --address). Once the first exam is written, one model worker is killed: Ray Data
    restarts it and runs its batch again, and every exam ends with each of its frames exactly once."""
    ray.shutdown()
    root = tmp_path / "exams"
    root.mkdir()
    images = [read_image(p.image) for p in _frames(data_dir, 3, 16)]
    for k in range(8):
        write_clip(images, root / f"exam-{k}.mp4", fps=25)
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_one():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            log = out / "batch.log"
            if log.is_file() and " done " in log.read_text() and (pids := _segmenter_pids()):
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one, daemon=True)
    killer.start()
    result = run_batch([root], out, checkpoint=model, workers=2, threads=1, batch_size=2, num_cpus=2,
                       show_progress=False)
    killer.join(timeout=5)
    assert killed, "no model worker was found to kill"
    assert sorted(result.done) == [f"exam-{k}" for k in range(8)] and not result.errors
    for k in range(8):
        rows = _csv(out / "exams" / f"exam-{k}" / "frames.csv")
        assert [int(r["frame"]) for r in rows] == list(range(16))
    assert result.frames == 8 * 16
