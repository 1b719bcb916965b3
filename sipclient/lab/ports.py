"""Free loopback ports chosen at run time, and waiting for a peer to listen."""

from __future__ import annotations

import random
import socket
import time


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


LAB_PORTS = (10000, 20000)
"""Where `free_port` draws from: below the kernel's ephemeral range (Linux:
32768-60999), from which a connect takes its source port, and below the RTP
ports the demo and the tests give the daemon (30000 and up)."""
_handed: set[int] = set()
_rng = random.Random()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on `host` right now, from LAB_PORTS, never
    the same twice in one process.

    Not the kernel's pick (bind to port 0): that is an ephemeral port, and a client
    connecting to such a port while nobody listens on it (a daemon retrying a
    server the test stopped, the lab polling one it starts) can be given that
    very port as its source and connect to itself, holding the port the server
    then fails to bind (`tcp_listening`; seen once, session 20). Drawn at random
    from a range of 10,000, the set of ports handed keeps two peers of one run
    from being given the same one. There is a small window before the caller
    binds it; the lab retries a start that fails to bind.
    """
    family = _family(host)
    for _ in range(500):
        port = _rng.randrange(*LAB_PORTS)
        if port in _handed:
            continue
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as udp:
                udp.bind((host, port))
            with socket.socket(family, socket.SOCK_STREAM) as tcp:
                tcp.bind((host, port))
        except OSError:
            continue
        _handed.add(port)
        return port
    raise OSError("no free UDP+TCP port on " + host)


def tcp_listening(port: int) -> bool | None:
    """Whether a socket listens on TCP `port` (any address), from /proc/net/tcp{,6};
    None where those cannot be read (not Linux).

    A connect to a loopback port nobody listens on yet can connect to itself: the
    kernel may pick that very port as the source (both ends 127.0.0.1:P, a TCP
    simultaneous open), and the client then reads its own request back, while
    holding the port the peer is about to bind. A clean-clone run hit it once
    polling the lab server (`BadStatusLine: GET /api/tasks...`, session 20), so
    the lab waits for the listener before it connects. (`free_port` now draws
    below the ephemeral range, which rules that out where the range is Linux's
    default; this still covers a machine whose range was widened to include
    LAB_PORTS.)
    """
    found = False
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name, encoding="ascii") as fh:
                next(fh, None)  # the header
                for line in fh:
                    fields = line.split()
                    # local_address is HEXIP:HEXPORT; state 0A is LISTEN
                    listens = len(fields) > 3 and fields[3] == "0A"
                    if listens and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        return True
            found = True
        except (OSError, ValueError):
            continue
    return False if found else None


def sip_host(host: str) -> str:
    """An IPv6 address in brackets, as SIP URIs and kamailio's listen= want it."""
    return f"[{host}]" if ":" in host else host


def sip_options_ok(host: str, port: int, *, timeout: float = 0.2) -> bool:
    """Send one OPTIONS over UDP and say whether any SIP response came back."""
    with socket.socket(_family(host), socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        sock.settimeout(timeout)
        local = sock.getsockname()[1]
        uri_host = sip_host(host)
        msg = (
            f"OPTIONS sip:{uri_host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {uri_host}:{local};branch=z9hG4bK-probe{time.monotonic_ns()}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:probe@{uri_host}>;tag=probe\r\n"
            f"To: <sip:{uri_host}:{port}>\r\n"
            f"Call-ID: probe-{time.monotonic_ns()}@probe\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        try:
            sock.sendto(msg.encode(), (host, port))
            data, _ = sock.recvfrom(65535)
        except OSError:
            return False
        return data.startswith(b"SIP/2.0 ")


def udp_port_bound(host: str, port: int) -> bool:
    """Whether some process has bound UDP `host:port` (binding it ourselves fails)."""
    with socket.socket(_family(host), socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
        return False
