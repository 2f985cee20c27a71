"""Alerts each site sets on its own video: a named site profile (operating point and alert onset) chosen
on the site's own polyp-free frames for a target it states, saved beside the model.

No setting suits every hospital's scopes, caps, towers and bowel preparation, and false alarms are what
users of detection systems complain of first. A site gives a few minutes of its own polyp-free video (or a
folder of polyp-free frames) and a target, either false alerts per minute or the share of polyp-free frames
flagged; ``choose`` picks the operating point and onset that meet it, and says what the setting costs: the
false alerts per minute and the share flagged on those frames, and the sensitivity on the model's own
validation polyp frames. The trade-off curve is kept in the profile, so a person can move the point
(``serve``'s Settings panel draws it). Pure: scores and timestamps in, a ``SiteProfile`` out; the JSON is
read and written here (``save``, ``load``, ``site_path``); scoring frames is ``calibration.calibrate_site``'s.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .alerts import DEFAULT_RELEASE_MS, DEFAULT_SMOOTHING_MS, AlertRule, track
from .errors import PolypsegError
from .files import atomic_write_text

SITE_FORMAT = "polypseg-site/1"
ONSETS_MS = (0.0, 100.0, 200.0, 300.0, 400.0, 500.0)  # onsets tried; 500 ms is the longest delay we accept
GRID = 80  # operating points tried: quantiles of the site's polyp-free scores
# A false-alert target counts alerts; an alert that stays on over polyp-free video is one alert but no quiet
# setting. So a setting must also keep alerts off for all but this share of the site's polyp-free time.
MAX_ALERTED_SHARE = 0.1
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Clip:
    """One stretch of a site's polyp-free video: its frames' timestamps (ms, increasing) and polyp scores."""

    times_ms: np.ndarray
    scores: np.ndarray

    @property
    def minutes(self) -> float:
        t = self.times_ms
        if len(t) < 2:
            return 0.0
        return float(t[-1] - t[0] + (t[-1] - t[0]) / (len(t) - 1)) / 60000


@dataclass(frozen=True)
class SiteProfile:
    """A site's setting for one model: the operating point and the alert rule's onset (release and smoothing
    as the defaults unless given), the target it was chosen for, what it costs on the site's frames
    (``measured``) and the trade-off curve (one dict per operating point tried at the chosen onset)."""

    name: str
    operating_point: float
    onset_ms: float
    release_ms: float = DEFAULT_RELEASE_MS
    smoothing_ms: float = DEFAULT_SMOOTHING_MS
    verdict: str = ""
    model_sha256: str = ""
    target: dict[str, float] = field(default_factory=dict)
    measured: dict[str, Any] = field(default_factory=dict)
    curve: list[dict[str, float | None]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def rule(self) -> AlertRule:
        return AlertRule(operating_point=self.operating_point, smoothing_ms=self.smoothing_ms,
                         onset_ms=self.onset_ms, release_ms=self.release_ms)

    def to_dict(self) -> dict[str, Any]:
        return {"format": SITE_FORMAT, **asdict(self)}

    def summary_text(self) -> str:
        """The profile in a few lines: the setting, its target and what it costs."""
        m = self.measured
        fa, sens = m.get("false_alerts_per_minute"), m.get("validation_sensitivity")
        target = ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in self.target.items())
        return "\n".join([
            f"site '{self.name}': operating point {self.operating_point:.4g} (verdict '{self.verdict}'), alert onset "
            f"{self.onset_ms:g} ms, release {self.release_ms:g} ms (target: {target})",
            f"on the site's {m['frames']} polyp-free frames ({m['minutes']:.2f} min): {100 * m['flagged_share']:.1f}% "
            "flagged, " + (f"{fa:.2f} false alerts per minute ({m['false_alerts']})" if fa is not None
                           else "false alerts per minute unknown (no timestamps)"),
            f"sensitivity on the model's {m['validation_polyp_frames']} validation polyp frames: {100 * sens:.1f}%"
            if sens is not None else "sensitivity: unknown (the model has no validation side here: check it on polyp "
            "frames with polypseg evaluate)",
        ])


def rule_for(profile: SiteProfile | None, model_point: float, **given: float | None) -> AlertRule:
    """The alert rule to apply: what is ``given`` (operating_point, smoothing_ms, onset_ms, release_ms; None:
    not given), else the site ``profile``'s, else the defaults on the model's operating point ``model_point``."""
    base = profile.rule() if profile is not None else AlertRule(operating_point=float(model_point))
    unknown = set(given) - {"operating_point", "smoothing_ms", "onset_ms", "release_ms"}
    if unknown:
        raise PolypsegError(f"Unknown alert rule settings {sorted(unknown)}.")
    return replace(base, **{k: float(v) for k, v in given.items() if v is not None})


def check_target(false_alerts_per_minute: float | None, flagged_share: float | None) -> dict[str, float]:
    """The one target a site states, checked: ``{"false_alerts_per_minute": F}`` or ``{"flagged_share": S}``."""
    if (false_alerts_per_minute is None) == (flagged_share is None):
        raise PolypsegError("Give one target for the site: false alerts per minute (--target-false-alerts-per-minute; "
                            "false_alerts_per_minute in the API) or the share of polyp-free frames flagged "
                            "(--target-flagged-share; flagged_share).")
    if flagged_share is not None:
        if not 0.0 <= flagged_share < 1.0:
            raise PolypsegError(f"The target flagged share is a share of polyp-free frames in [0, 1), got {flagged_share}.")
        return {"flagged_share": float(flagged_share)}
    if not (math.isfinite(false_alerts_per_minute) and false_alerts_per_minute >= 0):
        raise PolypsegError(f"The target false alerts per minute must be 0 or more, got {false_alerts_per_minute}.")
    return {"false_alerts_per_minute": float(false_alerts_per_minute)}


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise PolypsegError(f"A site's name is 1-64 letters, digits, '.', '_' or '-' (starting with a letter or "
                            f"digit), e.g. endo-room-3; got {name!r}.")
    return name


def site_path(weights: str | Path, name: str) -> Path:
    """Where site ``name``'s profile of the model ``weights`` lives: ``WEIGHTS_STEM.site-NAME.json`` beside it."""
    weights = Path(weights)
    return weights.with_name(f"{weights.stem}.site-{check_name(name)}.json")


