"""The daemon's garbage-collector settings, and the pauses it measures.

Every call leaves its SIP objects alive for a while after it ends: the INVITE
client transaction absorbs retransmitted finals for Timer D (32 s over UDP),
and keeps its session, requests and responses meanwhile. At 200 lines that is
a quarter of a million objects at any time, which CPython's collector, at its
default thresholds (700, 10, 10), scanned in full eight times in a 15 s
`bench/e2e.py --lines 200 --per-line 10` run: 190 ms each, the event loop
stopped meanwhile (RTP queued, hang-ups late), and ~1.4 s of the run in
collections.

`HeapPolicy.install` does two things once the process has started (modules,
config, template library and SIP sockets in place):

- `gc.freeze()`: what exists then lives as long as the process, and no later
  collection scans it again;
- `gc.set_threshold(*THRESHOLDS)`: a young generation of 5,000 objects, not
  700. Fewer objects that die within a call's life are promoted, so the
  full collections come rarer and find less to scan.

Measured in the same bench, alternated with the defaults (2 runs each): time
in collections 1.41 and 1.47 s -> 0.56 and 0.55 s; the longest pause 187 and
195 ms -> 28 and 37 ms; full collections 8 -> 2. Thresholds of 2,000 kept
the 200 ms full collections; 10,000 and 20,000 made a middle-generation
collection of 90-160 ms. The CPU a call did not change beyond the bench's
spread: the gain is the pauses. The extra young objects awaiting a collection
are a few MB at most.

The pauses are measured all along (`gc.callbacks`) and logged at the stop
(`gc_pauses`: collections, time and longest pause per generation), which is
where `bench/e2e.py` reads them.
"""

from __future__ import annotations

import gc
import time
from typing import Any

THRESHOLDS = (5000, 10, 10)
"""gc.set_threshold for the daemon's process (module docstring)."""


class HeapPolicy:
    """The collector's settings for the daemon's process, and its pause figures."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]
        self._started = 0.0
        self._saved: tuple[int, int, int] | None = None

    def install(self) -> None:
        """Freeze what exists, set THRESHOLDS and start measuring (once)."""
        if self._saved is not None:
            return
        self._saved = gc.get_threshold()
        gc.collect()  # cyclic garbage of the start is not frozen for good
        gc.freeze()
        gc.set_threshold(*THRESHOLDS)
        gc.callbacks.append(self._measure)

    def remove(self) -> None:
        """Put the collector back as `install` found it (tests run daemons in-process)."""
        if self._saved is None:
            return
        if self._measure in gc.callbacks:
            gc.callbacks.remove(self._measure)
        gc.set_threshold(*self._saved)
        gc.unfreeze()
        self._saved = None

    def figures(self) -> dict[str, Any]:
        """Per generation (young, middle, old): collections, ms in them, the longest."""
        return {
            "collections": list(self.collections),
            "ms": [round(s * 1000, 1) for s in self.seconds],
            "longest_ms": [round(s * 1000, 1) for s in self.longest],
        }

    def _measure(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        g = int(info.get("generation", 0))
        if 0 <= g < 3:
            self.collections[g] += 1
            self.seconds[g] += took
            self.longest[g] = max(self.longest[g], took)
