"""SIP messages: parse and serialize requests and responses (RFC 3261 §7, §20, §25).

Pure data and functions: no I/O, no clock, no global randomness.

Public API
----------
Errors
    ``ParseError(ValueError)`` -- the only exception raised for bad input. ``.status`` is the
    SIP response code a server would answer with (400, 505 for a bad version, 413 too large);
    ``.reason`` the human message (also ``str(err)``).

Parsing
    ``parse_message(data: bytes) -> Request | Response`` parses one UDP datagram.
    Content-Length is optional; without it the body is the rest of the datagram; a shorter
    Content-Length truncates the body (trailing octets ignored, RFC 4475 dblreq); a longer one
    raises ``ParseError``. Header values are ``str`` decoded as UTF-8 with ``surrogateescape``
    (invalid bytes survive a parse/serialize round trip; encode with
    ``errors="surrogateescape"`` or ``"backslashreplace"`` before printing them).
    ``StreamParser().feed(data) -> list[Request | Response]`` frames a TCP byte stream by
    Content-Length (missing = 0), skipping CRLF keep-alives (``.keepalives`` counts the runs
    of CRLFs skipped). ``is_keepalive(datagram)`` spots a CRLF-only UDP ping. After
    a ``ParseError`` the stream is unusable: close the connection.

    The parser checks eagerly what every message needs (RFC 3261 §8.1.1): the start line, one
    Call-ID, From, To and CSeq (request method == CSeq method), at least one Via; all Via,
    From, To, Contact values, CSeq, Max-Forwards (0..255) and Content-Length must parse. Other
    headers are kept as raw strings (unknown ones too) and parsed only when asked.

Messages
    ``Request(method, uri, headers=None, body=b"")`` and ``Response(status, reason=None,
    headers=None, body=b"")``; both subclass ``Message`` with ``.headers: Headers`` and
    ``.body: bytes``. ``msg.serialize()`` / ``bytes(msg)`` give the wire form; Content-Length is
    always (re)written as ``len(body)``. Typed accessors, parsed on each access (they raise
    ``ParseError`` if the value is bad): ``call_id``, ``cseq -> CSeq``, ``from_ -> Address``,
    ``to -> Address``, ``vias -> list[Via]``, ``top_via -> Via``, ``contacts -> list[Address]``
    (``Contact: *`` is skipped), ``record_route`` / ``route -> list[Address]``,
    ``content_type -> str | None``. ``Response.is_provisional`` / ``is_final``.

Headers
    ``Headers`` is an ordered multi-map, case-insensitive, compact forms (i m e l c f s k t v o r
    b u x y a j d n) stored under their full canonical names. ``get(name, default=None)`` is the
    first value, ``get_all(name)`` every value, comma lists split where RFC 3261 allows it
    (Via, Route, Record-Route, Contact, Allow, Supported, ...; never inside quotes or <>).
    ``set(name, value)`` replaces, ``add(name, value, first=False)`` appends (or prepends, for a
    new top Via), ``remove(name) -> int``, ``count(name)``, ``in``, iteration over
    ``(name, value)`` lines, ``copy()``.

Values
    ``URI.parse(text)`` (sip, sips, tel; any other scheme is kept opaque in ``.opaque``):
    ``scheme, user, password, host, port, params, headers``; ``str(uri)``; ``host_port``,
    ``transport``, ``lr``. ``Address.parse(text)`` (alias ``NameAddr``): ``display, uri, params,
    tag``; ``with_tag(tag)``; ``str()`` is always the ``name-addr`` form with ``<>``.
    ``Via.parse(text)``: ``protocol, transport, host, port, params, branch, received, rport``;
    ``CSeq.parse(text)``: ``seq, method``. Parameters are ``dict[str, str | None]`` with
    lower-case names (``None`` = a flag such as ``lr`` or ``rport``); quoted values keep their
    quotes (``unquote()`` removes them).

Building
    ``make_response(request, status, reason=None, to_tag=None, copy_record_route=False)``
    (RFC 3261 §8.2.6: Via, From, To(+tag), Call-ID, CSeq copied). Identifiers from an injected
    random source (``random.Random`` or anything with ``getrandbits``): ``make_branch(rng)``
    (``z9hG4bK`` + 64 random bits), ``make_tag(rng)``, ``make_call_id(rng, host=None)``.
    ``reason_phrase(status)`` gives the RFC reason phrase.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from sipclient.text import readable

__all__ = [
    "BRANCH_MAGIC",
    "COMPACT_FORMS",
    "URI",
    "Address",
    "CSeq",
    "Headers",
    "Message",
    "NameAddr",
    "ParseError",
    "RandomSource",
    "Request",
    "Response",
    "StreamParser",
    "Via",
    "canonical_name",
    "is_keepalive",
    "make_branch",
    "make_call_id",
    "make_response",
    "make_tag",
    "parse_message",
    "quote",
    "reason_phrase",
    "split_commas",
    "unquote",
]

BRANCH_MAGIC = "z9hG4bK"
MAX_HEADER_BYTES = 65536  # a stream peer must not make us buffer without bound
MAX_BODY_BYTES = 1 << 20


class ParseError(ValueError):
    """Malformed SIP input. ``status`` is the response code a server would send back."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class RandomSource(Protocol):
    """What the core needs from a random generator (``random.Random`` fits)."""

    def getrandbits(self, k: int, /) -> int: ...


