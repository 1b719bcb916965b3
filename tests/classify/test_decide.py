"""The streaming contract of CallClassifier and its agreement with the whole-file path."""

from __future__ import annotations

import numpy as np
import pytest

from sipclient.classify.decide import NEAR_FRAMES, CallClassifier, analyse_many, classify_pcm
from sipclient.classify.templates import TemplateLibrary
from sipclient.classify.tones import ToneHit
from sipclient.classify.verdicts import Decision, Signalling, Verdict
from tests.classify.conftest import PLANS, Pcm, cadence, degrade, detect, music, to_int16, tone

EARLY = Signalling(early_media=True)
RING = Signalling(ringing=True, early_media=True)
CANCELLED = Signalling(sip_code=487, early_media=True, cancelled_by_us=True)
CANCELLED_RING = Signalling(sip_code=487, ringing=True, early_media=True, cancelled_by_us=True)


def stream(
    x: Pcm, sig: Signalling, lib: TemplateLibrary, chunk: int = 160, final: Signalling | None = None
) -> tuple[Decision | None, Decision]:
    """Feed like the daemon; (first streaming decision, finish())."""
    c = CallClassifier(lib)
    c.on_signalling(sig, 0)
    first = None
    pcm = to_int16(x)
    for i in range(0, len(pcm), chunk):
        d = c.feed(pcm[i : i + chunk])
        if d is not None:
            first = d
            break
    return first, c.finish(final or sig)


def empty_lib() -> TemplateLibrary:
    return TemplateLibrary.empty()


@pytest.mark.parametrize("chunk", [160, 37, 1000, 8000])
@pytest.mark.parametrize("name", ["cn_busy", "cn_empty", "na_reorder"])
def test_streaming_equals_whole_file(name: str, chunk: int) -> None:
    freqs, cycle, seconds, verdict = PLANS[name]
    x = np.concatenate([np.zeros(3000), degrade(cadence(freqs, cycle, seconds), "all")])
    first, _ = stream(x, EARLY, empty_lib(), chunk=chunk, final=CANCELLED)
    whole = classify_pcm(to_int16(x), 8000, CANCELLED, empty_lib())
    assert first is not None
    assert first.verdict == whole.verdict == Verdict(verdict)
    assert first.decided_ms == whole.decided_ms


def test_no_verdict_before_its_evidence(
    library: TemplateLibrary, speech_dir: dict[str, Pcm]
) -> None:
    x = np.concatenate([np.zeros(16000), degrade(speech_dir["kong"], "noise")])
    first, _ = stream(x, EARLY, library, final=CANCELLED)
    assert first is not None and first.verdict == Verdict.EMPTY
    assert first.decided_ms is not None and first.decided_ms > 2000
    # the same audio cut just before that moment does not give the verdict
    cut = to_int16(x)[: (first.decided_ms - 100) * 8]
    c = CallClassifier(library)
    c.on_signalling(EARLY, 0)
    assert c.feed(cut) is None
    assert c.finish(CANCELLED).verdict == Verdict.UNKNOWN


def test_183_with_reason_decides_at_once() -> None:
    c = CallClassifier(empty_lib())
    assert c.on_signalling(Signalling(), 100) is None
    d = c.on_signalling(Signalling(early_media=True, q850_cause=20), 250)
    assert d is not None and d.verdict == Verdict.POWERED_OFF and d.decided_ms is None
    assert c.feed(to_int16(cadence((450.0,), [(0.35, 0.35)], 3.0))) is d


def test_183_without_rtp_does_not_hold_the_line() -> None:
    c = CallClassifier(empty_lib(), no_rtp_wait_ms=2000)
    assert c.on_signalling(EARLY, 500) is None
    assert c.tick(2000) is None
    d = c.tick(2600)
    assert d is not None and d.evidence["no_rtp_ms"] == 2100
    assert d.verdict == Verdict.UNKNOWN
    # 180 and no RTP: the network is ringing a live number
    c = CallClassifier(empty_lib(), no_rtp_wait_ms=2000)
    c.on_signalling(Signalling(ringing=True), 0)
    d = c.tick(2000)
    assert d is not None and d.verdict == Verdict.RINGING
    # audio arriving in time keeps the tick quiet
    c = CallClassifier(empty_lib(), no_rtp_wait_ms=2000)
    c.on_signalling(EARLY, 0)
    c.feed(np.zeros(160, dtype=np.int16))
    assert c.tick(5000) is None


