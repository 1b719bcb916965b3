"""One extension's registration binding (RFC 3261 §10), sans-IO.

    reg = Registration(endpoint, RegistrationSpec(aor, registrar, proxy, credentials))
    reg.start(now)     # REGISTER; after 401/407 again with digest credentials
    reg.stop(now)      # un-REGISTER (Expires: 0), then `RegistrationStopped`
    reg.refresh(now)   # REGISTER again now (the registrar's liveness in doubt)

State: `reg.state` is `RegState.REGISTERED` or `UNREGISTERED` (plus the
transient `REGISTERING` / `UNREGISTERING`), `reg.reason` says why it is not
registered ("" when it is). Events, drained from the endpoint as
`(reg, event)`:

- `Registered(at, expires, contact)` every successful REGISTER (refreshes too);
- `RegistrationFailed(at, status, reason, retry_at)` a refused or unanswered
  REGISTER; the binding is tried again at `retry_at` (capped exponential
  back-off with jitter: 2, 4, 8 ... `backoff_max` seconds);
- `RegistrationStopped(at, status)` after `stop()`.

Refresh: at half the granted expiry for short bindings, 30 s before it for
long ones. A 423 Interval Too Brief retries at once with its Min-Expires.
A refresh answers the last challenge again (nonce count up, as RFC 7616
allows); a registrar that refuses such a remembered answer with a 403 instead
of a new challenge (an expired or one-time nonce) gets the REGISTER once more
at once without it, so the binding is not lost to that 403 and the back-off. A
403 to an answer of a challenge just received is a refusal, as before.
When the registrar tells us (Via received/rport) that it sees us at another
address than our Contact, the next REGISTER corrects the Contact (RFC 3581,
a NAT between us and the PBX).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sipclient.sip.auth import AuthError, DigestClient, DigestCredentials
from sipclient.sip.endpoint import Addr, ClientTransaction, Endpoint
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


class RegState(StrEnum):
    UNREGISTERED = "unregistered"
    REGISTERING = "registering"
    REGISTERED = "registered"
    UNREGISTERING = "unregistering"


@dataclass(frozen=True)
class Registered:
    at: float
    expires: int
    contact: str


@dataclass(frozen=True)
class RegistrationFailed:
    at: float
    status: int | None
    reason: str
    retry_at: float | None


@dataclass(frozen=True)
class RegistrationStopped:
    at: float
    status: int | None


@dataclass(frozen=True)
class RegistrationSpec:
    aor: URI
    """Address of record, sip:1001@domain (From and To)."""
    registrar: URI
    """Request-URI of the REGISTER, sip:domain."""
    proxy: Addr
    """Where the REGISTER goes."""
    credentials: DigestCredentials | None = None
    expires: int = 300
    backoff_initial: float = 2.0
    backoff_max: float = 60.0
    """A PBX back after a long outage sees each extension again within this
    (jittered); 200 lines retrying a dead one send ~3 REGISTERs a second.
    Until session 6 it was 300 s: five minutes of idle lines after an outage."""
    user_agent: str = "sipclient"


class Registration:
    """The binding of one AOR to our contact; see the module docstring."""

    def __init__(self, endpoint: Endpoint, spec: RegistrationSpec) -> None:
        self.endpoint = endpoint
        self.spec = spec
        self.call_id = make_call_id(endpoint.rng, endpoint.local[0])
        self.from_tag = make_tag(endpoint.rng)
        self.cseq = 0
        self.state = RegState.UNREGISTERED
        self.reason = "not started"
        self.expires = spec.expires
        self.registered_until: float | None = None
        self.failures = 0
        self._auth = DigestClient(spec.credentials, endpoint.rng) if spec.credentials else None
        self._tx: ClientTransaction | None = None
        self._refresh_at: float | None = None
        self._retry_at: float | None = None
        self._contact_addr: Addr | None = None
        self._stopping = False
        self._started = False
        self._fresh_auth_tried = False
        self._min_expires_retries = 0
        self._remembered = False  # the REGISTER in flight answers an earlier REGISTER's challenge

    # ------------------------------------------------------------------ API

    def start(self, now: float) -> None:
        """Register now (and keep the binding refreshed until `stop`)."""
        if not self._started:
            self._started = True
            self.endpoint.add_usage(self)
        self._stopping = False
        self._send(now, self.expires)
        self.endpoint.touch(self)

    def refresh(self, now: float) -> None:
        """REGISTER again now, ahead of the refresh timer or the back-off.

        For a binding in doubt: an INVITE the PBX never answered (Timer B) may
        mean the PBX is gone, and a REGISTER says so within Timer F. A REGISTER
        already in flight answers that question, so none is added to it.
        """
        if not self._started or self._stopping or self._tx is not None:
            return
        self._send(now, self.expires)
        self.endpoint.touch(self)

    def stop(self, now: float) -> None:
        """Remove the binding (REGISTER with Expires: 0); `RegistrationStopped` follows."""
        self._stopping = True
        self._refresh_at = None
        self._retry_at = None
        if self.state is RegState.REGISTERED or self._tx is not None:
            self._send(now, 0)
        else:
            self._stopped(now, None)
        self.endpoint.touch(self)

    @property
    def contact(self) -> str:
        host, port = self._contact_addr or self.endpoint.local
        hp = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        user = self.spec.aor.user or "sipclient"
        transport = ";transport=tcp" if self.endpoint.transport == "tcp" else ""
        return f"<sip:{user}@{hp}{transport}>"

    # ----------------------------------------------------------- requests out

    def _send(self, now: float, expires: int, *, answering: bool = False) -> None:
        """REGISTER; `answering`: it answers the challenge the last one just got."""
        self.cseq += 1
        branch = self.endpoint.new_branch()
        req = Request("REGISTER", self.spec.registrar)
        req.headers.add("Via", self.endpoint.via(branch))
        req.headers.add("Max-Forwards", "70")
        aor = Address(self.spec.aor)
        req.headers.add("From", str(aor.with_tag(self.from_tag)))
        req.headers.add("To", str(aor))
        req.headers.add("Call-ID", self.call_id)
        req.headers.add("CSeq", f"{self.cseq} REGISTER")
        req.headers.add("Contact", self.contact)
        req.headers.add("Expires", str(expires))
        req.headers.add("User-Agent", self.spec.user_agent)
        if self._auth is not None:
            self._remembered = self._auth.has_challenges and not answering
            self._auth.sign(req)
        self.state = RegState.UNREGISTERING if expires == 0 else RegState.REGISTERING
        self._refresh_at = None
        self._retry_at = None
        self._tx = self.endpoint.start_transaction(req, self.spec.proxy, self, now)

    # ----------------------------------------------------------- responses in

    def on_response(self, tx: ClientTransaction, response: Response, now: float) -> None:
        if tx is not self._tx or response.status < 200:
            return
        self._tx = None
        status = response.status
        if self._stopping:
            if status in (401, 407) and self._answer_challenge(response):
                self._send(now, 0, answering=True)
                return
            self._stopped(now, status)
            return
        if 200 <= status < 300:
            self._on_ok(response, now)
            return
        if status in (401, 407):
            if self._answer_challenge(response):
                self._send(now, self.expires, answering=True)
                return
            self._fail(now, status, "authentication refused")
            return
        if (
            status == 403
            and self._remembered
            and self._auth is not None
            and not self._fresh_auth_tried
        ):
            # a remembered answer refused outright (module docstring): once more, bare
            self._fresh_auth_tried = True
            self._auth.reset()
            self._send(now, self.expires)
            return
        if status == 423:
            min_expires = _int_header(response, "Min-Expires")
            if min_expires and min_expires > self.expires and self._min_expires_retries < 3:
                self._min_expires_retries += 1
                self.expires = min_expires
                self._send(now, self.expires)
                return
        self._fail(now, status, f"{status} {response.reason or ''}".strip())

    def _answer_challenge(self, response: Response) -> bool:
        if self._auth is None:
            return False
        try:
            self._auth.handle_challenge(response)
        except AuthError:
            if self._fresh_auth_tried:
                return False
            # a registrar may forget its nonces (restart) and challenge anew without
            # stale=true: answer once with a clean slate before calling it refused
            self._fresh_auth_tried = True
            self._auth.reset()
            try:
                self._auth.handle_challenge(response)
            except AuthError:
                return False
        return True

    def _granted_expires(self, response: Response) -> int:
        """Our contact's expires in the 2xx (§10.2.4), else Expires, else what we asked."""
        ours = self._contact_addr or self.endpoint.local
        for value in response.headers.get_all("Contact"):
            try:
                addr = Address.parse(value)
            except ParseError:
                continue
            if addr.uri.host.strip("[]") == ours[0] and (addr.uri.port or 5060) == ours[1]:
                exp = addr.params.get("expires")
                if exp and exp.isdigit():
                    return int(exp)
        header = _int_header(response, "Expires")
        return header if header is not None else self.expires

    def _on_ok(self, response: Response, now: float) -> None:
        # a NAT rewrote our address: correct the Contact once and register again
        seen = self.endpoint.public_addr
        if seen is not None and seen != (self._contact_addr or self.endpoint.local):
            self._contact_addr = seen
            self._send(now, self.expires)
            return
        granted = self._granted_expires(response)
        if granted <= 0:
            self._fail(now, response.status, "registrar granted no binding")
            return
        self.state = RegState.REGISTERED
        self.reason = ""
        self.failures = 0
        self._fresh_auth_tried = False
        self.registered_until = now + granted
        self._refresh_at = now + (granted / 2 if granted <= 120 else granted - 30)
        self.endpoint.emit(self, Registered(now, granted, self.contact))

    def on_timeout(self, tx: ClientTransaction, now: float) -> None:
        if tx is not self._tx:
            return
        self._tx = None
        if self._stopping:
            self._stopped(now, None)
            return
        self._fail(now, None, "no response from registrar")

    def on_stray_response(self, response: Response, addr: Addr, now: float) -> None:
        return

    def on_request(self, request: Request, addr: Addr, now: float) -> Response | None:
        if request.method == "ACK":
            return None
        return make_response(request, 481)

    # ----------------------------------------------------------- timers

    def get_timer(self) -> float | None:
        times = [t for t in (self._refresh_at, self._retry_at) if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        if self._refresh_at is not None and now >= self._refresh_at:
            self._refresh_at = None
            if self._tx is None and not self._stopping:
                self._send(now, self.expires)
        if self._retry_at is not None and now >= self._retry_at:
            self._retry_at = None
            if self._tx is None and not self._stopping:
                self._send(now, self.expires)

    # ----------------------------------------------------------- outcomes

    def _fail(self, now: float, status: int | None, reason: str) -> None:
        self.failures += 1
        self.state = RegState.UNREGISTERED
        self.reason = reason
        self.registered_until = None
        if self._auth is not None:
            self._auth.reset()  # start the next try with a fresh challenge
        backoff = min(self.spec.backoff_max, self.spec.backoff_initial * 2 ** (self.failures - 1))
        # jitter (0.8..1.0) so a PBX restart does not get every extension at once
        jitter = 0.8 + 0.2 * (self.endpoint.rng.getrandbits(16) / 65535)
        self._retry_at = now + backoff * jitter
        self.endpoint.emit(self, RegistrationFailed(now, status, reason, self._retry_at))

    def _stopped(self, now: float, status: int | None) -> None:
        self.state = RegState.UNREGISTERED
        self.reason = "stopped"
        self.registered_until = None
        self.endpoint.emit(self, RegistrationStopped(now, status))

    def close(self) -> None:
        self.endpoint.remove_usage(self)


def _int_header(response: Response, name: str) -> int | None:
    value = (response.headers.get(name) or "").strip()
    return int(value) if value.isdigit() else None
