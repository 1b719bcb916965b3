"""The daemon's garbage-collector settings, and the pauses it measures.

Until session 16 every call outlived its end in reference cycles (its hooks
held the call, `_dial`'s `tick` held itself, the INVITE transaction and its
session each other), so its classifier, recorder, receiver and SIP objects
were freed only when a collection found them, and CPython's full collections
scanned a heap that grew by every call meanwhile. `bench/e2e.py --lines 200
--per-line 40` (8,000 calls, ~60 s): 27 full collections, 8.1 s in
collections in all, pauses up to 360 ms with the event loop stopped (RTP
queued, hang-ups late). Those cycles are broken now (InviteSession.close,
Call._finish, `_dial`), and a call is freed by reference counting when it
ends.

What was left then lived on by design: each INVITE transaction absorbed
retransmitted finals for Timer D (32 s over UDP). Objects that live that
long reach the old generation, and at the default thresholds (700, 10, 10)
that still made 23 full collections, ~3.7 s of CPU in them and pauses up to
280 ms in the same run. (Since session 17 the endpoint keeps a light record
for Timer D and its timer entries hold no session: the same run makes no
full collection, docs/daemon.md, "Seventeenth round".) `HeapPolicy.install`,
once the process has started (modules, config, template library and SIP
sockets in place):

- `gc.freeze()`: what exists then lives as long as the process, and no later
  collection scans it again;
- `gc.set_threshold(*THRESHOLDS)`: a young generation of 5,000 objects, not
  700: fewer short-lived objects are promoted, and full collections come
  rarely.

Same run, the cycles broken, thresholds alternated: (700, 10, 10) 23 full
collections, 5.2 s of CPU in collections, longest pause 280 ms; THRESHOLDS 1
full collection, 1.65 s, longest 221 ms (RSS 234 and 237 MB after 8,000
calls; 262 MB before the cycles were broken). At 100 lines (4,000 calls,
twice each): 1.26 and 1.0 s against 0.46 and 0.48 s, longest pauses 166 and
114 ms (full collections) against 89 and 80 ms (young ones). Between the
two thresholds the CPU a call moved less than the bench's spread (~0.3 ms).
Thresholds of 2,000 kept 200 ms full collections every few seconds; 10,000
and 20,000 made middle-generation collections of 90-160 ms.

The collections are measured all along (`gc.callbacks`: the main thread's
CPU in them, and each one's length) and logged at the stop (`gc_pauses`),
which is where `bench/e2e.py` reads them.
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
        """CPU seconds of the collecting thread in each generation's collections."""
        self.longest = [0.0, 0.0, 0.0]
        """The longest collection of each generation, in wall seconds (the pause)."""
        self._started = (0.0, 0.0)
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
        """Per generation (young, middle, old): collections, CPU ms in them, the
        longest pause."""
        return {
            "collections": list(self.collections),
            "ms": [round(s * 1000, 1) for s in self.seconds],
            "longest_ms": [round(s * 1000, 1) for s in self.longest],
        }

    def _measure(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = (time.thread_time(), time.perf_counter())
            return
        cpu = time.thread_time() - self._started[0]
        wall = time.perf_counter() - self._started[1]
        g = int(info.get("generation", 0))
        if 0 <= g < 3:
            self.collections[g] += 1
            self.seconds[g] += cpu
            self.longest[g] = max(self.longest[g], wall)
