"""How full a folder's file system is, said once per check in the log.

The server's recordings and a box's spool both end in a full disk if nobody
looks: the server then fails every upload, a daemon stops dialling (it keeps
what it could not spool). Both warn below LOW_FREE_SHARE free, at every
housekeeping pass, before that happens.
"""

from __future__ import annotations

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
