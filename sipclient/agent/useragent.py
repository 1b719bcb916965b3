"""One extension account on the asyncio side: its registration and its calls.

    ua = UserAgent(stack, Account.parse("1001:secret@10.0.0.5:5060"), expires=300)
    ok = await ua.register(timeout=10)       # True once registered
    ua.state, ua.reason                      # "registered" / "unregistered", why not
    ua.on_state = lambda ua: ...             # called on every change of state
    ok = await ua.recheck(timeout=40)        # REGISTER now: does the registrar answer?
    call = ua.call("4045550000", local_rtp=("10.0.0.9", 20000), ring_timeout=60)
    await ua.stop()                          # un-REGISTER

The registration keeps itself alive in the sans-IO core (refresh before
expiry, capped back-off after a failure, 423 Min-Expires); this class only
turns its events into `state` / `reason`, the `registered` asyncio.Event and
the `on_state` callback the daemon watches.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass

from sipclient.agent.call import Call, MediaEnded, MediaStarted
from sipclient.agent.transport import SipStack
from sipclient.config import HostPort
from sipclient.logs import get_logger
from sipclient.phone import dial_string, is_user_part, not_dialable
from sipclient.sip.auth import DigestCredentials, DigestMemory
from sipclient.sip.invite import SessionSpec
from sipclient.sip.message import URI
from sipclient.sip.registration import (
    Registered,
    Registration,
    RegistrationFailed,
    RegistrationSpec,
    RegistrationStopped,
    RegState,
)

log = get_logger(__name__)

_ACCOUNT_RE = re.compile(r"^(?P<ext>[^:@\s]+):(?P<pw>[^@]*)@(?P<host>.+)$")
__all__ = ["Account", "UserAgent", "dial_string"]


@dataclass(frozen=True)
class Account:
    """An extension: its number, password, the PBX (registrar) and the SIP domain."""

    extension: str
    password: str
    host: HostPort
    transport: str = "udp"
    domain: str = ""

    @classmethod
    def parse(cls, text: str, *, transport: str = "udp") -> Account:
        """Read "EXT:PASSWORD@HOST:PORT" (the password may contain ':' but not '@')."""
        match = _ACCOUNT_RE.match(text.strip())
        if not match:
            raise ValueError(f'expected "EXT:PASSWORD@HOST:PORT", got {text!r}')
        ext = match.group("ext")
        if not is_user_part(ext):
            raise ValueError(f"extension {ext!r} has characters a SIP user part cannot carry")
        host = HostPort.parse(match.group("host"))
        return cls(ext, match.group("pw"), host, transport)

    @property
    def sip_domain(self) -> str:
        """The domain of our AOR: `domain`, else the PBX's host:port."""
        return self.domain or str(self.host)

    def __repr__(self) -> str:  # no password in logs
        return f"Account({self.extension}@{self.host}, {self.transport})"


