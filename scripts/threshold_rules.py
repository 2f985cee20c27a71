"""How should the decision threshold be chosen on the validation side? Candidate rules, each run's test mDice.

For each run folder: Dice of every validation and test polyp frame at every threshold 0.01..0.99 (one
pass per frame, cached in RUN/threshold-counts.npz); then, per rule, the threshold it picks from the
validation frames alone and the test mDice at that threshold. Test frames never pick anything.

    .venv/bin/python scripts/threshold_rules.py runs/item4/seed0 runs/item4/seed1 ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from polypseg.data import index_dataset, load_pair
from polypseg.metrics import DEFAULT_THRESHOLDS, scores, threshold_counts
from polypseg.predict import Predictor
from polypseg.progress import progress, text_table
from polypseg.splits import load_split

T = DEFAULT_THRESHOLDS
HALF = int(np.flatnonzero(np.isclose(T, 0.5))[0])


def dice_matrix(run: Path) -> dict[str, np.ndarray]:
    """{"val": (N, T) per-image Dice, "test": (M, T)} for the run's best checkpoint, cached."""
    cache = run / "threshold-counts.npz"
    if cache.is_file():
        return dict(np.load(cache))
    predictor = Predictor(run)
    index = index_dataset(predictor.config.data)
    split = load_split(run / "split.json")
    by_id = {p.id: p for p in index.pairs}
    out = {}
    for side in ("val", "test"):
        pairs = [by_id[i] for i in getattr(split, side) if by_id[i].mask is not None]
        counts = np.stack([threshold_counts(predictor.predict_prob(img), mask, T)
                           for img, mask in map(load_pair, progress(pairs, f"{run.name} {side}"))])
        out[side] = scores(counts)["dice"]
    np.savez(cache, **out)
    return out


def _smooth(curve: np.ndarray, half_width: int) -> np.ndarray:
    kernel = np.ones(2 * half_width + 1) / (2 * half_width + 1)
    return np.convolve(np.pad(curve, half_width, mode="edge"), kernel, mode="valid")


def _argmax_near_half(curve: np.ndarray, allowed: np.ndarray | None = None) -> int:
    c = np.where(allowed, curve, -np.inf) if allowed is not None else curve
    best = np.flatnonzero(c == c.max())
    return int(best[np.argmin(np.abs(best - HALF))])


def _gain_rule(val: np.ndarray, seed: int = 0, draws: int = 2000) -> int:
    """0.5 unless the best threshold's paired gain over 0.5 on the validation frames has a bootstrap 95%
    lower bound above zero."""
    best = _argmax_near_half(val.mean(axis=0))
    gain = val[:, best] - val[:, HALF]
    rng = np.random.default_rng(seed)
    boot = gain[rng.integers(0, len(gain), (draws, len(gain)))].mean(axis=1)
    return best if np.quantile(boot, 0.025) > 0 else HALF


RULES = {
    "argmax (today)": lambda v: _argmax_near_half(v.mean(axis=0)),
    "0.5": lambda v: HALF,
    "argmax in [0.3, 0.7]": lambda v: _argmax_near_half(v.mean(axis=0), (T >= 0.3 - 1e-9) & (T <= 0.7 + 1e-9)),
    "argmax of curve smoothed +-0.10": lambda v: _argmax_near_half(_smooth(v.mean(axis=0), 10)),
    "0.5 unless paired gain CI > 0": _gain_rule,
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    mats = {run: dice_matrix(run) for run in args.runs}
    rows = [["rule", *[r.name for r in args.runs], "mean", "spread (max - min)"]]
    for name, rule in RULES.items():
        cells, values = [], []
        for run in args.runs:
            k = rule(mats[run]["val"])
            test = mats[run]["test"][:, k].mean()
            values.append(test)
            cells.append(f"{test:.3f} @ {T[k]:.2f}")
        rows.append([name, *cells, f"{np.mean(values):.3f}", f"{np.ptp(values):.3f}"])
    oracle = [float(mats[r]["test"].mean(axis=0).max()) for r in args.runs]
    rows.append(["(best on test: not a rule)", *[f"{o:.3f}" for o in oracle], f"{np.mean(oracle):.3f}", ""])
    print("test mDice (Dice of each test frame, averaged over frames) at the threshold each rule picks on the "
          "validation frames")
    print("\n".join(text_table(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
