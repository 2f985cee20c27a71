"""Alerts on video: per-frame polyp scores and their timestamps in, alert states and events out.

What stands between the model's verdict on each frame and what the endoscopist sees. The score is
smoothed by an exponential moving average whose weight comes from the real time step, so any frame rate
and dropped frames work; an alert starts once the smoothed score has stayed at or above the operating point
(the verdict's, the model's or a site's) for ``onset_ms`` and ends once it has stayed below for
``release_ms``. Scores are any finite numbers (the ``logit`` score is in logit units, others in [0, 1]). Pure (no I/O, no model): ``video`` and
``serve`` call it, ``AlertTracker`` frame by frame, ``track`` on a whole sequence.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, replace
from typing import Any, NamedTuple

from .errors import PolypsegError

# Chosen with benchmarks/bench_alerts.py (shipped real-time model, operating point 0.5; CVC-ClinicDB's 29
# polyp sequences and 27 polyp-free clips of PolypGen centre A and HyperKvasir, 1862 frames played at
# 25 fps; the polyp-free clips change faster than real video, a stress test). That model flags 80% of the
# polyp-free frames and every polyp frame, so the rule can only shape the flicker:
#   onset/release/smoothing ms   false alerts/min   alerted (free)   median delay   never alerted
#     0 /   0 /   0              232.8              80.2%              0 ms          0/29
#   200 /   0 /   0               68.4              28.3%            200 ms          0/29
#   200 / 200 /   0               31.2              74.0%            200 ms          0/29   <- defaults
#   200 / 200 / 100               32.4              83.7%            200 ms          0/29
#   300 / 200 /   0               24.0              51.1%            320 ms          1/29
#   500 / 200 /   0               13.2              22.1%            520 ms          3/29
# Onset 200 ms is the published guidance (holding back activations shorter than about 6 frames at 30 fps
# removed 88% of false positives); here it and a 200 ms release remove 87% of the false alerts, with the
# first alert on every polyp sequence 200 ms in (well under a second). 300 ms and more leave the shortest
# sequences (6 frames) unalerted. A release of 500 ms measured the same as 200 ms: the shorter one lags
# less after the polyp has gone. Smoothing cut false alerts only without a release (200/0: 68.4 -> 38.4
# per minute at 200 ms), less than the release does, and with one it only added alerted time (it bridges
# the gaps the release bridges already), so it is off. Rerun the benchmark for a new model.
DEFAULT_SMOOTHING_MS = 0.0
DEFAULT_ONSET_MS = 200.0
DEFAULT_RELEASE_MS = 200.0
_EPS_MS = 1e-6  # timestamps made by adding frame steps land a hair short of a round onset/release


def _check_ms(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise PolypsegError(f"The alert {name} is a time in milliseconds, 0 or more; got {value}.")
    return value


@dataclass(frozen=True)
class AlertRule:
    """How the per-frame polyp score becomes an alert. ``operating_point``: the verdict's operating point,
    applied to the smoothed score (``None``: the model's or the site's, filled in by the caller through
    ``resolved``); ``smoothing_ms``: time constant of the exponential moving average (0: none);
    ``onset_ms``: how long the smoothed score stays at or above the operating point before the alert
    starts; ``release_ms``: how long below before it ends."""

    operating_point: float | None = None
    smoothing_ms: float = DEFAULT_SMOOTHING_MS
    onset_ms: float = DEFAULT_ONSET_MS
    release_ms: float = DEFAULT_RELEASE_MS

    def __post_init__(self):
        if self.operating_point is not None and not math.isfinite(self.operating_point):
            raise PolypsegError(f"The alert rule's operating point must be a finite number, got {self.operating_point}.")
        for name in ("smoothing_ms", "onset_ms", "release_ms"):
            _check_ms(name.replace("_ms", " (ms)"), getattr(self, name))

    def resolved(self, operating_point: float) -> AlertRule:
        """This rule with the model's (or site's) ``operating_point`` when it has none of its own."""
        return self if self.operating_point is not None else replace(self, operating_point=float(operating_point))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class FrameState(NamedTuple):
    """One frame after the rule: its score, the smoothed score, whether the alert is on (``started``: it
    went on at this frame; ``ended``: it went off at this frame, so ``alert`` is False), and ``peak``:
    this frame is now the open alert's peak (the frame its thumbnail shows)."""

    t_ms: float
    score: float
    smoothed: float
    alert: bool
    started: bool = False
    ended: bool = False
    peak: bool = False


@dataclass(frozen=True)
class AlertEvent:
    """One alert: raised at ``start_ms``, lowered at ``end_ms`` (the frame it went off, or the end of the
    stream); ``first_crossing_ms``: when the smoothed score crossed the operating point (``start_ms`` minus the
    onset, or less for a gap in the frames). Peaks over the alerted frames: the highest score, the largest
    area, and the frame with the largest area (the highest score among equal areas)."""

    start_ms: float
    end_ms: float
    first_crossing_ms: float
    peak_score: float
    peak_area: float
    peak_frame: int

    @property
    def duration_ms(self) -> float:
        return self.end_ms - self.start_ms

    def as_dict(self) -> dict[str, Any]:
        return {"start_ms": self.start_ms, "end_ms": self.end_ms, "duration_ms": self.duration_ms,
                "first_crossing_ms": self.first_crossing_ms, "peak_score": self.peak_score,
                "peak_area": self.peak_area, "peak_frame": self.peak_frame}


