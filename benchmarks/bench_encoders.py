"""Video-pipeline fps of encoders before any training: is an encoder fast enough to be a real-time candidate?

Weights do not change the speed of a network, so each encoder is timed as an untrained DeepLabV3+ (or
``--arch``) at ``--height`` x ``--width``, beside any shipped model or run given with ``--model``, all in this
one session: `run_video` on a 200-frame H.264 clip of CVC-ClinicDB frames, ONNX Runtime with ``--threads``
threads, the median (min-max) of ``--repeats`` runs. Prints a markdown table.

    python benchmarks/bench_encoders.py --model realtime --model accurate \\
        --encoder tu-tf_efficientnet_lite1 --encoder tu-tf_efficientnet_lite2
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from polypseg.bench import benchmark_clip, cpu_name, video_runs
from polypseg.config import DEFAULT_DATA, Config
from polypseg.data import index_dataset
from polypseg.model import build_model, save_checkpoint
from polypseg.predict import resolve_model
from polypseg.runtime import SPIN_DEFAULT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--encoder", action="append", default=[], help="an smp encoder name (repeatable)")
    ap.add_argument("--model", action="append", default=[], help="a shipped model, run or checkpoint (repeatable)")
    ap.add_argument("--arch", default="deeplabv3plus")
    ap.add_argument("--height", type=int, default=224)
    ap.add_argument("--width", type=int, default=288)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not args.encoder and not args.model:
        ap.error("give at least one --encoder or --model")
    setting = [dict(backend="onnxruntime", threads=args.threads, spin=SPIN_DEFAULT)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="polypseg-encoders-") as tmp:
        clip = benchmark_clip(index_dataset(DEFAULT_DATA).pairs, 200, Path(tmp) / "clip.mp4")
        candidates = [(name, resolve_model(name), "as trained") for name in args.model]
        for encoder in args.encoder:
            cfg = Config(arch=args.arch, encoder=encoder, encoder_weights="none", height=args.height, width=args.width)
            path = Path(tmp) / f"{encoder}.safetensors"
            save_checkpoint(build_model(cfg, load_weights=False), cfg, path)
            candidates.append((encoder, path, f"untrained, {args.height}x{args.width}"))
        for name, path, what in candidates:
            video = video_runs(clip, path, name, setting, args.repeats, Path(tmp))[0]
            rows.append(f"| {name} | {what} | {video['fps_median']:.1f} ({video['fps_min']:.1f}-{video['fps_max']:.1f}) |")
    print(f"video pipeline on {cpu_name()}, ONNX Runtime {args.threads} threads, median of {args.repeats} runs")
    print("| model | weights | fps (min-max) |\n|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
