"""Progress: a bar on a terminal, a few plain lines when output goes to a file or a pipe."""

from __future__ import annotations

import io
import shutil

from polypseg.cli import main
from polypseg.progress import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_every_ten_percent_in_a_log():
    log = io.StringIO()
    assert list(progress(range(310), desc="evaluate", unit="img", stream=log)) == list(range(310))
    lines = log.getvalue().splitlines()
    assert lines == [f"evaluate: {p}% ({n}/310 img)" for p, n in
                     [(10, 31), (20, 62), (30, 93), (40, 124), (50, 155), (60, 186), (70, 217), (80, 248),
                      (90, 279), (100, 310)]]


def test_small_and_unknown_totals():
    log = io.StringIO()
    list(progress(range(3), desc="predict", unit="img", stream=log))
    assert log.getvalue().splitlines() == ["predict: 33% (1/3 img)", "predict: 66% (2/3 img)",
                                           "predict: 100% (3/3 img)"]
    log = io.StringIO()
    list(progress(iter(range(250)), desc="video", unit="frame", stream=log))  # no len(): no total
    assert log.getvalue().splitlines() == ["video: 100 frame", "video: 200 frame", "video: 250 frame"]
    log = io.StringIO()
    list(progress(range(5), desc="x", enabled=False, stream=log))
    assert log.getvalue() == ""


def test_a_terminal_gets_the_bar():
    term = Terminal()
    list(progress(range(50), desc="evaluate", unit="img", stream=term))
    assert "\r" in term.getvalue() and "50/50" in term.getvalue()


def test_cli_predict_into_a_log_prints_lines_not_a_bar(tiny_checkpoint, data_dir, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in ("001", "002", "003", "004"):
        shutil.copy(data_dir / "images" / f"{i}.png", folder)
    assert main(["predict", str(folder), "--run", str(tiny_checkpoint), "-o", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err  # pytest's capture is not a terminal, like a log file
    assert "\r" not in err
    assert [line for line in err.splitlines() if line.startswith("predict:")] == [
        "predict: 25% (1/4 img)", "predict: 50% (2/4 img)", "predict: 75% (3/4 img)", "predict: 100% (4/4 img)"]