# --------------------------------------------------------------------------- header names

COMPACT_FORMS: dict[str, str] = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}

_KNOWN_NAMES = (  # noqa: SIM905 - a word list reads better than 60 quoted items
    "Accept Accept-Contact Accept-Encoding Accept-Language Alert-Info Allow Allow-Events "
    "Authentication-Info Authorization Call-ID Call-Info Contact Content-Disposition "
    "Content-Encoding Content-Language Content-Length Content-Type CSeq Date Diversion "
    "Error-Info Event Expires From Identity Identity-Info In-Reply-To Max-Forwards "
    "Min-Expires Min-SE MIME-Version Organization P-Asserted-Identity "
    "P-Preferred-Identity Path Priority Privacy Proxy-Authenticate Proxy-Authorization "
    "Proxy-Require RAck Reason Record-Route Refer-To Referred-By Reject-Contact "
    "Remote-Party-ID Replaces Reply-To Request-Disposition Require Retry-After Route "
    "RSeq Server Service-Route Session-Expires Subject Subscription-State Supported "
    "Timestamp To Unsupported User-Agent Via Warning WWW-Authenticate"
).split()

_CANONICAL: dict[str, str] = {n.lower(): n for n in _KNOWN_NAMES}
_CANONICAL.update(COMPACT_FORMS)

# Headers whose grammar is a comma-separated list (RFC 3261 §7.3.1); others (From, To,
# WWW-Authenticate, Date, ...) contain commas that are not separators.
_MULTI = frozenset(
    n.lower()
    for n in (  # noqa: SIM905
        "Accept Accept-Encoding Accept-Language Alert-Info Allow Allow-Events Call-Info "
        "Contact Content-Encoding Content-Language Diversion Error-Info In-Reply-To "
        "P-Asserted-Identity P-Preferred-Identity Path Proxy-Require Reason Record-Route "
        "Require Route Service-Route Supported Unsupported Via Warning"
    ).split()
)

_SINGLE_ONLY = ("call-id", "from", "to", "cseq", "max-forwards", "content-length")

_WS = " \t"


def canonical_name(name: str) -> str:
    """Full, conventionally spelled header name (compact forms expanded)."""
    return _CANONICAL.get(name.lower(), name)


_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_HOST_RE = re.compile(r"[A-Za-z0-9\-._]+")
_IPV6_RE = re.compile(r"[0-9A-Fa-f:.]+")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
_SPACE_RE = re.compile(r"[ \t\r\n]")


def _is_token(s: str) -> bool:
    return _TOKEN_RE.fullmatch(s) is not None


def split_commas(value: str) -> list[str]:
    """Split a header value on commas outside quoted strings and <...>; parts are stripped."""
    if "," not in value:
        return [value.strip()]
    parts: list[str] = []
    start = 0
    in_quote = False
    in_angle = False
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if in_quote:
            if c == "\\":
                i += 1
            elif c == '"':
                in_quote = False
        elif c == '"':
            in_quote = True
        elif c == "<":
            in_angle = True
        elif c == ">":
            in_angle = False
        elif c == "," and not in_angle:
            parts.append(value[start:i].strip())
            start = i + 1
        i += 1
    parts.append(value[start:].strip())
    return parts