@pytest.mark.parametrize("how", ["clean", "all"])
def test_colour_ringback_after_180_is_ringing(
    library: TemplateLibrary, speech_dir: dict[str, Pcm], how: str
) -> None:
    first, final = stream(degrade(music(12.0), how), RING, library, final=CANCELLED_RING)
    assert first is not None and first.verdict == Verdict.RINGING
    assert first.evidence["kind"] == "colour_ringback"
    assert final.verdict == Verdict.RINGING
    voice = np.concatenate([speech_dir["ad"], speech_dir["ad"]])
    ad = voice + 0.1 * music(len(voice) / 8000 + 1)[: len(voice)]
    first, _ = stream(degrade(ad, how), RING, library, final=CANCELLED_RING)
    assert first is not None and first.verdict == Verdict.RINGING


def test_ringback_with_180_is_ringing_within_a_second() -> None:
    first, final = stream(
        cadence((450.0,), [(1.0, 4.0)], 12.0), RING, empty_lib(), final=CANCELLED_RING
    )
    assert first is not None and first.verdict == Verdict.RINGING
    assert first.decided_ms is not None and first.decided_ms <= 1000
    assert final.verdict == Verdict.RINGING


def test_ringback_without_180_waits_then_commits() -> None:
    x = cadence((450.0,), [(1.0, 4.0)], 20.0)
    c = CallClassifier(empty_lib(), ringback_commit_ms=12000)
    c.on_signalling(EARLY, 0)
    pcm = to_int16(x)
    decided = None
    for i in range(0, len(pcm), 160):
        decided = c.feed(pcm[i : i + 160])
        if decided is not None:
            break
    assert decided is not None and decided.verdict == Verdict.RINGING
    assert decided.decided_ms is not None and decided.decided_ms >= 12000


def test_finish_reconciles_with_the_final_response() -> None:
    ring = cadence((450.0,), [(1.0, 4.0)], 3.0)
    # rang, then 480 after 180: nobody answered
    _, final = stream(ring, RING, empty_lib(), final=Signalling(sip_code=480, ringing=True))
    assert final.verdict == Verdict.NO_ANSWER
    # silence and a 404: signalling decides
    _, final = stream(
        np.zeros(16000), EARLY, empty_lib(), final=Signalling(sip_code=404, q850_cause=1)
    )
    assert final.verdict == Verdict.EMPTY
    # answered with nothing heard before
    _, final = stream(
        np.zeros(16000), EARLY, empty_lib(), final=Signalling(sip_code=200, answered=True)
    )
    assert final.verdict == Verdict.ANSWERED
    # answered to play a busy tone: the tone is the truth
    busy = cadence((450.0,), [(0.35, 0.35)], 3.0)
    _, final = stream(busy, EARLY, empty_lib(), final=Signalling(sip_code=200, answered=True))
    assert final.verdict == Verdict.BUSY
    # 183, ringback, then nothing more, and we cancelled: a live number
    _, final = stream(cadence((450.0,), [(1.0, 4.0)], 8.0), EARLY, empty_lib(), final=CANCELLED)
    assert final.verdict == Verdict.RINGING


ANSWERED = Signalling(sip_code=200, answered=True)


