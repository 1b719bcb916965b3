"""One outbound call as a UAC INVITE session (RFC 3261 §13, §9.1, §15), sans-IO.

    session = InviteSession(endpoint, SessionSpec(...), now=now)
    session.start(now)                 # INVITE (with our SDP offer) goes out
    ... endpoint.receive(...) / handle_timer(...) ...
    session.cancel(now)                # CANCEL (deferred until a provisional came)
    session.hangup(now)                # BYE after answer, CANCEL before

Events (frozen dataclasses, named as facts; drained with the endpoint's
`next_event()` as `(session, event)`):

- `InviteSent(at, branch, cseq)` each INVITE put on the wire (again after a
  401/407 challenge, with credentials);
- `ProvisionalReceived(at, status, reason, sdp, to_tag, q850)` each 1xx
  (100 included; a reliable one once, not its retransmissions); `sdp` is the
  body when it is one;
- `PrackSent(at, rseq)` each PRACK (below);
- `Answered(at, status, reason, sdp, to_tag)` the first 2xx (ACKed at once;
  it is followed by a BYE when we had already cancelled: a 2xx that crossed
  our CANCEL);
- `CancelSent(at)`, `ByeSent(at)`;
- `PreemptiveAuthRefused(at)` once, when this call found the PBX refusing the
  account's remembered digest answers with a 403 (below);
- `SessionEnded(at, status, reason, q850, cancelled_by_us, ended_by)` once,
  last: `status` is the INVITE's final code (None when none came, e.g.
  Timer B gives `status=408`, `local=True`), `ended_by` is one of
  "remote" (final >= 300 or the far end's BYE), "local" (our BYE or CANCEL),
  "timeout" (Timer B, no answer to CANCEL/BYE), "auth" (credentials refused).

Rules kept here: CANCEL only once a provisional arrived (§9.1; asked before,
it is remembered and sent on the first 1xx, or the call simply ends if a
final comes first); the call is the first 2xx's dialog, every other 2xx
ACKed and BYEd; 2xx retransmissions re-ACKed; the ring timeout CANCELs at
`ring_timeout` after the INVITE; the Q.850 cause of a Reason header in any
response is kept (the latest wins). The dialogs themselves (early per To tag
when the call forks, route set, remote target, CSeq numbering, in-dialog
requests) are `sipclient.sip.dialog`'s: one `DialogSet` per INVITE sent (a
retry after a challenge has its own CSeq, so its own dialogs). A request
from the far end is answered in its dialog (481 outside any, 500 when its
CSeq goes backwards, §12.2.2).

Pre-emptive digest (`SessionSpec.digest_memory`) refused as Forbidden: a PBX
should challenge a nonce it no longer takes (stale or not: auth.py answers
that once as a fresh challenge), but one that refuses an expired or reused
nonce with a 403 would turn every call after the first into a `restricted`
verdict. So a 403 to an INVITE whose answers were all remembered, before any
18x (an auth refusal comes at once; after a 180 the PBX had let the call
through), sends the INVITE once more without them, as a call without
pre-emptive digest would have gone. If that INVITE, after its own
challenge, gets anything but a 403 (a provisional, an answer, another final),
the PBX was refusing the remembered answer: the memory is marked `refused`
and the account's later calls no longer answer ahead. A 403 again is the
number's own (a barred number costs that extra round), and the memory is
kept.

A BYE or PRACK challenged (401/407: a PBX may challenge any request but ACK
and CANCEL) is sent once more with the answer; the session ends on that BYE's
response. Only the BYE of our call's dialog ends the session: the BYE sent to
another fork that answered too does not.

Reliable provisionals (RFC 3262): the INVITE says `Supported: 100rel` unless
`SessionSpec.prack` is off (a trunk that insists on them answers an INVITE
without it 421 Extension Required: every number would fail; with it off, a 421
whose Require names 100rel has the INVITE sent once more offering it, RFC 3261
§21.4.16, as the far end leaves no other way through), and a 101-199
that carries `Require: 100rel` and an RSeq is PRACKed in its early dialog
(`RAck: rseq cseq INVITE`; through the route set, to the 18x's Contact)
whether or not we advertised it: a far end that wants a PRACK otherwise
retransmits its 18x for 32 s and may then fail the call with a 5xx. Its
retransmissions (RSeq not above the last one) and one out of order (above
last + 1) are neither PRACKed nor reported (§4); each fork counts its own.
Our INVITE always carries the SDP offer, so a PRACK never carries an answer.
What the PRACK's own transaction answers (200, 481, nothing) changes nothing,
but a 401/407 (above).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from sipclient.sip.auth import AuthError, DigestClient, DigestCredentials, DigestMemory
from sipclient.sip.dialog import Dialog, DialogError, DialogSet
from sipclient.sip.endpoint import Addr, ClientTransaction, Endpoint, uri_addr
from sipclient.sip.message import (
    URI,
    Address,
    ParseError,
    Request,
    Response,
    make_call_id,
    make_response,
    make_tag,
)
from sipclient.sip.reason import q850_cause
from sipclient.sip.transaction import make_cancel


class SessionState(StrEnum):
    IDLE = "idle"
    CALLING = "calling"  # INVITE sent, nothing back yet
    PROCEEDING = "proceeding"  # a provisional came
    ANSWERED = "answered"  # 2xx came and was ACKed
    ENDING = "ending"  # BYE or CANCEL out, waiting
    ENDED = "ended"


@dataclass(frozen=True)
class InviteSent:
    at: float
    branch: str
    cseq: int


@dataclass(frozen=True)
class ProvisionalReceived:
    at: float
    status: int
    reason: str
    sdp: bytes | None
    to_tag: str | None
    q850: int | None


@dataclass(frozen=True)
class PrackSent:
    at: float
    rseq: int


@dataclass(frozen=True)
class Answered:
    at: float
    status: int
    reason: str
    sdp: bytes | None
    to_tag: str | None


@dataclass(frozen=True)
class CancelSent:
    at: float
    why: str


@dataclass(frozen=True)
class ByeSent:
    at: float


@dataclass(frozen=True)
class PreemptiveAuthRefused:
    """The PBX refused the account's remembered digest answers with a 403 and took this
    call's own: its later calls answer only their own challenges (module docstring)."""

    at: float


