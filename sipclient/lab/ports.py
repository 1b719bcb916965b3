"""Free loopback ports chosen at run time, and waiting for a peer to listen."""

from __future__ import annotations

import socket
import time


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on `host` right now (the kernel picks it).

    There is a small window before the caller binds it; the lab retries a start
    that fails to bind.
    """
    for _ in range(50):
        with socket.socket(_family(host), socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(_family(host), socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
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
    the lab waits for the listener before it connects.
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