def test_a_2xx_without_180_is_listened_to_for_answer_listen_ms(
    library: TemplateLibrary, speech_dir: dict[str, Pcm]
) -> None:
    """假应答: the carrier answers an unringing number and plays its announcement."""
    c = CallClassifier(library, answer_listen_ms=4000)
    assert c.on_signalling(Signalling(), 50) is None
    assert c.on_signalling(ANSWERED, 300) is None  # not `answered` yet
    assert c.answer_at == 300
    assert c.tick(4299) is None
    pcm = to_int16(speech_dir["kong"])
    first = None
    for i in range(0, len(pcm), 160):
        first = c.feed(pcm[i : i + 160])
        if first is not None:
            break
    assert first is not None and first.verdict == Verdict.EMPTY
    assert c.tick(4300) is first  # decided: the window's end changes nothing
    final = c.finish(ANSWERED)
    assert final.verdict == Verdict.EMPTY and final.evidence["fake_answer"] is True


def test_a_2xx_without_180_and_nothing_said_is_answered_when_the_window_ends() -> None:
    c = CallClassifier(empty_lib(), answer_listen_ms=4000)
    c.on_signalling(ANSWERED, 300)
    c.feed(to_int16(0.01 * music(2.0)))  # a callee's room: no tone, no announcement
    assert c.tick(4000) is None
    d = c.tick(4300)
    assert d is not None and d.verdict == Verdict.ANSWERED
    assert d.evidence["listened_ms"] == 4000 and d.decided_ms == 2000
    assert c.finish(ANSWERED).verdict == Verdict.ANSWERED


def test_a_2xx_after_a_180_or_without_answer_listen_ms_is_answered_at_once() -> None:
    c = CallClassifier(empty_lib(), answer_listen_ms=4000)
    c.on_signalling(Signalling(ringing=True), 100)
    d = c.on_signalling(Signalling(sip_code=200, answered=True, ringing=True), 900)
    assert d is not None and d.verdict == Verdict.ANSWERED and c.answer_at is None
    d = CallClassifier(empty_lib()).on_signalling(ANSWERED, 300)
    assert d is not None and d.verdict == Verdict.ANSWERED


def test_finish_is_stable_and_never_raises_on_odd_input() -> None:
    c = CallClassifier(empty_lib())
    assert c.feed(np.zeros(0, dtype=np.int16)) is None
    assert c.feed(np.full(8000, 32767, dtype=np.int16)) is None  # clipped DC
    d = c.finish(Signalling())
    assert d.verdict == Verdict.UNKNOWN
    assert c.finish(Signalling(sip_code=404)) is d


def test_classify_pcm_resamples() -> None:
    x = cadence((450.0,), [(0.35, 0.35)], 4.0)
    from scipy.signal import resample_poly

    x16 = resample_poly(x, 2, 1)
    d = classify_pcm(x16, 16000, CANCELLED, empty_lib())
    assert d.verdict == Verdict.BUSY


@pytest.mark.parametrize("chunk", [160, 37, 1000, 8000])
def test_announcements_streaming_equals_whole_file(
    chunk: int, library: TemplateLibrary, speech_dir: dict[str, Pcm]
) -> None:
    # finer blocks near a decision: where they end depends on the audio, not on the chunks
    x = np.concatenate([np.zeros(5000), degrade(speech_dir["kong"], "all")])
    first, _ = stream(x, EARLY, library, chunk=chunk, final=CANCELLED)
    whole = classify_pcm(to_int16(x), 8000, CANCELLED, library)
    assert first is not None and first.verdict == whole.verdict == Verdict.EMPTY
    assert first.decided_ms == whole.decided_ms


def first_tone_hit(x: Pcm) -> ToneHit:
    """Where the cadence detector alone, fed frame by frame, is first sure."""
    hit, _ = detect(x)
    assert hit is not None, "no cadence recognised"
    return hit


@pytest.mark.parametrize("lead_frames", range(5))
def test_a_tone_decision_is_not_held_up_by_the_100_ms_block(lead_frames: int) -> None:
    # the cadence detector is sure at the end of some frame; the classifier says so
    # within NEAR_FRAMES of it, wherever that frame falls in the 100 ms grid
    x = np.concatenate([np.zeros(160 * lead_frames + 80), cadence((450.0,), [(0.35, 0.35)], 3.0)])
    hit = first_tone_hit(x)
    first, _ = stream(x, EARLY, empty_lib(), final=CANCELLED)
    assert first is not None and first.verdict == Verdict.BUSY
    sure_ms = (hit.frame + 1) * 20
    assert first.decided_ms is not None
    assert sure_ms <= first.decided_ms <= sure_ms + (NEAR_FRAMES - 1) * 20


