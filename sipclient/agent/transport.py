"""asyncio UDP and TCP endpoints that feed the sans-IO SIP core.

A `SipStack` is one socket (UDP) or one connection (TCP) with its
`sipclient.sip.endpoint.Endpoint`: every datagram or framed message goes into
the endpoint with `now = loop.time()`, then `_pump()` sends what the endpoint
hands back, dispatches its events to the subscribers of each usage, and keeps
a single `loop.call_at` handle, re-armed only when the earliest deadline moves.

    stack = await open_stack(transport="udp", bind=HostPort("127.0.0.1", 0),
                             remote=("127.0.0.1", 5060), t1=0.5)
    stack.subscribe(usage, callback)       # callback(event) for that usage's events
    ... usage.start(stack.now()) ; stack.pump()
    await stack.close()

One stack serves every extension of a daemon (`sip.socket_per_extension:
false`: responses find their transaction by branch, requests their usage by
Call-ID; the registrar's Via received/rport is honoured by the
registrations), or one per extension when configured.

TCP: one connection to the PBX, framed by the core's `StreamParser`; a
framing error closes it (the stream cannot be resynchronised); the next send
reconnects. Times given to the core are `loop.time()`; `epoch(t)` converts
one to Unix seconds for outcomes.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import Callable

from sipclient.agent.leftovers import CallJournal
from sipclient.config import HostPort
from sipclient.logs import get_logger
from sipclient.sip.endpoint import ORPHANS, Addr, Endpoint, OrphanAnswer, Usage
from sipclient.sip.message import ParseError, StreamParser
from sipclient.udp import read_burst

log = get_logger(__name__)

EventHandler = Callable[[object], None]


def local_ip_towards(remote: Addr) -> str:
    """The local address the kernel would use to reach `remote` (no packet is sent)."""
    family = socket.AF_INET6 if ":" in remote[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(remote)
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1" if family == socket.AF_INET else "::1"


class SipStack:
    """One endpoint on one socket or connection; see the module docstring."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.endpoint: Endpoint | None = None
        self._handlers: dict[int, EventHandler] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None
        self._epoch_offset = time.time() - loop.time()
        self._closed = False
        self.sent = 0
        self.received = 0
        self.journal: CallJournal | None = None
        """Where the calls on this stack keep what would end them (agent/leftovers.py)."""

    # -------------------------------------------------------------- public

    @property
    def ep(self) -> Endpoint:
        if self.endpoint is None:
            raise RuntimeError("stack not opened")
        return self.endpoint

    def now(self) -> float:
        """The clock the core runs on (the loop's monotonic time)."""
        return self.loop.time()

    def epoch(self, t: float) -> float:
        """Unix seconds for a core time `t`."""
        return t + self._epoch_offset

    def subscribe(self, usage: Usage, handler: EventHandler) -> None:
        """Call `handler(event)` for every event of `usage`."""
        self._handlers[id(usage)] = handler

    def unsubscribe(self, usage: Usage) -> None:
        self._handlers.pop(id(usage), None)

    def pump(self) -> None:
        """Dispatch the core's events, send what it has, re-arm the timer.

        Events go first: a call journals what would end it (agent/leftovers.py)
        when its INVITE is sent or its answer comes, and that line must be written
        before the INVITE or the ACK is on the wire. Sent first, a kill -9 between
        the two left an answered call up with only its CANCEL journalled, or a
        ringing one with nothing (CI, session 20).
        """
        ep = self.ep
        # events may make usages send more (e.g. a hang-up in a handler): loop until quiet
        for _ in range(100):
            events = list(ep.events())
            for usage, event in events:
                handler = self._handlers.get(id(usage))
                if handler is not None:
                    try:
                        handler(event)
                    except Exception:  # a subscriber's bug must not stop the stack
                        log.exception("sip_event_handler_failed", event=type(event).__name__)
            out = ep.datagrams_to_send()
            for data, addr in out:
                self._send(data, addr)
            if not out and not events:
                break
        self._arm(ep.get_timer())

    async def close(self) -> None:
        """Stop the timer and close the socket."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self._close_io()

    # -------------------------------------------------------------- for subclasses

    def _on_data(self, data: bytes, addr: Addr) -> None:
        self.received += 1
        self.ep.receive(data, addr, self.loop.time())
        self.pump()

    def _send(self, data: bytes, addr: Addr) -> None:
        raise NotImplementedError

    async def _close_io(self) -> None:
        raise NotImplementedError

    # -------------------------------------------------------------- timer

    def _arm(self, deadline: float | None) -> None:
        if deadline == self._deadline or self._closed:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadline = deadline
        if deadline is not None:
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._deadline = None
        if self._closed:
            return
        self.ep.handle_timer(self.loop.time())
        self.pump()


UDP_BURST = 256
"""Datagrams read per wake-up of the loop at most (`UdpStack._drain`)."""


class UdpStack(SipStack):
    """The stack on one UDP socket, read by draining it at each wake-up.

    asyncio's datagram transport reads one datagram per loop iteration: with
    every line's messages on this one socket, a loop whose iterations took
    20-50 ms (a hundred calls on one core) read 20-50 SIP messages a second
    while several hundred arrived, and the rest waited for retransmissions
    (immediate 404s took 1 s at 100 lines on the e2e bench, 4 s at 200).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.sock: socket.socket | None = None

    def attach(self, sock: socket.socket) -> None:
        """Start reading the bound, non-blocking `sock`."""
        self.sock = sock
        self.loop.add_reader(sock.fileno(), self._drain)

    def _drain(self) -> None:
        sock = self.sock
        if sock is None:
            return
        burst, errors = read_burst(sock, UDP_BURST)
        if errors:
            # ICMP port unreachable and the like: the transactions time out by themselves
            log.debug("sip_udp_errors", errors=errors)
        for data, addr in burst:
            if self.sock is not sock:
                return  # closed by a handler of an earlier datagram
            self._on_data(data, (addr[0], addr[1]))

    def _send(self, data: bytes, addr: Addr) -> None:
        if self.sock is None:
            return
        self.sent += 1
        try:
            self.sock.sendto(data, addr)
        except OSError as exc:
            # a full send buffer or an unreachable peer: the transaction retransmits
            log.debug("sip_udp_send_failed", error=str(exc), to=f"{addr[0]}:{addr[1]}")

    async def _close_io(self) -> None:
        if self.sock is not None:
            sock, self.sock = self.sock, None
            self.loop.remove_reader(sock.fileno())
            sock.close()


