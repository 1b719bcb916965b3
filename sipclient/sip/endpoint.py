"""The multiplexer of one SIP socket: transactions and usages behind one address.

Sans-IO like the rest of `sipclient.sip`: the asyncio adapter
(`sipclient.agent.transport`) feeds it datagrams or framed messages with
`receive(data, addr, now)` / `receive_message(msg, addr, now)`, sends what
`datagrams_to_send()` hands back, arms one timer at `get_timer()` and calls
`handle_timer(now)` when it fires, then drains `next_event()`.

Routing of what comes in:

- a response goes to the client transaction of its (top Via branch, CSeq
  method); a response matching none (a retransmitted 2xx after its INVITE
  transaction ended, RFC 3261 §13.2.2.4) goes to the usage that owns the
  Call-ID (`Usage.on_stray_response`), else is dropped;
- a 2xx to one of our INVITEs whose transaction already ended with a non-2xx
  final (a fork that answered as another branch's 487 for our CANCEL came
  back: proxies forward every 2xx, RFC 3261 §16.7) and whose session is gone
  is ACKed and BYEd here (§13.2.2.4: a UAC that does not want the dialog
  ACKs and BYEs it), as the session would have: else that call stays up at
  the far end, billed. The ACK and the BYE carry the INVITE's digest answers,
  and a challenged BYE goes once more answering it (since session 19: before,
  a PBX that challenges BYEs kept such a call up until its own timers).
  `OrphanAnswer` is emitted for the `ORPHANS` owner and `orphan_answers`
  counts them. Over TCP, where Timer D is 0, the INVITE's record is kept
  64*T1 for this alone;
- a request goes to the usage owning its Call-ID (`Usage.on_request`, which
  returns the response to send: in-dialog BYE / OPTIONS / NOTIFY answered
  200, re-INVITE / UPDATE refused 488); a request for no usage is answered
  by the endpoint itself (OPTIONS 200, ACK absorbed, anything else 481);
- a retransmitted request is absorbed by its server transaction, which
  re-sends our response (Timer J / G / H of the core);
- a client transaction that got its final response lingers as a light
  record (`_Completed`: key, ACK bytes, deadline) for the rest of Timer D or
  K, which re-sends the ACK for a retransmitted non-2xx; the transaction and
  its usage go at once;
- bytes that do not parse are dropped and counted (`parse_errors`); a
  request that parses far enough to answer gets a 400.

Usages (registration, INVITE sessions) send requests with
`start_transaction()` and in-dialog ACKs with `send_stateless()`; they hear
back through `Usage.on_response` / `Usage.on_timeout`. Their own events are
queued with `emit()` and come out of `next_event()` as `(usage, event)`.

Transactions are the core's (`sipclient.sip.transaction`); the endpoint
only keys them (`transaction_key`), sends what they hand out and turns their
events into usage callbacks. Deadlines of transactions and usages sit in one
heap, checked lazily, so `get_timer()` stays cheap with thousands of them.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from sipclient.sip.auth import AuthError
from sipclient.sip.dialog import Dialog, DialogError
from sipclient.sip.message import (
    URI,
    Address,
    ParseError,
    RandomSource,
    Request,
    Response,
    make_branch,
    make_response,
    make_tag,
    parse_message,
)
from sipclient.sip.transaction import (
    FinalReceived,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    ProvisionalReceived,
    State,
    Terminated,
    TimedOut,
    TransactionKey,
    TransportFailed,
    transaction_key,
)

Addr = tuple[str, int]


class Usage(Protocol):
    """What the endpoint needs from a usage (registration, INVITE session)."""

    call_id: str

    def on_response(self, tx: ClientTransaction, response: Response, now: float) -> None: ...

    def on_timeout(self, tx: ClientTransaction, now: float) -> None: ...

    def on_stray_response(self, response: Response, addr: Addr, now: float) -> None: ...

    def on_request(self, request: Request, addr: Addr, now: float) -> Response | None: ...

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...


class Signer(Protocol):
    """Digest answers for the requests of one extension (`auth.DigestClient`)."""

    def sign(self, request: Request) -> None: ...

    def handle_challenge(self, response: Response, *, fresh: bool = False) -> None: ...


_ClientCore = InviteClientTransaction | NonInviteClientTransaction
_ServerCore = InviteServerTransaction | NonInviteServerTransaction


class ClientTransaction:
    """A usage's handle on one core client transaction: where it goes, who owns it."""

    __slots__ = ("core", "dest", "method", "owner", "request", "signer")

    def __init__(
        self, core: _ClientCore, dest: Addr, owner: Usage, signer: Signer | None = None
    ) -> None:
        self.core = core
        self.request = core.request
        self.method = core.request.method
        self.dest = dest
        self.owner = owner
        self.signer = signer
        """The INVITE's credentials, for a BYE to an orphan 2xx (`_hang_up_orphan`)."""

    @property
    def terminated(self) -> bool:
        return self.core.terminated

    def get_timer(self) -> float | None:
        return self.core.get_timer()


