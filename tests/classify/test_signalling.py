"""The signalling table: SIP code + Q.850 cause + 180/183 -> verdict."""

from __future__ import annotations

import pytest

from sipclient.classify.signalling import CAUSES, conclusive, from_signalling
from sipclient.classify.verdicts import Signalling, Verdict

V = Verdict


@pytest.mark.parametrize(
    ("cause", "verdict", "transient"),
    [
        (1, V.EMPTY, False),
        (17, V.BUSY, False),
        (18, V.NO_ANSWER, False),
        (19, V.NO_ANSWER, False),
        (20, V.POWERED_OFF, False),
        (21, V.REJECTED, False),
        (22, V.CHANGED, False),
        (27, V.UNREACHABLE, False),
        (38, V.FAILED, True),  # PROTOCOL.md lists it with the transient failures
        (28, V.EMPTY, False),
        (34, V.FAILED, True),
        (41, V.FAILED, True),
        (42, V.FAILED, True),
        (47, V.FAILED, True),
        (102, V.FAILED, True),
    ],
)
def test_q850_causes(cause: int, verdict: Verdict, transient: bool) -> None:
    d = from_signalling(Signalling(sip_code=480, q850_cause=cause))
    assert (d.verdict, d.transient) == (verdict, transient)
    assert d.evidence["rule"] == f"q850:{cause}"
    assert d.decided_ms is None


@pytest.mark.parametrize(
    ("code", "ringing", "verdict"),
    [
        (404, False, V.EMPTY),
        (604, False, V.EMPTY),
        (484, False, V.EMPTY),
        (486, False, V.BUSY),
        (600, False, V.BUSY),
        (603, True, V.REJECTED),
        (410, False, V.CHANGED),
        (403, False, V.RESTRICTED),
        (503, False, V.FAILED),
        (500, False, V.FAILED),
        (408, False, V.FAILED),
        (408, True, V.NO_ANSWER),
        (480, False, V.UNREACHABLE),
        (480, True, V.NO_ANSWER),
        (200, True, V.ANSWERED),
        (699, False, V.REJECTED),
        (499, False, V.FAILED),
    ],
)
def test_sip_codes(code: int, ringing: bool, verdict: Verdict) -> None:
    assert from_signalling(Signalling(sip_code=code, ringing=ringing)).verdict == verdict


def test_503_is_transient_and_404_is_not() -> None:
    assert from_signalling(Signalling(sip_code=503)).transient
    assert not from_signalling(Signalling(sip_code=404)).transient


def test_no_response_is_transient_unless_it_rang() -> None:
    # a 408 (a proxy's timer, or ours after Timer B) says nothing of the number
    assert from_signalling(Signalling(sip_code=408)).transient
    assert not from_signalling(Signalling(sip_code=408, ringing=True)).transient


def test_cause_outranks_code() -> None:
    d = from_signalling(Signalling(sip_code=503, q850_cause=1))
    assert d.verdict == V.EMPTY


def test_normal_clearing_cause_says_nothing() -> None:
    assert 16 not in CAUSES
    assert from_signalling(Signalling(sip_code=404, q850_cause=16)).verdict == V.EMPTY


def test_487_after_our_cancel() -> None:
    rang = Signalling(sip_code=487, ringing=True, cancelled_by_us=True)
    assert from_signalling(rang).verdict == V.RINGING
    silent = Signalling(sip_code=487, early_media=True, cancelled_by_us=True)
    assert from_signalling(silent).verdict == V.UNKNOWN
    assert conclusive(silent) is None


def test_nothing_is_unknown_with_low_confidence() -> None:
    d = from_signalling(Signalling())
    assert d.verdict == V.UNKNOWN
    assert d.confidence < 0.5
    assert d.evidence["kind"] == "signalling"


def test_conclusive_for_183_with_reason() -> None:
    assert conclusive(Signalling(early_media=True)) is None
    assert conclusive(Signalling(ringing=True)) is None
    d = conclusive(Signalling(early_media=True, q850_cause=1))
    assert d is not None and d.verdict == V.EMPTY
    d = conclusive(Signalling(sip_code=486))
    assert d is not None and d.verdict == V.BUSY
    assert conclusive(Signalling(early_media=True, q850_cause=16)) is None


@pytest.mark.parametrize(
    ("code", "cause"),
    [(486, None), (600, None), (486, 17), (480, 17), (None, 17)],
)
def test_user_busy_after_ringing_is_rejected(code: int | None, cause: int | None) -> None:
    d = from_signalling(Signalling(sip_code=code, q850_cause=cause, ringing=True))
    assert d.verdict == V.REJECTED
    assert d.evidence["rule"] == "busy-after-180"
    # without a 180 the same response is plain busy
    assert from_signalling(Signalling(sip_code=code, q850_cause=cause)).verdict == V.BUSY


def test_ring_timeout_cancel_after_180_is_no_answer() -> None:
    timeout = Signalling(
        sip_code=487, ringing=True, cancelled_by_us=True, cancel_reason="ring_timeout"
    )
    d = from_signalling(timeout)
    assert d.verdict == V.NO_ANSWER
    assert d.evidence["rule"] == "ring-timeout-after-180"
    for reason in ("verdict", "shutdown", ""):
        sig = Signalling(sip_code=487, ringing=True, cancelled_by_us=True, cancel_reason=reason)
        assert from_signalling(sig).verdict == V.RINGING
    # no 180: the audio has to say what it was, whatever ended the call
    quiet = Signalling(
        sip_code=487, early_media=True, cancelled_by_us=True, cancel_reason="ring_timeout"
    )
    assert from_signalling(quiet).verdict == V.UNKNOWN


def test_signalling_cancel_reason_defaults_empty() -> None:
    assert Signalling().cancel_reason == ""