@dataclass(frozen=True)
class SessionEnded:
    at: float
    status: int | None
    reason: str
    q850: int | None
    cancelled_by_us: bool
    ended_by: str
    local: bool = False
    """True when `status` was made up here (408 after Timer B), not received."""


@dataclass(frozen=True)
class SessionSpec:
    """Who calls whom, through where, offering what."""

    target: URI
    """Request-URI, e.g. sip:4041234@pbx.example."""
    from_uri: URI
    """Our AOR (sip:1001@pbx.example)."""
    proxy: Addr
    """Where the INVITE goes (the PBX), host:port."""
    credentials: DigestCredentials | None = None
    sdp_offer: bytes = b""
    ring_timeout: float | None = None
    """Seconds after the INVITE until we CANCEL; None for no limit."""
    user_agent: str = "sipclient"
    display_name: str = ""
    prack: bool = True
    """Advertise reliable provisionals (`Supported: 100rel`, RFC 3262). A reliable
    18x is PRACKed either way; off only keeps the far end from choosing them."""
    digest_memory: DigestMemory | None = field(default=None, compare=False)
    """The challenges the account's earlier calls were sent (auth.DigestMemory): the
    INVITE answers them before it is challenged. None: every call is challenged."""


def _is_sdp(resp: Response) -> bool:
    ctype = resp.headers.get("Content-Type") or ""
    return bool(resp.body) and ctype.split(";")[0].strip().lower() == "application/sdp"


def _tokens(resp: Response, header: str) -> set[str]:
    """The option tags a Require/Supported header lists, lower case."""
    return {t.strip().lower() for value in resp.headers.get_all(header) for t in value.split(",")}


def _rseq(resp: Response) -> int | None:
    """The RSeq of a reliable provisional (`Require: 100rel` and an RSeq), else None.

    A 100 is never reliable (RFC 3262 §3); an RSeq that is not a number in
    1..2**32-1 makes the response an unreliable one to us (we could not PRACK it).
    """
    if resp.status == 100:
        return None
    if "100rel" not in _tokens(resp, "Require"):
        return None
    raw = (resp.headers.get("RSeq") or "").strip()
    if not raw.isdigit() or not 0 < int(raw) < 2**32:
        return None
    return int(raw)


