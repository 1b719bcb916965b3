"""SIP transactions (RFC 3261 §17, with the RFC 6026 Accepted states), sans-IO.

Each transaction is a pure object: you feed it messages and the current time ``now`` (seconds,
any monotonic origin); it hands back messages to send, its next deadline and events. It never
reads a clock, never sleeps, never touches a socket.

Driving a transaction
---------------------
``txn.messages_to_send() -> list[Request | Response]``
    Drain what must go on the wire now (the first send, retransmissions, the ACK of a non-2xx
    final, resent responses). Objects, not bytes: ``bytes(msg)`` to send, ``msg`` to log.
``txn.receive(msg, now)``
    A response (client transactions) or a retransmitted request / ACK (server transactions)
    that the caller matched to this transaction with ``transaction_key``. Mismatched messages
    are ignored.
``txn.get_timer() -> float | None``
    The next absolute deadline, or None. Call ``txn.handle_timer(now)`` at (or after) it;
    calling it early is harmless. Retransmission deadlines are computed from the previous
    deadline, so they are exact (T1, 3*T1, 7*T1 ... after the start) however late you are,
    unless you are a whole interval late (then they restart from ``now`` rather than burst).
``txn.transport_failed(now, reason="")``
    The adapter could not send (ICMP error, TCP reset): -> ``TransportFailed``, terminated.
``txn.next_event() -> Event | None``
    Pop the next event; events are frozen dataclasses named as past facts:
    ``ProvisionalReceived(response)``, ``FinalReceived(response)``, ``TimedOut(timer)`` (``"B"``,
    ``"F"``, ``"H"``, ``"cancel"``), ``TransportFailed(reason)``, ``AckReceived(request)``
    (INVITE server transaction), ``Terminated()`` (always the last event).
``txn.state`` (``State``), ``txn.terminated``, ``txn.key``, ``txn.request``,
``txn.last_response``; ``txn.history`` lists ``Transition(at, old, new)``; states only move
forward; ``on_transition(txn, old, new)`` is called for each change (log "old -> new" there).

Constructors share keywords: ``now``, ``reliable`` (TCP/TLS: no retransmissions, Timers D, I,
J, K are 0), ``t1=0.5``, ``t2=4.0``, ``t4=5.0``, ``timer_d=32.0``, ``on_transition=None``.

Client transactions (the request's top Via must already carry a ``z9hG4bK`` branch)
    ``InviteClientTransaction(invite, now, ...)``: Calling -(1xx)-> Proceeding -(2xx)->
    Accepted (every 2xx, retransmitted or from another fork, is passed up as FinalReceived
    so the TU can (re)send its ACK; Timer M = 64*T1 then Terminated) or -(300-699)->
    Completed (the ACK is built and sent by the transaction, and re-sent for each
    retransmitted final; Timer D) -> Terminated. Timer A retransmits at T1, 2*T1, 4*T1 ...
    (uncapped) while Calling; Timer B = 64*T1 fires only while Calling (``TimedOut("B")``).
    ``cancel_sent(now)``: call it when the TU sends a CANCEL; if no final response arrives
    within 64*T1 the transaction ends with ``TimedOut("cancel")`` (RFC 3261 §9.1).
    The TU ACKs 2xx itself (``dialog.Dialog.make_ack``); CANCEL is its own non-INVITE
    transaction built with ``make_cancel(invite)``.
    ``NonInviteClientTransaction(request, now, ...)``: Trying -(1xx)-> Proceeding
    -(final)-> Completed (Timer K = T4, 0 if reliable) -> Terminated. Timer E retransmits at
    T1, 2*T1 ... capped at T2, and every T2 once Proceeding; Timer F = 64*T1
    (``TimedOut("F")``).

Server transactions (for a UA: in-dialog BYE/OPTIONS/NOTIFY/INFO, refusing re-INVITE/UPDATE)
    ``NonInviteServerTransaction(request, now, ...)``: ``respond(response, now)``; a
    retransmitted request resends the last response (none before the first one); final ->
    Completed, Timer J = 64*T1 (0 if reliable) -> Terminated.
    ``InviteServerTransaction(invite, now, ...)``: ``respond(response, now)``. 1xx stays
    Proceeding; 300-699 -> Completed: Timer G resends it (T1 doubling, capped at T2) until the
    ACK arrives (-> Confirmed, ``AckReceived``, Timer I = T4 / 0) or Timer H = 64*T1 fires
    (``TimedOut("H")``); 2xx -> Accepted for Timer L = 64*T1 (the TU retransmits its 2xx).
    ``respond`` after a final response raises ``TransactionError`` (our misuse).

Helpers
    ``transaction_key(msg) -> TransactionKey(branch, method)``: top Via branch plus the CSeq
    method (responses) or the request method, with ACK mapped to INVITE (the ACK of a non-2xx
    shares the INVITE's branch). A request without a ``z9hG4bK`` branch (RFC 2543) gets a
    key built from Call-ID, CSeq number, From tag and sent-by.
    ``make_ack(invite, response)`` (RFC 3261 §17.1.1.3) and ``make_cancel(invite)`` (§9.1):
    same Request-URI, top Via (branch), Call-ID, From, CSeq number, Route; To from the
    response for the ACK, from the INVITE for the CANCEL.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from sipclient.sip.message import BRANCH_MAGIC, Headers, Request, Response

__all__ = [
    "AckReceived",
    "Event",
    "FinalReceived",
    "InviteClientTransaction",
    "InviteServerTransaction",
    "NonInviteClientTransaction",
    "NonInviteServerTransaction",
    "ProvisionalReceived",
    "State",
    "Terminated",
    "TimedOut",
    "TransactionError",
    "TransactionKey",
    "Transition",
    "TransportFailed",
    "make_ack",
    "make_cancel",
    "transaction_key",
]

T1 = 0.5
T2 = 4.0
T4 = 5.0
TIMER_D = 32.0


class TransactionError(RuntimeError):
    """The transaction user misused a transaction (e.g. responded twice with a final)."""


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class ProvisionalReceived:
    """A 1xx arrived."""

    response: Response


@dataclass(frozen=True, slots=True)
class FinalReceived:
    """A 2xx-6xx arrived (for INVITE, each 2xx while Accepted too)."""

    response: Response


@dataclass(frozen=True, slots=True)
class TimedOut:
    """Timer B, F or H fired: no (final) response / no ACK in time."""

    timer: str


@dataclass(frozen=True, slots=True)
class TransportFailed:
    """The adapter reported that sending failed."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class AckReceived:
    """The ACK for our non-2xx final response arrived (INVITE server transaction)."""

    request: Request


