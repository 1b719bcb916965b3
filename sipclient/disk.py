"""How full a folder's file system is, said once per check in the log; whether two
folders share one (`same_file_system`).

The server's recordings and a box's spool both end in a full disk if nobody
looks: the server then fails every upload, a daemon stops dialling (it keeps
what it could not spool). Both warn below LOW_FREE_SHARE free, at every
housekeeping pass, before that happens.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sipclient.logs import get_logger

log = get_logger(__name__)

LOW_FREE_SHARE = 0.05


def warn_if_low(folder: Path, event: str, hint: str) -> bool:
    """Log `event` (a warning) when `folder`'s file system has under 5 % free; True then.

    Blocking (a statvfs): call it off the event loop. Raises OSError when the
    folder cannot be looked at.
    """
    usage = shutil.disk_usage(folder)
    if usage.free >= LOW_FREE_SHARE * usage.total:
        return False
    log.warning(
        event,
        folder=str(folder),
        free_mb=usage.free // 2**20,
        total_mb=usage.total // 2**20,
        hint=hint,
    )
    return True


def same_file_system(a: Path, b: Path) -> bool:
    """Whether `a` and `b` (or, for one not made yet, its nearest existing parent)
    are on one file system."""

    def device(p: Path) -> int | None:
        for q in (p, *p.absolute().parents):
            try:
                return os.stat(q).st_dev
            except OSError:
                continue
        return None

    da, db = device(a), device(b)
    return da is not None and da == db
