"""The alert rule on hand-made score sequences, with hand-computed expectations."""

from __future__ import annotations

import math

import pytest

from polypseg.alerts import AlertEvent, AlertRule, AlertTracker, summary, track
from polypseg.errors import PolypsegError

LOW, HIGH = 0.1, 0.9


def _times(n, fps):
    return [i * 1000 / fps for i in range(n)]


def _steps(*runs):
    """(score, frames) runs -> the scores, one per frame."""
    return [score for score, n in runs for _ in range(n)]


def test_alert_starts_after_onset_and_ends_after_release():
    # 20 fps (50 ms a frame): above from frame 5 (250 ms) to frame 19, below from frame 20 (1000 ms)
    scores = _steps((LOW, 5), (HIGH, 15), (LOW, 10))
    rule = AlertRule(operating_point=0.5, smoothing_ms=0, onset_ms=200, release_ms=300)
    states, events = track(_times(30, 20), scores, rule)
    # onset: 250 + 200 = 450 ms (frame 9); release: 1000 + 300 = 1300 ms (frame 26)
    assert events == [AlertEvent(start_ms=450, end_ms=1300, first_crossing_ms=250, peak_score=HIGH,
                                 peak_area=0.0, peak_frame=9)]
    assert events[0].duration_ms == 850
    assert [i for i, s in enumerate(states) if s.alert] == list(range(9, 26))
    assert [i for i, s in enumerate(states) if s.started] == [9]
    assert [i for i, s in enumerate(states) if s.ended] == [26]
    assert all(s.smoothed == s.score for s in states)  # smoothing 0


def test_zero_onset_and_release_follow_the_score():
    scores = _steps((LOW, 2), (HIGH, 1), (LOW, 2), (HIGH, 2), (LOW, 1))
    states, events = track(_times(8, 10), scores, AlertRule(operating_point=0.5, smoothing_ms=0, onset_ms=0, release_ms=0))
    assert [s.alert for s in states] == [s >= 0.5 for s in scores]
    assert [(e.start_ms, e.end_ms) for e in events] == [(200, 300), (500, 700)]


def test_a_blip_shorter_than_the_onset_is_held_back():
    rule = AlertRule(operating_point=0.5, smoothing_ms=0, onset_ms=200, release_ms=0)
    # 30 fps: 6 frames above span 5 steps = 166.7 ms < 200 ms: held back
    states, events = track(_times(20, 30), _steps((LOW, 5), (HIGH, 6), (LOW, 9)), rule)
    assert events == [] and not any(s.alert for s in states)
    # 7 frames above span exactly 200 ms: the 7th frame raises it
    states, events = track(_times(20, 30), _steps((LOW, 5), (HIGH, 7), (LOW, 8)), rule)
    assert [(e.first_crossing_ms, e.start_ms, e.end_ms) for e in events] == [(5000 / 30, 11000 / 30, 12000 / 30)]
    assert [i for i, s in enumerate(states) if s.alert] == [11]


def test_a_dip_shorter_than_the_release_keeps_one_alert():
    rule = AlertRule(operating_point=0.5, smoothing_ms=0, onset_ms=100, release_ms=300)
    scores = _steps((HIGH, 10), (LOW, 2), (HIGH, 10), (LOW, 10))  # 10 fps: a 200 ms dip
    _, events = track(_times(32, 10), scores, rule)
    assert [(e.first_crossing_ms, e.start_ms, e.end_ms) for e in events] == [(0, 100, 2500)]


@pytest.mark.parametrize("smoothing_ms", [0, 100])
def test_the_same_scores_at_15_and_30_fps_give_the_same_alerts(smoothing_ms):
    """A polyp in view from 1 s to 3 s of a 5 s clip, sampled at 15 and at 30 fps."""
    rule = AlertRule(operating_point=0.5, smoothing_ms=smoothing_ms, onset_ms=200, release_ms=400)
    events = {}
    for fps in (15, 30):
        times = _times(5 * fps, fps)
        _, events[fps] = track(times, [HIGH if 1000 <= t < 3000 else LOW for t in times], rule)
    assert len(events[15]) == len(events[30]) == 1
    a, b = events[15][0], events[30][0]
    for name in ("first_crossing_ms", "start_ms", "end_ms"):
        assert abs(getattr(a, name) - getattr(b, name)) <= 1000 / 15 + 1e-9
    if smoothing_ms == 0:  # crossing at 1000 ms, raised 200 ms later, below from 3000 ms, lowered 400 ms later
        assert (a.first_crossing_ms, a.start_ms, a.end_ms) == (b.first_crossing_ms, b.start_ms, b.end_ms) == (
            1000, 1200, 3400)