class AlertTracker:
    """The rule applied frame by frame (live use): O(1) per frame. ``update`` each frame in time order,
    ``close`` at the end of the stream; closed alerts collect in ``events``."""

    def __init__(self, rule: AlertRule):
        if rule.operating_point is None:
            raise PolypsegError("The alert rule has no operating point: give one, or take the model's with "
                                "rule.resolved(predictor.operating_point).")
        self.rule = rule
        self.events: list[AlertEvent] = []
        self.frames = 0
        self.first_ms: float | None = None
        self.last_ms: float | None = None
        self._step = 0.0  # the last time step: the last frame is taken to last that long
        self._smoothed = 0.0
        self._crossed: float | None = None  # while off: when the smoothed score went to/above the operating point
        self._below: float | None = None  # while on: when it went below
        self._open: dict[str, Any] | None = None

    @property
    def alert(self) -> bool:
        return self._open is not None

    @property
    def end_ms(self) -> float | None:
        """The end of the stream so far: the last frame's time plus one frame step."""
        return None if self.last_ms is None else self.last_ms + self._step

    @property
    def duration_ms(self) -> float:
        return 0.0 if self.first_ms is None else self.end_ms - self.first_ms

    def update(self, t_ms: float, score: float, area: float = 0.0, frame: int | None = None) -> FrameState:
        """The next frame (time in ms, strictly after the last; its polyp score, a finite number; the mask's
        area fraction; its index, default the count of frames so far) -> its state."""
        t, x = float(t_ms), float(score)
        if not math.isfinite(t):
            raise PolypsegError(f"A frame's timestamp must be a finite number of milliseconds, got {t_ms}.")
        if not math.isfinite(x):
            raise PolypsegError(f"A polyp score must be a finite number, got {score} (frame at {t} ms).")
        rule = self.rule
        if self.last_ms is None:
            self.first_ms, s = t, x
        else:
            dt = t - self.last_ms
            if dt <= 0:
                raise PolypsegError(f"Frame timestamps must increase: {t} ms came after {self.last_ms} ms.")
            self._step = dt
            s = self._smoothed
            s = x if rule.smoothing_ms == 0 else s + (1.0 - math.exp(-dt / rule.smoothing_ms)) * (x - s)
        self.last_ms, self._smoothed = t, s
        frame = self.frames if frame is None else int(frame)
        self.frames += 1
        above = s >= rule.operating_point
        started = ended = peak = False
        if self._open is None:
            if not above:
                self._crossed = None
            else:
                if self._crossed is None:
                    self._crossed = t
                if t - self._crossed >= rule.onset_ms - _EPS_MS:
                    self._open = {"start_ms": t, "first_crossing_ms": self._crossed, "peak_score": x,
                                  "peak_area": float(area), "peak_frame": frame, "key": (float(area), x)}
                    started = peak = True
        elif above:
            self._below = None
        else:
            if self._below is None:
                self._below = t
            if t - self._below >= rule.release_ms - _EPS_MS:
                self._end(t)
                ended = True
        if self._open is not None and not started:
            ev = self._open
            ev["peak_score"] = max(ev["peak_score"], x)
            ev["peak_area"] = max(ev["peak_area"], float(area))
            if (float(area), x) > ev["key"]:
                ev["key"], ev["peak_frame"], peak = (float(area), x), frame, True
        return FrameState(t, x, s, self._open is not None, started, ended, peak)

    def close(self, t_ms: float | None = None) -> AlertEvent | None:
        """End the stream: an open alert ends at ``t_ms`` (default ``end_ms``, the last frame's time plus one
        frame step) and is returned; None when none was open."""
        if self._open is None:
            return None
        end = self.end_ms if t_ms is None else float(t_ms)
        if not (math.isfinite(end) and end >= self._open["start_ms"]):
            raise PolypsegError(f"An alert that started at {self._open['start_ms']} ms cannot end at {t_ms} ms.")
        return self._end(end)

    def _end(self, t: float) -> AlertEvent:
        ev = self._open
        event = AlertEvent(ev["start_ms"], t, ev["first_crossing_ms"], ev["peak_score"], ev["peak_area"],
                           ev["peak_frame"])
        self.events.append(event)
        self._open = self._crossed = self._below = None
        return event


def track(times_ms, scores, rule: AlertRule, areas=None) -> tuple[list[FrameState], list[AlertEvent]]:
    """The rule on a whole sequence: timestamps (ms, increasing), scores and optionally area fractions ->
    (one state per frame, the alerts; one still on at the end ends one frame step after the last frame)."""
    times_ms, scores = list(times_ms), list(scores)
    areas = [0.0] * len(scores) if areas is None else list(areas)
    if not len(times_ms) == len(scores) == len(areas):
        raise PolypsegError(f"Give one timestamp, score and area per frame: got {len(times_ms)} timestamps, "
                            f"{len(scores)} scores and {len(areas)} areas.")
    tracker = AlertTracker(rule)
    states = [tracker.update(t, s, a) for t, s, a in zip(times_ms, scores, areas)]
    tracker.close()
    return states, tracker.events


def summary(events: list[AlertEvent], duration_ms: float) -> dict[str, Any]:
    """Alerts of a stream ``duration_ms`` long: how many, per minute, the share of the time alerted, and the
    mean and median alert duration (None without alerts)."""
    duration_ms = _check_ms("stream duration (ms)", duration_ms)
    durations = [e.duration_ms for e in events]
    return {
        "alerts": len(events),
        "alerts_per_minute": len(events) / (duration_ms / 60000) if duration_ms > 0 else 0.0,
        "alerted_share": min(1.0, sum(durations) / duration_ms) if duration_ms > 0 else 0.0,
        "duration_ms": duration_ms,
        "mean_alert_ms": statistics.fmean(durations) if durations else None,
        "median_alert_ms": statistics.median(durations) if durations else None,
    }
