"""Which polyp score of the shipped model's segmentation best tells polyp frames from polyp-free ones?
(issue 16; docs/quiet.md, training-log row 25)

Scores from the probability map: the peak pixel, the peak of the map averaged over a square window (a
polyp is a blob; a glint is a few pixels), the area above 0.5; each with the frame as given, cut to its
endoscopic picture (`crop`). The variants are ranked on a design set the model never
trained on: the 162 PraNet test polyp frames (their masks are not used) against HyperKvasir's 1000 polyp-free
frames; polypgen-centre-a (another hospital: 250 polyp + 250 polyp-free frames) is only read after, as the
test. Frame AUC and the polyp-free frames flagged at the set's own 95% sensitivity, per set.

    .venv/bin/python scripts/score_variants.py [--cache scratch/score-variants.npz]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from polypseg.config import DEFAULT_DATA, HYPERKVASIR_NEGATIVES, KVASIR_DATA
from polypseg.data import index_dataset
from polypseg.media import read_image
from polypseg.metrics import operating_point_for, roc_auc
from polypseg.predict import DEFAULT_MODEL, Predictor
from polypseg.progress import progress, text_table

WINDOWS = (0.02, 0.04, 0.08)  # window sides as a fraction of the frame's shorter side
CENTRE_A = "../shared/data/polypgen-centre-a"


def frame_sets() -> dict[str, list]:
    split = json.loads((DEFAULT_MODEL.parent / "split.json").read_text())
    test = set(split["test"])
    index = index_dataset([DEFAULT_DATA, KVASIR_DATA], negatives=[HYPERKVASIR_NEGATIVES])
    design = [p for p in index.pairs if p.id in test or p.polyp is False]
    return {"design": design, "polypgen-centre-a": list(index_dataset(CENTRE_A).pairs)}


def scores(prob: np.ndarray) -> dict[str, float]:
    out = {"peak": float(prob.max()), "area": float((prob >= 0.5).mean())}
    side = min(prob.shape)
    for s in WINDOWS:
        k = max(1, int(round(s * side)))
        out[f"window {s:.2f}"] = float(cv2.blur(prob.astype(np.float32), (k, k)).max())
    return out


def measure(sets: dict[str, list]) -> dict[str, dict[str, np.ndarray]]:
    plain = Predictor(DEFAULT_MODEL, backend="onnxruntime")
    cropped = Predictor(DEFAULT_MODEL, backend="onnxruntime")
    cropped.config = cropped.config.replace(crop=True)
    out = {}
    for name, pairs in sets.items():
        rows = {}
        for pair in progress(pairs, name):
            image = read_image(pair.image)
            found = {}
            for label, predictor in (("", plain), ("crop ", cropped)):
                found.update({label + k: v for k, v in scores(predictor.predict_prob(image)).items()})
            for k, v in found.items():
                rows.setdefault(k, []).append(v)
        rows["label"] = [int(p.polyp is not False) for p in pairs]
        out[name] = {k: np.asarray(v) for k, v in rows.items()}
    return out


def flagged_at(s: np.ndarray, y: np.ndarray, sensitivity: float = 0.95) -> float:
    t = operating_point_for(s, y, sensitivity)
    return float((s[y == 0] >= t).mean())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", type=Path, default=Path("scratch/score-variants.npz"))
    args = p.parse_args()
    if args.cache.is_file():
        flat = dict(np.load(args.cache))
        measured = {}
        for key, v in flat.items():
            name, _, score = key.partition("|")
            measured.setdefault(name, {})[score] = v
    else:
        measured = measure(frame_sets())
        args.cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.cache, **{f"{n}|{k}": v for n, d in measured.items() for k, v in d.items()})
    design, test = measured["design"], measured["polypgen-centre-a"]
    variants = sorted((k for k in design if k != "label"), key=lambda k: -roc_auc(design[k], design["label"]))
    rows = [["score", "design AUC", "design flagged @95%", "centre-a AUC", "centre-a flagged @95%"]]
    for k in variants:
        rows.append([k, f"{roc_auc(design[k], design['label']):.3f}", f"{flagged_at(design[k], design['label']):.1%}",
                     f"{roc_auc(test[k], test['label']):.3f}", f"{flagged_at(test[k], test['label']):.1%}"])
    print("shipped model; design set: 162 PraNet test polyp frames + 1000 HyperKvasir polyp-free; "
          "test: polypgen-centre-a 250 + 250; sorted by design AUC")
    print("\n".join(text_table(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
