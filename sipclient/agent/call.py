"""One outbound call on the asyncio side: drives an `InviteSession`, yields a `CallOutcome`.

    call = Call(stack, spec, number="4045550000", local_rtp=("127.0.0.1", 20000),
                on_early_media=media_started, on_media_ended=media_ended)
    await call.start()          # the INVITE is on the wire
    ...
    call.cancel()               # or call.hangup(): CANCEL before an answer, BYE after
    outcome = await call.ended()
    outcome.signalling()        # -> sipclient.classify.verdicts.Signalling

Media hooks (for the RTP layer): `on_early_media(media: MediaInfo)` is called
once, when the first SDP answer arrives (a 183's or the 200's); it may be a
plain function or a coroutine function (then run as a task).
`on_media_ended(outcome)` is called once the call is over. `on_provisional(status)`
is called for each 1xx (the daemon's "during" status, a test's cue to cancel), and
`on_answered(status)` once, when the 2xx arrives (the daemon's "call" status and the
classifier's signalling: a hook, so nobody has to poll `outcome.answered`). The call offers
PCMU, PCMA, G722 and telephone-event at `local_rtp`.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import structlog

from sipclient.agent.leftovers import Leftover
from sipclient.agent.transport import SipStack
from sipclient.classify.verdicts import Signalling
from sipclient.logs import get_logger
from sipclient.sip.invite import (
    Answered,
    ByeSent,
    CancelSent,
    InviteSent,
    InviteSession,
    PrackSent,
    PreemptiveAuthRefused,
    ProvisionalReceived,
    SessionEnded,
    SessionSpec,
)
from sipclient.sip.sdp import SdpError, make_offer, parse_answer

log = get_logger(__name__)

Addr = tuple[str, int]


@dataclass(frozen=True)
class MediaInfo:
    """The negotiated far end of the audio: where its RTP comes from, in what codec."""

    remote_addr: Addr | None
    codec: str | None
    payload_type: int | None
    clock_rate: int | None = None
    telephone_event: int | None = None
    """The RFC 4733 payload type, when the answer kept it."""
    direction: str | None = None
    problem: str | None = None
    """Why the answer is not usable (no common codec, port 0), else None."""


@dataclass
class CallTimes:
    """Epoch seconds of the call's moments (None: it did not happen)."""

    invite: float | None = None
    first_provisional: float | None = None
    ringing: float | None = None
    early_media: float | None = None
    answer: float | None = None
    end: float | None = None

    def ms_between(self, a: str, b: str) -> int | None:
        start, stop = getattr(self, a), getattr(self, b)
        return None if start is None or stop is None else round((stop - start) * 1000)


@dataclass
class CallOutcome:
    """What happened to one call, for the classifier, the upload and the CLI."""

    number: str
    sip_code: int | None = None
    reason: str = ""
    q850_cause: int | None = None
    ringing: bool = False
    early_media: bool = False
    answered: bool = False
    cancelled_by_us: bool = False
    ended_by: str = ""
    local_code: bool = False
    """True when `sip_code` was made up here (408 after Timer B)."""
    cancel_reason: str | None = None
    times: CallTimes = field(default_factory=CallTimes)
    media: MediaInfo | None = None
    call_id: str = ""

    def signalling(self) -> Signalling:
        """The classifier's view of this call."""
        return Signalling(
            sip_code=self.sip_code,
            sip_reason=self.reason,
            q850_cause=self.q850_cause,
            ringing=self.ringing,
            early_media=self.early_media,
            answered=self.answered,
            cancelled_by_us=self.cancelled_by_us,
            cancel_reason=classifier_cancel_reason(self.cancel_reason),
        )

    def as_json(self) -> dict[str, Any]:
        """JSON-ready form (times in epoch seconds)."""
        out = asdict(self)
        if self.media is not None and self.media.remote_addr is not None:
            host, port = self.media.remote_addr
            out["media"]["remote_addr"] = f"{host}:{port}"
        return out


