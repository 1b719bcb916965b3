"""The box's disk: kept recordings pruned by age, and a warning before it is full.

With `recordings.keep: true` every call's WAV stays in `recordings.dir` after
its upload (``<extension>-<phone>-<ns>.wav``): ~16 kB a second of early
media, a few GB a day per 24 lines, until the disk is full and the spool can
no longer be written (the daemon then stops dialling, agent/keeping.py).
`recordings.keep_days` (default 0: keep all) deletes the WAVs older than that
many days (by modification time: the call's end), at start and hourly. Each
pass also warns `disk_low` when the spool's file system has under 5 % free,
whatever `keep` says: the spool is what a full disk stops.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from sipclient.disk import warn_if_low
from sipclient.logs import get_logger

log = get_logger(__name__)

EVERY_S = 3600.0
DAY_S = 86400.0


def expired_recordings(folder: Path, now: float, keep_days: int) -> list[Path]:
    """The WAVs directly in `folder` last written more than `keep_days` days before `now`."""
    if keep_days <= 0 or not folder.is_dir():
        return []
    cutoff = now - keep_days * DAY_S
    out = []
    for wav in folder.glob("*.wav"):
        try:
            if wav.stat().st_mtime < cutoff:
                out.append(wav)
        except FileNotFoundError:
            continue  # removed meanwhile
    return sorted(out)


def prune_recordings(folder: Path, now: float, keep_days: int) -> int:
    """Delete the expired WAVs (blocking: run it off the loop); how many went."""
    gone = 0
    for wav in expired_recordings(folder, now, keep_days):
        wav.unlink(missing_ok=True)
        gone += 1
    return gone


async def run_housekeeping(
    recordings: Path,
    keep_days: int,
    spool: Path,
    clock: Callable[[], float] = time.time,
    every: float = EVERY_S,
) -> None:
    """Prune and look at the disk now and every `every` s; never raises (logged)."""
    while True:
        try:
            gone = await asyncio.to_thread(prune_recordings, recordings, clock(), keep_days)
            if gone:
                log.info("recordings_pruned", files=gone, keep_days=keep_days)
            await asyncio.to_thread(
                warn_if_low,
                spool,
                "disk_low",
                "a full disk stops the spool and with it all dialling: free space, "
                "or set recordings.keep_days",
            )
        except Exception as exc:  # never ends the loop: nothing would restart it
            log.error("housekeeping_failed", error=f"{type(exc).__name__}: {exc}")
        await asyncio.sleep(every)