class _Completed:
    """What is left of a client transaction once its final response came (a timer owner).

    Over UDP a client transaction lingers after its final response to absorb
    retransmissions of it: an INVITE transaction for Timer D (32 s), re-sending
    its ACK for each retransmitted non-2xx; a non-INVITE one for Timer K (T4).
    Kept whole, it would hold the usage that owns it (an INVITE session: its
    dialog, requests and responses) that long after the call. The endpoint
    keeps this instead: the key, the ACK's bytes and where they go, the
    deadline. A retransmitted final gets the same ACK as from the core.
    """

    __slots__ = ("ack", "at", "dest", "key", "signer")

    def __init__(
        self,
        key: TransactionKey,
        ack: bytes | None,
        dest: Addr,
        at: float,
        signer: Signer | None = None,
    ) -> None:
        self.key = key
        self.ack = ack
        self.dest = dest
        self.at = at
        self.signer = signer

    def get_timer(self) -> float | None:
        return self.at


class _ServerEntry:
    """A server transaction with the address its responses go to (a timer owner)."""

    __slots__ = ("addr", "core")

    def __init__(self, core: _ServerCore, addr: Addr) -> None:
        self.core = core
        self.addr = addr

    def get_timer(self) -> float | None:
        return self.core.get_timer()


@dataclass(frozen=True)
class OrphanAnswer:
    """A 2xx to an INVITE of ours whose call was over: ACKed and BYEd (module docstring)."""

    at: float
    call_id: str
    status: int
    bye_to: Addr


class _Orphans:
    """The owner of the BYEs sent for orphan 2xx responses: wants nothing back."""

    call_id = ""

    def on_response(self, tx: ClientTransaction, response: Response, now: float) -> None:
        return

    def on_timeout(self, tx: ClientTransaction, now: float) -> None:
        return

    def on_stray_response(self, response: Response, addr: Addr, now: float) -> None:
        return

    def on_request(self, request: Request, addr: Addr, now: float) -> Response | None:
        return None

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        return


ORPHANS: Usage = _Orphans()
"""The owner of `OrphanAnswer` events (an adapter subscribes to it to log them)."""


class _OrphanBye(_Orphans):
    """The BYE of an orphan 2xx (`Endpoint._hang_up_orphan`): sent with the INVITE's
    digest answers, and once more answering a 401/407 (a PBX that challenges
    in-dialog requests); unanswered, the call stays up at the far end, billed."""

    def __init__(self, ep: Endpoint, dialog: Dialog, to: Addr, signer: Signer | None) -> None:
        self._ep = ep
        self._dialog = dialog
        self._to = to
        self._signer = signer
        self._challenged = False

    def send(self, now: float) -> None:
        ep = self._ep
        bye = self._dialog.make_request(
            "BYE", ep.via(ep.new_branch()), headers=[("User-Agent", ep.user_agent)]
        )
        if self._signer is not None:
            self._signer.sign(bye)
        ep.start_transaction(bye, self._to, self, now)

    def on_response(self, tx: ClientTransaction, response: Response, now: float) -> None:
        if response.status not in (401, 407) or self._signer is None or self._challenged:
            return  # our answer challenged again: no loop
        self._challenged = True
        try:
            self._signer.handle_challenge(response, fresh=True)
        except AuthError:
            return
        self.send(now)


_Timed = Any  # ClientTransaction | _Completed | _ServerEntry | Usage: anything with get_timer()
_LINGERING = frozenset({State.COMPLETED})
"""Client transaction states that only absorb retransmitted finals (`_Completed`)."""


def uri_addr(uri: URI, fallback: Addr) -> Addr:
    """Where to send a request for `uri`: its host:port when the host is an IP literal.

    The core does no DNS; a name (not an address) falls back to `fallback`
    (the proxy the usage was configured with).
    """
    host = uri.host.strip("[]")
    if not _is_ip(host):
        return fallback
    port = uri.port or (5061 if uri.scheme == "sips" else 5060)
    return (host, port)


