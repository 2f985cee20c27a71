"""Accuracy against speed for every candidate model, as one picture and the table behind it.

For each candidate: mDice (per image) on the Kvasir-SEG and CVC-ClinicDB PraNet test sides, optionally the
cross-data row (the same recipe trained on CVC-ClinicDB only, tested on all of Kvasir-SEG: `--cross`), and
the video pipeline's fps on this machine (`run_video` on a 200-frame H.264 clip of CVC-ClinicDB frames,
ONNX Runtime with the default threads, the median of `--repeats` runs, every candidate in this one
session). Evaluations are kept in `--eval-dir` and reused when run again. A candidate NAME=RUN@FILE runs
the ONNX file FILE of RUN (e.g. its int8 file from `polypseg export --int8`) for both its mDice and its fps.

    python benchmarks/bench_tradeoff.py --candidate realtime=realtime --candidate fine-288=runs/ft-288 \\
        --candidate realtime-int8=realtime@realtime.int8.onnx \\
        --cross realtime=runs/clinic-structure-e12 -o docs/tradeoff.png --table docs/tradeoff.md
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from polypseg.bench import benchmark_clip, cpu_name, video_runs  # noqa: E402
from polypseg.config import DEFAULT_DATA, KVASIR_DATA  # noqa: E402
from polypseg.data import index_dataset  # noqa: E402
from polypseg.evaluate import evaluate_sets  # noqa: E402
from polypseg.files import atomic_write, atomic_write_text  # noqa: E402
from polypseg.predict import resolve_model  # noqa: E402
from polypseg.progress import text_table  # noqa: E402
from polypseg.runtime import SPIN_DEFAULT, cpu_cores  # noqa: E402

SETS = {"Kvasir-SEG test": f"{KVASIR_DATA}:test", "CVC-ClinicDB test": f"{DEFAULT_DATA}:test"}
CROSS = "ClinicDB -> all Kvasir-SEG"
MARKERS = {"Kvasir-SEG test": "o", "CVC-ClinicDB test": "s", CROSS: "^"}
FPS_TARGET = 40


def pairs_of(specs: list[str]) -> dict[str, tuple[str, str | None]]:
    """NAME=RUN[@ONNX] specs -> {NAME: (RUN, ONNX file or None)}."""
    out = {}
    for spec in specs:
        name, sep, target = spec.partition("=")
        run, at, onnx = target.partition("@")
        if not sep or not name or not run or (at and not onnx):
            raise SystemExit(f"'{spec}' is not NAME=RUN or NAME=RUN@FILE.onnx (RUN: a shipped model's name, a run "
                             "folder or a checkpoint)")
        out[name] = (run, onnx or None)
    return out


def mdice(run: tuple[str, str | None], sets: list[str], out: Path) -> list[float]:
    """Per-image mDice of ``run`` (a run and its ONNX file or None) on each of ``sets``, from ``out``'s
    summary when it is there."""
    if not (out / "summary.json").is_file():
        weights, onnx = run
        evaluate_sets(weights, sets, out=out, bootstrap=0, gallery=0, progress=False,
                      backend="torch" if onnx is None else "onnxruntime", onnx=onnx)
    summary = json.loads((out / "summary.json").read_text())
    return [t["metrics"]["per-image"]["dice"] for t in summary["test_sets"]]


def measure(candidates: dict[str, tuple], cross: dict[str, tuple], repeats: int, eval_dir: Path) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="polypseg-tradeoff-") as tmp:
        clip = benchmark_clip(index_dataset(DEFAULT_DATA).pairs, 200, Path(tmp) / "clip.mp4")
        for name, run in candidates.items():
            setting = [dict(backend="onnxruntime", threads=cpu_cores(), spin=SPIN_DEFAULT, onnx_path=run[1])]
            scores = dict(zip(SETS, mdice(run, list(SETS.values()), eval_dir / name)))
            if name in cross:
                scores[CROSS] = mdice(cross[name], [KVASIR_DATA], eval_dir / f"{name}-cross")[0]
            video = video_runs(clip, resolve_model(run[0]), name, setting, repeats, Path(tmp))[0]
            label = run[0] if run[1] is None else f"{run[0]}@{run[1]}"
            rows.append(dict(candidate=name, run=label, **scores, fps=video["fps_median"],
                             fps_range=(video["fps_min"], video["fps_max"])))
    return rows


def draw(rows: list[dict], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for kind, marker in MARKERS.items():
        points = [(r["fps"], r[kind], r["candidate"]) for r in rows if kind in r]
        if points:
            ax.scatter([p[0] for p in points], [p[1] for p in points], marker=marker, s=50, label=kind)
            for x, y, name in points:
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.axvline(FPS_TARGET, color="grey", linestyle="--", linewidth=1)
    ax.text(FPS_TARGET, ax.get_ylim()[0], f" {FPS_TARGET} fps", color="grey", fontsize=8, va="bottom")
    ax.set_xlabel("video pipeline fps (median, this machine)")
    ax.set_ylabel("mDice (per image)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def table(rows: list[dict]) -> str:
    head = ["candidate", *MARKERS, "fps (min-max)", "run"]
    body = [[r["candidate"], *(f"{r[k]:.3f}" if k in r else "-" for k in MARKERS),
             f"{r['fps']:.1f} ({r['fps_range'][0]:.1f}-{r['fps_range'][1]:.1f})", r["run"]] for r in rows]
    return "\n".join(text_table([head] + body))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--candidate", action="append", required=True, metavar="NAME=RUN")
    p.add_argument("--cross", action="append", default=[], metavar="NAME=RUN",
                   help="the candidate's recipe trained on CVC-ClinicDB only (tested on all of Kvasir-SEG)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--eval-dir", type=Path, default=Path("runs/tradeoff-evals"))
    p.add_argument("-o", "--output", type=Path, required=True, help="the PNG")
    p.add_argument("--table", type=Path, help="also write the table here (Markdown)")
    args = p.parse_args(argv)
    candidates, cross = pairs_of(args.candidate), pairs_of(args.cross)
    unknown = sorted(set(cross) - set(candidates))
    if unknown:
        raise SystemExit(f"--cross names no candidate: {', '.join(unknown)}")
    rows = measure(candidates, cross, args.repeats, args.eval_dir)
    title = f"{cpu_name()}, {cpu_cores()} cores; PraNet test sides; {args.repeats} video runs each"
    text = table(rows)
    print(title + "\n" + text)
    draw(rows, args.output, title)
    if args.table:
        atomic_write_text(args.table, f"{title}\n\n```\n{text}\n```\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
