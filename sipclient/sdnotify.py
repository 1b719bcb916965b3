"""systemd's notify protocol (sd_notify(3)) in a few lines: READY, STATUS, WATCHDOG, STOPPING.

Every function is a no-op answering False when NOTIFY_SOCKET is unset (not
run by systemd, or a unit without Type=notify), so callers need not check.
"""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Send one datagram of `state` lines ("READY=1", "STATUS=..."); True if sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError:
        # systemd gone or the socket not ours: notification is best effort.
        return False
    return True


def ready(status: str | None = None) -> bool:
    """Startup finished (Type=notify units become active)."""
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def status(text: str) -> bool:
    """A one-line status shown by `systemctl status`."""
    return notify(f"STATUS={text}")


def watchdog() -> bool:
    """Keep-alive for WatchdogSec=."""
    return notify("WATCHDOG=1")


def stopping() -> bool:
    """Shutdown has begun."""
    return notify("STOPPING=1")


def watchdog_interval() -> float | None:
    """Seconds between two WATCHDOG=1 pings (half of WATCHDOG_USEC), None when not asked."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2_000_000
