"""Alerts each site sets on its own video (polypseg.sites): the choice on hand-made scores, and a site
profile's round trip (calibrate on a clip, then `polypseg video --site` uses it)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from polypseg import sites
from polypseg.errors import PolypsegError
from polypseg.media import read_image, write_clip


def _clip(scores, fps=25.0):
    return sites.Clip(np.arange(len(scores)) * 1000 / fps, np.asarray(scores, float))


def test_flagged_share_target_by_hand():
    clip = _clip(np.arange(100) / 100)  # scores 0.00 .. 0.99, one each
    profile = sites.choose("room-1", [clip], np.array([0.5, 0.95, 0.97, 0.99]), flagged_share=0.05)
    # at most 5 of 100 at or above the point: just above 0.94, so 0.95 .. 0.99 are flagged
    assert profile.operating_point == pytest.approx(0.94) and profile.operating_point > 0.94
    assert profile.measured["flagged_share"] == 0.05 and profile.onset_ms == 200
    assert profile.measured["validation_sensitivity"] == 0.75  # 0.95, 0.97, 0.99 of the four
    assert profile.curve == sorted(profile.curve, key=lambda r: r["operating_point"])
    shares = [r["flagged_share"] for r in profile.curve]
    assert shares == sorted(shares, reverse=True)  # a higher point flags fewer frames


def test_false_alert_target_picks_the_most_sensitive_setting_that_meets_it():
    # 25 fps, 60 s: a burst of 3 frames at 0.9 every 2 s (30 bursts), one of 10 frames at 0.8 once
    scores = np.full(1500, 0.1)
    for start in range(0, 1500, 50):
        scores[start:start + 3] = 0.9
    scores[700:710] = 0.8
    clip = _clip(scores)
    polyp = np.array([0.82, 0.85, 0.95, 0.95])
    # by hand: at a point of 0.1 or below the alert never ends (one alert, but on all the time: refused); at 0.8
    # with no onset every burst alerts (31 a minute); a burst's 3 frames span 80 ms, so from an onset of 100 ms
    # only the 10-frame one (360 ms) does (1 a minute): the shortest such onset is kept
    profile = sites.choose("s", [clip], polyp, false_alerts_per_minute=1.0)
    assert (profile.onset_ms, profile.operating_point) == (100, pytest.approx(0.8))
    assert profile.measured["false_alerts"] == 1 and profile.measured["validation_sensitivity"] == 1.0
    assert profile.measured["alerted_share"] <= sites.MAX_ALERTED_SHARE
    # none at all: a point above 0.8 would cost half the polyp frames; an onset of 400 ms (longer than the
    # 360 ms burst) keeps the point at 0.8 and every polyp frame: the more sensitive setting wins
    strict = sites.choose("s", [clip], polyp, false_alerts_per_minute=0.0)
    assert (strict.onset_ms, strict.operating_point) == (400, pytest.approx(0.8))
    assert strict.measured["false_alerts"] == 0 and strict.measured["validation_sensitivity"] == 1.0
    strict_onset = sites.choose("s", [clip], polyp, false_alerts_per_minute=0.0, onset_ms=100)
    assert 0.8 < strict_onset.operating_point <= 0.9 and strict_onset.measured["validation_sensitivity"] == 0.5
    moved = sites.moved(profile, [clip], polyp, operating_point=0.85)
    assert moved.measured["flagged_share"] < profile.measured["flagged_share"]
    assert moved.measured["validation_sensitivity"] == 0.75  # 0.85, 0.95, 0.95 of the four


def test_bad_targets_and_names():
    clip = _clip([0.1, 0.2, 0.3])
    with pytest.raises(PolypsegError, match="one target"):
        sites.choose("s", [clip], None)
    with pytest.raises(PolypsegError, match="one target"):
        sites.choose("s", [clip], None, flagged_share=0.1, false_alerts_per_minute=1)
    with pytest.raises(PolypsegError, match="letters, digits"):
        sites.choose("../etc", [clip], None, flagged_share=0.1)
    with pytest.raises(PolypsegError, match="share of polyp-free frames"):
        sites.choose("s", [clip], None, flagged_share=1.5)


def test_a_site_profile_round_trip_through_calibrate_and_video(tiny_checkpoint, data_dir, tmp_path, capsys):
    """`polypseg calibrate --site` on a clip of polyp-free frames writes the profile beside the model;
    `polypseg video --site` then alerts at its operating point and onset; other weights refuse it."""
    from polypseg.cli import main

    negatives = data_dir.parent / "polypgen-centre-a" / "negatives" / "seq1"
    if not negatives.is_dir():
        pytest.skip(f"{negatives} is not here")
    frames = [read_image(p) for p in sorted(negatives.glob("*.jpg"))[:12]]
    clip = write_clip([f[:540, :720] for f in frames], tmp_path / "site.mp4", fps=25)
    weights = tiny_checkpoint / "best.safetensors"
    assert main(["calibrate", "--run", str(tiny_checkpoint), "--site", "room-3", "--site-video", str(clip),
                 "--target-flagged-share", "0.25", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    path = tiny_checkpoint / "best.site-room-3.json"
    profile = json.loads(path.read_text())
    assert profile["measured"]["frames"] == 12 and profile["measured"]["flagged_share"] <= 0.25
    assert "site 'room-3'" in printed and str(path) in printed
    assert sites.site_names(weights) == ["room-3"]

    out = tmp_path / "o.mp4"
    assert main(["video", str(clip), "-o", str(out), "--run", str(tiny_checkpoint), "--site", "room-3",
                 "--backend", "torch", "--no-progress"]) == 0
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["site"] == "room-3"
    assert summary["operating_point"] == pytest.approx(profile["operating_point"], abs=1e-6)
    assert summary["rule"]["onset_ms"] == profile["onset_ms"]
    # a flag beats the site; a profile of other weights is refused
    assert main(["video", str(clip), "-o", str(tmp_path / "p.mp4"), "--run", str(tiny_checkpoint), "--site", "room-3",
                 "--alert-onset-ms", "40", "--backend", "torch", "--no-progress"]) == 0
    assert json.loads((tmp_path / "p.summary.json").read_text())["rule"]["onset_ms"] == 40
    profile["model_sha256"] = "0" * 64
    path.write_text(json.dumps(profile))
    with pytest.raises(PolypsegError, match="other weights"):
        sites.load(weights, "room-3", sites_sha(weights))
    assert main(["video", str(clip), "-o", str(tmp_path / "q.mp4"), "--run", str(tiny_checkpoint), "--site", "nowhere",
                 "--backend", "torch", "--no-progress"]) == 2
    assert "No site 'nowhere'" in capsys.readouterr().err


def sites_sha(weights):
    from polypseg.runtime import file_sha256

    return file_sha256(weights)


def test_batch_takes_the_sites_rule_and_flags_beat_it(tiny_checkpoint, data_dir, tmp_path):
    """`polypseg batch --site NAME`: the archive's rule (batch.json, the page) is the site's, a flag given
    beside it wins; an exam already done is skipped, so no model worker starts here."""
    from polypseg.batch import DONE, run_batch

    weights = tiny_checkpoint / "best.safetensors"
    profile = sites.choose("endo-3", [_clip(np.linspace(0, 1, 50))], None, flagged_share=0.1, onset_ms=300)
    sites.save(sites.SiteProfile(**{**profile.__dict__, "model_sha256": sites_sha(weights)}), weights)
    archive = tmp_path / "archive"
    archive.mkdir()
    write_clip([read_image(data_dir / "images" / "001.png")] * 2, archive / "exam.mp4")
    out = tmp_path / "out"
    (out / "exams" / "exam").mkdir(parents=True)
    (out / "exams" / "exam" / DONE).write_text(json.dumps({"frames": 2, "skipped": 0, "duration_ms": 80, "alerts": 0,
                                                           "alerts_per_minute": 0, "alerted_share": 0,
                                                           "polyp_frame_share": 0, "peak_score": 0}))
    result = run_batch([archive], out, checkpoint=weights, site="endo-3", show_progress=False)
    assert result.skipped == ["exam"]
    run = json.loads((out / "batch.json").read_text())
    assert run["site"] == "endo-3" and run["operating_point"] == pytest.approx(profile.operating_point)
    assert run["rule"]["onset_ms"] == 300
    run_batch([archive], out, checkpoint=weights, site="endo-3", alert_overrides={"onset_ms": 120}, show_progress=False)
    assert json.loads((out / "batch.json").read_text())["rule"]["onset_ms"] == 120