def _is_ip(host: str) -> bool:
    if ":" in host:
        return all(c in "0123456789abcdefABCDEF:." for c in host)
    parts = host.split(".")
    return len(parts) == 4 and all(p.isdigit() and int(p) < 256 for p in parts)


class Endpoint:
    """One local SIP address (socket): transactions, usages, events."""

    def __init__(
        self,
        *,
        local: Addr,
        transport: str = "udp",
        rng: RandomSource,
        t1: float = 0.5,
        user_agent: str = "sipclient",
    ) -> None:
        if transport not in ("udp", "tcp"):
            raise ValueError(f"transport must be udp or tcp, got {transport!r}")
        self.local = local
        self.transport = transport
        self.reliable = transport == "tcp"
        self.rng = rng
        self.t1 = t1
        self.user_agent = user_agent
        self.parse_errors = 0
        self.orphan_answers = 0
        self.public_addr: Addr | None = None
        """Our address as the far end saw it (Via received/rport of a response)."""
        self._client: dict[TransactionKey, ClientTransaction | _Completed] = {}
        self._server: dict[TransactionKey, _ServerEntry] = {}
        self._usages: dict[str, Usage] = {}
        self._out: list[tuple[bytes, Addr]] = []
        self._events: deque[tuple[Usage, object]] = deque()
        # (deadline, seq, table, key) entries, checked lazily against the get_timer()
        # of whatever owns `key` in `table` (_client, _server or _usages) by then: an
        # entry left behind (the ring timeout of a call long over) holds no object
        self._timers: list[tuple[float, int, dict[Any, Any], Any]] = []
        self._seq = 0

    # ------------------------------------------------------------ for usages

    @property
    def contact_host_port(self) -> str:
        """host:port for Via sent-by and Contact (IPv6 in brackets)."""
        host, port = self.local
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def via(self, branch: str) -> str:
        """Our Via value with `branch` (rport asked for, RFC 3581)."""
        return f"SIP/2.0/{self.transport.upper()} {self.contact_host_port};branch={branch};rport"

    def new_branch(self) -> str:
        """A fresh RFC 3261 branch from the injected random source."""
        return make_branch(self.rng)

    def add_usage(self, usage: Usage) -> None:
        """Route requests and stray responses of `usage.call_id` to it."""
        self._usages[usage.call_id] = usage
        self.touch(usage)

    def remove_usage(self, usage: Usage) -> None:
        """Forget `usage` (its Call-ID is answered 481 from now on)."""
        if self._usages.get(usage.call_id) is usage:
            del self._usages[usage.call_id]

    @property
    def usages(self) -> int:
        return len(self._usages)

    @property
    def transactions(self) -> int:
        return len(self._client) + len(self._server)

    def touch(self, owner: _Timed) -> None:
        """Note `owner`'s deadline (usages call it after an API call moved it)."""
        at = owner.get_timer()
        if at is not None:
            self._seq += 1
            heapq.heappush(self._timers, (at, self._seq, *self._slot(owner)))

    def start_transaction(
        self,
        request: Request,
        dest: Addr,
        owner: Usage,
        now: float,
        signer: Signer | None = None,
    ) -> ClientTransaction:
        """Send `request` (its top Via already carries a fresh branch) reliably.

        `signer` (an INVITE's): the credentials a BYE to an orphan 2xx answers with."""
        core: _ClientCore
        if request.method == "INVITE":
            core = InviteClientTransaction(request, now, reliable=self.reliable, t1=self.t1)
        else:
            core = NonInviteClientTransaction(request, now, reliable=self.reliable, t1=self.t1)
        tx = ClientTransaction(core, dest, owner, signer)
        self._client[core.key] = tx
        self._flush_client(tx, now)
        return tx

    def send_stateless(self, message: Request | Response, dest: Addr) -> None:
        """Send once, no transaction (the ACK of a 2xx)."""
        self._out.append((message.serialize(), dest))

    def emit(self, usage: Usage, event: object) -> None:
        """Queue a usage's event for `next_event()`."""
        self._events.append((usage, event))

    # ------------------------------------------------------------ for the adapter

    def receive(self, data: bytes, addr: Addr, now: float) -> None:
        """One datagram (UDP) from `addr`."""
        if not data.strip(b"\r\n"):
            return  # keep-alive
        try:
            msg = parse_message(data)
        except ParseError:
            self.parse_errors += 1
            return
        self.receive_message(msg, addr, now)

    def receive_message(self, msg: Request | Response, addr: Addr, now: float) -> None:
        """One parsed message (TCP framing done by the adapter)."""
        try:
            if isinstance(msg, Response):
                self._on_response(msg, addr, now)
            else:
                self._on_request(msg, addr, now)
        except ParseError:
            # a header we needed (CSeq, Via, To...) turned out bad when read: drop it
            self.parse_errors += 1

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        """Drain what must go on the wire: (bytes, destination) pairs."""
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        """The earliest deadline of any transaction or usage (None: nothing pending)."""
        heap = self._timers
        while heap:
            at, _, table, key = heap[0]
            owner = table.get(key)
            current = owner.get_timer() if owner is not None else None
            if current == at:
                return at
            heapq.heappop(heap)
            if current is not None:
                self._seq += 1
                heapq.heappush(heap, (current, self._seq, table, key))
        return None

    def handle_timer(self, now: float) -> None:
        """Fire every deadline that is due."""
        heap = self._timers
        while heap and heap[0][0] <= now:
            at, _, table, key = heapq.heappop(heap)
            owner = table.get(key)
            if owner is None:
                continue
            if owner.get_timer() != at:
                self.touch(owner)
                continue
            if isinstance(owner, ClientTransaction):
                owner.core.handle_timer(now)
                self._flush_client(owner, now)
            elif isinstance(owner, _Completed):
                del self._client[key]  # Timer D or K: retransmissions are over
            elif isinstance(owner, _ServerEntry):
                owner.core.handle_timer(now)
                self._flush_server(owner)
            else:
                owner.handle_timer(now)
                self.touch(owner)

    def next_event(self) -> tuple[Usage, object] | None:
        """The next usage event as (usage, event), or None."""
        return self._events.popleft() if self._events else None

    def events(self) -> Iterator[tuple[Usage, object]]:
        """Drain the event queue."""
        while self._events:
            yield self._events.popleft()

    # ------------------------------------------------------------ internals

    def _slot(self, owner: _Timed) -> tuple[dict[Any, Any], Any]:
        """The table and key `owner` is found under (a timer entry keeps these)."""
        if isinstance(owner, ClientTransaction):
            return self._client, owner.core.key
        if isinstance(owner, _Completed):
            return self._client, owner.key
        if isinstance(owner, _ServerEntry):
            return self._server, owner.core.key
        return self._usages, owner.call_id

    def _flush_client(self, tx: ClientTransaction, now: float) -> None:
        for msg in tx.core.messages_to_send():
            self._out.append((msg.serialize(), tx.dest))
        owner = tx.owner
        while (event := tx.core.next_event()) is not None:
            if isinstance(event, ProvisionalReceived | FinalReceived):
                owner.on_response(tx, event.response, now)
            elif isinstance(event, TimedOut | TransportFailed):
                owner.on_timeout(tx, now)
            elif isinstance(event, Terminated) and self._client.get(tx.core.key) is tx:
                ended = tx.core
                if (
                    self.reliable
                    and isinstance(ended, InviteClientTransaction)
                    and ended.ack is not None
                ):
                    # over TCP Timer D is 0, but a fork's 2xx may still come after the
                    # final (module docstring): a record for the 64*T1 a UDP one lasts
                    until = now + 64 * self.t1
                    kept = _Completed(ended.key, ended.ack.serialize(), tx.dest, until, tx.signer)
                    self._client[ended.key] = kept
                    self.touch(kept)
                else:
                    del self._client[ended.key]
        core = tx.core
        at = core.get_timer()
        if core.state in _LINGERING and at is not None and self._client.get(core.key) is tx:
            # only retransmitted finals are left to absorb (Timer D or K runs)
            ack = core.ack if isinstance(core, InviteClientTransaction) else None
            left = _Completed(
                core.key, None if ack is None else ack.serialize(), tx.dest, at, tx.signer
            )
            self._client[core.key] = left
            self.touch(left)
        else:
            self.touch(tx)
        if self._usages.get(owner.call_id) is owner:
            self.touch(owner)

    def _flush_server(self, entry: _ServerEntry) -> None:
        core = entry.core
        for msg in core.messages_to_send():
            self._out.append((msg.serialize(), entry.addr))
        while (event := core.next_event()) is not None:
            if isinstance(event, Terminated) and self._server.get(core.key) is entry:
                del self._server[core.key]
        self.touch(entry)

    def _on_response(self, resp: Response, addr: Addr, now: float) -> None:
        via = resp.top_via
        self._learn_public_addr(via.received, via.rport)
        tx = self._client.get(transaction_key(resp))
        if isinstance(tx, _Completed):
            if resp.status >= 300:
                if tx.ack is not None:
                    self._out.append((tx.ack, tx.dest))  # the ACK got lost: send it again
            elif resp.status >= 200 and tx.ack is not None:  # a 2xx to our INVITE
                usage = self._usages.get(resp.call_id)
                if usage is not None:
                    usage.on_stray_response(resp, addr, now)
                    self.touch(usage)
                else:
                    self._hang_up_orphan(resp, tx.dest, now, tx.signer)
            return
        if tx is not None:
            tx.core.receive(resp, now)
            self._flush_client(tx, now)
            return
        usage = self._usages.get(resp.call_id)
        if usage is not None:
            usage.on_stray_response(resp, addr, now)
            self.touch(usage)

    def _hang_up_orphan(
        self, resp: Response, dest: Addr, now: float, signer: Signer | None
    ) -> None:
        """ACK and BYE a 2xx whose INVITE's session is gone (module docstring).

        The dialog is rebuilt from the 2xx alone: our From and the Call-ID come
        back in it, the remote target is its Contact, the route set its
        Record-Route; the INVITE's own Request-URI only matters for a strict
        router's route set, and then the target takes its place. Both carry the
        INVITE's digest answers (`signer`), as the session's would, and a
        challenged BYE goes once more answering it (`_OrphanBye`).
        """
        try:
            target = Address.parse(resp.headers.get("Contact") or "").uri
            invite = Request("INVITE", target)
            for name in ("From", "Call-ID"):
                invite.headers.add(name, resp.headers.get(name) or "")
            invite.headers.add("CSeq", f"{resp.cseq.seq} INVITE")
            dialog = Dialog.from_response(invite, resp)
        except (ParseError, DialogError, ValueError):
            return  # nothing we could route an ACK or a BYE with
        first = dialog.route_set[0].uri if dialog.route_set else dialog.remote_target
        to = uri_addr(first, dest)
        ack = dialog.make_ack(self.via(self.new_branch()))
        if signer is not None:
            signer.sign(ack)
        self.send_stateless(ack, to)
        _OrphanBye(self, dialog, to, signer).send(now)
        self.orphan_answers += 1
        self.emit(ORPHANS, OrphanAnswer(now, resp.call_id, resp.status, to))

    def _learn_public_addr(self, received: str | None, rport: int | None) -> None:
        if received is None and rport is None:
            return
        host = received or self.local[0]
        port = rport or self.local[1]
        if (host, port) != self.local:
            self.public_addr = (host, port)

    def _reply_addr(self, req: Request, addr: Addr) -> Addr:
        if self.reliable:
            return addr
        via = req.top_via
        if via.has_rport:
            return addr  # RFC 3581: answer to the source port when rport was asked for
        host = via.received or via.host
        return (host if _is_ip(host.strip("[]")) else addr[0], via.port or 5060)

    def _on_request(self, req: Request, addr: Addr, now: float) -> None:
        key = transaction_key(req)
        known = self._server.get(key)
        if known is not None:
            known.core.receive(req, now)  # a retransmission, or the ACK of our refusal
            self._flush_server(known)
            return
        usage = self._usages.get(req.call_id)
        if req.method == "ACK":
            # the ACK of a 2xx we sent (never: we take no calls) or a stray: nothing to answer
            return
        resp = usage.on_request(req, addr, now) if usage is not None else None
        if usage is not None:
            self.touch(usage)
        if resp is None:
            resp = self._default_response(req)
        resp.headers.add("Server", self.user_agent)
        server: _ServerCore
        if req.method == "INVITE":
            server = InviteServerTransaction(req, now, reliable=self.reliable, t1=self.t1)
        else:
            server = NonInviteServerTransaction(req, now, reliable=self.reliable, t1=self.t1)
        server.respond(resp, now)
        entry = _ServerEntry(server, self._reply_addr(req, addr))
        self._server[server.key] = entry
        self._flush_server(entry)

    def _default_response(self, req: Request) -> Response:
        if req.method == "OPTIONS":
            resp = make_response(req, 200, to_tag=make_tag(self.rng))
            resp.headers.add("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, NOTIFY")
            return resp
        if req.method == "INVITE" and req.to.tag is None:
            # we place calls; we do not take them
            return make_response(req, 603, "Decline", to_tag=make_tag(self.rng))
        return make_response(req, 481)
