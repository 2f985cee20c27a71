"""Inference speed: torch eager vs ONNX Runtime (and int8) for DeepLabV3+ with ResNet-50 and
EfficientNet-Lite0 at 288x384, and the end-to-end video pipeline. Same code as `polypseg benchmark`.

    python benchmarks/bench_inference.py                 # full run: run it on a quiet machine
    python benchmarks/bench_inference.py --quick --int8  # a quick look while developing
    python benchmarks/bench_inference.py --json bench.json

Targets on a 2-core CPU: the real-time model >= 30 fps end to end on a video file with latency under
50 ms; ResNet-50 through ONNX Runtime >= 1.6x the fps of torch eager.

The video pipeline runs --repeats times per setting (ONNX Runtime threads 1 / 2 / all cores, spinning on
and off, torch), the settings taking turns; the table gives the median fps with its min-max, then the
cost per frame of each stage alone (decode, preprocess, inference, overlay, encode).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from polypseg.config import DEFAULT_DATA
from polypseg.bench import BENCH_ENCODERS, benchmark


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few iterations and a short clip")
    p.add_argument("--data", default=DEFAULT_DATA, help="CVC-ClinicDB folder (frames and the video clip)")
    p.add_argument("--encoders", nargs="+", default=list(BENCH_ENCODERS))
    p.add_argument("--height", type=int, default=288)
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--int8", action="store_true", help="also int8 static quantisation")
    p.add_argument("--iterations", type=int, help="timed frames per variant")
    p.add_argument("--threads", type=int, help="inference threads (default: compare 1, 2 and all cores)")
    p.add_argument("--repeats", type=int, help="runs of the video pipeline per setting (default 5, --quick 2)")
    p.add_argument("--no-video", action="store_true", help="skip the video pipeline")
    p.add_argument("--json", type=Path, help="also write the numbers as JSON")
    a = p.parse_args()
    result = benchmark(
        quick=a.quick, data=a.data, encoders=a.encoders, height=a.height, width=a.width, int8=a.int8,
        iterations=a.iterations, threads=a.threads, video=not a.no_video, repeats=a.repeats,
    )
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
