"""The pool of local RTP ports, one per call, over config `rtp.ports`.

A port is handed out already bound (a UDP socket in the lease), so nothing
else can take it between our check and our use; ports another program holds
are skipped. Allocation walks the range round-robin from the last port
handed out, so a port just released is the last to be reused: stray packets
of a finished call then rarely reach the next one. The walk starts at a random
port: a daemon restarted after a kill -9 would otherwise hand out first the
very ports on which the far ends of its predecessor's calls still send (the
receive side keeps such streams out too, `stream.RtpStream`'s latching).

Only even ports are used (RFC 3550 section 11: RTP on even, RTCP on the odd
port above), unless the range holds no even port at all; 20000-20999 thus
serves 500 concurrent calls.

When no port is free `allocate` raises `PortsExhausted`; the daemon logs it,
keeps the number on its line and tries it again after a back-off
(agent/daemon.py, `PORT_WAIT_MIN`): the number was never dialled, so it gets
no verdict from it.
"""

from __future__ import annotations

import errno
import random
import socket
from dataclasses import dataclass, field
from typing import Any

from sipclient.config import PortRange
from sipclient.logs import get_logger


def _log() -> Any:
    # Looked up per use: a logger bound at import time would keep the
    # logging config of import time, before logs.configure() ran.
    return get_logger(__name__)


class PortsExhausted(RuntimeError):
    """No free UDP port in `rtp.ports`: all are leased to our calls or held by others.

    `in_use` is how many leases this pool has out, `size` how many ports it
    may use; when `in_use < size` other programs hold the rest.
    """

    def __init__(self, ports: PortRange, in_use: int, size: int) -> None:
        super().__init__(
            f"rtp.ports {ports}: no free UDP port ({in_use} of {size} leased to our calls, "
            f"{size - in_use} held by other programs or unbindable)"
        )
        self.ports = ports
        self.in_use = in_use
        self.size = size


@dataclass(eq=False)
class PortLease:
    """One bound UDP port for one call. Give it back with `PortPool.release`."""

    host: str
    port: int
    sock: socket.socket | None = field(repr=False)
    _pool: PortPool | None = field(default=None, repr=False)

    def take_socket(self) -> socket.socket:
        """Hand the bound socket over (to the asyncio transport, which will close it)."""
        if self.sock is None:
            raise RuntimeError(f"the socket of RTP port {self.port} was already taken")
        sock, self.sock = self.sock, None
        return sock

    def release(self) -> None:
        """Return the port to its pool; closes the socket if it was never taken."""
        if self._pool is not None:
            self._pool.release(self)


class PortPool:
    """Leases UDP ports from `ports` on `host` (the address RTP is received on)."""

    def __init__(
        self,
        ports: PortRange,
        host: str = "0.0.0.0",
        *,
        even: bool = True,
        first: int | None = None,
    ) -> None:
        self.ports = ports
        self.host = host
        candidates = list(range(ports.low, ports.high + 1))
        evens = [p for p in candidates if p % 2 == 0]
        self._candidates = evens if even and evens else candidates
        self._leased: dict[int, PortLease] = {}
        # where the walk starts: `first` (an index into the candidates), else at random
        n = len(self._candidates)
        self._next = (first if first is not None else random.randrange(n)) % n

    @property
    def size(self) -> int:
        """How many ports this pool may hand out at most."""
        return len(self._candidates)

    @property
    def in_use(self) -> int:
        """How many leases are out."""
        return len(self._leased)

    def allocate(self, host: str | None = None) -> PortLease:
        """Bind and lease the next free port; raises `PortsExhausted` when none is.

        `host` overrides the pool's address for this lease: the daemon with a
        wildcard `sip.bind` receives an IPv6 PBX's calls on "::" and the others on
        "0.0.0.0", from one range (a port is leased in one family at a time).
        """
        host = self.host if host is None else host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        n = len(self._candidates)
        for step in range(n):
            index = (self._next + step) % n
            port = self._candidates[index]
            if port in self._leased:
                continue
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                if family == socket.AF_INET6:
                    # "::" alone: not also IPv4's port (held by another program, or ours)
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((host, port))
            except OSError as exc:
                sock.close()
                if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                    raise
                continue
            sock.setblocking(False)
            self._next = (index + 1) % n
            lease = PortLease(host, port, sock, self)
            self._leased[port] = lease
            return lease
        _log().warning("rtp_ports_exhausted", ports=str(self.ports), in_use=self.in_use)
        raise PortsExhausted(self.ports, self.in_use, self.size)

    def release(self, lease: PortLease) -> None:
        """Give a port back; releasing twice is harmless."""
        if self._leased.get(lease.port) is lease:
            del self._leased[lease.port]
        if lease.sock is not None:
            lease.sock.close()
            lease.sock = None
        lease._pool = None