def classifier_cancel_reason(why: str | None) -> str:
    """Our CANCEL's reason in the classifier's words (`Signalling.cancel_reason`).

    The INVITE session says "ring timeout"; the daemon cancels with "decided
    <verdict>" or "daemon stopping".
    """
    if not why:
        return ""
    if why == "ring timeout":
        return "ring_timeout"
    if why.startswith("decided"):
        return "verdict"
    if "stopping" in why:
        return "shutdown"
    return why


MediaStarted = Callable[[MediaInfo], Awaitable[None] | None]
MediaEnded = Callable[[CallOutcome], Awaitable[None] | None]


def media_from_sdp(body: bytes) -> MediaInfo:
    """The negotiated media of an SDP answer; a bad body is a `problem`, not an error."""
    try:
        answer = parse_answer(body)
    except SdpError as exc:
        return MediaInfo(None, None, None, problem=f"bad SDP: {exc}")
    codec = answer.codec
    return MediaInfo(
        remote_addr=(answer.address, answer.port),
        codec=codec.name if codec else None,
        payload_type=codec.payload_type if codec else None,
        clock_rate=codec.clock_rate if codec else None,
        telephone_event=answer.dtmf_payload_type,
        direction=answer.direction,
        problem=answer.problem,
    )


class Call:
    """One outbound call; see the module docstring."""

    def __init__(
        self,
        stack: SipStack,
        spec: SessionSpec,
        *,
        number: str,
        local_rtp: Addr,
        on_early_media: MediaStarted | None = None,
        on_media_ended: MediaEnded | None = None,
        on_provisional: Callable[[int], None] | None = None,
        on_answered: Callable[[int], None] | None = None,
    ) -> None:
        ep = stack.ep
        offer = make_offer(local_rtp[0], local_rtp[1], session_id=ep.rng.getrandbits(31))
        self.stack = stack
        self.session = InviteSession(ep, _with_offer(spec, offer))
        self.outcome = CallOutcome(number=number, call_id=self.session.call_id)
        # Events arrive through the transport's callbacks, outside the caller's
        # context: keep the caller's log context (clientId, extension, phone).
        self._log = log.bind(**structlog.contextvars.get_contextvars())
        self._on_early_media = on_early_media
        self._on_media_ended = on_media_ended
        self._on_provisional = on_provisional
        self._on_answered = on_answered
        self._done = asyncio.get_running_loop().create_future()
        self._tasks: set[asyncio.Task[None]] = set()
        self._media_announced = False

    @property
    def call_id(self) -> str:
        return self.session.call_id

    @property
    def done(self) -> bool:
        return self._done.done()

    async def start(self) -> None:
        """Send the INVITE."""
        self.stack.subscribe(self.session, self._on_event)
        self.session.start(self.stack.now())
        self.stack.pump()

    def cancel(self, why: str = "cancelled") -> None:
        """CANCEL (sent once a provisional came, RFC 3261 §9.1); BYE if already answered."""
        if self.done:
            return
        self.session.cancel(self.stack.now(), why)
        self.stack.pump()

    def hangup(self) -> None:
        """End the call whatever its state."""
        if self.done:
            return
        self.session.hangup(self.stack.now())
        self.stack.pump()

    async def ended(self) -> CallOutcome:
        """Wait for the end of the call; its outcome."""
        return await asyncio.shield(self._done)

    # ----------------------------------------------------------------- events

    def _on_event(self, event: object) -> None:
        out = self.outcome
        epoch = self.stack.epoch
        if isinstance(event, InviteSent):
            if out.times.invite is None:
                out.times.invite = epoch(event.at)
            self._keep_ending()
        elif isinstance(event, ProvisionalReceived):
            if out.times.first_provisional is None:
                out.times.first_provisional = epoch(event.at)
            if event.q850 is not None:
                out.q850_cause = event.q850
            if event.status == 180 and out.times.ringing is None:
                out.ringing = True
                out.times.ringing = epoch(event.at)
            if event.status == 183 and out.times.early_media is None:
                out.early_media = True
                out.times.early_media = epoch(event.at)
            if event.sdp is not None:
                out.early_media = True
                self._media(event.sdp)
            if self._on_provisional is not None:
                self._run_hook(self._on_provisional, event.status)
        elif isinstance(event, Answered):
            first = not out.answered
            out.answered = True
            out.times.answer = epoch(event.at)
            if first:
                # a BYE now ends it, not the CANCEL: journalled before any hook runs,
                # as a hook that ends the call pumps the stack, and the ACK goes then
                self._keep_ending()
            if event.sdp is not None:
                self._media(event.sdp)
            if first and self._on_answered is not None:
                self._run_hook(self._on_answered, event.status)
        elif isinstance(event, CancelSent):
            out.cancel_reason = event.why
            self._log.debug("call_cancel_sent", number=out.number, why=event.why)
        elif isinstance(event, ByeSent):
            self._log.debug("call_bye_sent", number=out.number)
        elif isinstance(event, PrackSent):
            self._log.debug("call_prack_sent", number=out.number, rseq=event.rseq)
        elif isinstance(event, PreemptiveAuthRefused):
            # once per account: its calls answer their own challenges from now on
            self._log.warning(
                "preemptive_auth_refused",
                number=out.number,
                hint="the PBX refused a remembered digest answer with 403 instead of a"
                " challenge: each call of this extension is challenged from now on",
            )
        elif isinstance(event, SessionEnded):
            self._finish(event)

    def _keep_ending(self) -> None:
        """Journal what would end the call now, for the next process if this one dies."""
        journal = self.stack.journal
        if journal is None:
            return
        ending = self.session.ending_request()
        if ending is None:
            return
        request, (host, port) = ending
        journal.record(
            Leftover(
                self.call_id,
                request.method,
                host,
                port,
                self.stack.ep.transport,
                request.serialize(),
            )
        )

    def _media(self, sdp: bytes) -> None:
        info = media_from_sdp(sdp)
        if self.outcome.media is None or self.outcome.media.problem is not None:
            self.outcome.media = info
        if self._media_announced or info.problem is not None:
            return
        self._media_announced = True
        self._run_hook(self._on_early_media, info)

    def _finish(self, event: SessionEnded) -> None:
        out = self.outcome
        out.sip_code = event.status
        out.reason = event.reason
        if event.q850 is not None:
            out.q850_cause = event.q850
        out.cancelled_by_us = event.cancelled_by_us
        out.ended_by = event.ended_by
        out.local_code = event.local
        out.times.end = self.stack.epoch(event.at)
        if self.stack.journal is not None:
            self.stack.journal.forget(self.call_id)
        self.stack.unsubscribe(self.session)
        if event.ended_by == "timeout" and event.local:
            # Timer B: a PBX that was hung may yet run our INVITE when it recovers, and
            # a callee answer it. The session stays in the endpoint another 64*T1 so
            # such a 2xx is ACKed and BYEd at once, not left up (and billed) until the
            # callee's side gives up on its retransmissions.
            self.stack.loop.call_later(64 * self.stack.ep.t1, self.session.close)
        else:
            self.session.close()
        # debug: the daemon's `call_classified` is a call's one line at info
        self._log.debug(
            "call_ended",
            number=out.number,
            sip_code=out.sip_code,
            q850=out.q850_cause,
            ended_by=out.ended_by,
            call_id=out.call_id,
        )
        self._run_hook(self._on_media_ended, out)
        # The hooks are closures of whoever placed the call and often hold the call
        # itself: kept, each call (its classifier, recorder, receiver) outlived its
        # end in a reference cycle until a full collection found it (agent/heap.py).
        # No event comes after the end to run them.
        self._on_early_media = self._on_media_ended = None
        self._on_provisional = self._on_answered = None
        if not self._done.done():
            self._done.set_result(out)

    def _run_hook(self, hook: Callable[[Any], Awaitable[None] | None] | None, arg: Any) -> None:
        if hook is None:
            return
        try:
            result = hook(arg)
        except Exception:
            self._log.exception("call_media_hook_failed", number=self.outcome.number)
            return
        if inspect.isawaitable(result):

            async def run(awaitable: Awaitable[None]) -> None:
                try:
                    await awaitable
                except Exception:
                    self._log.exception("call_media_hook_failed", number=self.outcome.number)

            task = asyncio.get_running_loop().create_task(run(result))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


def _with_offer(spec: SessionSpec, offer: bytes) -> SessionSpec:
    return replace(spec, sdp_offer=offer)
