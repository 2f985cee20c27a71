"""What the endoscopist sees, measured (issue 30): outlines on polyp-free frames, and how soon a polyp is
alerted, on clips of another hospital's polyp-free exam frames around a polyp.

    python benchmarks/bench_contract.py                         # the shipped models, realtime and accurate
    python benchmarks/bench_contract.py --run runs/NEW -o scratch/contract.md

Two clips at 25 fps, 384x288 (every frame resized): polypgen-centre-a's polyp-free sequence 1, CVC-ClinicDB
frames 1-40 (its first polyp sequence), sequence 2 ("A", the clip of the issue); sequence 3, CVC-ClinicDB's
sequence 3 (frames 51-67), sequence 4 ("B"). The polyp-free sequences are 2-3 frames a second of exam: each
of their frames is held for ``--hold`` video frames (default 4), so they change about as fast as a scope
moving briskly. CVC-ClinicDB's frames are training frames of the shipped models (the delay is optimistic);
centre-a was never trained on. Each clip goes through `polypseg video` (``run_video``, the model's default
precision and alert rule) and the table reads its per-frame CSV: polyp-free frames whose raw mask has a
pixel, polyp-free frames whose own verdict is polyp (what the overlay outlined before the contract), polyp-free
frames outlined now, false alerts, and the delay
from the polyp's first frame to its first alert.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import cv2

from polypseg import Predictor
from polypseg.data import index_dataset
from polypseg.media import folder_images, read_image, write_clip
from polypseg.progress import show_table
from polypseg.video import run_video

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SIZE = (384, 288)
CLIPS = {"A": ("seq1", range(1, 41), "seq2"), "B": ("seq3", range(51, 68), "seq4")}


def build(name: str, hold: int, folder: Path) -> tuple[Path, list[bool]]:
    """The clip ``name`` and, per video frame, whether it shows a polyp."""
    before, polyp_ids, after = CLIPS[name]
    negatives = SHARED / "polypgen-centre-a" / "negatives"
    by_id = {p.id: p for p in index_dataset(SHARED / "cvc-clinicdb").pairs}
    frames, polyp = [], []
    for part, paths, shows in ((before, folder_images(negatives / before), False),
                               ("cvc", [by_id[f"{i:03d}"].image for i in polyp_ids], True),
                               (after, folder_images(negatives / after), False)):
        for path in paths:
            image = cv2.resize(read_image(path), SIZE, interpolation=cv2.INTER_AREA)
            repeat = 1 if shows else hold
            frames += [image] * repeat
            polyp += [shows] * repeat
    return write_clip(frames, folder / f"clip-{name}.mp4", fps=25), polyp


def measure(run: str, clip: Path, polyp: list[bool], folder: Path) -> list[str]:
    predictor = Predictor(run, backend="onnxruntime", precision="auto")
    out = folder / f"{Path(run).stem}-{clip.stem}.mp4"
    stats = run_video(clip, predictor, out, show_progress=False)
    with open(stats.files.frames) as f:
        rows = list(csv.DictReader(f))
    free = [r for r, p in zip(rows, polyp) if not p]
    first = next(i for i, p in enumerate(polyp) if p)
    t0 = float(rows[first]["time_ms"])
    alerted = [float(r["time_ms"]) - t0 for r, p in zip(rows, polyp) if p and r["alert"] == "1"]
    false_alerts = sum(1 for e in stats.events if not any(polyp[i] for i in range(len(rows))
                                                         if e.start_ms <= float(rows[i]["time_ms"]) < e.end_ms))
    return [Path(run).stem, clip.stem, f"{len(free)} / {sum(polyp)}",
            str(sum(float(r["area_fraction"]) > 0 for r in free)), str(sum(r["polyp_present"] == "1" for r in free)),
            str(sum(r["outlined"] == "1" for r in free)),
            str(false_alerts), f"{min(alerted):.0f} ms" if alerted else "never",
            f"{sum(r['outlined'] == '1' for r, p in zip(rows, polyp) if p)}/{sum(polyp)}",
            f"{stats.summary['operating_point']:.4g}", predictor.runtime]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", help="model (repeatable; default: realtime and accurate)")
    p.add_argument("--hold", type=int, default=4, help="video frames each polyp-free exam frame is held for")
    p.add_argument("-o", "--output", type=Path, help="also write the table as Markdown here")
    args = p.parse_args()
    rows = [["model", "clip", "frames free / polyp", "free frames with a raw mask", "free frames whose verdict is polyp",
             "free frames outlined",
             "false alerts", "first alert after the polyp's first frame", "polyp frames outlined",
             "operating point", "runtime"]]
    with tempfile.TemporaryDirectory() as tmp:
        clips = {name: build(name, args.hold, Path(tmp)) for name in CLIPS}
        for run in args.run or ["realtime", "accurate"]:
            for clip, polyp in clips.values():
                rows.append(measure(run, clip, polyp, Path(tmp)))
    show_table(rows, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
