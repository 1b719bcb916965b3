"""Tone cadences of both plans and SIT, through every degradation."""

from __future__ import annotations

import numpy as np
import pytest

from sipclient.classify.tones import LOW
from sipclient.classify.verdicts import Verdict
from tests.classify.conftest import PLANS, Pcm, cadence, degrade, detect, music, sit, tone

DEGRADATIONS = ("clean", "level", "noise", "g711", "loss", "all")


@pytest.mark.parametrize("how", DEGRADATIONS)
@pytest.mark.parametrize("name", sorted(PLANS))
def test_cadence(name: str, how: str) -> None:
    freqs, cycle, seconds, verdict = PLANS[name]
    hit, _ = detect(degrade(cadence(freqs, cycle, seconds), how))
    assert hit is not None, f"{name} not recognised ({how})"
    assert hit.verdict == Verdict(verdict)
    # ringback of both plans is told apart by cadence only; everything else by name
    assert hit.tone == name or (verdict == "ringing" and hit.tone.endswith("ringback"))


@pytest.mark.parametrize("how", DEGRADATIONS)
def test_sit(how: str) -> None:
    hit, _ = detect(degrade(sit(), how))
    assert hit is not None and hit.verdict == Verdict.EMPTY and hit.tone == "sit_intercept"


def test_sit_reorder_is_transient() -> None:
    x = np.concatenate(
        [tone((985.2,), 0.38), tone((1428.5,), 0.38), tone((1776.7,), 0.38), np.zeros(8000)]
    )
    hit, _ = detect(x)
    assert hit is not None and hit.verdict == Verdict.FAILED and hit.transient


def test_decision_comes_early_and_after_the_tone_starts() -> None:
    lead = np.zeros(8000)  # 1 s of silence first
    hit, _ = detect(np.concatenate([lead, cadence((450.0,), [(0.35, 0.35)], 4.0)]))
    assert hit is not None
    assert 50 <= hit.started_frame <= 52
    # busy 0.35/0.35 is sure during its second burst: about 1 s after it starts
    assert hit.frame - hit.started_frame <= 60


def test_ringback_sets_ringback_seen_after_one_cycle() -> None:
    _, det = detect(cadence((450.0,), [(1.0, 4.0)], 4.0))
    assert det.ringback_seen


@pytest.mark.parametrize("level_db", [0.0, -20.0, -40.0])
def test_level_independent(level_db: float) -> None:
    hit, _ = detect(cadence((450.0,), [(0.7, 0.7)], 5.0, level_db=level_db - 3.0))
    assert hit is not None and hit.tone == "cn_congestion"


def test_music_and_silence_are_no_tone() -> None:
    assert detect(music(10.0))[0] is None
    assert detect(np.zeros(8000 * 5))[0] is None
    rng = np.random.default_rng(0)
    assert detect(rng.standard_normal(8000 * 5) * 0.05)[0] is None


def test_continuous_450_is_not_a_cadence() -> None:
    hit, det = detect(tone((450.0,), 6.0))
    assert hit is None
    assert det.current_cls == LOW and det.current_ms >= 5900


def _dual(seconds: float) -> Pcm:
    return tone((480.0, 620.0), seconds)


@pytest.mark.parametrize("how", DEGRADATIONS)
def test_one_na_busy_burst_decides_once_its_pause_is_heard(how: str) -> None:
    # 480+620 Hz for 0.5 s, then quiet: reorder's bursts end by 330 ms, so it is busy
    # 200 ms into the pause, without waiting for the second burst (at 1.0 s)
    x = np.concatenate([np.zeros(4000), _dual(0.5), np.zeros(8000)])
    hit, _ = detect(degrade(x, how))
    assert hit is not None and hit.tone == "na_busy" and hit.verdict == Verdict.BUSY
    assert 25 <= hit.started_frame <= 26
    assert hit.frame <= 25 + 25 + 10 + 2  # the burst, ALONE_PAUSE_MS, a lost packet or two


def test_a_na_busy_burst_cut_by_the_start_of_the_audio_still_decides() -> None:
    hit, _ = detect(np.concatenate([_dual(0.42), np.zeros(8000)]))
    assert hit is not None and hit.tone == "na_busy"


def test_one_reorder_burst_or_one_short_dual_burst_decides_nothing() -> None:
    # 0.3 s: reorder's length, or a busy burst cut short; only a cadence can tell
    assert detect(np.concatenate([np.zeros(4000), _dual(0.3), np.zeros(8000)]))[0] is None
    # longer than busy's 620 ms: no pattern of this band
    assert detect(np.concatenate([np.zeros(4000), _dual(0.8), np.zeros(8000)]))[0] is None


def test_one_congestion_length_burst_of_450_decides_nothing() -> None:
    # a ringback cut after 0.7 s by an announcement (or by silence) looks exactly like
    # one congestion burst: congestion needs its second burst
    x = np.concatenate([np.zeros(4000), tone((450.0,), 0.7), np.zeros(8000 * 2)])
    assert detect(x)[0] is None