@dataclass(frozen=True, slots=True)
class Terminated:
    """The transaction is over; always the last event."""


Event = ProvisionalReceived | FinalReceived | TimedOut | TransportFailed | AckReceived | Terminated


class State(enum.Enum):
    """Transaction states; ``rank`` orders them so that they only move forward."""

    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    ACCEPTED = "Accepted"
    CONFIRMED = "Confirmed"
    TERMINATED = "Terminated"

    @property
    def rank(self) -> int:
        """Position in the forward-only order."""
        return _RANK[self]


_RANK = {
    State.CALLING: 0,
    State.TRYING: 0,
    State.PROCEEDING: 1,
    State.COMPLETED: 2,
    State.ACCEPTED: 2,
    State.CONFIRMED: 3,
    State.TERMINATED: 4,
}


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change, for logs and tests."""

    at: float
    old: State
    new: State


@dataclass(frozen=True, slots=True)
class TransactionKey:
    """What matches a message to its transaction (RFC 3261 §17.1.3 / §17.2.3)."""

    branch: str
    method: str


def transaction_key(msg: Request | Response) -> TransactionKey:
    """The key of the transaction ``msg`` belongs to (may raise ``ParseError``)."""
    via = msg.top_via
    method = msg.cseq.method if isinstance(msg, Response) else msg.method
    if method == "ACK":
        method = "INVITE"
    branch = via.branch
    if branch is None or not branch.startswith(BRANCH_MAGIC):
        tag = msg.from_.tag or ""
        branch = f"2543:{msg.call_id}:{msg.cseq.seq}:{tag}:{via.host}:{via.port}:{branch}"
    return TransactionKey(branch, method)


def _copy_lines(src: Headers, dst: Headers, name: str) -> None:
    for v in src.get_lines(name):
        dst.add(name, v)


def make_ack(invite: Request, response: Response) -> Request:
    """The ACK for a non-2xx final response to ``invite`` (RFC 3261 §17.1.1.3)."""
    h = Headers()
    h.add("Via", invite.headers.get("Via") or "")
    _copy_lines(invite.headers, h, "Route")
    h.add("Max-Forwards", "70")
    h.add("From", invite.headers.get("From") or "")
    h.add("To", response.headers.get("To") or "")
    h.add("Call-ID", invite.call_id)
    h.add("CSeq", f"{invite.cseq.seq} ACK")
    return Request("ACK", invite.uri.copy(), h)


def make_cancel(invite: Request) -> Request:
    """The CANCEL of ``invite`` (RFC 3261 §9.1); send it in a NonInviteClientTransaction."""
    h = Headers()
    h.add("Via", invite.headers.get("Via") or "")
    _copy_lines(invite.headers, h, "Route")
    h.add("Max-Forwards", "70")
    h.add("From", invite.headers.get("From") or "")
    h.add("To", invite.headers.get("To") or "")
    h.add("Call-ID", invite.call_id)
    h.add("CSeq", f"{invite.cseq.seq} CANCEL")
    return Request("CANCEL", invite.uri.copy(), h)


# --------------------------------------------------------------------------- base


TransitionHook = Callable[["Transaction", State, State], None]


class Transaction:
    """Common machinery: state, timers, outgoing queue, events."""

    # What a subclass is: the state it starts in; `_check` refuses a request
    # of the wrong method, `_start` queues the first sends and timers.
    INITIAL: ClassVar[State]

    def __init__(
        self,
        request: Request,
        now: float,
        *,
        reliable: bool = False,
        t1: float = T1,
        t2: float = T2,
        t4: float = T4,
        timer_d: float = TIMER_D,
        on_transition: TransitionHook | None = None,
    ) -> None:
        self._check(request)
        self.request = request
        self.key = transaction_key(request)
        self.reliable = reliable
        self.t1, self.t2, self.t4, self.timer_d = t1, t2, t4, timer_d
        self.state = self.INITIAL
        self.history: list[Transition] = []
        self.last_response: Response | None = None
        self._on_transition = on_transition
        self._outgoing: list[Request | Response] = []
        self._events: deque[Event] = deque()
        # timer name -> (deadline, current interval)
        self._timers: dict[str, tuple[float, float]] = {}
        self.created_at = now
        self._start(now)

    def _check(self, request: Request) -> None:
        """Raise TransactionError for a request this kind of transaction cannot carry."""

    def _start(self, now: float) -> None:
        """Queue the first sends and arm the first timers."""

    # -- public driving API
    @property
    def terminated(self) -> bool:
        """True once Terminated."""
        return self.state is State.TERMINATED

    def messages_to_send(self) -> list[Request | Response]:
        """Drain the outgoing queue."""
        out, self._outgoing = self._outgoing, []
        return out

    def next_event(self) -> Event | None:
        """Pop the next event, or None."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """The next absolute deadline, or None."""
        if not self._timers:
            return None
        return min(at for at, _ in self._timers.values())

    def handle_timer(self, now: float) -> None:
        """Fire every timer whose deadline is <= now, in deadline order."""
        while not self.terminated:
            due = [(at, name) for name, (at, _) in self._timers.items() if at <= now]
            if not due:
                return
            at, name = min(due)
            _, interval = self._timers.pop(name)
            self._fire(name, at, interval, now)

    def transport_failed(self, now: float, reason: str = "") -> None:
        """The adapter could not send: report and terminate."""
        if self.terminated:
            return
        self._events.append(TransportFailed(reason))
        self._terminate(now)

    # -- helpers for subclasses
    def _fire(self, name: str, at: float, interval: float, now: float) -> None:
        raise NotImplementedError

    def _arm(self, name: str, at: float, interval: float = 0.0) -> None:
        self._timers[name] = (at, interval)

    def _rearm(self, name: str, prev_at: float, interval: float, now: float) -> None:
        nxt = prev_at + interval
        if nxt <= now:  # we were a whole interval late: restart from now, no burst
            nxt = now + interval
        self._timers[name] = (nxt, interval)

    def _cancel(self, *names: str) -> None:
        for n in names:
            self._timers.pop(n, None)

    def _move(self, new: State, now: float) -> None:
        old = self.state
        if new is old:
            return
        if new.rank < old.rank:  # pragma: no cover - guarded by the state machines
            raise TransactionError(f"state cannot go back: {old.value} -> {new.value}")
        self.state = new
        self.history.append(Transition(now, old, new))
        if self._on_transition is not None:
            self._on_transition(self, old, new)

    def _terminate(self, now: float) -> None:
        self._timers.clear()
        self._move(State.TERMINATED, now)
        self._events.append(Terminated())

    def _wait_then_terminate(self, name: str, delay: float, now: float) -> None:
        if delay <= 0:
            self._terminate(now)
        else:
            self._arm(name, now + delay)


# --------------------------------------------------------------------------- client side


class InviteClientTransaction(Transaction):
    """RFC 3261 §17.1.1 with RFC 6026's Accepted state."""

    INITIAL = State.CALLING

    def _check(self, request: Request) -> None:
        if request.method != "INVITE":
            raise TransactionError(f"InviteClientTransaction needs an INVITE, not {request.method}")

    def _start(self, now: float) -> None:
        self.ack: Request | None = None
        self._outgoing.append(self.request)
        if not self.reliable:
            self._arm("A", now + self.t1, self.t1)
        self._arm("B", now + 64 * self.t1)

    def receive(self, msg: Request | Response, now: float) -> None:
        """Take a response matched to this transaction."""
        if not isinstance(msg, Response) or self.terminated:
            return
        status = msg.status
        if self.state in (State.CALLING, State.PROCEEDING):
            if status < 200:
                self._cancel("A", "B")  # Timer B only runs while Calling
                self._move(State.PROCEEDING, now)
                self.last_response = msg
                self._events.append(ProvisionalReceived(msg))
            elif status < 300:
                self._cancel("A", "B", "cancel")
                self.last_response = msg
                self._move(State.ACCEPTED, now)
                self._events.append(FinalReceived(msg))
                self._arm("M", now + 64 * self.t1)
            else:
                self._cancel("A", "B", "cancel")
                self.last_response = msg
                self.ack = make_ack(self.request, msg)
                self._outgoing.append(self.ack)
                self._move(State.COMPLETED, now)
                self._events.append(FinalReceived(msg))
                self._wait_then_terminate("D", 0.0 if self.reliable else self.timer_d, now)
        elif self.state is State.ACCEPTED:
            if 200 <= status < 300:
                self._events.append(FinalReceived(msg))
        elif self.state is State.COMPLETED and status >= 300 and self.ack is not None:
            self._outgoing.append(self.ack)  # the ACK got lost: send it again

    def cancel_sent(self, now: float) -> None:
        """The TU sent a CANCEL for this INVITE: give up 64*T1 later if no final comes.

        RFC 3261 §9.1: a UAC whose CANCEL gets no final response to the INVITE within
        64*T1 considers the transaction terminated (``TimedOut("cancel")``).
        """
        if self.state in (State.CALLING, State.PROCEEDING) and "cancel" not in self._timers:
            self._arm("cancel", now + 64 * self.t1)

    def _fire(self, name: str, at: float, interval: float, now: float) -> None:
        if name == "cancel" and self.state in (State.CALLING, State.PROCEEDING):
            self._events.append(TimedOut("cancel"))
            self._terminate(now)
        elif name == "A" and self.state is State.CALLING:
            self._outgoing.append(self.request)
            self._rearm("A", at, interval * 2, now)
        elif name == "B" and self.state is State.CALLING:
            self._events.append(TimedOut("B"))
            self._terminate(now)
        elif name in ("D", "M"):
            self._terminate(now)