def site_names(weights: str | Path) -> list[str]:
    weights = Path(weights)
    prefix = f"{weights.stem}.site-"
    return sorted(p.name[len(prefix):-len(".json")] for p in weights.parent.glob(f"{prefix}*.json"))


def save(profile: SiteProfile, weights: str | Path) -> Path:
    path = site_path(weights, profile.name)
    atomic_write_text(path, json.dumps(profile.to_dict(), indent=2) + "\n")
    return path


def load(weights: str | Path, name: str, sha256: str | None = None) -> SiteProfile:
    """Site ``name``'s profile of the model ``weights`` (checked against the weights' ``sha256`` when given:
    a profile chosen for other weights is refused)."""
    path = site_path(weights, name)
    if not path.is_file():
        known = site_names(weights)
        raise PolypsegError(f"No site '{name}' for this model (looked for {path}). "
                            + (f"Its sites: {', '.join(known)}. " if known else "It has none yet. ")
                            + "Make one with `polypseg calibrate --run MODEL --site NAME --site-video CLIP ...`.")
    values = json.loads(path.read_text())
    if values.pop("format", None) != SITE_FORMAT:
        raise PolypsegError(f"{path} is not a polypseg site profile ({SITE_FORMAT}).")
    profile = SiteProfile(**values)
    if sha256 and profile.model_sha256 and profile.model_sha256 != sha256:
        raise PolypsegError(f"Site '{name}' ({path}) was chosen for other weights than these. Calibrate it again "
                            "for this model: polypseg calibrate --run MODEL --site NAME ...")
    return profile


def _false_alerts(clips: Sequence[Clip], rule: AlertRule) -> tuple[int, float, float]:
    """Alerts raised on polyp-free clips (every one is false), the clips' minutes and the share of that time
    an alert was on."""
    alerts, minutes, alerted_ms = 0, 0.0, 0.0
    for clip in clips:
        if len(clip.scores):
            events = track(clip.times_ms, clip.scores, rule)[1]
            alerts += len(events)
            alerted_ms += sum(e.duration_ms for e in events)
            minutes += clip.minutes
    return alerts, minutes, (alerted_ms / (60000 * minutes) if minutes > 0 else 0.0)


def _sensitivity(point: float, polyp_scores: np.ndarray | None) -> float | None:
    if polyp_scores is None or not len(polyp_scores):
        return None
    return float((polyp_scores >= point).mean())


def curve(clips: Sequence[Clip], polyp_scores: np.ndarray | None, onset_ms: float,
          release_ms: float = DEFAULT_RELEASE_MS, smoothing_ms: float = DEFAULT_SMOOTHING_MS,
          points: Sequence[float] | None = None) -> list[dict[str, float | None]]:
    """The trade-off at ``onset_ms``: for each operating point (default: ``GRID`` quantiles of the clips'
    scores from the median up, and one above the highest), the share of the clips' frames flagged, their
    false alerts per minute and the sensitivity on ``polyp_scores`` (None without them); points ascending."""
    scores = np.concatenate([c.scores for c in clips]) if clips else np.zeros(0)
    if not len(scores):
        raise PolypsegError("No polyp-free frame to calibrate the site on.")
    if points is None:
        top = float(scores.max())
        points = np.unique(np.r_[np.quantile(scores, np.linspace(0.5, 1.0, GRID)), np.nextafter(top, math.inf)])
    out = []
    for point in sorted(float(p) for p in points):
        rule = AlertRule(operating_point=point, smoothing_ms=smoothing_ms, onset_ms=onset_ms, release_ms=release_ms)
        alerts, minutes, alerted = _false_alerts(clips, rule)
        out.append({"operating_point": point, "flagged_share": float((scores >= point).mean()),
                    "false_alerts_per_minute": alerts / minutes if minutes > 0 else None,
                    "alerted_share": alerted if minutes > 0 else None,
                    "sensitivity": _sensitivity(point, polyp_scores)})
    return out


