"""agent/analysis.py: the calls' audio blocks, analysed together once per loop turn."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from sipclient.agent.analysis import BlockAnalysis
from sipclient.classify.decide import CallClassifier
from sipclient.classify.templates import TemplateLibrary
from sipclient.classify.verdicts import Decision, Signalling, Verdict
from tests.classify.conftest import cadence, to_int16, tone

EARLY = Signalling(early_media=True)
PACKET = 160


def busy(lead_packets: int) -> np.ndarray[Any, np.dtype[np.int16]]:
    """Chinese busy tone after some silence (which moves where its decision falls)."""
    quiet = np.zeros(lead_packets * PACKET)
    return to_int16(np.concatenate([quiet, cadence((450.0,), [(0.35, 0.35)], 2.5)]))


def classifier() -> CallClassifier:
    c = CallClassifier(TemplateLibrary.empty())
    c.on_signalling(EARLY, 0)
    return c


def alone(pcm: np.ndarray[Any, np.dtype[np.int16]]) -> Decision | None:
    c = classifier()
    for i in range(0, len(pcm), PACKET):
        d = c.feed(pcm[i : i + PACKET])
        if d is not None:
            return d
    return None


async def test_calls_completing_a_block_in_one_turn_are_analysed_in_one_batch() -> None:
    analysis = BlockAnalysis()
    pcms = [busy(lead) for lead in (0, 3, 7)]
    cs = [classifier() for _ in pcms]
    got: dict[int, list[Decision | None]] = {j: [] for j in range(len(cs))}
    # one turn: five packets of each call, a 100 ms block each
    for i in range(5):
        for j, c in enumerate(cs):
            analysis.feed(c, pcms[j][i * PACKET : (i + 1) * PACKET], got[j].append)
    assert analysis.batches == 0  # nothing is analysed inside the turn that fed it
    await asyncio.sleep(0)
    assert (analysis.batches, analysis.blocks, analysis.largest) == (1, 3, 3)
    # then a packet of each call a turn, to the end: each call's decision is the one
    # `feed` alone gives, to the millisecond of audio, and it is handed over once
    at = 5 * PACKET
    while at < max(len(p) for p in pcms):
        for j, c in enumerate(cs):
            analysis.feed(c, pcms[j][at : at + PACKET], got[j].append)
        at += PACKET
        await asyncio.sleep(0)
    for j, pcm in enumerate(pcms):
        want = alone(pcm)
        assert want is not None and want.verdict == Verdict.BUSY
        assert got[j] == [want]
    assert analysis.largest == 3 and analysis.failures == 0
    assert len({d.decided_ms for ds in got.values() for d in ds if d}) == 3


async def test_a_call_finished_before_its_turn_is_left_to_finish() -> None:
    """The call ended (its final response) in the turn its last blocks completed, or
    its receiver delivered frames after `finish`: `finish` has the last word."""
    analysis = BlockAnalysis()
    c = classifier()
    pcm = busy(0)
    got: list[Decision | None] = []
    half = 25 * PACKET  # 0.5 s: no decision yet
    for i in range(0, half, PACKET):
        analysis.feed(c, pcm[i : i + PACKET], got.append)
    final = c.finish(Signalling(sip_code=486, early_media=True))
    for i in range(half, len(pcm), PACKET):  # late frames
        analysis.feed(c, pcm[i : i + PACKET], got.append)
    await asyncio.sleep(0)
    assert analysis.batches == 1 and got == [] and c.decision is None
    assert final.verdict == Verdict.BUSY and final.evidence["kind"] == "signalling"
    assert c.finish(Signalling()) is final


async def test_a_failing_batch_is_logged_and_the_next_turns_go_on(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    analysis = BlockAnalysis()
    bad, good = classifier(), classifier()
    pcm = busy(0)

    def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("a bug in the classifier")

    monkeypatch.setattr(bad, "_frames_in", broken)
    monkeypatch.setattr(bad, "_analyse", broken)
    got: list[Decision | None] = []
    for i in range(5):
        analysis.feed(bad, pcm[i * PACKET : (i + 1) * PACKET], lambda _d: None)
        analysis.feed(good, pcm[i * PACKET : (i + 1) * PACKET], got.append)
    await asyncio.sleep(0)
    assert analysis.failures == 1  # caught, counted, logged with its traceback
    logged = capsys.readouterr().out
    assert "analysis_failed" in logged and "a bug in the classifier" in logged
    # the other call of the batch went on: to the decision `feed` alone gives
    for i in range(5, len(pcm) // PACKET):
        analysis.feed(bad, pcm[i * PACKET : (i + 1) * PACKET], lambda _d: None)
        analysis.feed(good, pcm[i * PACKET : (i + 1) * PACKET], got.append)
        await asyncio.sleep(0)
    assert got == [alone(pcm)]
    assert analysis.failures > 1  # the broken one failed every block, alone