@pytest.mark.parametrize("times", [_times(10, 30), _times(10, 15), [0, 10, 50, 51, 200, 450, 460]])
def test_smoothing_of_a_step_is_one_minus_exp(times):
    """Score 0 at t = 0, 1 after: the smoothed score is 1 - exp(-t / tau) at every frame, whatever the
    frame rate or gaps."""
    tau = 100.0
    states, _ = track(times, [0.0] + [1.0] * (len(times) - 1), AlertRule(operating_point=0.99, smoothing_ms=tau))
    assert [s.smoothed for s in states] == pytest.approx([1 - math.exp(-t / tau) for t in times], abs=1e-12)


def test_peaks_and_an_alert_open_at_the_end():
    rule = AlertRule(operating_point=0.5, smoothing_ms=0, onset_ms=0, release_ms=100)
    scores = [LOW, 0.6, 0.95, 0.7, 0.8]
    areas = [0.0, 0.05, 0.10, 0.20, 0.20]  # the largest area first at frame 3; frame 4 ties with a higher score
    states, events = track(_times(5, 10), scores, rule, areas=areas)
    assert events == [AlertEvent(start_ms=100, end_ms=500, first_crossing_ms=100, peak_score=0.95,
                                 peak_area=0.20, peak_frame=4)]  # closed one frame step after the last frame
    assert [s.peak for s in states] == [False, True, True, True, True]


def test_tracker_streaming_and_close():
    tracker = AlertTracker(AlertRule(operating_point=0.5, smoothing_ms=0, onset_ms=0, release_ms=0))
    assert tracker.close() is None
    for i, score in enumerate([LOW, HIGH, HIGH]):
        state = tracker.update(1000 + 40 * i, score, area=0.1, frame=100 + i)
    assert state.alert and tracker.alert and tracker.events == []
    assert (tracker.end_ms, tracker.duration_ms) == (1120, 120)
    event = tracker.close(1100)
    assert (event.start_ms, event.end_ms, event.peak_frame) == (1040, 1100, 101)
    assert tracker.events == [event] and not tracker.alert


def test_summary_by_hand():
    events = [AlertEvent(0, 1000, 0, 0.9, 0.1, 0), AlertEvent(30000, 33000, 29800, 0.8, 0.2, 750)]
    assert summary(events, 120000) == {"alerts": 2, "alerts_per_minute": 1.0, "alerted_share": 4000 / 120000,
                                       "duration_ms": 120000, "mean_alert_ms": 2000, "median_alert_ms": 2000}
    assert summary([], 60000) == {"alerts": 0, "alerts_per_minute": 0.0, "alerted_share": 0.0,
                                  "duration_ms": 60000, "mean_alert_ms": None, "median_alert_ms": None}


def test_rule_operating_point_from_the_model():
    rule = AlertRule()
    assert rule.resolved(0.42).operating_point == 0.42
    assert AlertRule(operating_point=0.3).resolved(0.42).operating_point == 0.3
    with pytest.raises(PolypsegError, match="no operating point"):
        AlertTracker(rule)


@pytest.mark.parametrize("make,match", [
    (lambda: AlertRule(onset_ms=-1), "onset"),
    (lambda: AlertRule(release_ms=math.inf), "release"),
    (lambda: AlertRule(smoothing_ms=math.nan), "smoothing"),
    (lambda: AlertRule(operating_point=math.inf), "finite number"),
    (lambda: track([0, 40, 40], [0.1] * 3, AlertRule(operating_point=0.5)), "must increase"),
    (lambda: track([0, 40, 20], [0.1] * 3, AlertRule(operating_point=0.5)), "must increase"),
    (lambda: track([0, math.nan], [0.1] * 2, AlertRule(operating_point=0.5)), "finite"),
    (lambda: track([0, 40], [0.1, math.nan], AlertRule(operating_point=0.5)), "finite number"),
    (lambda: track([0, 40], [0.1], AlertRule(operating_point=0.5)), "one timestamp, score and area"),
    (lambda: summary([], -5), "0 or more"),
])
def test_bad_input_is_a_clear_error(make, match):
    with pytest.raises(PolypsegError, match=match):
        make()
