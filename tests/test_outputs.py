"""Outputs survive failures: every file is written atomically, a kill (SIGKILL or Ctrl-C) at a random moment
leaves no half-written file under a final name and a rerun succeeds, and an output path that cannot be
written is refused before any work starts."""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import onnx
import pytest

import polypseg
from polypseg import reproduce as reproduce_module
from polypseg.cli import main
from polypseg.config import Config
from polypseg.data import index_dataset
from polypseg.media import read_image
from polypseg.evaluate import evaluate
from polypseg.export import export_onnx
from polypseg.predict import Predictor
from polypseg.video import run_video
from polypseg.media import write_clip

SRC = Path(polypseg.__file__).resolve().parents[1]


def _failing_write_text(monkeypatch):
    """Path.write_text that writes half of the text and then fails, like a full disk."""
    def write_half(self, text, *args, **kwargs):
        with open(self, "w") as f:
            f.write(text[: len(text) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", write_half)


def test_config_save_failure_keeps_the_old_file(tiny_config, tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    tiny_config.save(path)
    before = path.read_text()
    _failing_write_text(monkeypatch)
    with pytest.raises(OSError):
        tiny_config.replace(epochs=99).save(path)
    monkeypatch.undo()
    assert path.read_text() == before and Config.load(path) == tiny_config
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_reproduce_json_is_written_atomically(tiny_config, tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "reproduce.json").write_text('{"train_seconds": 1.0}\n')
    monkeypatch.setattr(reproduce_module, "train", lambda cfg, out, progress: Path(out))
    monkeypatch.setattr(reproduce_module, "evaluate", lambda *a, **k: {"out": str(run / "eval-test")})
    _failing_write_text(monkeypatch)
    with pytest.raises(OSError):
        reproduce_module.reproduce(tiny_config, run)
    monkeypatch.undo()
    assert json.loads((run / "reproduce.json").read_text()) == {"train_seconds": 1.0}
    assert sorted(p.name for p in run.iterdir()) == ["reproduce.json"]


# ---------------------------------------------------------------------------------------------------
# outputs that cannot be written: refused before the model loads


def _unwritable_folder(tmp_path) -> Path:
    """A folder this process cannot create files in."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    # root writes through permission bits: use a folder of a pseudo filesystem instead
    for folder in (Path("/sys"), Path("/proc")):
        try:
            (folder / "polypseg-probe").mkdir()
        except OSError:
            return folder
        (folder / "polypseg-probe").rmdir()
    pytest.skip("no unwritable folder on this machine")


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fails the test if a Predictor is built: the output check must come first."""
    def refuse(self, *args, **kwargs):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr(Predictor, "__init__", refuse)


@pytest.mark.parametrize("command", ["predict", "video", "evaluate", "export"])
@pytest.mark.parametrize("where", ["read-only", "under-a-file"])
def test_unwritable_output_is_refused_before_work(command, where, tiny_checkpoint, data_dir, tmp_path, capsys,
                                                  no_model_loads):
    if where == "read-only":
        parent = _unwritable_folder(tmp_path)
        expected = "not writable"
    else:
        parent = tmp_path / "a-file"
        parent.write_text("not a folder")
        expected = "is a file"
    image = str(data_dir / "images" / "001.png")
    argv = {
        "predict": ["predict", image, "--run", str(tiny_checkpoint), "-o", str(parent / "out")],
        "video": ["video", str(data_dir / "images"), "--run", str(tiny_checkpoint), "-o", str(parent / "o.mp4")],
        "evaluate": ["evaluate", "--run", str(tiny_checkpoint), "--all", "--data", str(data_dir),
                     "-o", str(parent / "eval")],
        "export": ["export", "--run", str(tiny_checkpoint), "-o", str(parent / "m.onnx")],
    }[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "polypseg: error:" in err and expected in " ".join(err.split())


def test_missing_output_folders_are_created(tiny_checkpoint, data_dir, tmp_path):
    out = tmp_path / "not" / "yet" / "there"
    assert main(["predict", str(data_dir / "images" / "001.png"), "--run", str(tiny_checkpoint), "-o", str(out)]) == 0
    assert (out / "masks" / "001.png").is_file()


# ---------------------------------------------------------------------------------------------------
# kills at random moments


def _start(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    # SIGINT back to its default in the child: a suite started in the background (`pytest &` in a script)
    # ignores SIGINT, and a child inherits that, so the SIGINT cases would never interrupt anything.
    return subprocess.Popen([sys.executable, "-m", "polypseg.cli", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _interrupt_while_writing(argv, folder: Path, pattern: str, sig: int, rng: random.Random,
                             max_wait: float = 0.3) -> int:
    """Run `polypseg ARGV`; once a temporary output matching ``pattern`` shows up in ``folder`` (the
    command is writing), wait a random 0 to ``max_wait`` s and send ``sig``. Returns the exit status."""
    proc = _start(argv)
    give_up = time.monotonic() + 300  # a guard against a hung test, not a timing check
    while proc.poll() is None and not list(folder.glob(pattern)) and time.monotonic() < give_up:
        time.sleep(0.005)
    time.sleep(rng.uniform(0, max_wait))
    if proc.poll() is None:
        proc.send_signal(sig)
    proc.communicate(timeout=300)
    return proc.returncode


def _final_names(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if not p.name.startswith(".")] if folder.is_dir() else []


def _frames_in(video: Path) -> int:
    cap = cv2.VideoCapture(str(video))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


SIGNALS = [signal.SIGKILL, signal.SIGINT]


@pytest.fixture
def few_pairs(tmp_path, data_dir):
    """A dataset folder of 12 real pairs."""
    root = tmp_path / "few"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for pair in index_dataset(data_dir).pairs[:12]:
        shutil.copy(pair.image, root / "images" / pair.image.name)
        shutil.copy(pair.mask, root / "masks" / pair.mask.name)
    return root


@pytest.mark.parametrize("sig", SIGNALS, ids=["SIGKILL", "SIGINT"])
def test_killed_video_leaves_only_whole_files(sig, tiny_checkpoint, data_dir, tmp_path):
    pairs = index_dataset(data_dir).pairs[:20]
    clip = write_clip((read_image(p.image) for p in pairs), tmp_path / "clip.mp4")
    out = tmp_path / "out"
    out.mkdir()
    _interrupt_while_writing(["video", str(clip), "--run", str(tiny_checkpoint), "-o", str(out / "o.mp4")],
                             out, ".o.mp4.*", sig, random.Random(sig))
    finals = _final_names(out)
    assert {p.name for p in finals} <= {"o.mp4", "o.frames.csv", "o.events.csv", "o.summary.json", "o.alerts",
                                        "o.timeline.png"}
    if finals:  # a Ctrl-C keeps the frames done: a playable video and its CSV, row for row
        with (out / "o.frames.csv").open() as f:
            rows = list(csv.DictReader(f))
        assert 0 < len(rows) == _frames_in(out / "o.mp4")
    stats = run_video(clip, Predictor(tiny_checkpoint), out / "o.mp4", show_progress=False)
    assert stats.frames == 20 == _frames_in(out / "o.mp4")


@pytest.mark.parametrize("sig", SIGNALS, ids=["SIGKILL", "SIGINT"])
def test_killed_evaluate_leaves_no_partial_folder(sig, tiny_checkpoint, few_pairs, tmp_path):
    out = tmp_path / "evals"
    out.mkdir()
    argv = ["evaluate", "--run", str(tiny_checkpoint), "--all", "--data", str(few_pairs), "--bootstrap", "0",
            "-o", str(out / "eval")]
    rng = random.Random(sig + 10)
    for _ in range(20):  # a random wait past the end of 12 tiny frames finds it done: try again
        status = _interrupt_while_writing(argv, out, ".eval.tmp-*", sig, rng, max_wait=0.05)
        if status != 0:
            break
        shutil.rmtree(out / "eval")
    assert status in (-signal.SIGKILL, 130)  # the signal came while it was working
    assert not (out / "eval").exists()
    summary = evaluate(tiny_checkpoint, data=few_pairs, all_pairs=True, out=out / "eval", bootstrap=0,
                       progress=False)
    assert summary["n_images"] == 12
    assert sorted(p.name for p in _final_names(out)) == ["eval"]
    assert (out / "eval" / "report.html").is_file()


@pytest.mark.parametrize("sig", SIGNALS, ids=["SIGKILL", "SIGINT"])
def test_killed_export_leaves_no_partial_onnx(sig, tiny_checkpoint, data_dir, tmp_path):
    out = tmp_path / "onnx"
    out.mkdir()
    argv = ["export", "--run", str(tiny_checkpoint), "--data", str(data_dir), "-o", str(out / "m.onnx")]
    _interrupt_while_writing(argv, out, ".m.onnx.*", sig, random.Random(sig + 20))
    if (out / "m.onnx").exists():
        onnx.checker.check_model(onnx.load(str(out / "m.onnx")))
    export_onnx(tiny_checkpoint, out / "m.onnx", data=data_dir, check_frames=1, verbose=False)
    onnx.checker.check_model(onnx.load(str(out / "m.onnx")))
    assert [p.name for p in _final_names(out)] == ["m.onnx"]
