"""The SIP UDP socket is drained at each wake-up of the loop (transport.UdpStack)."""

from __future__ import annotations

import asyncio
import socket

from sipclient.agent.transport import open_stack
from sipclient.config import HostPort


def _options(i: int, port: int) -> bytes:
    return (
        f"OPTIONS sip:probe@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK-drain-{i}\r\n"
        "From: <sip:test@127.0.0.1>;tag=t\r\n"
        f"To: <sip:probe@127.0.0.1:{port}>\r\n"
        f"Call-ID: drain-{i}@127.0.0.1\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


async def test_a_burst_of_messages_is_read_in_one_wake_up() -> None:
    """asyncio's datagram transport read one datagram per loop turn: every line's
    messages share this socket, and a busy loop fell behind by seconds."""
    stack = await open_stack(
        transport="udp", bind=HostPort("127.0.0.1", 0), remote=("127.0.0.1", 9)
    )
    port = stack.endpoint.local[1]
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for i in range(40):
            peer.sendto(_options(i, port), ("127.0.0.1", port))
        for _ in range(3):
            await asyncio.sleep(0)
        assert stack.received == 40
    finally:
        peer.close()
        await stack.close()
