"""The calls' audio analysis: the blocks completed in a turn of the event loop, together.

A call's sink (agent/siplines.py) hands each decoded RTP frame to
`BlockAnalysis.feed`, which only buffers it in the call's classifier
(`CallClassifier.take`). When a call completes a block (100 ms of audio, 40
ms near a decision), the call waits here, and the blocks of every call
waiting are analysed at once (`decide.analyse_many`) when the turn's last
callback has run, and each call is handed its decision:

- at once, if the callback that completed the block is the last one of its
  turn (nothing else waits in the loop's ready queue but our own batch): a
  quiet daemon's blocks, one at a time, as before batches, and a busy
  turn's last block, with all the others of the turn;
- else by one callback, scheduled with `call_soon` at the first block of
  the turn, which runs first thing in the next turn, unless a last
  callback ran the batch before it.

The ready queue is asyncio's own (`BaseEventLoop._ready`, CPython's event
loop, the daemon's): read, never written. On a loop without it every batch
waits for the `call_soon`. Deferring every batch that way was measured
first: at 24 lines, where a batch holds 1.5 blocks on average, each one
then cost a turn of the loop more (a select() more), and the daemon's CPU a
call read higher than without batches in each of four alternated pairs
(9.5-10.8 against 8.6-9.6 ms; docs/daemon.md, "Twenty-first round").

Why: a block's analysis is mostly the fixed cost of its numpy calls
(classify/fingerprint.py), paid per call. Analysed together, the float
conversion, the FFT, the levels, the RMS, the tone labels and the sound
test are paid once for all the calls of a turn, the peak picking once per
buffer shape. The busier the daemon, the longer its turns and the more
calls share one: 1.5 blocks a batch at 24 lines, 3 at 100, 12-22 at 200.

The decisions are those of `CallClassifier.feed`, to the millisecond of
audio (`decided_ms`): block ends depend only on the audio, and frames that
arrive between a block's end and its analysis are analysed with it. What
moves is the wall-clock moment: a decision waits for the rest of the turn
in which its block completed (what the turn still had to do, not a timer).

A classifier that fails on its block (a bug of ours) is logged
(`analysis_failed`, with the traceback, the first time and then every
thousandth) and that block goes unanalysed; the other calls of the batch go
on (`analyse_many`'s `errors`). A failure in the part the calls share loses
the turn's blocks of all of them. Either way a call loses at most a
streaming decision, never its number: it goes on to its final response or
its limits, and the record carries the recording.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sipclient.logs import get_logger

if TYPE_CHECKING:
    from sipclient.classify.decide import CallClassifier
    from sipclient.classify.verdicts import Decision

log = get_logger(__name__)

Decided = Callable[["Decision"], None]
"""Told a call's decision, once its classifier has one."""


class BlockAnalysis:
    """The classifiers with a complete block, waiting for this turn's batch."""

    def __init__(self) -> None:
        self._waiting: dict[CallClassifier, Decided] = {}
        self._handle: asyncio.Handle | None = None
        self.batches = 0
        self.blocks = 0
        self.failures = 0
        self.largest = 0

    def feed(self, classifier: CallClassifier, pcm: Any, decided: Decided) -> None:
        """Buffer a call's audio; once it completes a block, analyse it this turn and,
        if that block decided, hand the decision to `decided`."""
        if not classifier.take(pcm) or classifier in self._waiting:
            return
        self._waiting[classifier] = decided
        loop = asyncio.get_running_loop()
        ready = getattr(loop, "_ready", None)  # the handles still to run (module docstring)
        if ready is not None and len(ready) == (self._handle is not None):
            self._run()  # the turn's last callback: nothing else can join this batch
        elif self._handle is None:
            self._handle = loop.call_soon(self._scheduled)

    def figures(self) -> dict[str, int]:
        """Batches run, blocks analysed in them, the largest batch, and failed batches
        (the daemon logs them at its stop: `audio_analysis`)."""
        return {
            "batches": self.batches,
            "blocks": self.blocks,
            "largest": self.largest,
            "failures": self.failures,
        }

    def _scheduled(self) -> None:
        self._handle = None
        self._run()

    def _run(self) -> None:
        from sipclient.classify.decide import analyse_many

        if self._handle is not None:
            self._handle.cancel()  # run by the turn's last callback: the scheduled one is moot
            self._handle = None
        waiting, self._waiting = self._waiting, {}
        if not waiting:
            return
        self.batches += 1
        self.blocks += len(waiting)
        self.largest = max(self.largest, len(waiting))
        errors: list[Exception] = []
        try:
            decisions = analyse_many(list(waiting), errors)
        except Exception as shared:  # in the part all the calls share: the turn's blocks
            decisions = [None] * len(waiting)
            errors.append(shared)
        for error in errors:
            self.failures += 1
            if self.failures % 1000 == 1:
                log.error(
                    "analysis_failed", calls=len(waiting), failures=self.failures, exc_info=error
                )
        for decided, d in zip(waiting.values(), decisions, strict=True):
            if d is None:
                continue
            try:
                decided(d)
            except Exception:
                log.exception("decided_failed")