class NonInviteClientTransaction(Transaction):
    """RFC 3261 §17.1.2 (REGISTER, BYE, CANCEL, OPTIONS, ...)."""

    INITIAL = State.TRYING

    def _check(self, request: Request) -> None:
        if request.method in ("INVITE", "ACK"):
            raise TransactionError(f"{request.method} is not a non-INVITE transaction")

    def _start(self, now: float) -> None:
        self._outgoing.append(self.request)
        if not self.reliable:
            self._arm("E", now + self.t1, self.t1)
        self._arm("F", now + 64 * self.t1)

    def receive(self, msg: Request | Response, now: float) -> None:
        """Take a response matched to this transaction."""
        if not isinstance(msg, Response) or self.state not in (State.TRYING, State.PROCEEDING):
            return  # Completed absorbs retransmitted finals
        self.last_response = msg
        if msg.status < 200:
            self._move(State.PROCEEDING, now)
            self._events.append(ProvisionalReceived(msg))
            return
        self._cancel("E", "F")
        self._move(State.COMPLETED, now)
        self._events.append(FinalReceived(msg))
        self._wait_then_terminate("K", 0.0 if self.reliable else self.t4, now)

    def _fire(self, name: str, at: float, interval: float, now: float) -> None:
        if name == "E" and self.state in (State.TRYING, State.PROCEEDING):
            self._outgoing.append(self.request)
            nxt = self.t2 if self.state is State.PROCEEDING else min(interval * 2, self.t2)
            self._rearm("E", at, nxt, now)
        elif name == "F" and self.state in (State.TRYING, State.PROCEEDING):
            self._events.append(TimedOut("F"))
            self._terminate(now)
        elif name == "K":
            self._terminate(now)


