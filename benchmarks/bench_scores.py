"""Which frame score tells polyp frames from polyp-free ones, and how finely can its operating point be set?
(issue 30; docs/quiet.md, "a score with resolution")

    python benchmarks/bench_scores.py                                  # realtime, accurate, the GPU-trained runs
    python benchmarks/bench_scores.py --run realtime --run runs/NEW -o scratch/scores.md

Every frame goes through ``Predictor(run).predict`` (fp32 ONNX Runtime, as `polypseg evaluate` runs it);
each candidate score is read off its probability map at the frame's size (logits from the float32
probabilities, as the shipped ``logit`` verdict reads them). Sets: a design set the models never trained on
(the 162 PraNet test polyp frames, masks unused, against HyperKvasir's 1000 polyp-free frames) and
polypgen-centre-a (another hospital: 250 polyp + 250 polyp-free frames). Per model and score: frame AUC on
both, the share of centre-a's polyp-free frames flagged at the point that keeps 95% of its polyp frames,
and the points for 90 / 95 / 99% sensitivity there (a score that saturates gives equal points). Maps are
cached per model in ``--cache`` (a rerun reads them).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from polypseg import Predictor
from polypseg.config import DEFAULT_DATA, HYPERKVASIR_NEGATIVES, KVASIR_DATA
from polypseg.data import index_dataset
from polypseg.media import read_image
from polypseg.metrics import operating_point_for, roc_auc
from polypseg.predict import PRETRAINED_DIR, logit, resolve_model
from polypseg.progress import progress, show_table

SHARED = Path(__file__).resolve().parents[2] / "shared"
CENTRE_A = SHARED / "data" / "polypgen-centre-a"
GPU_RUNS = SHARED / "models" / "h200-2026-12-04"
SHARES = (0.001, 0.005, 0.01, 0.02)


def candidates(prob: np.ndarray) -> dict[str, float]:
    flat = np.sort(prob.ravel())[::-1]
    top = logit(flat[: max(1, int(round(0.02 * flat.size)))])  # the top 2%, highest first
    out = {"peak probability": float(flat[0]), "largest logit": float(top[0])}
    for share in SHARES:
        out[f"mean logit, top {100 * share:g}%"] = float(top[: max(1, int(round(share * flat.size)))].mean())
    everything = logit(flat)
    m = everything.max()
    out["log-sum-exp of logits (T=1)"] = float(m + np.log(np.mean(np.exp(everything - m))))
    out["mean probability"] = float(flat.mean())
    return out


def frame_sets() -> dict[str, list]:
    test = set(json.loads((PRETRAINED_DIR / "split.json").read_text())["test"])
    index = index_dataset([DEFAULT_DATA, KVASIR_DATA], negatives=[HYPERKVASIR_NEGATIVES])
    design = [p for p in index.pairs if (p.id in test and p.polyp is not False) or p.id.startswith("hyperkvasir")]
    return {"design": design, "centre-a": list(index_dataset(CENTRE_A).pairs)}


def scores(run: str, sets: dict[str, list], cache: Path) -> dict[str, dict[str, np.ndarray]]:
    weights = resolve_model(run)
    path = cache / f"{weights.parent.name}-{weights.stem}.npz"
    if path.is_file():
        flat = dict(np.load(path))
        return {s: {k.split("|", 1)[1]: v for k, v in flat.items() if k.startswith(s + "|")} for s in sets}
    predictor = Predictor(weights, backend="onnxruntime", precision="fp32")
    out = {}
    for name, pairs in sets.items():
        rows = [candidates(predictor.predict(read_image(p.image)).prob) for p in progress(pairs, desc=name, unit="img")]
        out[name] = {k: np.array([r[k] for r in rows]) for k in rows[0]}
        out[name]["label"] = np.array([int(p.polyp is not False) for p in pairs])
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{f"{s}|{k}": v for s, d in out.items() for k, v in d.items()})
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", help="model (repeatable; default: realtime, accurate, the GPU-trained runs)")
    p.add_argument("--cache", type=Path, default=Path("scratch/bench-scores"))
    p.add_argument("-o", "--output", type=Path, help="also write the table as Markdown here")
    args = p.parse_args()
    runs = args.run or ["realtime", "accurate", str(GPU_RUNS / "realtime-gpu-e48"), str(GPU_RUNS / "accurate-gpu-e40")]
    sets = frame_sets()
    rows = [["model", "score", "design AUC", "centre-a AUC", "centre-a flagged @95%", "points @90/95/99%"]]
    for run in runs:
        measured = scores(run, sets, args.cache)
        yd, yc = measured["design"]["label"], measured["centre-a"]["label"]
        for name in (k for k in measured["design"] if k != "label"):
            d, c = measured["design"][name], measured["centre-a"][name]
            points = [operating_point_for(c, yc, s) for s in (0.90, 0.95, 0.99)]
            flagged = float((c[yc == 0] >= points[1]).mean())
            rows.append([Path(run).name, name, f"{roc_auc(d, yd):.3f}", f"{roc_auc(c, yc):.3f}", f"{100 * flagged:.1f}%",
                         " / ".join(f"{x:.4g}" for x in points)])
    show_table(rows, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
