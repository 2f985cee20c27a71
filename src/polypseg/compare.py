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
from .metrics import METRICS, bootstrap_mean_ci
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
    and lower. A set of B that holds more of the folder (e.g. all of it) is cut to A's images."""
    if metric not in COMPARABLE:
        raise PolypsegError(f"Unknown metric '{metric}'. Valid: {', '.join(COMPARABLE)}.")
    tables_a, tables_b = per_image_tables(a), per_image_tables(b)
    rows = []
    for name, (data, by_id_a) in tables_a.items():
        shared = {other: [i for i in by_id_a if i in by_id_b]
                  for other, (data_b, by_id_b) in tables_b.items() if data_b == data}
        other = max(shared, key=lambda k: (len(shared[k]), k == name), default=None)
        if other is None or not shared[other]:
            continue
        ids, by_id_b = shared[other], tables_b[other][1]
        va = np.array([float(by_id_a[i][metric]) for i in ids])
        vb = np.array([float(by_id_b[i][metric]) for i in ids])
        diff = vb - va
        rows.append(dict(
            set=name if other == name else f"{name} ~ {other}", images=len(ids), metric=metric,
            a=float(va.mean()), b=float(vb.mean()), diff=float(diff.mean()),
            ci=bootstrap_mean_ci(diff, resamples, seed), b_higher=int((diff > 0).sum()), b_lower=int((diff < 0).sum()),
        ))
    if not rows:
        raise PolypsegError(
            f"The evaluations share no image ({a}: {', '.join(tables_a)}; {b}: {', '.join(tables_b)}); "
            "evaluate both runs on the same --test-set."
        )
    return rows


def format_compare(rows: list[dict[str, Any]], a: str | Path, b: str | Path) -> str:
    """The comparison as a plain-text table."""
    lines = [f"A: {a}", f"B: {b}", ""]
    header = ("test set", "images", "A", "B", "B - A (95% CI)", "B higher / lower")
    table = [header] + [
        (r["set"], str(r["images"]), f"{r['a']:.3f}", f"{r['b']:.3f}",
         f"{r['diff']:+.3f} ({r['ci'][0]:+.3f} to {r['ci'][1]:+.3f})", f"{r['b_higher']} / {r['b_lower']}")
        for r in rows
    ]
    lines += text_table(table, rule=False)
    lines += ["", f"per-image {rows[0]['metric']}; bootstrap over images (frames of one sequence are correlated)"]
    return "\n".join(lines)
