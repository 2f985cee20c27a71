"""Two evaluations of the same images side by side: is model B better than model A, image by image?

An evaluation folder (``polypseg evaluate -o DIR``) holds ``per_image.csv``, or one subfolder per test
set each with its own. Sets are matched by data folder and images by id; the difference of each image's metric
(B - A) is averaged, with a percentile bootstrap interval over images. Frames of one video sequence are
correlated, so on CVC-ClinicDB the interval is narrower than a per-sequence one would be.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .data import read_csv_rows
from .errors import PolypsegError
from .metrics import METRICS, bootstrap_mean_ci, roc_auc, roc_auc_ci
from .progress import text_table

COMPARABLE = (*METRICS, "hd95")


def per_image_tables(folder: str | Path) -> dict[str, tuple[str, dict[str, dict[str, str]]]]:
    """{set name: (its data folder, {image id: per-image row})} of an evaluation folder."""
    folder = Path(folder)
    sets = [folder] if (folder / "per_image.csv").is_file() else sorted(p.parent for p in folder.glob("*/per_image.csv"))
    if not sets:
        raise PolypsegError(
            f"{folder} holds no per_image.csv; give an evaluation folder written by `polypseg evaluate -o DIR`."
        )
    tables = {}
    for path in sets:
        try:
            data = json.loads((path / "summary.json").read_text())["data"]
        except (OSError, ValueError, KeyError) as exc:
            raise PolypsegError(f"{path / 'summary.json'} cannot be read ({exc}); evaluate the run again.") from None
        rows = read_csv_rows(path / "per_image.csv", {"id"}, "an id column")
        tables[path.name] = (str(Path(data).resolve()), {row["id"]: row for row in rows})
    return tables


def compare(a: str | Path, b: str | Path, metric: str = "dice", resamples: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """One row per test set of A that B evaluated too (same data folder, images matched by id): the means
    of A and B, the mean paired difference B - A with its 95% interval, how many images B scores higher
    and lower. A set of B that holds more of the folder (e.g. all of it) is cut to A's images. Frames
    without the metric (polyp-free ones, polyp frames without masks) are left out; a set of only such
    frames gives no row (see ``compare_frames``)."""
    if metric not in COMPARABLE:
        raise PolypsegError(f"Unknown metric '{metric}'. Valid: {', '.join(COMPARABLE)}.")
    matched = list(_matched(a, b))
    if not matched:
        raise PolypsegError(
            f"The evaluations share no image ({a}: {', '.join(per_image_tables(a))}; {b}: "
            f"{', '.join(per_image_tables(b))}); evaluate both runs on the same --test-set."
        )
    rows = []
    for name, ra, rb in matched:
        kept = [(x, y) for x, y in zip(ra, rb) if x.get(metric) not in (None, "") and y.get(metric) not in (None, "")]
        if not kept:
            continue
        va = np.array([float(x[metric]) for x, _ in kept])
        vb = np.array([float(y[metric]) for _, y in kept])
        diff = vb - va
        rows.append(dict(
            set=name, images=len(kept), metric=metric, a=float(va.mean()), b=float(vb.mean()), diff=float(diff.mean()),
            ci=bootstrap_mean_ci(diff, resamples, seed), b_higher=int((diff > 0).sum()), b_lower=int((diff < 0).sum()),
        ))
    return rows


def _matched(a: str | Path, b: str | Path):
    """(set name, A's rows, B's rows) for every set of A that B evaluated too, rows matched by image id."""
    tables_a, tables_b = per_image_tables(a), per_image_tables(b)
    for name, (data, by_id_a) in tables_a.items():
        shared = {other: [i for i in by_id_a if i in by_id_b]
                  for other, (data_b, by_id_b) in tables_b.items() if data_b == data}
        other = max(shared, key=lambda k: (len(shared[k]), k == name), default=None)
        if other is None or not shared[other]:
            continue
        ids = shared[other]
        yield (name if other == name else f"{name} ~ {other}", [by_id_a[i] for i in ids],
               [tables_b[other][1][i] for i in ids])


def compare_frames(a: str | Path, b: str | Path, resamples: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """Frame level, one row per shared test set: each model's sensitivity and specificity at its own
    operating point, and its ROC AUC, with the paired difference of AUC (B - A) and a bootstrap interval
    (frames resampled within each kind, the same draws for both models). Evaluations without frame-level
    columns (older ones) give no rows."""
    rows = []
    for name, ra, rb in _matched(a, b):
        if not ra or "polyp_score" not in ra[0] or "polyp_score" not in rb[0]:
            continue
        y = np.array([int(r["polyp"]) for r in ra])
        sa, sb = (np.array([float(r["polyp_score"]) for r in rs]) for rs in (ra, rb))
        fa, fb = (np.array([int(r["polyp_present"]) for r in rs]) for rs in (ra, rb))
        row: dict[str, Any] = dict(set=name, polyp=int(y.sum()), polyp_free=int((y == 0).sum()))
        for key, flagged in (("a", fa), ("b", fb)):
            row[f"sens_{key}"] = float(flagged[y == 1].mean()) if (y == 1).any() else None
            row[f"spec_{key}"] = float(1 - flagged[y == 0].mean()) if (y == 0).any() else None
        row["auc_a"], row["auc_b"] = roc_auc(sa, y), roc_auc(sb, y)
        row["auc_diff"], row["auc_ci"] = None, None
        if row["auc_a"] is not None:
            row["auc_diff"] = row["auc_b"] - row["auc_a"]
            row["auc_ci"] = roc_auc_ci(sb, y, resamples, seed, paired_with=sa)
        rows.append(row)
    return rows


def format_compare_frames(rows: list[dict[str, Any]]) -> str:
    """The frame-level comparison as a plain-text table ('' when there is none)."""
    if not rows:
        return ""

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"

    def num(v):
        return "-" if v is None else f"{v:.3f}"

    header = ("test set", "polyp / free", "sens. A / B", "spec. A / B", "AUC A / B", "AUC B - A (95% CI)")
    table = [header] + [
        (r["set"], f"{r['polyp']} / {r['polyp_free']}", f"{pct(r['sens_a'])} / {pct(r['sens_b'])}",
         f"{pct(r['spec_a'])} / {pct(r['spec_b'])}", f"{num(r['auc_a'])} / {num(r['auc_b'])}",
         "-" if r["auc_diff"] is None else f"{r['auc_diff']:+.3f} ({r['auc_ci'][0]:+.3f} to {r['auc_ci'][1]:+.3f})")
        for r in rows
    ]
    lines = ["", "frame level: each model at its own operating point; AUC bootstrap over frames within each kind"]
    return "\n".join(text_table(table, rule=False) + lines)


def format_compare(rows: list[dict[str, Any]], a: str | Path, b: str | Path) -> str:
    """The comparison as a plain-text table."""
    lines = [f"A: {a}", f"B: {b}", ""]
    if not rows:
        return "\n".join(lines + ["no set with per-image segmentation metrics in both"])
    header = ("test set", "images", "A", "B", "B - A (95% CI)", "B higher / lower")
    table = [header] + [
        (r["set"], str(r["images"]), f"{r['a']:.3f}", f"{r['b']:.3f}",
         f"{r['diff']:+.3f} ({r['ci'][0]:+.3f} to {r['ci'][1]:+.3f})", f"{r['b_higher']} / {r['b_lower']}")
        for r in rows
    ]
    lines += text_table(table, rule=False)
    lines += ["", f"per-image {rows[0]['metric']}; bootstrap over images (frames of one sequence are correlated)"]
    return "\n".join(lines)