# --------------------------------------------------------------------------- server side


class NonInviteServerTransaction(Transaction):
    """RFC 3261 §17.2.2: answer an in-dialog BYE/OPTIONS/NOTIFY/INFO, absorb retransmits."""

    INITIAL = State.TRYING

    def _check(self, request: Request) -> None:
        if request.method in ("INVITE", "ACK"):
            raise TransactionError(f"{request.method} is not a non-INVITE transaction")

    def respond(self, response: Response, now: float) -> None:
        """Send a response (provisional or final)."""
        if self.state not in (State.TRYING, State.PROCEEDING):
            raise TransactionError(f"cannot respond in state {self.state.value}")
        self.last_response = response
        self._outgoing.append(response)
        if response.status < 200:
            self._move(State.PROCEEDING, now)
            return
        self._move(State.COMPLETED, now)
        self._wait_then_terminate("J", 0.0 if self.reliable else 64 * self.t1, now)

    def receive(self, msg: Request | Response, now: float) -> None:
        """A retransmission of the request: resend the last response, if any."""
        if isinstance(msg, Request) and self.last_response is not None and not self.terminated:
            self._outgoing.append(self.last_response)

    def _fire(self, name: str, at: float, interval: float, now: float) -> None:
        if name == "J":
            self._terminate(now)


