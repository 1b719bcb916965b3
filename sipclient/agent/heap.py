"""Give the C heap's free pages back to the system now and then (glibc's `malloc_trim`).

Measured in session 11 (`bench/e2e.py --lines 24 --per-line 4150`, ~100,000
calls in 80 minutes): the daemon's RSS grew ~0.2 kB a call, in steps, and did
not level off. All of it was in the main arena's `[heap]` (from
/proc/PID/smaps: 45 MB and growing, while Python's own 1 MiB arenas stayed at
30 MB and the worker threads' arenas did not move), and `tracemalloc` had
found no Python allocation growing. `malloc_trim(0)` called into the running
daemon (gdb) gave 13.8 MB back at once (RSS 175.4 -> 161.6 MB, `[heap]` 47.0
-> 34.1 MB): memory glibc held free inside the heap, below chunks still in
use, which it returns on its own only from the heap's top. Not a leak, but
left alone ~15 MB an hour at 24 lines, ~0.4 GB a day.

So the daemon calls it every TRIM_EVERY_S (`run_heap_trim`), in a worker
thread (it walks the arenas: a few milliseconds for tens of MB). Elsewhere
than glibc (musl) there is no `malloc_trim`: nothing is done.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import time
from collections.abc import Callable

from sipclient.logs import get_logger

log = get_logger(__name__)

TRIM_EVERY_S = 600.0
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


_TRIM = _malloc_trim()


def rss_kb() -> int:
    """This process's resident set, kB (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE_KB
    except (OSError, ValueError, IndexError):
        return 0


def trim() -> bool:
    """`malloc_trim(0)`: True when glibc gave memory back; False when it had none to
    give or is not there."""
    return bool(_TRIM(0)) if _TRIM is not None else False


async def run_heap_trim(every: float = TRIM_EVERY_S) -> None:
    """Trim every `every` seconds, for the life of the daemon; never raises (logged)."""
    if _TRIM is None:
        log.info("heap_trim_unavailable", reason="no glibc malloc_trim")
        return
    while True:
        await asyncio.sleep(every)
        try:
            before, t0 = rss_kb(), time.perf_counter()
            await asyncio.to_thread(trim)
            log.info(
                "heap_trimmed",
                rss_before_kb=before,
                rss_after_kb=rss_kb(),
                ms=round((time.perf_counter() - t0) * 1000, 1),
            )
        except Exception as exc:  # never ends the loop: nothing would restart it
            log.error("heap_trim_failed", error=f"{type(exc).__name__}: {exc}")