class InviteSession:
    """One outbound INVITE and the dialog it makes; see the module docstring."""

    def __init__(self, endpoint: Endpoint, spec: SessionSpec) -> None:
        self.endpoint = endpoint
        self.spec = spec
        self.call_id = make_call_id(endpoint.rng, endpoint.local[0])
        self.local_tag = make_tag(endpoint.rng)
        self.state = SessionState.IDLE
        self.cseq = 0  # of the latest INVITE; in-dialog requests count in their dialog
        self.final_status: int | None = None
        self.final_reason = ""
        self.q850: int | None = None
        self.cancelled_by_us = False
        self._auth = (
            DigestClient(spec.credentials, endpoint.rng, spec.digest_memory)
            if spec.credentials
            else None
        )
        self._invite_tx: ClientTransaction | None = None
        self._invite: Request | None = None
        self._dialog_sets: dict[int, DialogSet] = {}  # INVITE CSeq -> the dialogs it made
        self._call: Dialog | None = None  # the dialog of the first 2xx: our call
        # (INVITE CSeq, remote tag) -> the ACK sent for that 2xx and where it went
        self._acks: dict[tuple[int, str], tuple[Request, Addr]] = {}
        self._cancel_wanted: str | None = None  # why, when not sent yet
        self._cancel_sent = False
        self._got_provisional = False
        self._early = False  # a 101-199 came for the latest INVITE
        self._bare_retry = False  # sent again without remembered answers, outcome not yet seen
        # in-dialog requests answered once after a 401/407: (method, its dialog, RSeq or 0)
        self._rechallenged: set[tuple[str, str, int]] = set()
        self._rseqs: dict[tuple[int, str], int] = {}  # (INVITE CSeq, remote tag) -> last RSeq
        self._offer_100rel = spec.prack  # also after a 421 asking for it
        self._ring_at: float | None = None
        self._give_up_at: float | None = None  # no final after CANCEL / no BYE answer

    # ------------------------------------------------------------------ API

    @property
    def ended(self) -> bool:
        return self.state is SessionState.ENDED

    def start(self, now: float) -> None:
        """Send the INVITE."""
        if self.state is not SessionState.IDLE:
            raise RuntimeError("session already started")
        self.endpoint.add_usage(self)
        if self.spec.ring_timeout is not None:
            self._ring_at = now + self.spec.ring_timeout
        self._send_invite(now)
        self.endpoint.touch(self)

    def cancel(self, now: float, why: str = "cancelled") -> None:
        """Give up before an answer: CANCEL now if a provisional came, else when one does."""
        if self.state in (SessionState.ENDED, SessionState.ENDING, SessionState.ANSWERED):
            if self.state is SessionState.ANSWERED:
                self.hangup(now)
            return
        self.cancelled_by_us = True
        if self._got_provisional:
            self._send_cancel(now, why)
        else:
            self._cancel_wanted = why
        self.endpoint.touch(self)

    def ending_request(self) -> tuple[Request, Addr] | None:
        """What would end the call as it stands, and where it goes: the CANCEL of the
        INVITE in flight, the BYE of the answered dialog; None once it is ending.

        Not sent: kept by the daemon (agent/leftovers.py) for the next process to
        send if this one dies with the call up.
        """
        ua = [("User-Agent", self.spec.user_agent)]
        if self.state is SessionState.ANSWERED and self._call is not None:
            bye = self._call.peek_request(
                "BYE", self.endpoint.via(self.endpoint.new_branch()), headers=ua
            )
            if self._auth is not None:
                self._auth.sign(bye)
            return bye, self._dest(self._call)
        if self.state in (SessionState.CALLING, SessionState.PROCEEDING) and self._invite:
            cancel = make_cancel(self._invite)  # same branch, Request-URI, CSeq (§9.1)
            for name, value in ua:
                cancel.headers.add(name, value)
            return cancel, self.spec.proxy
        return None

    def hangup(self, now: float) -> None:
        """End the call whatever its state: BYE after an answer, CANCEL before."""
        if self.state is SessionState.ANSWERED:
            self._send_bye(now)
            self.endpoint.touch(self)
        elif self.state in (SessionState.CALLING, SessionState.PROCEEDING):
            self.cancel(now, "hangup")

    # ----------------------------------------------------------- requests out

    def _base_request(self, method: str, uri: URI, cseq: int, branch: str) -> Request:
        req = Request(method, uri)
        req.headers.add("Via", self.endpoint.via(branch))
        req.headers.add("Max-Forwards", "70")
        from_addr = Address(display=self.spec.display_name or None, uri=self.spec.from_uri)
        req.headers.add("From", str(from_addr.with_tag(self.local_tag)))
        req.headers.add("To", str(Address(display=None, uri=self.spec.target)))
        req.headers.add("Call-ID", self.call_id)
        req.headers.add("CSeq", f"{cseq} {method}")
        return req

    def _contact(self) -> str:
        user = self.spec.from_uri.user or "sipclient"
        transport = ";transport=tcp" if self.endpoint.transport == "tcp" else ""
        return f"<sip:{user}@{self.endpoint.contact_host_port}{transport}>"

    def _send_invite(self, now: float) -> None:
        self.cseq += 1
        branch = self.endpoint.new_branch()
        req = self._base_request("INVITE", self.spec.target, self.cseq, branch)
        req.headers.add("Contact", self._contact())
        req.headers.add("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, NOTIFY")
        if self._offer_100rel:
            req.headers.add("Supported", "100rel")
        req.headers.add("User-Agent", self.spec.user_agent)
        if self.spec.sdp_offer:
            req.headers.add("Content-Type", "application/sdp")
            req.body = self.spec.sdp_offer
        if self._auth is not None:
            self._auth.sign(req)
        self._invite = req
        self._dialog_sets[self.cseq] = DialogSet(req)
        self.state = SessionState.CALLING
        self._got_provisional = False
        self._early = False
        # (the credentials stay with the transaction's record: a fork's 2xx after the
        # session is gone gets a BYE the PBX takes, `Endpoint._hang_up_orphan`)
        self._invite_tx = self.endpoint.start_transaction(
            req, self.spec.proxy, self, now, signer=self._auth
        )
        self.endpoint.emit(self, InviteSent(now, branch, self.cseq))

    def _send_cancel(self, now: float, why: str) -> None:
        if self._cancel_sent or self._invite is None:
            return
        self._cancel_sent = True
        self._cancel_wanted = None
        req = make_cancel(self._invite)  # same branch, Request-URI, CSeq number (§9.1)
        req.headers.add("User-Agent", self.spec.user_agent)
        self.endpoint.start_transaction(req, self.spec.proxy, self, now)
        self.state = SessionState.ENDING
        # §9.1: no final response 64*T1 after the CANCEL -> consider the INVITE done
        self._give_up_at = now + 64 * self.endpoint.t1
        self.endpoint.emit(self, CancelSent(now, why))

    def _dest(self, dialog: Dialog) -> Addr:
        """Where an in-dialog request goes: the first route, else the remote target."""
        first = dialog.route_set[0].uri if dialog.route_set else dialog.remote_target
        return uri_addr(first, self.spec.proxy)

    def _ack_2xx(self, dialog: Dialog) -> None:
        ack = dialog.make_ack(self.endpoint.via(self.endpoint.new_branch()))
        if self._auth is not None:
            self._auth.sign(ack)
        dest = self._dest(dialog)
        self._acks[(dialog.invite_seq, dialog.remote_tag)] = (ack, dest)
        self.endpoint.send_stateless(ack, dest)

    def _resend_ack(self, resp: Response) -> bool:
        """A 2xx we already ACKed came again: the same ACK again (§13.2.2.4)."""
        sent = self._acks.get((resp.cseq.seq, resp.to.tag or ""))
        if sent is None:
            return False
        self.endpoint.send_stateless(*sent)
        return True

    def _bye(self, dialog: Dialog, now: float) -> None:
        bye = dialog.make_request(
            "BYE",
            self.endpoint.via(self.endpoint.new_branch()),
            headers=[("User-Agent", self.spec.user_agent)],
        )
        if self._auth is not None:
            self._auth.sign(bye)
        dialog.terminate()
        self.endpoint.start_transaction(bye, self._dest(dialog), self, now)

    def _prack(self, dialog: Dialog, rseq: int, now: float) -> None:
        prack = dialog.make_request(
            "PRACK",
            self.endpoint.via(self.endpoint.new_branch()),
            headers=[
                ("RAck", f"{rseq} {dialog.invite_seq} INVITE"),
                ("User-Agent", self.spec.user_agent),
            ],
        )
        if self._auth is not None:
            self._auth.sign(prack)
        self.endpoint.start_transaction(prack, self._dest(dialog), self, now)
        self.endpoint.emit(self, PrackSent(now, rseq))

    def _send_bye(self, now: float) -> None:
        if self._call is None or self.state is SessionState.ENDING:
            return
        self.state = SessionState.ENDING
        self._bye(self._call, now)
        self._give_up_at = now + 64 * self.endpoint.t1
        self.endpoint.emit(self, ByeSent(now))

    # ----------------------------------------------------------- responses in

    def on_response(self, tx: ClientTransaction, response: Response, now: float) -> None:
        if self.state is SessionState.ENDED:
            if tx.method == "INVITE" and 200 <= response.status < 300:
                self._stray_2xx(response, now)
            return
        cause = q850_cause(response.headers)
        if cause is not None:
            self.q850 = cause
        if tx.method == "INVITE":
            if tx is self._invite_tx:
                self._on_invite_response(response, now)
            elif 200 <= response.status < 300:
                self._stray_2xx(response, now)
        elif tx.method == "BYE" and response.status >= 200 and self._ends_call(tx):
            if response.status in (401, 407) and self._bye_with_credentials(response, now):
                return
            self._end(now, "local")
        elif tx.method == "PRACK" and response.status in (401, 407):
            self._prack_with_credentials(tx, response, now)
        # CANCEL responses carry nothing we act on: the INVITE's 487 ends the call

    def on_timeout(self, tx: ClientTransaction, now: float) -> None:
        if self.state is SessionState.ENDED:
            return
        if tx is self._invite_tx:
            # Timer B: nothing answered at all
            self.final_status = 408
            self.final_reason = "No response (Timer B)"
            self._end(now, "timeout", local=True)
        elif tx.method == "BYE" and self._ends_call(tx):
            self._end(now, "timeout")

    def _ends_call(self, tx: ClientTransaction) -> bool:
        """Whether a BYE's outcome ends the session: the BYE of our call's dialog, not
        the one sent to another fork that answered too (that fork's 200 is no word on
        our call, which stays up until its own BYE)."""
        if self._call is None:
            return True
        try:
            return tx.request.to.tag == self._call.remote_tag
        except ParseError:
            return True

    def _bye_with_credentials(self, response: Response, now: float) -> bool:
        """A PBX that challenges in-dialog requests (some challenge every request) asked
        our BYE for credentials: the BYE once more, answering it. Ending the session on
        the 401/407 instead would leave the call up at the far end, billed. False when
        it cannot be answered, or our answer was challenged again."""
        if self._auth is None or self._call is None:
            return False
        key = ("BYE", self._call.remote_tag, 0)
        if key in self._rechallenged:
            return False
        self._rechallenged.add(key)
        try:
            # the INVITE's realm was answered, but this is another request's challenge
            self._auth.handle_challenge(response, fresh=True)
        except AuthError:
            return False
        self._bye(self._call, now)
        self._give_up_at = now + 64 * self.endpoint.t1
        return True

    def _prack_with_credentials(
        self, tx: ClientTransaction, response: Response, now: float
    ) -> None:
        """A challenged PRACK (a PBX that challenges in-dialog requests) once more with
        the answer: unacknowledged, the far end retransmits its reliable 18x and then
        may fail the call with a 5xx (RFC 3262 §3), judged as the PBX's word."""
        if self._auth is None:
            return
        try:
            rseq, invite_seq = (int(x) for x in (tx.request.headers.get("RAck") or "").split()[:2])
            dialog = self._dialog_sets[invite_seq].get(tx.request.to.tag or "")
        except (ParseError, ValueError, KeyError):
            return
        key = ("PRACK", f"{invite_seq} {tx.request.to.tag or ''}", rseq)  # RSeq: per fork
        if dialog is None or key in self._rechallenged:
            return  # our answer to its challenge was challenged again: no loop
        self._rechallenged.add(key)
        try:
            self._auth.handle_challenge(response, fresh=True)
        except AuthError:
            return
        self._prack(dialog, rseq, now)

    def on_stray_response(self, response: Response, addr: Addr, now: float) -> None:
        try:
            is_invite_2xx = response.cseq.method == "INVITE" and 200 <= response.status < 300
        except ParseError:
            return
        if is_invite_2xx:
            self._stray_2xx(response, now)

    def _stray_2xx(self, response: Response, now: float) -> None:
        """A 2xx after the INVITE transaction ended: a retransmission or another fork."""
        if self._resend_ack(response):
            return
        dialog = self._dialog_for(response)
        if dialog is None:
            return
        self._ack_2xx(dialog)
        self._bye(dialog, now)  # a second fork answered: we want one call

    def _dialog_for(self, resp: Response) -> Dialog | None:
        """The dialog a response to one of our INVITEs creates or updates, if any.

        None for a 100, a response without a To tag, one to no INVITE we sent, and one
        whose Contact or Record-Route cannot be read (no dialog we could route into).
        A final >= 300 ends the early dialogs of its INVITE.
        """
        dialogs = self._dialog_sets.get(resp.cseq.seq)
        if dialogs is None:
            return None
        try:
            return dialogs.on_response(resp)
        except DialogError:
            return None

    def _dialog_of(self, request: Request) -> Dialog | None:
        """The dialog (early, confirmed or over) a request from the far end belongs to."""
        tag = request.from_.tag or ""
        for dialogs in reversed(self._dialog_sets.values()):
            dialog = dialogs.get(tag)
            if dialog is not None and dialog.matches(request):
                return dialog
        return None

    def _on_invite_response(self, resp: Response, now: float) -> None:
        status = resp.status
        reason = resp.reason or ""
        if self._bare_retry and status > 100 and status not in (401, 407):
            self._bare_retry = False
            if status != 403 and self.spec.digest_memory is not None:
                # the PBX took this call's own answer where it refused the remembered one
                self.spec.digest_memory.refused = True
                self.endpoint.emit(self, PreemptiveAuthRefused(now))
        if status < 200:
            if status > 100:
                self._early = True
            dialog = self._dialog_for(resp)
            rseq = _rseq(resp) if dialog is not None else None
            if dialog is not None and rseq is not None:
                key = (dialog.invite_seq, dialog.remote_tag)
                last = self._rseqs.get(key)
                if last is not None and rseq != last + 1:
                    return  # a retransmission, or one out of order: RFC 3262 §4
                self._rseqs[key] = rseq
                self._prack(dialog, rseq, now)
            self._got_provisional = True
            if self.state is SessionState.CALLING:
                self.state = SessionState.PROCEEDING
            sdp = resp.body if _is_sdp(resp) else None
            tag = dialog.remote_tag if dialog else None
            self.endpoint.emit(
                self, ProvisionalReceived(now, status, reason, sdp, tag, q850_cause(resp.headers))
            )
            if self._cancel_wanted is not None:
                self._send_cancel(now, self._cancel_wanted)
            return
        if 200 <= status < 300:
            self._on_2xx(resp, now)
            return
        self._dialog_for(resp)  # ends this INVITE's early dialogs
        self.final_status = status
        self.final_reason = reason
        if status in (401, 407) and self._auth is not None and self._may_invite_again():
            try:
                self._auth.handle_challenge(resp)
            except AuthError:
                self._end(now, "auth")
                return
            # the challenge is not the call's outcome: the retry's final response will be
            self.final_status = None
            self.final_reason = ""
            self._send_invite(now)
            return
        if (
            status == 403
            and self._auth is not None
            and self._auth.preemptive
            and not self._early
            and self._may_invite_again()
        ):
            # Forbidden for a remembered answer: once more as plain digest would have
            # gone (module docstring)
            self._auth.forget_remembered()
            self._bare_retry = True
            self.final_status = None
            self.final_reason = ""
            self._send_invite(now)
            return
        if (
            status == 421
            and not self._offer_100rel
            and "100rel" in _tokens(resp, "Require")
            and self._may_invite_again()
        ):
            # the far end insists on reliable provisionals: once more, offering them
            self._offer_100rel = True
            self.final_status = None
            self.final_reason = ""
            self._send_invite(now)
            return
        self._end(now, "local" if self.cancelled_by_us and status == 487 else "remote")

    def _may_invite_again(self) -> bool:
        # a CANCEL asked before the challenge (or the 421): do not start a new INVITE
        return self._cancel_wanted is None and not self._cancel_sent

    def _on_2xx(self, resp: Response, now: float) -> None:
        if self._resend_ack(resp):
            return
        dialog = self._dialog_for(resp)
        if dialog is None:
            # a 2xx without a To tag (or an unreadable Contact / Record-Route) is broken:
            # we cannot ACK it into a dialog
            self.final_status = resp.status
            self.final_reason = resp.reason or ""
            self._end(now, "remote")
            return
        self._ack_2xx(dialog)
        if self._call is not None:
            self._bye(dialog, now)  # another fork answered too
            return
        self._call = dialog
        self.final_status = resp.status
        self.final_reason = resp.reason or ""
        sdp = resp.body if _is_sdp(resp) else None
        crossed = self.cancelled_by_us
        self.state = SessionState.ANSWERED
        self.endpoint.emit(
            self, Answered(now, resp.status, resp.reason or "", sdp, dialog.remote_tag)
        )
        if crossed:
            # our CANCEL crossed this 2xx (§9.1 / §15): the call exists, end it
            self._send_bye(now)

    # ----------------------------------------------------------- requests in

    def on_request(self, request: Request, addr: Addr, now: float) -> Response | None:
        method = request.method
        if method == "ACK":
            return None
        dialog = self._dialog_of(request)
        if dialog is None:
            return make_response(request, 481)
        if not dialog.accept_remote_cseq(request):
            return make_response(request, 500, "CSeq Out of Order")  # §12.2.2
        if method == "BYE":
            dialog.terminate()
            resp = make_response(request, 200)
            if self.state is not SessionState.ENDED:
                self._end(now, "remote")
            return resp
        if method in ("OPTIONS", "NOTIFY", "INFO"):
            return make_response(request, 200)
        if method in ("INVITE", "UPDATE"):
            # we keep the session as negotiated (RFC 3261 §14.2: 488 keeps the old one)
            resp = make_response(request, 488, "Not Acceptable Here")
            resp.headers.add("Warning", '399 sipclient "session changes are not supported"')
            return resp
        resp = make_response(request, 405)
        resp.headers.add("Allow", "ACK, BYE, OPTIONS, NOTIFY, INFO")
        return resp

    # ----------------------------------------------------------- timers

    def get_timer(self) -> float | None:
        times = [t for t in (self._ring_at, self._give_up_at) if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        if self._ring_at is not None and now >= self._ring_at:
            self._ring_at = None
            if self.state in (SessionState.CALLING, SessionState.PROCEEDING):
                self.cancel(now, "ring timeout")
        if self._give_up_at is not None and now >= self._give_up_at:
            self._give_up_at = None
            if self.state is SessionState.ENDING:
                self._end(now, "timeout")

    # ----------------------------------------------------------- end

    def _end(self, now: float, ended_by: str, *, local: bool = False) -> None:
        if self.state is SessionState.ENDED:
            return
        self.state = SessionState.ENDED
        self._ring_at = None
        self._give_up_at = None
        self._cancel_wanted = None
        self.endpoint.emit(
            self,
            SessionEnded(
                at=now,
                status=self.final_status,
                reason=self.final_reason,
                q850=self.q850,
                cancelled_by_us=self.cancelled_by_us,
                ended_by=ended_by,
                local=local,
            ),
        )

    def close(self) -> None:
        """Forget the session in the endpoint (after its end was read).

        Also lets go of the INVITE transaction, whose `owner` is this session: the
        pair was a reference cycle, so every call's session, dialogs, requests and
        responses outlived the transaction's Timer D until a full collection found
        them (a quarter of a million objects at 200 lines, scanned in 190 ms
        pauses; agent/heap.py). Freed by reference counting now, when the
        endpoint drops the transaction: at once for a non-2xx final, whose
        Timer D the endpoint serves from a light record (endpoint._Completed).
        An ended session no longer needs it: `on_response` and `on_timeout` go
        by the method once ENDED.
        """
        self.endpoint.remove_usage(self)
        if self.state is SessionState.ENDED:
            self._invite_tx = None