class Headers:
    """Ordered, case-insensitive multi-map of header lines (name, raw value)."""

    # each line is (canonical name, value, lower-case name): lookups never re-lower names
    __slots__ = ("_lines",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._lines: list[tuple[str, str, str]] = []
        for n, v in items:
            full = canonical_name(n)
            self._lines.append((full, v, full.lower()))

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return ((n, v) for n, v, _ in self._lines)

    def __len__(self) -> int:
        return len(self._lines)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = canonical_name(name).lower()
        return any(k == key for _, _, k in self._lines)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._lines == other._lines

    def __repr__(self) -> str:
        return f"Headers({list(self)!r})"

    def copy(self) -> Headers:
        """An independent copy."""
        h = Headers()
        h._lines = list(self._lines)
        return h

    def count(self, name: str) -> int:
        """Number of header lines with this name (not split on commas)."""
        key = canonical_name(name).lower()
        return sum(1 for _, _, k in self._lines if k == key)

    def get_lines(self, name: str) -> list[str]:
        """Raw values of every line with this name, unsplit."""
        key = canonical_name(name).lower()
        return [v for _, v, k in self._lines if k == key]

    def get_all(self, name: str) -> list[str]:
        """Every value, comma-separated lists split where the header's grammar allows."""
        key = canonical_name(name).lower()
        lines = [v for _, v, k in self._lines if k == key]
        if key not in _MULTI:
            return [v.strip() for v in lines]
        out: list[str] = []
        for v in lines:
            out.extend(split_commas(v))
        return out

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value (after comma splitting for list headers), or ``default``."""
        key = canonical_name(name).lower()
        for _, v, k in self._lines:
            if k == key:
                return split_commas(v)[0] if key in _MULTI else v.strip()
        return default

    def set(self, name: str, value: str) -> None:
        """Replace every line of ``name`` by one line, where the first one was (or at the end)."""
        full = canonical_name(name)
        key = full.lower()
        out: list[tuple[str, str, str]] = []
        placed = False
        for line in self._lines:
            if line[2] == key:
                if not placed:
                    out.append((full, value, key))
                    placed = True
            else:
                out.append(line)
        if not placed:
            out.append((full, value, key))
        self._lines = out

    def add(self, name: str, value: str, first: bool = False) -> None:
        """Add a line: at the end, or with ``first`` before the first line of that name."""
        full = canonical_name(name)
        key = full.lower()
        if first:
            for i, (_, _, k) in enumerate(self._lines):
                if k == key:
                    self._lines.insert(i, (full, value, key))
                    return
            self._lines.insert(0, (full, value, key))
        else:
            self._lines.append((full, value, key))

    def remove(self, name: str) -> int:
        """Remove every line of ``name``; returns how many were removed."""
        key = canonical_name(name).lower()
        before = len(self._lines)
        self._lines = [line for line in self._lines if line[2] != key]
        return before - len(self._lines)


# --------------------------------------------------------------------------- small grammars


def unquote(value: str) -> str:
    """Remove the quotes and backslash escapes of a quoted-string (else return it unchanged)."""
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        inner = value[1:-1]
        if "\\" not in inner:
            return inner
        out: list[str] = []
        i = 0
        while i < len(inner):
            c = inner[i]
            if c == "\\" and i + 1 < len(inner):
                i += 1
                c = inner[i]
            out.append(c)
            i += 1
        return "".join(out)
    return value


def quote(value: str) -> str:
    """Make a quoted-string of ``value``."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _scan_quoted(s: str, i: int) -> int:
    """Index just past the quoted-string starting at ``s[i] == '"'``."""
    n = len(s)
    i += 1
    while i < n:
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            return i + 1
        i += 1
    raise ParseError("unterminated quoted string")


def _find_unquoted(s: str, ch: str) -> int:
    """Index of the first ``ch`` outside quoted strings, or -1."""
    i = s.find(ch)
    if i < 0 or '"' not in s[:i]:
        return i
    n = len(s)
    i = 0
    while i < n:
        c = s[i]
        if c == '"':
            i = _scan_quoted(s, i)
            continue
        if c == ch:
            return i
        i += 1
    return -1


def _split_semis(s: str) -> list[str]:
    """Split on ';' outside quoted strings."""
    if '"' not in s:
        return s.split(";")
    parts: list[str] = []
    start = 0
    i = 0
    n = len(s)
    while i < n:
        c = s[i]
        if c == '"':
            i = _scan_quoted(s, i)
            continue
        if c == ";":
            parts.append(s[start:i])
            start = i + 1
        i += 1
    parts.append(s[start:])
    return parts


def _parse_params(s: str) -> dict[str, str | None]:
    """Parse ``;a=b;c`` (leading ';' optional, LWS allowed around ';' and '=')."""
    params: dict[str, str | None] = {}
    s = s.strip()
    if not s:
        return params
    if s[0] == ";":
        s = s[1:]
    for piece in _split_semis(s):
        eq = piece.find("=")
        if eq < 0:
            name = piece.strip()
            value: str | None = None
        else:
            name = piece[:eq].strip()
            value = piece[eq + 1 :].strip()
            if not value:
                raise ParseError(f"empty value for parameter {name!r}")
            if value[0] == '"':
                if _scan_quoted(value, 0) != len(value):
                    raise ParseError(f"bad quoted value for parameter {name!r}")
            elif _SPACE_RE.search(value):
                raise ParseError(f"whitespace in value of parameter {name!r}")
        if not _is_token(name):
            raise ParseError(f"bad parameter name {name!r}")
        params[name.lower()] = value
    return params


def _format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def _parse_host_port(s: str, what: str) -> tuple[str, int | None]:
    """``host[:port]`` with IPv6 references in brackets."""
    if not s:
        raise ParseError(f"empty host in {what}")
    if s[0] == "[":
        end = s.find("]")
        if end < 0:
            raise ParseError(f"unterminated IPv6 reference in {what}")
        host = s[: end + 1]
        if not (end > 1 and _IPV6_RE.fullmatch(host, 1, end)):
            raise ParseError(f"bad IPv6 reference in {what}")
        rest = s[end + 1 :]
        if rest and rest[0] != ":":
            raise ParseError(f"junk after IPv6 reference in {what}")
        port_s = rest[1:] if rest else None
    else:
        colon = s.find(":")
        if colon < 0:
            host, port_s = s, None
        else:
            host, port_s = s[:colon], s[colon + 1 :]
        if not _HOST_RE.fullmatch(host):
            raise ParseError(f"bad host {host!r} in {what}")
    if port_s is None:
        return host, None
    if not (port_s.isascii() and port_s.isdigit()) or len(port_s) > 5 or int(port_s) > 65535:
        raise ParseError(f"bad port {port_s!r} in {what}")
    return host, int(port_s)


def _format_host_port(host: str, port: int | None) -> str:
    return host if port is None else f"{host}:{port}"


# --------------------------------------------------------------------------- URI


@dataclass(slots=True)
class URI:
    """A sip:, sips: or tel: URI (other schemes are kept whole in ``opaque``)."""

    scheme: str = "sip"
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    opaque: str | None = None

    @classmethod
    def parse(cls, text: str) -> URI:
        """Parse a URI; whitespace anywhere in it is an error (RFC 4475 badaspec)."""
        colon = text.find(":")
        if colon <= 0:
            raise ParseError(f"URI without scheme: {text!r}")
        scheme = text[:colon]
        if not _SCHEME_RE.fullmatch(scheme):
            raise ParseError(f"bad URI scheme {scheme!r}")
        if _SPACE_RE.search(text):
            raise ParseError(f"whitespace inside URI {text!r}")
        scheme = scheme.lower()
        rest = text[colon + 1 :]
        if scheme in ("sip", "sips"):
            return cls._parse_sip(scheme, rest)
        if scheme == "tel":
            number, _, p = rest.partition(";")
            if not number:
                raise ParseError("empty tel URI")
            return cls(scheme="tel", user=number, params=_parse_params(p))
        if not rest:
            raise ParseError(f"empty {scheme} URI")
        return cls(scheme=scheme, opaque=rest)

    @classmethod
    def _parse_sip(cls, scheme: str, rest: str) -> URI:
        user = password = None
        at = rest.find("@")
        if at >= 0:
            userinfo, rest = rest[:at], rest[at + 1 :]
            user, sep, pw = userinfo.partition(":")
            if not user:
                raise ParseError("empty user part in SIP URI")
            password = pw if sep else None
        headers: dict[str, str] = {}
        q = rest.find("?")
        if q >= 0:
            for pair in rest[q + 1 :].split("&"):
                name, sep, value = pair.partition("=")
                if not name or not sep:
                    raise ParseError(f"bad URI header {pair!r}")
                headers[name] = value
            rest = rest[:q]
        semi = rest.find(";")
        params: dict[str, str | None] = {}
        if semi >= 0:
            params = _parse_uri_params(rest[semi + 1 :])
            rest = rest[:semi]
        host, port = _parse_host_port(rest, "SIP URI")
        return cls(scheme, user, password, host, port, params, headers)

    def __str__(self) -> str:
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        if self.scheme == "tel":
            return f"tel:{self.user}{_format_params(self.params)}"
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out += [":", self.password]
            out.append("@")
        out.append(_format_host_port(self.host, self.port))
        out.append(_format_params(self.params))
        if self.headers:
            out.append("?" + "&".join(f"{k}={v}" for k, v in self.headers.items()))
        return "".join(out)

    @property
    def host_port(self) -> str:
        """``host[:port]`` as written."""
        return _format_host_port(self.host, self.port)

    @property
    def transport(self) -> str | None:
        """The ``transport`` parameter, lower-case, if any."""
        t = self.params.get("transport")
        return t.lower() if t else None

    @property
    def lr(self) -> bool:
        """True for a loose router (``;lr``)."""
        return "lr" in self.params

    def copy(self) -> URI:
        """An independent copy (params and headers dicts copied)."""
        return URI(
            self.scheme,
            self.user,
            self.password,
            self.host,
            self.port,
            dict(self.params),
            dict(self.headers),
            self.opaque,
        )


def _parse_uri_params(s: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for piece in s.split(";"):
        name, sep, value = piece.partition("=")
        if not name or (sep and not value):
            raise ParseError(f"bad URI parameter {piece!r}")
        params[name.lower()] = value if sep else None
    return params


# --------------------------------------------------------------------------- Address


@dataclass(slots=True)
class Address:
    """A From/To/Contact/Route value: optional display name, URI, header parameters."""

    uri: URI
    display: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Address:
        """Parse ``name-addr`` (``"Bob" <sip:b@h>;tag=x``) or ``addr-spec`` (``sip:b@h;tag=x``)."""
        s = text.strip()
        if not s:
            raise ParseError("empty address")
        display: str | None = None
        if s[0] == '"':
            end = _scan_quoted(s, 0)
            display = unquote(s[:end])
            s = s[end:].lstrip(_WS)
            if not s.startswith("<"):
                raise ParseError("quoted display name not followed by <URI>")
        lt = _find_unquoted(s, "<")
        if lt >= 0:
            if display is None and lt > 0:
                words = s[:lt].split()
                if not all(_is_token(w) for w in words):
                    raise ParseError(f"bad display name {s[:lt]!r}")
                display = " ".join(words) if words else None
            gt = s.find(">", lt)
            if gt < 0:
                raise ParseError("unterminated <URI>")
            uri = URI.parse(s[lt + 1 : gt])
            tail = s[gt + 1 :].lstrip(_WS)
            if tail and tail[0] != ";":
                raise ParseError(f"junk after <URI>: {tail!r}")
            return cls(uri, display, _parse_params(tail))
        # addr-spec: the URI cannot carry ';' params, '?' headers or ',' (RFC 3261 §20.10)
        semi = s.find(";")
        spec = (s if semi < 0 else s[:semi]).strip()
        if "?" in spec or "," in spec:
            raise ParseError(f"URI with '?' or ',' must be enclosed in <>: {spec!r}")
        params = _parse_params(s[semi:]) if semi >= 0 else {}
        return cls(URI.parse(spec), None, params)

    def __str__(self) -> str:
        head = f"{quote(self.display)} " if self.display else ""
        return f"{head}<{self.uri}>{_format_params(self.params)}"

    @property
    def tag(self) -> str | None:
        """The ``tag`` parameter (RFC 3261 §19.3)."""
        return self.params.get("tag")

    def with_tag(self, tag: str) -> Address:
        """A copy with the ``tag`` parameter set."""
        params = dict(self.params)
        params["tag"] = tag
        return Address(self.uri.copy(), self.display, params)


NameAddr = Address


# --------------------------------------------------------------------------- Via, CSeq


@dataclass(slots=True)
class Via:
    """One Via value: ``SIP/2.0/UDP host:port;branch=...;rport;received=...``."""

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    protocol: str = "SIP/2.0"

    @classmethod
    def parse(cls, text: str) -> Via:
        """Parse one Via value (LWS around '/', ':', ';' and '=' allowed)."""
        semi = text.find(";")
        head = text if semi < 0 else text[:semi]
        parts = head.split("/", 2)
        if len(parts) != 3:
            raise ParseError(f"bad Via sent-protocol in {text!r}")
        name, version = parts[0].strip(), parts[1].strip()
        rest = parts[2].strip()
        ws = 0
        while ws < len(rest) and rest[ws] not in _WS:
            ws += 1
        transport = rest[:ws]
        sent_by = rest[ws:].strip()
        if not (_is_token(name) and _is_token(version) and _is_token(transport)):
            raise ParseError(f"bad Via sent-protocol in {text!r}")
        if ":" in sent_by and not sent_by.startswith("["):
            h, _, p = sent_by.partition(":")
            sent_by = h.strip() + ":" + p.strip()
        if _SPACE_RE.search(sent_by):
            raise ParseError(f"bad Via sent-by in {text!r}")
        host, port = _parse_host_port(sent_by, "Via")
        params = _parse_params(text[semi:]) if semi >= 0 else {}
        return cls(transport.upper(), host, port, params, f"{name}/{version}".upper())

    def __str__(self) -> str:
        hp = _format_host_port(self.host, self.port)
        return f"{self.protocol}/{self.transport} {hp}{_format_params(self.params)}"

    @property
    def branch(self) -> str | None:
        """The ``branch`` parameter."""
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        """The ``received`` parameter (RFC 3261 §18.2.1)."""
        return self.params.get("received")

    @property
    def rport(self) -> int | None:
        """The ``rport`` value a server filled in (RFC 3581), None if absent or empty."""
        v = self.params.get("rport")
        return int(v) if v is not None and v.isascii() and v.isdigit() else None

    @property
    def has_rport(self) -> bool:
        """True if ``rport`` is present (with or without a value)."""
        return "rport" in self.params


@dataclass(frozen=True, slots=True)
class CSeq:
    """``CSeq: <seq> <METHOD>``; seq is 0..2**31-1 (RFC 3261 §8.1.1.5)."""

    seq: int
    method: str

    @classmethod
    def parse(cls, text: str) -> CSeq:
        """Parse a CSeq value."""
        parts = text.split()
        if len(parts) != 2:
            raise ParseError(f"bad CSeq {text!r}")
        num, method = parts
        if not (num.isascii() and num.isdigit()) or len(num) > 10 or int(num) >= 2**31:
            raise ParseError(f"bad CSeq number {num!r}")
        if not _is_token(method):
            raise ParseError(f"bad CSeq method {method!r}")
        return cls(int(num), method)

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


# --------------------------------------------------------------------------- messages

_REASONS: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    199: "Early Dialog Terminated",
    200: "OK",
    202: "Accepted",
    204: "No Notification",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    493: "Undecipherable",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    580: "Precondition Failure",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}


def reason_phrase(status: int) -> str:
    """The RFC reason phrase for ``status`` (a generic one for unknown codes)."""
    return _REASONS.get(status) or _REASONS.get(status // 100 * 100, "Unknown")


class Message:
    """Common part of requests and responses: headers, body and typed accessors."""

    __slots__ = ("body", "headers")

    def __init__(self, headers: Headers | None = None, body: bytes = b"") -> None:
        self.headers = headers if headers is not None else Headers()
        self.body = body

    def start_line(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def serialize(self) -> bytes:
        """Wire form; Content-Length is always written as ``len(body)``."""
        lines = [self.start_line()]
        placed = False
        clen = str(len(self.body))
        for n, v in self.headers:
            if n == "Content-Length":
                if placed:
                    continue
                v = clen
                placed = True
            lines.append(f"{n}: {v}")
        if not placed:
            lines.append(f"Content-Length: {clen}")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + self.body

    def __bytes__(self) -> bytes:
        return self.serialize()

    def _required(self, name: str) -> str:
        v = self.headers.get(name)
        if v is None:
            raise ParseError(f"missing {name} header")
        return v

    @property
    def call_id(self) -> str:
        """The Call-ID value."""
        return self._required("Call-ID")

    @property
    def cseq(self) -> CSeq:
        """The parsed CSeq."""
        return CSeq.parse(self._required("CSeq"))

    @property
    def from_(self) -> Address:
        """The parsed From header."""
        return Address.parse(self._required("From"))

    @property
    def to(self) -> Address:
        """The parsed To header."""
        return Address.parse(self._required("To"))

    @property
    def vias(self) -> list[Via]:
        """Every Via value, top first."""
        return [Via.parse(v) for v in self.headers.get_all("Via")]

    @property
    def top_via(self) -> Via:
        """The first Via value."""
        return Via.parse(self._required("Via"))

    @property
    def contacts(self) -> list[Address]:
        """Every Contact value (``*`` skipped)."""
        return [Address.parse(v) for v in self.headers.get_all("Contact") if v != "*"]

    @property
    def record_route(self) -> list[Address]:
        """Every Record-Route value, in message order."""
        return [Address.parse(v) for v in self.headers.get_all("Record-Route")]

    @property
    def route(self) -> list[Address]:
        """Every Route value, in message order."""
        return [Address.parse(v) for v in self.headers.get_all("Route")]

    @property
    def content_type(self) -> str | None:
        """Content-Type media type, lower-case, without parameters."""
        v = self.headers.get("Content-Type")
        return v.split(";", 1)[0].strip().lower() if v else None


class Request(Message):
    """A SIP request."""

    __slots__ = ("method", "uri")

    def __init__(
        self,
        method: str,
        uri: URI | str,
        headers: Headers | None = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(headers, body)
        self.method = method
        self.uri = uri if isinstance(uri, URI) else URI.parse(uri)

    def start_line(self) -> str:
        """``METHOD uri SIP/2.0``."""
        return f"{self.method} {self.uri} SIP/2.0"

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class Response(Message):
    """A SIP response."""

    __slots__ = ("reason", "status")

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: Headers | None = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(headers, body)
        self.status = status
        self.reason = reason_phrase(status) if reason is None else reason

    def start_line(self) -> str:
        """``SIP/2.0 code reason``."""
        return f"SIP/2.0 {self.status} {self.reason}"

    @property
    def is_provisional(self) -> bool:
        """1xx."""
        return self.status < 200

    @property
    def is_final(self) -> bool:
        """2xx..6xx."""
        return self.status >= 200

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


# --------------------------------------------------------------------------- parsing


def _find_head_end(data: bytes | bytearray, start: int = 0) -> tuple[int, int]:
    """(end of header block, start of body) or (-1, -1); bare-LF messages tolerated."""
    crlf = data.find(b"\r\n\r\n", start)
    lf = data.find(b"\n\n", start)
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf, crlf + 4
    if lf >= 0:
        return lf, lf + 2
    return -1, -1


def _parse_head(head: str) -> tuple[Request | Response, int | None]:
    """Parse the start line and header block; returns the message and its Content-Length."""
    lines = head.replace("\r\n", "\n").split("\n")
    first = lines[0]
    items: list[tuple[str, str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in _WS:
            if not items:
                raise ParseError("continuation line before any header")
            n, v, k = items[-1]
            cont = line.strip(" \t\r")
            items[-1] = (n, f"{v} {cont}" if v else cont, k)
            continue
        colon = line.find(":")
        if colon <= 0:
            raise ParseError(f"header line without name: {line[:40]!r}")
        name = line[:colon].rstrip(_WS)
        if not _is_token(name):
            raise ParseError(f"bad header name {name[:40]!r}")
        full = canonical_name(name)
        items.append((full, line[colon + 1 :].strip(" \t\r"), full.lower()))
    headers = Headers()
    headers._lines = items
    msg = _parse_start_line(first, headers)
    return msg, _validate(msg)


def _parse_start_line(line: str, headers: Headers) -> Request | Response:
    if line.startswith("SIP/"):
        parts = line.split(" ", 2)
        if len(parts) < 2:
            raise ParseError("bad status line")
        version, code = parts[0], parts[1]
        if version.upper() != "SIP/2.0":
            raise ParseError(f"unsupported version {version!r}", 505)
        if len(code) != 3 or not code.isascii() or not code.isdigit() or not "1" <= code[0] <= "6":
            raise ParseError(f"bad status code {code[:20]!r}")
        reason = readable(parts[2]) if len(parts) == 3 else ""  # only ever shown
        resp = Response(int(code), reason, headers)
        return resp
    parts = line.split(" ")
    if len(parts) != 3:
        raise ParseError("request line must be METHOD SP URI SP SIP/2.0")
    method, uri_s, version = parts
    if not _is_token(method):
        raise ParseError(f"bad method {method[:40]!r}")
    if not version.upper().startswith("SIP/"):
        raise ParseError(f"bad version {version[:20]!r}")
    if version.upper() != "SIP/2.0":
        raise ParseError(f"unsupported version {version!r}", 505)
    uri = URI.parse(uri_s)
    if uri.headers:
        raise ParseError("Request-URI must not contain headers")
    req = Request.__new__(Request)
    Message.__init__(req, headers)
    req.method = method
    req.uri = uri
    return req


def _validate(msg: Request | Response) -> int | None:
    """Check the headers every message needs; returns Content-Length (None if absent)."""
    h = msg.headers
    counts: dict[str, int] = {}
    for _, _, k in h._lines:
        counts[k] = counts.get(k, 0) + 1
    for k in _SINGLE_ONLY:
        if counts.get(k, 0) > 1:
            raise ParseError(f"more than one {canonical_name(k)} header")
    for k in ("via", "from", "to", "call-id", "cseq"):
        if k not in counts:
            raise ParseError(f"missing {canonical_name(k)} header")
    if not h.get("Call-ID"):
        raise ParseError("empty Call-ID")
    cseq = msg.cseq
    if isinstance(msg, Request) and cseq.method != msg.method:
        raise ParseError("CSeq method does not match the request method")
    msg.from_  # noqa: B018 - parse for validation
    msg.to  # noqa: B018
    msg.vias  # noqa: B018
    if "contact" in counts:
        msg.contacts  # noqa: B018
    mf = h.get("Max-Forwards")
    if mf is not None and not (mf.isascii() and mf.isdigit() and len(mf) <= 10 and int(mf) < 256):
        raise ParseError(f"bad Max-Forwards {mf[:20]!r}")
    cl = h.get("Content-Length")
    if cl is None:
        return None
    if not (cl.isascii() and cl.isdigit()) or len(cl) > 10:
        raise ParseError(f"bad Content-Length {cl[:20]!r}")
    return int(cl)


def is_keepalive(data: bytes) -> bool:
    """True for a datagram of CRLFs only (an RFC 5626 ping/pong), not a message."""
    return bool(data) and not data.strip(b"\r\n")


def parse_message(data: bytes) -> Request | Response:
    """Parse one datagram into a Request or Response; raises only ``ParseError``."""
    data = data.lstrip(b"\r\n")
    head_end, body_start = _find_head_end(data)
    if head_end < 0:
        head_b, body = data, b""
    else:
        head_b, body = data[:head_end], data[body_start:]
    if not head_b:
        raise ParseError("empty message")
    msg, clen = _parse_head(head_b.decode("utf-8", "surrogateescape"))
    if clen is not None:
        if clen > len(body):
            raise ParseError("Content-Length larger than the datagram")
        body = body[:clen]
    msg.body = bytes(body)
    return msg


class StreamParser:
    """Frame SIP messages out of a stream (TCP/TLS) using Content-Length."""

    def __init__(
        self, max_header_bytes: int = MAX_HEADER_BYTES, max_body_bytes: int = MAX_BODY_BYTES
    ) -> None:
        self._buf = bytearray()
        self._max_header = max_header_bytes
        self._max_body = max_body_bytes
        self._pending: tuple[Request | Response, int] | None = None
        self.keepalives = 0

    def feed(self, data: bytes) -> list[Request | Response]:
        """Add bytes; return every message now complete. Raises ``ParseError`` (fatal)."""
        self._buf += data
        out: list[Request | Response] = []
        while True:
            if self._pending is None:
                # RFC 5626 keep-alives: CRLFCRLF pings (and stray CRLFs) between messages
                skip = 0
                buf = self._buf
                while skip < len(buf) and buf[skip] in (13, 10):
                    skip += 1
                if skip:
                    self.keepalives += 1  # one run of CRLFs (a ping or a pong)
                    del buf[:skip]
                head_end, body_start = _find_head_end(buf)
                if head_end < 0:
                    if len(buf) > self._max_header:
                        raise ParseError("header block too large", 413)
                    return out
                if head_end > self._max_header:
                    raise ParseError("header block too large", 413)
                msg, clen = _parse_head(bytes(buf[:head_end]).decode("utf-8", "surrogateescape"))
                clen = clen or 0
                if clen > self._max_body:
                    raise ParseError("body too large", 413)
                del buf[:body_start]
                self._pending = (msg, clen)
            msg, clen = self._pending
            if len(self._buf) < clen:
                return out
            msg.body = bytes(self._buf[:clen])
            del self._buf[:clen]
            self._pending = None
            out.append(msg)


# --------------------------------------------------------------------------- building


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    to_tag: str | None = None,
    copy_record_route: bool = False,
) -> Response:
    """A response to ``request`` per RFC 3261 §8.2.6 (no body; add headers as needed).

    ``to_tag`` is added to To when To has no tag yet and ``status > 100``.
    """
    h = Headers()
    for n, v in request.headers:
        k = n.lower()
        if (
            k == "via"
            or (copy_record_route and k == "record-route")
            or k in ("from", "call-id", "cseq")
        ):
            h.add(n, v)
        elif k == "to":
            if to_tag and status > 100:
                to = Address.parse(v)
                if to.tag is None:
                    v = str(to.with_tag(to_tag))
            h.add(n, v)
    return Response(status, reason, h)


def _random_hex(rng: RandomSource, bits: int) -> str:
    return f"{rng.getrandbits(bits):0{bits // 4}x}"


def make_branch(rng: RandomSource) -> str:
    """A new RFC 3261 branch: the magic cookie plus 64 random bits."""
    return BRANCH_MAGIC + _random_hex(rng, 64)


def make_tag(rng: RandomSource) -> str:
    """A new From/To tag (48 random bits as hex)."""
    return _random_hex(rng, 48)


def make_call_id(rng: RandomSource, host: str | None = None) -> str:
    """A new Call-ID (96 random bits as hex, ``@host`` appended if given)."""
    cid = _random_hex(rng, 96)
    return f"{cid}@{host}" if host else cid
