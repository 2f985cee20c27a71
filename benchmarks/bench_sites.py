"""Site calibration, measured (issue 30): does a setting chosen on half of a hospital's polyp-free
sequences hold on the other half?

    python benchmarks/bench_sites.py                                  # the shipped real-time model
    python benchmarks/bench_sites.py --run runs/NEW --target 0.05 --target 0.10 -o scratch/sites.md

polypgen-centre-a's 7 polyp-free exam sequences (another hospital, never trained on) are split into two
halves, whole sequences on each side (odd-numbered sequences calibrate, even-numbered check, then the
other way round). ``polypseg.sites.choose`` picks the operating point for a target share of polyp-free
frames flagged on the calibration half (as `polypseg calibrate --site NAME --target-flagged-share S` does);
the table gives the share flagged on the checked half and how far it is from the target. Sensitivity is
read on the model's validation polyp frames where the model has a validation side, and on centre-a's 250
polyp frames (never trained on: what the setting costs at that hospital). Scores: ``Predictor(run).predict``,
as in `polypseg video`; frames as given (a folder of frames is timed at 25 fps: the sequences are 2-3 frames a
second of exam, so no false-alert-per-minute figure is given here).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from polypseg import Predictor, sites
from polypseg.calibration import validation_polyp_scores
from polypseg.media import folder_images, read_image
from polypseg.predict import resolve_model
from polypseg.progress import progress, show_table, text_table

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CENTRE_A = SHARED / "polypgen-centre-a"


def _scores(predictor: Predictor, paths: list[Path], desc: str) -> np.ndarray:
    return np.array([predictor.predict(read_image(p)).score for p in progress(paths, desc=desc, unit="img")])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="realtime", help="model (default: the shipped realtime)")
    p.add_argument("--target", type=float, action="append", help="target share flagged (repeatable; default 0.05, 0.10)")
    p.add_argument("-o", "--output", type=Path, help="also write the table as Markdown here")
    args = p.parse_args()
    targets = args.target or [0.05, 0.10]
    weights = resolve_model(args.run)
    predictor = Predictor(weights, backend="onnxruntime", precision="fp32")
    seqs = sorted(d for d in (CENTRE_A / "negatives").iterdir() if d.is_dir())
    scores = {d.name: _scores(predictor, folder_images(d), d.name) for d in seqs}
    polyp_a = _scores(predictor, folder_images(CENTRE_A / "positives"), "centre-a polyp frames")
    polyp_val = validation_polyp_scores(weights, predictor)
    halves = {"odd": [s for i, s in enumerate(scores, 1) if i % 2], "even": [s for i, s in enumerate(scores, 1) if not i % 2]}
    rows = [["target flagged", "calibrated on", "point", "flagged there", "checked on", "flagged there",
             "off by (points)", "sens. centre-a polyp", "sens. validation"]]
    for target in targets:
        for cal, check in (("odd", "even"), ("even", "odd")):
            clips = [sites.Clip(np.arange(len(scores[s])) * 40.0, scores[s]) for s in halves[cal]]
            profile = sites.choose("bench", clips, polyp_val, flagged_share=target)
            checked = np.concatenate([scores[s] for s in halves[check]])
            flagged = float((checked >= profile.operating_point).mean())
            sens_val = profile.measured["validation_sensitivity"]
            rows.append([f"{100 * target:.0f}%", f"{cal} ({', '.join(halves[cal])})", f"{profile.operating_point:.4g}",
                         f"{100 * profile.measured['flagged_share']:.1f}%", f"{check} ({len(checked)} frames)",
                         f"{100 * flagged:.1f}%", f"{100 * (flagged - target):+.1f}",
                         f"{100 * float((polyp_a >= profile.operating_point).mean()):.1f}%",
                         "-" if sens_val is None else f"{100 * sens_val:.1f}%"])
    per_seq = [["sequence", "frames", "median score", "90th percentile"]] + [
        [s, str(len(v)), f"{np.median(v):.3g}", f"{np.quantile(v, 0.9):.3g}"] for s, v in scores.items()]
    head = (f"model {weights} (verdict '{predictor.config.verdict}', {predictor.runtime})\n\n"
            + "\n".join(text_table(per_seq)))
    show_table(rows, args.output, head=head)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
