"""Frames per second through an archive: the plain `polypseg video` loop, exam after exam, against
`polypseg batch` on an embedded Ray with 1 and 2 model workers, on the same exams, side by side.

    python benchmarks/bench_batch.py                       # 6 exams of 100 CVC-ClinicDB frames, shipped model
    python benchmarks/bench_batch.py --exams 4 --frames 50 --run runs/NEW

The exams are H.264 clips of consecutive CVC-ClinicDB frames (384 x 288, 25 fps), written once into a
temporary folder. `video` is ``run_video`` per exam with ONNX Runtime on every core (overlay video
written, as the command does); `batch` is ``run_batch`` with ``--workers N --threads T`` (no overlay
video: what an archive run writes by default), Ray's start-up included, since a user waits for it too.
fps = all frames / wall-clock seconds. Prints one table.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from polypseg import Predictor
from polypseg.batch import run_batch
from polypseg.media import folder_images, read_image
from polypseg.progress import text_table
from polypseg.video import run_video
from polypseg.media import write_clip

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def make_exams(folder: Path, exams: int, frames: int) -> list[Path]:
    images = folder_images(SHARED / "cvc-clinicdb" / "images")
    paths = []
    for k in range(exams):
        start = (k * frames) % (len(images) - frames)
        path = folder / f"exam-{k:02d}.mp4"
        write_clip([read_image(p) for p in images[start:start + frames]], path, fps=25)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="run folder or checkpoint (default: the shipped model)")
    parser.add_argument("--exams", type=int, default=6)
    parser.add_argument("--frames", type=int, default=100, help="frames per exam")
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    rows = [["pipeline", "workers x threads", "frames", "seconds", "fps"]]
    with tempfile.TemporaryDirectory(prefix="polypseg-bench-batch-") as tmp:
        tmp = Path(tmp)
        (tmp / "exams").mkdir()
        exams = make_exams(tmp / "exams", args.exams, args.frames)
        total = args.exams * args.frames

        begin = time.perf_counter()
        predictor = Predictor(args.run, backend="onnxruntime")
        for path in exams:
            run_video(path, predictor, tmp / "video" / path.stem / "overlay.mp4", show_progress=False)
        seconds = time.perf_counter() - begin
        rows.append(["polypseg video, exam after exam", f"1 x {cpus}", str(total), f"{seconds:.1f}", f"{total / seconds:.1f}"])

        for workers, threads in ((1, cpus), (2, max(1, cpus // 2))):
            begin = time.perf_counter()
            result = run_batch([tmp / "exams"], tmp / f"batch-{workers}", checkpoint=args.run, workers=workers,
                               threads=threads, show_progress=False)
            seconds = time.perf_counter() - begin
            assert result.frames == total and not result.errors, result
            rows.append(["polypseg batch (Ray Data, embedded)", f"{workers} x {threads}", str(total),
                         f"{seconds:.1f}", f"{total / seconds:.1f}"])
    print(f"{args.exams} exams x {args.frames} frames (384x288 H.264), {platform.processor() or platform.machine()}, "
          f"{cpus} cores")
    print("\n".join(text_table(rows)))


if __name__ == "__main__":
    main()