@pytest.mark.parametrize("lead_frames", range(5))
@pytest.mark.parametrize("chunk", [160, 1000, 8000])
def test_a_decision_reached_in_the_last_frame_of_a_call_stands(
    chunk: int, lead_frames: int
) -> None:
    # one North American busy burst is sure 200 ms into its pause; the audio ends
    # with that frame, which may fall before the end of the block it was reached in
    x = np.concatenate([np.zeros(4000 + 160 * lead_frames), tone((480.0, 620.0), 0.5)])
    x = np.concatenate([x, np.zeros(8000)])
    hit = first_tone_hit(x)
    pcm = to_int16(x)[: (hit.frame + 1) * 160]
    c = CallClassifier(empty_lib())
    c.on_signalling(EARLY, 0)
    for i in range(0, len(pcm), chunk):
        c.feed(pcm[i : i + chunk])
    final = c.finish(CANCELLED)
    assert final.verdict == Verdict.BUSY and final.evidence.get("tone") == "na_busy"
    assert final.decided_ms == len(pcm) // 8


def test_calls_analysed_together_decide_as_each_fed_alone(
    library: TemplateLibrary, speech_dir: dict[str, Pcm]
) -> None:
    """The daemon analyses the blocks of every call that completed one in a loop turn
    together (`take` per RTP packet, then `analyse_many`, agent/analysis.py), and
    packets arrive between a block's end and its turn: each call's decision, its
    `decided_ms` and `finish` are what `feed` alone gives, whoever shares the batch."""
    lead = np.zeros(4000)
    calls: dict[str, tuple[Pcm, Signalling]] = {
        "kong": (np.concatenate([lead, degrade(speech_dir["kong"], "all")]), EARLY),
        "guanji": (np.concatenate([lead[:900], degrade(speech_dir["guanji"], "noise")]), EARLY),
        "busy_en": (degrade(speech_dir["busy_en"], "g711"), EARLY),
        "unknown": (speech_dir["unknown"], EARLY),
        "crbt": (np.concatenate([lead, degrade(music(5.0), "all")]), RING),
        "busy": (degrade(cadence((450.0,), [(0.35, 0.35)], 3.0), "all"), EARLY),
        "ringback": (cadence((450.0,), [(1.0, 4.0)], 6.0), RING),
        "silence": (np.zeros(16000), RING),
    }
    names = sorted(calls)
    alone = {n: stream(calls[n][0], calls[n][1], library, final=CANCELLED) for n in names}
    together = {n: CallClassifier(library) for n in names}
    for n in names:
        together[n].on_signalling(calls[n][1], 0)
    pcms = {n: to_int16(calls[n][0]) for n in names}
    first: dict[str, Decision | None] = dict.fromkeys(names)
    waiting: list[CallClassifier] = []
    rng = np.random.default_rng(3)
    sizes: list[int] = []
    at = 0
    while at < max(len(p) for p in pcms.values()) or waiting:
        for n in names:
            c = together[n]
            taken = first[n] is None and at < len(pcms[n]) and c.take(pcms[n][at : at + 160])
            if taken and c not in waiting:
                waiting.append(c)
        at += 160
        if waiting and (rng.random() < 0.4 or at >= max(len(p) for p in pcms.values())):
            sizes.append(len(waiting))
            for c, d in zip(waiting, analyse_many(waiting), strict=True):
                n = next(k for k, v in together.items() if v is c)
                first[n] = first[n] or d
            waiting = []
    assert max(sizes) >= 4
    for n in names:
        assert first[n] == alone[n][0], n
        assert together[n].finish(CANCELLED) == alone[n][1], n
    verdicts = {n: alone[n][0].verdict for n in names if alone[n][0] is not None}
    assert verdicts["kong"] == Verdict.EMPTY and verdicts["busy"] == Verdict.BUSY
    assert len(set(verdicts.values())) >= 4