class UserAgent:
    """One registered extension; see the module docstring."""

    def __init__(
        self,
        stack: SipStack,
        account: Account,
        *,
        expires: int = 300,
        user_agent: str = "sipclient",
        prack: bool = True,
        preemptive_auth: bool = True,
        on_state: Callable[[UserAgent], None] | None = None,
    ) -> None:
        self.stack = stack
        self.account = account
        self.user_agent = user_agent
        self.prack = prack
        """Advertise reliable provisionals in our INVITEs (`sip.prack`, RFC 3262)."""
        self.on_state = on_state
        self.registered = asyncio.Event()
        self.credentials = DigestCredentials(account.extension, account.password)
        self.digest_memory = DigestMemory() if preemptive_auth else None
        """The challenges this extension's calls were sent, answered by the next
        INVITE before it is challenged (`sip.preemptive_auth`; sip/auth.py)."""
        self._proxy = (account.host.host, account.host.port)
        domain = account.sip_domain
        self.registration = Registration(
            stack.ep,
            RegistrationSpec(
                aor=URI.parse(f"sip:{account.extension}@{domain}"),
                registrar=URI.parse(f"sip:{domain}"),
                proxy=self._proxy,
                credentials=self.credentials,
                expires=expires,
                user_agent=user_agent,
            ),
        )
        self._changed = asyncio.Event()
        self._stopped = asyncio.Event()
        self._rechecks: list[asyncio.Future[bool]] = []
        self.last_status: int | None = None
        stack.subscribe(self.registration, self._on_event)

    @property
    def state(self) -> str:
        """ "registered" or "unregistered" (or "registering"/"unregistering" in between)."""
        return self.registration.state.value

    @property
    def reason(self) -> str:
        """Why we are not registered ("" when we are)."""
        return self.registration.reason

    async def register(self, timeout: float = 10.0) -> bool:
        """Start registering; True once registered, False on failure or timeout.

        After a failure the core keeps retrying with back-off; this only
        reports the first outcome.
        """
        self._changed.clear()
        self.registration.start(self.stack.now())
        self.stack.pump()
        deadline = self.stack.now() + timeout
        while self.registration.state is not RegState.REGISTERED:
            remaining = deadline - self.stack.now()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return False
            self._changed.clear()
            if self.registration.state is RegState.UNREGISTERED:
                return False
        return True

    async def recheck(self, timeout: float) -> bool:
        """REGISTER now and wait for the registrar's answer: True when it granted the
        binding, False when it refused, did not answer (Timer F) or `timeout` passed.

        The daemon asks this after a PBX fault on a call (no answer at all to the
        INVITE, or our digest refused): the PBX may be gone, or the password
        changed. A failure also turns the state to "unregistered" (`on_state`), and
        the core goes on retrying with its back-off as after any failure.
        """
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._rechecks.append(waiter)
        try:
            self.registration.refresh(self.stack.now())
            self.stack.pump()
            return await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            return False
        finally:
            if waiter in self._rechecks:
                self._rechecks.remove(waiter)

    async def stop(self, timeout: float = 5.0) -> None:
        """Un-REGISTER and wait (bounded) for the registrar's answer."""
        self._stopped.clear()
        self.registration.stop(self.stack.now())
        self.stack.pump()
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout)
        except TimeoutError:
            log.warning("unregister_timeout", extension=self.account.extension)
        self.stack.unsubscribe(self.registration)
        self.registration.close()

    def call(
        self,
        number: str,
        *,
        local_rtp: tuple[str, int],
        ring_timeout: float | None = None,
        on_early_media: MediaStarted | None = None,
        on_media_ended: MediaEnded | None = None,
        on_provisional: Callable[[int], None] | None = None,
        on_answered: Callable[[int], None] | None = None,
    ) -> Call:
        """A new outbound call from this extension (not started: `await call.start()`)."""
        why = not_dialable(number)
        if why:
            raise ValueError(why)
        user = dial_string(number)
        domain = self.account.sip_domain
        spec = SessionSpec(
            target=URI.parse(f"sip:{user}@{domain}"),
            from_uri=URI.parse(f"sip:{self.account.extension}@{domain}"),
            proxy=self._proxy,
            credentials=self.credentials,
            ring_timeout=ring_timeout,
            user_agent=self.user_agent,
            prack=self.prack,
            digest_memory=self.digest_memory,
        )
        return Call(
            self.stack,
            spec,
            number=number,
            local_rtp=local_rtp,
            on_early_media=on_early_media,
            on_media_ended=on_media_ended,
            on_provisional=on_provisional,
            on_answered=on_answered,
        )

    def _on_event(self, event: object) -> None:
        if isinstance(event, Registered):
            self.registered.set()
            log.info("registered", extension=self.account.extension, expires=event.expires)
        elif isinstance(event, RegistrationFailed):
            self.registered.clear()
            self.last_status = event.status
            log.warning(
                "registration_failed",
                extension=self.account.extension,
                status=event.status,
                reason=event.reason,
            )
        elif isinstance(event, RegistrationStopped):
            self.registered.clear()
            self._stopped.set()
        self._changed.set()
        if self.on_state is not None:
            self.on_state(self)
        if self._rechecks:
            ok = isinstance(event, Registered)
            for waiter in self._rechecks:
                if not waiter.done():
                    waiter.set_result(ok)
            self._rechecks.clear()
