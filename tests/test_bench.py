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
