"""agent/analysis.py: the calls' audio blocks, analysed together once per loop turn."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from sipclient.agent.analysis import BlockAnalysis
from sipclient.classify.decide import CallClassifier
from sipclient.classify.templates import TemplateLibrary
from sipclient.classify.verdicts import Decision, Signalling, Verdict
from tests.classify.conftest import cadence, to_int16

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


async def in_one_turn(*callbacks: Callable[[], None]) -> None:
    """Run the callbacks in one turn of the loop, as the RTP sockets found readable by
    one select() are: nothing else queued with them (this task waits on a future the
    last one sets)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def last() -> None:
        callbacks[-1]()
        done.set_result(None)

    for cb in callbacks[:-1]:
        loop.call_soon(cb)
    loop.call_soon(last)
    await done


def packets(
    analysis: BlockAnalysis,
    c: CallClassifier,
    pcm: np.ndarray[Any, np.dtype[np.int16]],
    decided: Callable[[Decision | None], None],
) -> Callable[[], None]:
    """A callback feeding all of `pcm` in 20 ms packets (one socket's burst)."""

    def feed() -> None:
        for i in range(0, len(pcm), PACKET):
            analysis.feed(c, pcm[i : i + PACKET], decided)

    return feed


async def test_calls_completing_a_block_in_one_turn_are_analysed_in_one_batch() -> None:
    analysis = BlockAnalysis()
    pcms = [busy(lead) for lead in (0, 3, 7)]
    cs = [classifier() for _ in pcms]
    got: dict[int, list[Decision | None]] = {j: [] for j in range(len(cs))}
    block = 5 * PACKET
    # one turn: 100 ms of each call (a block each), then the turn's end
    await in_one_turn(
        *(packets(analysis, c, pcms[j][:block], got[j].append) for j, c in enumerate(cs))
    )
    assert (analysis.batches, analysis.blocks, analysis.largest) == (1, 3, 3)
    # then a packet of each call a turn, to the end: each call's decision is the one
    # `feed` alone gives, to the millisecond of audio, and it is handed over once
    at = block
    while at < max(len(p) for p in pcms):
        await in_one_turn(
            *(
                packets(analysis, c, pcms[j][at : at + PACKET], got[j].append)
                for j, c in enumerate(cs)
            )
        )
        at += PACKET
    for j, pcm in enumerate(pcms):
        want = alone(pcm)
        assert want is not None and want.verdict == Verdict.BUSY
        assert got[j] == [want]
    assert analysis.largest == 3 and analysis.failures == 0
    assert len({d.decided_ms for ds in got.values() for d in ds if d}) == 3


async def test_a_block_completed_by_the_last_callback_of_a_turn_is_analysed_at_once() -> None:
    """A quiet daemon: one socket readable, nothing else queued. Its block is analysed
    within the callback (no extra turn of the loop), as before batches."""
    analysis = BlockAnalysis()
    c = classifier()
    seen: list[int] = []

    def one_socket() -> None:
        packets(analysis, c, busy(0)[: 5 * PACKET], lambda _d: None)()
        seen.append(analysis.batches)

    await in_one_turn(one_socket)
    assert seen == [1]


async def test_a_call_finished_before_its_turn_is_left_to_finish() -> None:
    """The call ended (its final response) in the turn its blocks completed, before
    the batch ran, or its receiver delivered frames after `finish`: `finish` has the
    last word."""
    analysis = BlockAnalysis()
    c = classifier()
    pcm = busy(0)
    got: list[Decision | None] = []
    half = 25 * PACKET  # 0.5 s: no decision yet
    final: list[Decision] = []
    await in_one_turn(
        packets(analysis, c, pcm[:half], got.append),
        lambda: final.append(c.finish(Signalling(sip_code=486, early_media=True))),
    )
    await asyncio.sleep(0)  # the batch the first callback scheduled
    await in_one_turn(packets(analysis, c, pcm[half:], got.append))  # late frames
    assert analysis.batches >= 1 and got == [] and c.decision is None
    assert final[0].verdict == Verdict.BUSY and final[0].evidence["kind"] == "signalling"
    assert c.finish(Signalling()) is final[0]


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
    block = 5 * PACKET
    await in_one_turn(
        packets(analysis, bad, pcm[:block], lambda _d: None),
        packets(analysis, good, pcm[:block], got.append),
    )
    assert analysis.failures == 1  # caught, counted, logged with its traceback
    logged = capsys.readouterr().out
    assert "analysis_failed" in logged and "a bug in the classifier" in logged
    # the other call of the batch went on: to the decision `feed` alone gives
    for at in range(block, len(pcm), PACKET):
        await in_one_turn(
            packets(analysis, bad, pcm[at : at + PACKET], lambda _d: None),
            packets(analysis, good, pcm[at : at + PACKET], got.append),
        )
    assert got == [alone(pcm)]
    assert analysis.failures > 1  # the broken one failed every block