class InviteServerTransaction(Transaction):
    """RFC 3261 §17.2.1 (+ RFC 6026 Accepted): enough to refuse a re-INVITE politely."""

    INITIAL = State.PROCEEDING

    def _check(self, request: Request) -> None:
        if request.method != "INVITE":
            raise TransactionError(f"InviteServerTransaction needs an INVITE, not {request.method}")

    def respond(self, response: Response, now: float) -> None:
        """Send a provisional or final response."""
        if self.state is not State.PROCEEDING:
            raise TransactionError(f"cannot respond in state {self.state.value}")
        self.last_response = response
        self._outgoing.append(response)
        if response.status < 200:
            return
        if response.status < 300:
            self._move(State.ACCEPTED, now)
            self._arm("L", now + 64 * self.t1)
            return
        self._move(State.COMPLETED, now)
        if not self.reliable:
            self._arm("G", now + self.t1, self.t1)
        self._arm("H", now + 64 * self.t1)

    def receive(self, msg: Request | Response, now: float) -> None:
        """A retransmitted INVITE (resend the last response) or the ACK of a non-2xx."""
        if not isinstance(msg, Request) or self.terminated:
            return
        if msg.method == "ACK":
            if self.state is State.COMPLETED:
                self._cancel("G", "H")
                self._move(State.CONFIRMED, now)
                self._events.append(AckReceived(msg))
                self._wait_then_terminate("I", 0.0 if self.reliable else self.t4, now)
            return
        if self.state in (State.PROCEEDING, State.COMPLETED) and self.last_response is not None:
            self._outgoing.append(self.last_response)

    def _fire(self, name: str, at: float, interval: float, now: float) -> None:
        if name == "G" and self.state is State.COMPLETED and self.last_response is not None:
            self._outgoing.append(self.last_response)
            self._rearm("G", at, min(interval * 2, self.t2), now)
        elif name == "H" and self.state is State.COMPLETED:
            self._events.append(TimedOut("H"))
            self._terminate(now)
        elif name in ("I", "L"):
            self._terminate(now)
