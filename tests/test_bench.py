"""`polypseg benchmark`'s video table on the tiny model with --quick: its structure, not its timings."""

from __future__ import annotations

from polypseg.bench import benchmark, format_benchmark


def test_video_rows_report_median_and_spread_over_the_repeats(tiny_checkpoint, data_dir, capsys):
    result = benchmark(quick=True, data=data_dir, encoders=(), video_frames=6, repeats=3,
                       video_model=tiny_checkpoint / "best.safetensors")
    rows = result["video"]
    assert rows and {(r["runtime"], r["spin"]) for r in rows} == {("onnxruntime (exported in memory)", rows[0]["spin"])}
    for r in rows:
        assert r["runs"] == 3 and len(r["fps_all"]) == 3 and r["frames"] == 6
        assert r["fps_min"] <= r["fps_median"] <= r["fps_max"]
    assert [s["stage"].split(" ")[0] for s in result["stages"]] == ["decode", "preprocess", "inference",
                                                                     "resize", "encode"]
    table = format_benchmark(result)
    assert "| median fps | min-max fps | median latency ms |" in table
    assert "| stage, run alone | median ms per frame |" in table
    assert table in capsys.readouterr().out


def test_int8_adds_a_video_row_for_the_models_int8_file(tiny_checkpoint, data_dir):
    result = benchmark(quick=True, data=data_dir, encoders=(), video_frames=4, repeats=1, int8=True,
                       video_model=tiny_checkpoint / "best.safetensors")
    runtimes = [r["runtime"] for r in result["video"]]
    assert runtimes[-1] == "onnxruntime int8 (model.int8.onnx)" and runtimes.count(runtimes[-1]) == 1
    assert "| onnxruntime int8 (model.int8.onnx) |" in format_benchmark(result)


def test_the_shipped_models_int8_file_has_its_video_row_without_int8(data_dir):
    """`polypseg video` runs the shipped int8 file by default, so the benchmark times it too."""
    result = benchmark(quick=True, data=data_dir, encoders=(), video_frames=4, repeats=1)
    runtimes = [r["runtime"] for r in result["video"]]
    assert runtimes[-1] == "onnxruntime int8 (realtime.int8.onnx)" and runtimes.count(runtimes[-1]) == 1


def test_bench_imports_and_bench_models_runs_without_pyav(tmp_path):
    """Issue 32: PyAV (H.264 output) is needed only to write .mp4 files: with `import av` failing,
    polypseg.bench imports, benchmarks/bench_models.py answers --help, and an MJPG clip is still written."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    code = f"""
import runpy, sys
sys.modules["av"] = None  # `import av` now raises ImportError, as on a machine without PyAV
import polypseg.bench, polypseg.media, polypseg.video
assert "av" not in {{k for k, v in sys.modules.items() if v is not None}}
import numpy as np
from polypseg.errors import PolypsegError
frames = [np.full((64, 96, 3), 40 * i, np.uint8) for i in range(3)]
print("written", polypseg.media.write_clip(frames, {str(tmp_path / "clip.avi")!r}).stat().st_size > 0)
try:
    polypseg.media.write_clip(frames, {str(tmp_path / "clip.mp4")!r})
except PolypsegError as err:
    print("mp4:", err)
sys.argv = ["bench_models.py", "--help"]
runpy.run_path({str(repo / "benchmarks" / "bench_models.py")!r}, run_name="__main__")
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "written True" in run.stdout and "mp4: Writing an .mp4 (H.264) needs PyAV" in run.stdout
    assert "usage: bench_models.py" in run.stdout and "--device" in run.stdout
