"""Uploaded recordings older than `recordings.keep_days` are deleted, a day at a time.

`dial_wav` keeps every upload under `recordings.dir/YYYYMMDD/` (the server's
local date). A call's WAV is ~16 kB a second of early media: fifty boxes of
24 lines at the demo's mix upload ~50 GB an hour, and a full disk makes
every upload fail (the daemons then hold them in their spools, nothing is
lost, but nothing is decided either). So, hourly and at start, the day
folders older than `keep_days` days before today are removed whole; the
verdicts, their `detail` and the `recordings` rows stay in the database (the
path then names a file that is gone). `keep_days` 0, the default, keeps
everything, as before. Each pass also warns when the folder's file system
has less than 5 % free (`recordings_disk_low`), whatever `keep_days` says.
"""

from __future__ import annotations

import asyncio
import datetime
import shutil
from collections.abc import Callable
from pathlib import Path

from sipclient.disk import warn_if_low
from sipclient.logs import get_logger

log = get_logger(__name__)

PRUNE_EVERY_S = 3600.0


def expired_folders(root: Path, now: float, keep_days: int) -> list[Path]:
    """The day folders under `root` wholly older than `keep_days` days before `now`'s day.

    Only folders named as `dial_wav` names them (8 digits, a real date) count:
    anything else an operator put there is left alone.
    """
    if keep_days <= 0 or not root.is_dir():
        return []
    cutoff = datetime.date.fromtimestamp(now) - datetime.timedelta(days=keep_days)
    out = []
    for child in root.iterdir():
        if not (child.is_dir() and len(child.name) == 8 and child.name.isdigit()):
            continue
        try:
            day = datetime.datetime.strptime(child.name, "%Y%m%d").date()
        except ValueError:
            continue
        if day < cutoff:
            out.append(child)
    return sorted(out)


def prune(root: Path, now: float, keep_days: int) -> list[tuple[str, int]]:
    """Remove the expired day folders (blocking: run it off the loop); (name, WAVs) each."""
    removed = []
    for folder in expired_folders(root, now, keep_days):
        count = sum(1 for _ in folder.glob("*.wav"))
        shutil.rmtree(folder)
        removed.append((folder.name, count))
    return removed


async def run_pruner(root: Path, keep_days: int, clock: Callable[[], float]) -> None:
    """Prune now and every PRUNE_EVERY_S; never raises (a failed pass is logged)."""
    while True:
        try:
            for name, count in await asyncio.to_thread(prune, root, clock(), keep_days):
                log.info("recordings_pruned", folder=name, files=count, keep_days=keep_days)
            await asyncio.to_thread(
                warn_if_low,
                root,
                "recordings_disk_low",
                "set recordings.keep_days, or give the recordings more disk",
            )
        except Exception as exc:  # never ends the loop: nothing would restart it
            log.error(
                "recordings_prune_failed", folder=str(root), error=f"{type(exc).__name__}: {exc}"
            )
        await asyncio.sleep(PRUNE_EVERY_S)
