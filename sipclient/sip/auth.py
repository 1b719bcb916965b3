"""Digest authentication for a SIP client (RFC 2617, RFC 7616, RFC 3261 §22).

Sans-IO: no clock, no global randomness (cnonces come from the injected random source).

Public API
----------
``parse_challenges(response) -> list[Challenge]``
    Every Digest challenge of every WWW-Authenticate (401, ``proxy=False``) and
    Proxy-Authenticate (407, ``proxy=True``) header, in order; several challenges in one header
    line are split. Malformed challenges and other schemes (Basic, ...) are skipped, never
    raised. ``Challenge(realm, nonce, opaque, algorithm, qop, stale, proxy)``; ``algorithm`` is
    upper-case (default ``"MD5"``), ``qop`` a tuple of lower-case options, ``supported`` tells
    whether we can answer it (MD5, MD5-sess, SHA-256, SHA-256-sess; qop auth, auth-int or none).

``DigestCredentials(username, password)``

``DigestClient(credentials, rng)`` -- one per registration or call leg
    ``handle_challenge(response)`` takes a 401/407: per (proxy, realm) it keeps the best
    challenge (SHA-256 preferred over MD5, plain over -sess). Raises ``AuthError`` when no
    challenge is usable, or when a realm we already answered challenges again without
    ``stale=true`` (the credentials are wrong: do not loop). A stale challenge just replaces the
    nonce (re-auth without asking for new credentials). ``handle_challenge(response,
    fresh=True)``: the challenge is to another request than the one last answered (a BYE
    after its INVITE's answer), not a refusal of that answer.
    ``sign(request)`` replaces the request's Authorization / Proxy-Authorization headers by a
    fresh answer to every kept challenge (nonce count incremented per nonce, new cnonce). Call
    it on every request sent after a challenge (the retried request with its new CSeq/branch,
    and refreshes, which then reuse the nonce pre-emptively). No-op before any challenge.
    ``authorization_headers(method, uri, body=b"") -> list[tuple[str, str]]`` is the same as
    (header name, value) pairs. ``has_challenges`` tells whether anything is kept; ``reset()``
    forgets everything.

``DigestMemory()`` -- the challenges one account's calls share
    ``DigestClient(credentials, rng, memory)`` keeps its challenges and nonce counts
    in `memory` instead of its own: the next call's client starts with them, and
    ``sign`` answers them on its first INVITE before any challenge (pre-emptive
    digest: no INVITE / 407 / ACK round before every call). An answer it did not
    get a challenge for itself does not count as answered: the 401/407 that
    refuses it (an expired or forgotten nonce, stale or not) is taken as a
    fresh challenge and answered once, so a pre-emptive answer never ends a
    call that plain digest would have made. ``preemptive`` tells whether every
    answer a client gives is such a remembered one (it has had no challenge of
    its own yet); ``forget_remembered()`` leaves the memory for the rest of that
    client's life (its next request goes bare); and ``memory.refused`` set
    (by the session that found the PBX refusing remembered answers with a 403
    instead of a challenge, sip/invite.py) makes every later client of that
    memory start bare, as without pre-emptive digest.

``digest_response(...)`` / ``format_authorization(...)`` are the pure computations (tested
against the RFC 2617 §3.5 and RFC 7616 §3.9.1 vectors).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from sipclient.sip.message import RandomSource, Request, Response, quote, split_commas, unquote

__all__ = [
    "AuthError",
    "Challenge",
    "DigestClient",
    "DigestCredentials",
    "DigestMemory",
    "digest_response",
    "format_authorization",
    "parse_auth_header",
    "parse_challenges",
]

_HASHES: dict[str, Callable[[bytes], str]] = {
    "MD5": lambda b: hashlib.md5(b, usedforsecurity=False).hexdigest(),
    "SHA-256": lambda b: hashlib.sha256(b).hexdigest(),
}
# higher is preferred when a realm offers several algorithms (RFC 7616 §3.7)
_PREFERENCE = {"SHA-256": 4, "SHA-256-SESS": 3, "MD5": 2, "MD5-SESS": 1}


class AuthError(Exception):
    """We cannot (or must not) answer this challenge; ``str(err)`` says why."""


@dataclass(frozen=True, slots=True)
class DigestCredentials:
    """A username and password for digest authentication."""

    username: str
    password: str

    def __repr__(self) -> str:  # never print the password
        return f"DigestCredentials(username={self.username!r}, password='***')"


@dataclass(frozen=True, slots=True)
class Challenge:
    """One Digest challenge from a WWW-Authenticate or Proxy-Authenticate header."""

    realm: str
    nonce: str
    opaque: str | None = None
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    stale: bool = False
    proxy: bool = False

    @property
    def supported(self) -> bool:
        """True if we can compute an answer (known algorithm and qop)."""
        if self.algorithm.upper() not in _PREFERENCE:
            return False
        return not self.qop or "auth" in self.qop or "auth-int" in self.qop

    @property
    def header_name(self) -> str:
        """The header that carries our answer."""
        return "Proxy-Authorization" if self.proxy else "Authorization"


# --------------------------------------------------------------------------- parsing


def parse_auth_header(value: str) -> list[tuple[str, dict[str, str]]]:
    """Split a challenge/credentials header into ``[(scheme, {param: value})]``.

    Parameter names are lower-case, quoted values unquoted. Raises ``ValueError`` on bad syntax.
    """
    out: list[tuple[str, dict[str, str]]] = []
    for seg in split_commas(value):
        if not seg:
            continue
        name, sep, rest = seg.partition("=")
        first = name.split(None, 1)
        if len(first) == 2 or not sep:
            # "Digest realm=..." or a bare scheme: a new challenge starts here
            out.append((first[0], {}))
            if len(first) == 1:
                continue
            name = first[1]
        if not out:
            raise ValueError(f"auth parameter before any scheme: {seg!r}")
        name = name.strip()
        rest = rest.strip()
        if not name or not rest:
            raise ValueError(f"bad auth parameter {seg!r}")
        if rest[0] == '"':
            if len(rest) < 2 or rest[-1] != '"':
                raise ValueError(f"bad quoted auth parameter {seg!r}")
            rest = unquote(rest)
        out[-1][1][name.lower()] = rest
    return out


def parse_challenges(response: Response) -> list[Challenge]:
    """Every Digest challenge in a 401/407 (WWW-Authenticate and Proxy-Authenticate)."""
    out: list[Challenge] = []
    for header, proxy in (("WWW-Authenticate", False), ("Proxy-Authenticate", True)):
        for line in response.headers.get_lines(header):
            try:
                parsed = parse_auth_header(line)
            except ValueError:
                continue
            for scheme, p in parsed:
                if scheme.lower() != "digest" or "realm" not in p or "nonce" not in p:
                    continue
                qop = tuple(q.strip().lower() for q in p.get("qop", "").split(",") if q.strip())
                out.append(
                    Challenge(
                        realm=p["realm"],
                        nonce=p["nonce"],
                        opaque=p.get("opaque"),
                        algorithm=p.get("algorithm", "MD5").upper(),
                        qop=qop,
                        stale=p.get("stale", "").lower() == "true",
                        proxy=proxy,
                    )
                )
    return out


# --------------------------------------------------------------------------- computation


def digest_response(
    challenge: Challenge,
    credentials: DigestCredentials,
    method: str,
    uri: str,
    *,
    qop: str | None,
    nc: int,
    cnonce: str,
    body: bytes = b"",
) -> str:
    """The ``response=`` value (RFC 7616 §3.4.1, RFC 2617 §3.2.2)."""
    algorithm = challenge.algorithm.upper()
    sess = algorithm.endswith("-SESS")
    h = _HASHES.get(algorithm.removesuffix("-SESS"))
    if h is None:
        raise AuthError(f"unsupported digest algorithm {challenge.algorithm!r}")

    def hs(*parts: str) -> str:
        return h(":".join(parts).encode("utf-8"))

    ha1 = hs(credentials.username, challenge.realm, credentials.password)
    if sess:
        ha1 = hs(ha1, challenge.nonce, cnonce)
    ha2 = hs(method, uri, h(body)) if qop == "auth-int" else hs(method, uri)
    if qop:
        return hs(ha1, challenge.nonce, f"{nc:08x}", cnonce, qop, ha2)
    return hs(ha1, challenge.nonce, ha2)


def format_authorization(
    challenge: Challenge,
    credentials: DigestCredentials,
    method: str,
    uri: str,
    *,
    nc: int,
    cnonce: str,
    body: bytes = b"",
) -> str:
    """The Authorization / Proxy-Authorization value answering ``challenge``."""
    qop = None
    if "auth" in challenge.qop:
        qop = "auth"
    elif "auth-int" in challenge.qop:
        qop = "auth-int"
    elif challenge.qop:
        raise AuthError(f"unsupported qop {','.join(challenge.qop)!r}")
    response = digest_response(
        challenge, credentials, method, uri, qop=qop, nc=nc, cnonce=cnonce, body=body
    )
    parts = [
        f"username={quote(credentials.username)}",
        f"realm={quote(challenge.realm)}",
        f"nonce={quote(challenge.nonce)}",
        f"uri={quote(uri)}",
        f"response={quote(response)}",
        f"algorithm={challenge.algorithm}",
    ]
    if challenge.opaque is not None:
        parts.append(f"opaque={quote(challenge.opaque)}")
    if qop:
        parts += [f"qop={qop}", f"nc={nc:08x}", f"cnonce={quote(cnonce)}"]
    return "Digest " + ", ".join(parts)


# --------------------------------------------------------------------------- client state


class DigestMemory:
    """Challenges and nonce counts shared by the clients of one account's calls
    (module docstring): one call at a time uses it, as one line dials."""

    def __init__(self) -> None:
        self.challenges: dict[tuple[bool, str], Challenge] = {}
        """(proxy, realm) -> the challenge last accepted for it."""
        self.nc: dict[str, int] = {}
        """nonce -> requests answered with it so far (RFC 7616 §3.4: counted up)."""
        self.refused = False
        """The PBX refused a remembered answer with a 403 where it would take a fresh
        one: clients made from now on answer only their own challenges."""


class DigestClient:
    """Answers digest challenges for one set of credentials, keeping nonce counts."""

    def __init__(
        self,
        credentials: DigestCredentials,
        rng: RandomSource,
        memory: DigestMemory | None = None,
    ) -> None:
        self.credentials = credentials
        self._rng = rng
        shared = memory if memory is not None and not memory.refused else DigestMemory()
        self._challenges = shared.challenges
        self._nc = shared.nc
        self._used: set[tuple[bool, str]] = set()
        # the (proxy, realm)s this client was challenged for itself: only answers to
        # those count as used (a remembered challenge answered pre-emptively may be
        # refused, and that refusal is a fresh challenge, not wrong credentials)
        self._own: set[tuple[bool, str]] = set()

    @property
    def has_challenges(self) -> bool:
        """True once a challenge has been accepted."""
        return bool(self._challenges)

    @property
    def preemptive(self) -> bool:
        """True while every answer this client gives is a remembered one (DigestMemory):
        it has answers, and no challenge of its own yet."""
        return bool(self._challenges) and not self._own

    def forget_remembered(self) -> None:
        """Leave the shared memory (untouched) for good: the next request goes bare, and
        this client keeps the challenges it gets from now on to itself."""
        self._challenges = {}
        self._nc = {}
        self._used.clear()
        self._own.clear()

    def reset(self) -> None:
        """Forget every challenge and nonce count."""
        self._challenges.clear()
        self._used.clear()
        self._own.clear()
        self._nc.clear()

    def handle_challenge(self, response: Response, *, fresh: bool = False) -> None:
        """Take the challenges of a 401/407; raises ``AuthError`` if we must give up.

        `fresh`: the challenged request is another than the one our last answer was
        for (a BYE after the INVITE's answer): a realm already answered is not a
        refusal this once. A challenge to the request re-sent with the answer is
        handled without it, and raises as usual.
        """
        if fresh:
            self._used.clear()
        best: dict[tuple[bool, str], Challenge] = {}
        for ch in parse_challenges(response):
            if not ch.supported:
                continue
            key = (ch.proxy, ch.realm)
            old = best.get(key)
            if old is None or _PREFERENCE[ch.algorithm] > _PREFERENCE[old.algorithm]:
                best[key] = ch
        if not best:
            raise AuthError(f"no supported digest challenge in {response.status} response")
        for key, ch in best.items():
            if key in self._used and not ch.stale:
                raise AuthError(f"credentials rejected for realm {ch.realm!r}")
        for key, ch in best.items():
            old = self._challenges.get(key)
            if old is not None:
                self._nc.pop(old.nonce, None)
            self._challenges[key] = ch
            self._used.discard(key)
            self._own.add(key)

    def authorization_headers(
        self, method: str, uri: str, body: bytes = b""
    ) -> list[tuple[str, str]]:
        """(header, value) answering every kept challenge; bumps each nonce count."""
        out: list[tuple[str, str]] = []
        for key, ch in self._challenges.items():
            nc = self._nc.get(ch.nonce, 0) + 1
            self._nc[ch.nonce] = nc
            cnonce = f"{self._rng.getrandbits(64):016x}"
            value = format_authorization(
                ch, self.credentials, method, uri, nc=nc, cnonce=cnonce, body=body
            )
            out.append((ch.header_name, value))
            if key in self._own:
                self._used.add(key)
        return out

    def sign(self, request: Request) -> None:
        """Replace the request's Authorization/Proxy-Authorization by fresh answers."""
        if not self._challenges:
            return
        request.headers.remove("Authorization")
        request.headers.remove("Proxy-Authorization")
        for name, value in self.authorization_headers(
            request.method, str(request.uri), request.body
        ):
            request.headers.add(name, value)
