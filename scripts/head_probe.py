"""Does an image-level polyp/no-polyp head on the shipped model's frozen encoder carry over to another
hospital? (issue 16; docs/quiet.md, training-log row 22)

Features of every frame, the frame cut to its endoscopic picture: the last encoder stage max- and
average-pooled, the peak polyp probability and the log of the area above 0.5, in two variants of the
lower-left corner box: A blacked out in the input, B left in the input with its cells left out of the
pooling and of the probabilities. Frames: `pranet-quiet`'s split (700 of its polyp training frames, its 650
HyperKvasir polyp-free ones; its validation side), HyperKvasir's test side, and polypgen-centre-a (another
hospital, never trained on). A logistic regression (the probe of a linear head) is fitted on the training
frames; the operating point keeps 95% of the validation polyp frames flagged.

    .venv/bin/python scripts/head_probe.py [--cache scratch/head-probe.npz]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from polypseg.config import from_preset
from polypseg.crop import picture
from polypseg.data import index_dataset
from polypseg.media import read_image
from polypseg.metrics import operating_point_for, roc_auc
from polypseg.model import load_checkpoint
from polypseg.predict import DEFAULT_MODEL
from polypseg.progress import progress, text_table
from polypseg.splits import resolve_split
from polypseg.transforms import to_input

CORNER = (0.36, 0.36)


def frame_sets() -> dict[str, list]:
    q = from_preset("pranet-quiet")
    index = index_dataset(q.data, negatives=q.negatives)
    split = resolve_split(q, index)
    by = {p.id: p for p in index.pairs}
    train = [by[i] for i in split.train]
    pos = [p for p in train if p.polyp is not False]
    keep = sorted(np.random.default_rng(0).choice(len(pos), 700, replace=False))
    return {"train": [pos[i] for i in keep] + [p for p in train if p.polyp is False],
            "val": [by[i] for i in split.val],
            "hyperkvasir test": [by[i] for i in split.test if by[i].polyp is False],
            "polypgen-centre-a": list(index_dataset("../shared/data/polypgen-centre-a").pairs)}


def features(model, cfg, image: np.ndarray, variant: str) -> np.ndarray:
    seen, _ = picture(image, True, CORNER if variant == "A" else None)
    x, (h, w) = to_input(seen, cfg)
    with torch.no_grad():
        stages = model.encoder(torch.from_numpy(x)[None])
        prob = torch.sigmoid(model.segmentation_head(model.decoder(stages)))[0, 0, :h, :w].numpy().copy()
    f = stages[-1][0]
    fh, fw = -(-h // 32), -(-w // 32)
    cells = torch.zeros(f.shape[1:], dtype=torch.bool)
    cells[:fh, :fw] = True
    if variant == "B":
        cells[fh - int(np.ceil(CORNER[0] * fh)):fh, :int(np.ceil(CORNER[1] * fw))] = False
        prob[h - int(CORNER[0] * h):, :int(CORNER[1] * w)] = 0
    v = f[:, cells]
    return np.concatenate([v.amax(1).numpy(), v.mean(1).numpy(), [prob.max(), np.log((prob > 0.5).mean() + 1e-4)]])


def extract(cache: Path) -> dict[str, np.ndarray]:
    if cache.is_file():
        return dict(np.load(cache))
    torch.set_num_threads(2)
    model, cfg = load_checkpoint(DEFAULT_MODEL)
    model.eval()
    out = {}
    for name, pairs in frame_sets().items():
        out[f"{name}/y"] = np.array([p.polyp is not False for p in pairs], float)
        rows = {"A": [], "B": []}
        for p in progress(pairs, desc=name, unit="frame"):
            image = read_image(p.image)
            for variant in rows:
                rows[variant].append(features(model, cfg, image, variant))
        for variant, r in rows.items():
            out[f"{name}/{variant}"] = np.stack(r)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, default=Path("scratch/head-probe.npz"))
    d = extract(ap.parse_args().cache)
    rows = []
    for variant in ("A", "B"):
        scaler = StandardScaler().fit(d[f"train/{variant}"])
        for name, cols in (("peak probability", slice(-2, -1)), ("encoder head", slice(0, -2)),
                           ("encoder head + peak", slice(None))):
            if name == "peak probability":
                def score(X):
                    return X[:, -2]
            else:
                fit = LogisticRegression(C=0.01, max_iter=3000).fit(scaler.transform(d[f"train/{variant}"])[:, cols],
                                                                    d["train/y"])
                def score(X, fit=fit, cols=cols):
                    return fit.decision_function(scaler.transform(X)[:, cols])
            s = {k: score(d[f"{k}/{variant}"]) for k in ("val", "hyperkvasir test", "polypgen-centre-a")}
            yv, yp = d["val/y"], d["polypgen-centre-a/y"]
            point = operating_point_for(s["val"], yv, 0.95)
            sp = s["polypgen-centre-a"]
            oracle = operating_point_for(sp, yp, 0.95)
            rows.append([variant, name, f"{roc_auc(s['val'], yv):.3f}", f"{(s['hyperkvasir test'] >= point).mean():.3f}",
                         f"{roc_auc(sp, yp):.3f}", f"{(sp[yp == 1] >= point).mean():.3f}",
                         f"{(sp[yp == 0] >= point).mean():.3f}", f"{(sp[yp == 0] >= oracle).mean():.3f}"])
    header = ["corner", "score", "val AUC", "HyperKvasir test flagged", "centre-a AUC", "centre-a sensitivity",
              "centre-a polyp-free flagged", "flagged at 95% sensitivity there"]
    print("\n".join(text_table([header, *rows])))


if __name__ == "__main__":
    main()
