"""UAC dialogs created by our INVITE (RFC 3261 §12, §13.2.2.4), sans-IO.

Public API
----------
``DialogSet(invite)`` -- every dialog one INVITE creates (several when the call forks)
    ``on_response(response) -> Dialog | None``: a 1xx (not 100) with a To tag creates or
    updates the early dialog for that remote tag; a 2xx creates or confirms it (route set
    recomputed from the 2xx, §13.2.2.4); a 300-699 terminates every early dialog. Returns the
    dialog concerned (None for 100, tagless or other-call responses). ``dialogs`` maps remote
    tag -> Dialog; ``confirmed`` / ``early`` list them; ``get(remote_tag)``.

``Dialog``
    ``Dialog.from_response(invite, response)`` (raises ``DialogError`` without a To tag or for
    a status that creates no dialog). Fields: ``state`` (``DialogState.EARLY`` / ``CONFIRMED``
    / ``TERMINATED``), ``call_id``, ``local_tag``, ``remote_tag``, ``id`` (``DialogId``),
    ``local`` / ``remote`` (From / To ``Address`` with tags), ``local_contact``,
    ``remote_target`` (URI from the response's Contact), ``route_set`` (Record-Route reversed),
    ``local_seq`` (the INVITE's CSeq, then incremented per request), ``remote_seq``,
    ``invite_seq``.
    ``update(response)``: a later 1xx/2xx of the same dialog refreshes the remote target
    (and, on the first 2xx, confirms and recomputes the route set).
    ``make_request(method, via, body=b"", content_type=None, headers=()) -> Request``:
    an in-dialog request (BYE, INFO, re-INVITE, ...) with the next local CSeq; loose routing
    (``;lr``: Request-URI = remote target, Route = route set) or strict routing (Request-URI =
    first route, remote target appended to Route) per §12.2.1.1. ``via`` is the top Via
    (``Via`` or its string, with a fresh branch; the transport layer knows our sent-by).
    ``make_ack(via, body=b"")``: the ACK for a 2xx, CSeq = the INVITE's number (never
    bumps ``local_seq``); a new branch (it is its own transaction).
    ``matches(msg)``: Call-ID and both tags match (for an incoming request: its From tag is
    our remote tag). ``accept_remote_cseq(request) -> bool``: False if the request's CSeq is
    lower than or equal to the last one (answer 500, §12.2.2), else remembers it.
    ``terminate()`` moves to TERMINATED.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from sipclient.sip.message import (
    URI,
    Address,
    Headers,
    ParseError,
    Request,
    Response,
    Via,
)

__all__ = ["Dialog", "DialogError", "DialogId", "DialogSet", "DialogState"]

# requests that refresh the target and must therefore carry our Contact (§12.2.1.1)
_CARRY_CONTACT = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})


class DialogError(ValueError):
    """A response cannot create or update this dialog."""


class DialogState(enum.Enum):
    """Dialog states."""

    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


@dataclass(frozen=True, slots=True)
class DialogId:
    """Call-ID plus both tags (RFC 3261 §12)."""

    call_id: str
    local_tag: str
    remote_tag: str


class Dialog:
    """One dialog on the UAC side of an INVITE."""

    def __init__(
        self,
        invite: Request,
        response: Response,
        *,
        local: Address,
        remote: Address,
    ) -> None:
        self.call_id = invite.call_id
        self.local = local
        self.remote = remote
        self.local_tag: str = local.tag or ""
        self.remote_tag: str = remote.tag or ""
        self.local_contact: str | None = invite.headers.get("Contact")
        self.invite_seq = invite.cseq.seq
        self.local_seq = self.invite_seq
        self.remote_seq: int | None = None
        self.invite_uri = invite.uri.copy()
        self.remote_target: URI = invite.uri.copy()
        self.route_set: list[Address] = []
        self.state = DialogState.EARLY
        self._set_route_set(response)
        self._refresh_target(response)
        if 200 <= response.status < 300:
            self.state = DialogState.CONFIRMED

    @classmethod
    def from_response(cls, invite: Request, response: Response) -> Dialog:
        """A dialog from a 101-199 with a To tag (early) or a 2xx (confirmed)."""
        if not 100 < response.status < 300:
            raise DialogError(f"a {response.status} response creates no dialog")
        try:
            remote = response.to
            local = invite.from_
        except ParseError as err:
            raise DialogError(f"bad From/To: {err}") from err
        if not remote.tag:
            raise DialogError("response without a To tag creates no dialog")
        if not local.tag:
            raise DialogError("our INVITE has no From tag")
        if response.call_id != invite.call_id:
            raise DialogError("response belongs to another call")
        return cls(invite, response, local=local, remote=remote)

    @property
    def id(self) -> DialogId:
        """Call-ID and tags."""
        return DialogId(self.call_id, self.local_tag, self.remote_tag)

    def __repr__(self) -> str:
        return f"<Dialog {self.state.value} {self.call_id} remote_tag={self.remote_tag}>"

    # -- updates from responses
    def _set_route_set(self, response: Response) -> None:
        try:
            rr = response.record_route
        except ParseError as err:
            raise DialogError(f"bad Record-Route: {err}") from err
        self.route_set = list(reversed(rr))

    def _refresh_target(self, response: Response) -> None:
        try:
            contacts = response.contacts
        except ParseError as err:
            raise DialogError(f"bad Contact: {err}") from err
        if contacts:
            self.remote_target = contacts[0].uri

    def update(self, response: Response) -> None:
        """A later 1xx/2xx to our INVITE for this dialog."""
        if self.state is DialogState.TERMINATED or not 100 < response.status < 300:
            return
        if 200 <= response.status < 300 and self.state is DialogState.EARLY:
            self._set_route_set(response)  # §13.2.2.4: recomputed from the 2xx
            self.state = DialogState.CONFIRMED
        self._refresh_target(response)

    def terminate(self) -> None:
        """The dialog is over (BYE sent/received, or the INVITE failed)."""
        self.state = DialogState.TERMINATED

    # -- matching incoming requests
    def matches(self, msg: Request | Response) -> bool:
        """Call-ID and tags match this dialog (requests: From is the far end)."""
        try:
            if msg.call_id != self.call_id:
                return False
            if isinstance(msg, Request):
                return msg.from_.tag == self.remote_tag and msg.to.tag == self.local_tag
            return msg.from_.tag == self.local_tag and msg.to.tag == self.remote_tag
        except ParseError:
            return False

    def accept_remote_cseq(self, request: Request) -> bool:
        """Check the far end's CSeq only goes up (§12.2.2); ACK/CANCEL are not checked."""
        if request.method in ("ACK", "CANCEL"):
            return True
        seq = request.cseq.seq
        if self.remote_seq is not None and seq <= self.remote_seq:
            return False
        self.remote_seq = seq
        return True

    # -- building requests
    def _request(
        self,
        method: str,
        cseq: int,
        via: Via | str,
        body: bytes,
        content_type: str | None,
        headers: Iterable[tuple[str, str]],
    ) -> Request:
        h = Headers()
        h.add("Via", str(via))
        if self.route_set and not self.route_set[0].uri.lr:
            # strict router: it goes in the Request-URI, the remote target ends the Route
            uri = self.route_set[0].uri.copy()
            uri.params.pop("lr", None)
            uri.headers.clear()
            routes = [str(r) for r in self.route_set[1:]] + [f"<{self.remote_target}>"]
        else:
            uri = self.remote_target.copy()
            routes = [str(r) for r in self.route_set]
        for r in routes:
            h.add("Route", r)
        h.add("Max-Forwards", "70")
        h.add("From", str(self.local))
        h.add("To", str(self.remote))
        h.add("Call-ID", self.call_id)
        h.add("CSeq", f"{cseq} {method}")
        if method in _CARRY_CONTACT and self.local_contact:
            h.add("Contact", self.local_contact)
        for name, value in headers:
            h.add(name, value)
        if content_type is not None:
            h.set("Content-Type", content_type)
        return Request(method, uri, h, body)

    def make_request(
        self,
        method: str,
        via: Via | str,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> Request:
        """An in-dialog request with the next local CSeq (BYE, INFO, re-INVITE, ...)."""
        if method in ("ACK", "CANCEL"):
            raise DialogError(f"{method} reuses a CSeq: use make_ack / transaction.make_cancel")
        self.local_seq += 1
        return self._request(method, self.local_seq, via, body, content_type, headers)

    def peek_request(
        self, method: str, via: Via | str, headers: Iterable[tuple[str, str]] = ()
    ) -> Request:
        """The request `make_request` would build next, without taking its CSeq (kept
        aside in case this process cannot send it: agent/leftovers.py)."""
        return self._request(method, self.local_seq + 1, via, b"", None, headers)

    def make_ack(
        self, via: Via | str, body: bytes = b"", content_type: str | None = None
    ) -> Request:
        """The ACK for a 2xx to our INVITE (CSeq number of the INVITE, §13.2.2.4)."""
        return self._request("ACK", self.invite_seq, via, body, content_type, ())


class DialogSet:
    """All dialogs created by one INVITE, keyed by remote tag (forking)."""

    def __init__(self, invite: Request) -> None:
        self.invite = invite
        self.dialogs: dict[str, Dialog] = {}

    def get(self, remote_tag: str) -> Dialog | None:
        """The dialog with this remote tag, if any."""
        return self.dialogs.get(remote_tag)

    @property
    def early(self) -> list[Dialog]:
        """Dialogs still early."""
        return [d for d in self.dialogs.values() if d.state is DialogState.EARLY]

    @property
    def confirmed(self) -> list[Dialog]:
        """Dialogs confirmed by a 2xx."""
        return [d for d in self.dialogs.values() if d.state is DialogState.CONFIRMED]

    def on_response(self, response: Response) -> Dialog | None:
        """Create, update or end dialogs from a response to our INVITE."""
        try:
            if response.call_id != self.invite.call_id:
                return None
            tag = response.to.tag
        except ParseError:
            return None
        if response.status >= 300:
            for d in self.early:
                d.terminate()
            return self.dialogs.get(tag) if tag else None
        if response.status == 100 or not tag:
            return None
        dialog = self.dialogs.get(tag)
        if dialog is None:
            dialog = Dialog.from_response(self.invite, response)
            self.dialogs[tag] = dialog
        else:
            dialog.update(response)
        return dialog