class _TcpProtocol(asyncio.Protocol):
    def __init__(self, stack: TcpStack, remote: Addr) -> None:
        self.stack = stack
        self.remote = remote
        self.parser = StreamParser()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.parser.feed(data)
        except ParseError as exc:
            log.warning("sip_tcp_framing_error", remote=str(self.remote), error=str(exc))
            if self.transport is not None:
                self.transport.close()
            return
        stack = self.stack
        for msg in messages:
            stack.received += 1
            stack.ep.receive_message(msg, self.remote, stack.loop.time())
        if messages:
            stack.pump()

    def connection_lost(self, exc: Exception | None) -> None:
        self.stack._lost(self)


class TcpStack(SipStack):
    """The stack on TCP connections (one per remote address, reconnected on demand)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, bind_host: str) -> None:
        super().__init__(loop)
        self.bind_host = bind_host
        self._conns: dict[Addr, _TcpProtocol] = {}
        self._pending: dict[Addr, list[bytes]] = {}

    async def connect(self, remote: Addr) -> _TcpProtocol:
        _, proto = await self.loop.create_connection(
            lambda: _TcpProtocol(self, remote),
            host=remote[0],
            port=remote[1],
            local_addr=(self.bind_host, 0) if self.bind_host not in ("0.0.0.0", "::") else None,
        )
        self._conns[remote] = proto
        return proto

    def _send(self, data: bytes, addr: Addr) -> None:
        conn = self._conns.get(addr)
        if conn is not None and conn.transport is not None and not conn.transport.is_closing():
            self.sent += 1
            conn.transport.write(data)
            return
        queue = self._pending.setdefault(addr, [])
        queue.append(data)
        if len(queue) == 1:
            self.loop.create_task(self._reconnect(addr))

    async def _reconnect(self, addr: Addr) -> None:
        try:
            conn = await self.connect(addr)
        except OSError as exc:
            log.warning("sip_tcp_connect_failed", remote=f"{addr[0]}:{addr[1]}", error=str(exc))
            self._pending.pop(addr, None)  # the transactions time out (Timer B / F)
            return
        for data in self._pending.pop(addr, []):
            if conn.transport is not None:
                self.sent += 1
                conn.transport.write(data)

    def _lost(self, proto: _TcpProtocol) -> None:
        if self._conns.get(proto.remote) is proto:
            del self._conns[proto.remote]

    async def _close_io(self) -> None:
        for conn in list(self._conns.values()):
            if conn.transport is not None:
                conn.transport.close()
        self._conns.clear()


async def open_stack(
    *,
    transport: str,
    bind: HostPort,
    remote: Addr,
    t1: float = 0.5,
    user_agent: str = "sipclient",
    rng: random.Random | None = None,
) -> SipStack:
    """Open a UDP socket (or a TCP connection to `remote`) and its endpoint.

    `bind` "0.0.0.0:0" is made concrete for Via/Contact: the local address the
    kernel routes towards `remote`, and the port it picked.
    """
    loop = asyncio.get_running_loop()
    rng = rng or random.Random()
    stack: SipStack
    if transport == "udp":
        udp = UdpStack(loop)
        family = socket.AF_INET6 if ":" in bind.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            # hundreds of calls answered at once arrive as one burst: a small receive
            # buffer drops some, and a lost 487 costs a call 64*T1 (the kernel caps it)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            if family == socket.AF_INET6:
                # "::" only for IPv6: the daemon may hold "0.0.0.0" on the same port
                # for its IPv4 PBXs
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((bind.host, bind.port))
        except OSError:
            sock.close()
            raise
        udp.attach(sock)
        host, port = sock.getsockname()[:2]
        stack = udp
    elif transport == "tcp":
        tcp = TcpStack(loop, bind.host)
        conn = await tcp.connect(remote)
        assert conn.transport is not None
        host, port = conn.transport.get_extra_info("sockname")[:2]
        stack = tcp
    else:
        raise ValueError(f"transport must be udp or tcp, got {transport!r}")
    if host in ("0.0.0.0", "::"):
        host = local_ip_towards(remote)
    stack.endpoint = Endpoint(
        local=(host, int(port)), transport=transport, rng=rng, t1=t1, user_agent=user_agent
    )
    stack.subscribe(ORPHANS, _log_orphan)
    return stack


def _log_orphan(event: object) -> None:
    """A 2xx came for a call already over (endpoint.OrphanAnswer): it was ACKed and BYEd."""
    if isinstance(event, OrphanAnswer):
        log.warning(
            "orphan_answer_hung_up",
            call_id=event.call_id,
            status=event.status,
            bye_to=f"{event.bye_to[0]}:{event.bye_to[1]}",
        )
