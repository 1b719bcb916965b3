"""Reading a UDP socket in bursts: what waits at one wake-up of the event loop.

asyncio's datagram transport reads one datagram per turn of the loop. With
tens of sockets (one per call's RTP) and one SIP socket for every line, a
loop whose turns take longer than 20 ms falls further behind on each socket
for as long as the load lasts (docs/daemon.md, "Under load"). The daemon's
receivers register the socket with `loop.add_reader` and call `read_burst`.

After each datagram, FIONREAD (the size of the next one, 0 when none is
left) says whether to read again: cheaper than the recvfrom that would fail
with EAGAIN (about 1 against 3 us), and most wake-ups find one datagram. A
zero-length datagram looks like "none left"; the socket stays readable, so
the next wake-up takes it.
"""

from __future__ import annotations

import fcntl
import socket
import termios
from typing import Any

_ZERO = bytes(4)


def read_burst(
    sock: socket.socket, limit: int, size: int = 65535
) -> tuple[list[tuple[bytes, Any]], int]:
    """Up to `limit` (data, address) waiting on non-blocking `sock`, and the
    OSErrors met on the way (ICMP errors reported on a read, and the like)."""
    out: list[tuple[bytes, Any]] = []
    errors = 0
    fd = sock.fileno()
    left = bytearray(4)
    for _ in range(limit):
        try:
            out.append(sock.recvfrom(size))
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            errors += 1
            continue
        fcntl.ioctl(fd, termios.FIONREAD, left)
        if left == _ZERO:
            break
    return out, errors