def choose(name: str, clips: Sequence[Clip], polyp_scores: np.ndarray | None, *,
           false_alerts_per_minute: float | None = None, flagged_share: float | None = None,
           onset_ms: float | None = None, release_ms: float = DEFAULT_RELEASE_MS,
           smoothing_ms: float = DEFAULT_SMOOTHING_MS) -> SiteProfile:
    """The site's setting for one target: ``flagged_share`` (the lowest operating point that flags at most
    that share of the site's polyp-free frames; onset ``onset_ms``, default 200 ms) or
    ``false_alerts_per_minute`` (over the onsets ``ONSETS_MS``, or ``onset_ms`` alone when given, and the
    operating points of ``curve``: the setting with the highest sensitivity on ``polyp_scores``, then the
    lowest point, then the shortest onset, among those at or under the target whose alerts stay off for all
    but ``MAX_ALERTED_SHARE`` of the time). ``polyp_scores``: the model's validation polyp frames' scores
    (None: not known; the lowest point that meets the target)."""
    check_name(name)
    target = check_target(false_alerts_per_minute, flagged_share)
    minutes = sum(c.minutes for c in clips)
    if false_alerts_per_minute is not None and minutes <= 0:
        raise PolypsegError("False alerts per minute need frames with timestamps (a video, or a folder of at least "
                            "two frames); give a video of the site's polyp-free exam.")
    scores = np.concatenate([c.scores for c in clips]) if clips else np.zeros(0)
    if flagged_share is not None:
        onset = 200.0 if onset_ms is None else float(onset_ms)
        k = int(math.floor(len(scores) * flagged_share + 1e-9))  # at most k frames at or above the point
        ordered = np.sort(scores)
        point = float(np.nextafter(ordered[len(ordered) - k - 1], math.inf)) if k < len(ordered) else float(ordered[0])
        curves = {}
    else:
        best = None
        curves = {onset: curve(clips, polyp_scores, onset, release_ms, smoothing_ms)
                  for onset in (ONSETS_MS if onset_ms is None else (float(onset_ms),))}
        for onset, rows in curves.items():
            for row in rows:
                if (row["false_alerts_per_minute"] is None or row["false_alerts_per_minute"] > false_alerts_per_minute
                        or row["alerted_share"] > MAX_ALERTED_SHARE):
                    continue
                key = (row["sensitivity"] if row["sensitivity"] is not None else 0.0, -row["operating_point"], -onset)
                if best is None or key > best[0]:
                    best = (key, row["operating_point"], onset)
                break  # points ascend: the first one that meets the target is this onset's best
        if best is None:
            raise PolypsegError(f"No setting reaches {false_alerts_per_minute} false alerts per minute on these frames.")
        _, point, onset = best
    rows = curves.get(onset) or curve(clips, polyp_scores, onset, release_ms, smoothing_ms)
    alerts, _, alerted = _false_alerts(clips, AlertRule(point, smoothing_ms, onset, release_ms))
    measured = {"frames": int(len(scores)), "minutes": round(minutes, 4),
                "flagged_share": float((scores >= point).mean()),
                "false_alerts": alerts, "false_alerts_per_minute": alerts / minutes if minutes > 0 else None,
                "alerted_share": alerted if minutes > 0 else None,
                "validation_sensitivity": _sensitivity(point, polyp_scores),
                "validation_polyp_frames": None if polyp_scores is None else int(len(polyp_scores))}
    return SiteProfile(name=name, operating_point=float(point), onset_ms=float(onset), release_ms=float(release_ms),
                       smoothing_ms=float(smoothing_ms), target=target, measured=measured, curve=rows)


def moved(profile: SiteProfile, clips: Sequence[Clip], polyp_scores: np.ndarray | None, operating_point: float,
          onset_ms: float | None = None) -> SiteProfile:
    """The profile with the point (and onset) a person moved it to, its costs measured again."""
    onset = profile.onset_ms if onset_ms is None else float(onset_ms)
    rule = AlertRule(float(operating_point), profile.smoothing_ms, onset, profile.release_ms)
    scores = np.concatenate([c.scores for c in clips])
    alerts, minutes, alerted = _false_alerts(clips, rule)
    measured = {**profile.measured, "flagged_share": float((scores >= operating_point).mean()), "false_alerts": alerts,
                "false_alerts_per_minute": alerts / minutes if minutes > 0 else None,
                "alerted_share": alerted if minutes > 0 else None,
                "validation_sensitivity": _sensitivity(float(operating_point), polyp_scores)}
    rows = profile.curve if onset == profile.onset_ms else curve(clips, polyp_scores, onset, profile.release_ms,
                                                                 profile.smoothing_ms)
    return replace(profile, operating_point=float(operating_point), onset_ms=onset, measured=measured, curve=rows,
                   target={**profile.target, "moved_by_hand": 1.0})
