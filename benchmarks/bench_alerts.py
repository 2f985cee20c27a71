"""The alert rule's defaults, measured: how soon a polyp raises an alert and how often polyp-free video does.

    python benchmarks/bench_alerts.py                          # the shipped model
    python benchmarks/bench_alerts.py --run runs/NEW -o scratch/alerts-new.md

Per-frame polyp scores (``Predictor(run).predict(image).score``, the frame cropped etc. by the Predictor as
in ``polypseg video``) are computed once and cached in an .npz beside the output (a rerun with the same
model is instant), then the rule (``polypseg.alerts.track``, threshold = the model's operating point) runs
on every setting of a grid of onset, release and smoothing times, on clips played at 25 fps:

- polyp sequences: CVC-ClinicDB's 29 sequences (``sequences.csv``; every frame shows a polyp; frames in id
  order): per sequence the delay from its first frame to the first alert (a sequence never alerted counts
  as an infinite delay in the percentiles) and the share of its time alerted;
- polyp-free clips: PolypGen centre A's 7 negative sequences (frames ordered by the number in their id) and
  HyperKvasir's 1000 negatives in chunks of 50 frames (file-name order): false alerts per minute and the
  share of time alerted.

None of these clips is real exam video. CVC-ClinicDB's frames are a selection from its videos; PolypGen's
are 2-3 frames a second of exam and not reliably in time order, and HyperKvasir's come from many exams: at
25 fps their frames change far faster than a real scope's, so the polyp-free figures are a stress test of
the rule (a flicker the smoothing and onset have to hold back), not the false alarm rate of a real exam.

Prints one table (one row per setting; ``*`` marks the defaults of polypseg.alerts) and writes it as
Markdown to ``-o``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import math
import re
import time
from pathlib import Path

import numpy as np

from polypseg import Predictor
from polypseg.alerts import DEFAULT_ONSET_MS, DEFAULT_RELEASE_MS, DEFAULT_SMOOTHING_MS, AlertRule, summary, track
from polypseg.media import read_image
from polypseg.predict import resolve_model
from polypseg.progress import progress, text_table

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FPS = 25.0
CHUNK = 50  # HyperKvasir frames per polyp-free clip
ONSETS, RELEASES, SMOOTHINGS = (0, 100, 200, 300, 500), (0, 200, 500), (0, 100, 200)


def clips(data: Path) -> dict[str, list[Path]]:
    """Clip name -> its frames in play order: ``polyp/N`` (CVC-ClinicDB), ``free/polypgen-seqN`` and
    ``free/hyperkvasir-NN``."""
    out: dict[str, list[Path]] = {}
    clinic = data / "cvc-clinicdb"
    with (clinic / "sequences.csv").open() as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["id"]))
    for row in rows:
        out.setdefault(f"polyp/{int(row['sequence']):02d}", []).append(clinic / "images" / f"{row['id']}.png")
    negatives = data / "polypgen-centre-a" / "negatives"
    with (negatives / "sequences.csv").open() as f:
        rows = sorted(csv.DictReader(f), key=lambda r: (r["sequence"], int(re.findall(r"\d+", r["id"])[-1])))
    for row in rows:
        out.setdefault(f"free/polypgen-{row['sequence']}", []).append(negatives / row["sequence"] / f"{row['id']}.jpg")
    frames = sorted((data / "hyperkvasir-negatives" / "images").glob("*.jpg"))
    for i in range(0, len(frames), CHUNK):
        out[f"free/hyperkvasir-{i // CHUNK:02d}"] = frames[i:i + CHUNK]
    return out


def scores(run: str | None, data: Path, cache_dir: Path) -> tuple[dict[str, np.ndarray], float]:
    """Every clip's per-frame polyp scores and the model's operating point. The cache (named by the model's
    files) is saved after every clip, so an interrupted run goes on where it stopped."""
    weights = resolve_model(run)
    key = hashlib.sha1(weights.read_bytes() + weights.with_suffix(".json").read_bytes()).hexdigest()[:12]
    cache = cache_dir / f"alert-scores-{weights.stem}-{key}.npz"
    todo = clips(data)
    out: dict[str, np.ndarray] = {}
    if cache.is_file():
        with np.load(cache) as saved:
            out = {k.replace("|", "/"): saved[k] for k in saved.files}
        print(f"scores from {cache} ({len(out) - 1} of {len(todo)} clips)")
    missing = [name for name in todo if name not in out]
    if missing:
        predictor = Predictor(run)
        out["operating_point"] = np.array(predictor.operating_point)
        cache_dir.mkdir(parents=True, exist_ok=True)
        begin, n = time.perf_counter(), 0
        for name in progress(missing, desc="scores", unit="clip"):
            out[name] = np.array([predictor.predict(read_image(p)).score for p in todo[name]], dtype=np.float64)
            n += len(todo[name])
            tmp = cache.with_name(cache.stem + ".tmp.npz")
            np.savez(tmp, **{k.replace("/", "|"): v for k, v in out.items()})
            tmp.replace(cache)
        print(f"{n} frames scored in {time.perf_counter() - begin:.0f} s")
    point = float(out.pop("operating_point"))
    return {name: out[name] for name in todo}, point


def _nearest(values: list[float], q: float) -> float:
    return float(np.percentile(values, q, method="nearest")) if values else math.nan


def measure(clip_scores: dict[str, np.ndarray], rule: AlertRule) -> dict[str, float]:
    """The rule on every clip: polyp-free false alerts per minute and share alerted; on polyp sequences the
    delay to the first alert (median, 90th percentile; inf for never) and the share alerted."""
    free_alerts = free_ms = free_alerted = 0.0
    polyp_ms = polyp_alerted = 0.0
    delays = []
    for name, s in clip_scores.items():
        times = np.arange(len(s)) * 1000 / FPS
        _, events = track(times, s, rule)
        figures = summary(events, len(s) * 1000 / FPS)
        alerted = figures["alerted_share"] * figures["duration_ms"]
        if name.startswith("free/"):
            free_alerts += figures["alerts"]
            free_ms += figures["duration_ms"]
            free_alerted += alerted
        else:
            polyp_ms += figures["duration_ms"]
            polyp_alerted += alerted
            delays.append(events[0].start_ms if events else math.inf)
    return {
        "false_per_min": free_alerts / (free_ms / 60000), "free_share": free_alerted / free_ms,
        "delay_median": _nearest(delays, 50), "delay_p90": _nearest(delays, 90),
        "polyp_share": polyp_alerted / polyp_ms, "never": sum(math.isinf(d) for d in delays),
        "sequences": len(delays),
    }


def _ms(value: float) -> str:
    return "never" if math.isinf(value) else f"{value:.0f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="run folder or checkpoint (default: the shipped real-time model)")
    p.add_argument("--data", type=Path, default=SHARED, help=f"folder of the data sets (default {SHARED})")
    p.add_argument("-o", "--output", type=Path, default=Path("scratch/bench-alerts.md"),
                   help="the table as Markdown; the scores' cache goes beside it (default scratch/bench-alerts.md)")
    a = p.parse_args()
    clip_scores, point = scores(a.run, a.data, a.output.parent)
    free = np.concatenate([s for k, s in clip_scores.items() if k.startswith("free/")])
    polyp = np.concatenate([s for k, s in clip_scores.items() if k.startswith("polyp/")])
    n_free = sum(k.startswith("free/") for k in clip_scores)
    head = (f"Model {resolve_model(a.run).name}, operating point {point:.4f}; clips at {FPS:g} fps. Frames "
            f"flagged without any rule: {100 * (free >= point).mean():.1f}% of {len(free)} polyp-free frames "
            f"({n_free} clips), {100 * (polyp >= point).mean():.1f}% of {len(polyp)} polyp frames "
            f"({len(clip_scores) - n_free} sequences).")
    header = ["", "onset ms", "release ms", "smoothing ms", "false alerts/min", "alerted (free)",
              "delay median ms", "delay p90 ms", "alerted (polyp)", "never alerted"]
    rows = []
    for onset, release, smoothing in itertools.product(ONSETS, RELEASES, SMOOTHINGS):
        m = measure(clip_scores, AlertRule(threshold=point, smoothing_ms=smoothing, onset_ms=onset,
                                           release_ms=release))
        chosen = (onset, release, smoothing) == (DEFAULT_ONSET_MS, DEFAULT_RELEASE_MS, DEFAULT_SMOOTHING_MS)
        rows.append(["*" if chosen else "", str(onset), str(release), str(smoothing), f"{m['false_per_min']:.1f}",
                     f"{100 * m['free_share']:.1f}%", _ms(m["delay_median"]), _ms(m["delay_p90"]),
                     f"{100 * m['polyp_share']:.1f}%", f"{m['never']}/{m['sequences']}"])
    print(head)
    print("\n".join(text_table([header, *rows])))
    md = [head, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md.append("\n`*`: the defaults of polypseg.alerts.")
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.write_text("\n".join(md) + "\n")
    print(f"written {a.output}")


if __name__ == "__main__":
    main()
