"""SDP offer/answer for one audio stream (RFC 4566, RFC 3264), sans-IO.

Public API
----------
``Codec(name, clock_rate, payload_type, channels=1, fmtp=None)`` and the constants ``PCMU``
(PT 0), ``PCMA`` (PT 8), ``G722`` (PT 9; its rtpmap clock is 8000 although it samples at
16 kHz, RFC 3551 §4.5.2), ``TELEPHONE_EVENT`` (PT 101, ``fmtp 0-16``); ``DEFAULT_CODECS``.

``make_offer(address, port, session_id, codecs=DEFAULT_CODECS, ptime=20, version=None,
direction="sendrecv") -> bytes``
    Our offer: one ``m=audio`` line with the codecs in preference order, IPv4 or IPv6 chosen
    from ``address``. ``session_id``/``version`` are ints (pass the random source's output;
    ``version`` defaults to ``session_id``).

``parse_answer(body, offered=DEFAULT_CODECS) -> MediaAnswer``
    The first audio stream of an answer (183 or 200 body). ``MediaAnswer(address, port,
    codec, dtmf_payload_type, direction, ptime, payload_types)``: ``address`` from the
    media-level ``c=`` or else the session-level one, ``codec`` the first of the answer's
    payload types that we offered (static PT 0/8/9, or matched by rtpmap name and clock rate),
    with the answer's payload type, or ``None`` when there is no common codec (an outcome, not
    an error: ``MediaAnswer.usable`` is False and ``problem`` says why); ``direction`` is
    ``sendrecv``/``sendonly``/``recvonly``/``inactive`` (media level over session level);
    ``rejected`` is True for port 0. Malformed SDP (no ``m=audio``, bad port, missing or bad
    ``c=``) raises ``SdpError`` (a ``ValueError``), never anything else.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = [
    "DEFAULT_CODECS",
    "G722",
    "PCMA",
    "PCMU",
    "TELEPHONE_EVENT",
    "Codec",
    "MediaAnswer",
    "SdpError",
    "make_offer",
    "parse_answer",
]

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


class SdpError(ValueError):
    """The SDP body is malformed (the message says what is wrong)."""


@dataclass(frozen=True, slots=True)
class Codec:
    """An RTP payload format as it appears in rtpmap."""

    name: str
    clock_rate: int
    payload_type: int
    channels: int = 1
    fmtp: str | None = None

    @property
    def rtpmap(self) -> str:
        """``name/rate[/channels]``."""
        extra = f"/{self.channels}" if self.channels != 1 else ""
        return f"{self.name}/{self.clock_rate}{extra}"

    def matches(self, name: str, clock_rate: int) -> bool:
        """Same encoding (name case-insensitive) and rtpmap clock rate."""
        return self.name.lower() == name.lower() and self.clock_rate == clock_rate


PCMU = Codec("PCMU", 8000, 0)
PCMA = Codec("PCMA", 8000, 8)
G722 = Codec("G722", 8000, 9)
TELEPHONE_EVENT = Codec("telephone-event", 8000, 101, fmtp="0-16")
DEFAULT_CODECS: tuple[Codec, ...] = (PCMU, PCMA, G722, TELEPHONE_EVENT)

# RFC 3551 static payload types, used when an answer omits rtpmap for them
_STATIC: dict[int, tuple[str, int]] = {
    0: ("PCMU", 8000),
    3: ("GSM", 8000),
    4: ("G723", 8000),
    8: ("PCMA", 8000),
    9: ("G722", 8000),
    18: ("G729", 8000),
}


def _is_int(s: str) -> bool:
    return s.isascii() and s.isdigit() and len(s) <= 9


def _addr_type(address: str) -> str:
    try:
        return "IP6" if ipaddress.ip_address(address).version == 6 else "IP4"
    except ValueError:
        return "IP4"  # a host name: assume IPv4


def make_offer(
    address: str,
    port: int,
    session_id: int,
    codecs: tuple[Codec, ...] = DEFAULT_CODECS,
    ptime: int = 20,
    version: int | None = None,
    direction: str = "sendrecv",
) -> bytes:
    """Our SDP offer for one audio stream (CRLF line ends)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"bad direction {direction!r}")
    if not 0 < port < 65536:
        raise ValueError(f"bad RTP port {port}")
    at = _addr_type(address)
    ver = session_id if version is None else version
    lines = [
        "v=0",
        f"o=- {session_id} {ver} IN {at} {address}",
        "s=-",
        f"c=IN {at} {address}",
        "t=0 0",
        f"m=audio {port} RTP/AVP " + " ".join(str(c.payload_type) for c in codecs),
    ]
    for c in codecs:
        lines.append(f"a=rtpmap:{c.payload_type} {c.rtpmap}")
        if c.fmtp:
            lines.append(f"a=fmtp:{c.payload_type} {c.fmtp}")
    lines += [f"a=ptime:{ptime}", f"a={direction}"]
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


@dataclass(frozen=True, slots=True)
class MediaAnswer:
    """What the far end answered for the audio stream."""

    address: str
    port: int
    codec: Codec | None
    dtmf_payload_type: int | None
    direction: str
    ptime: int | None
    payload_types: tuple[int, ...]

    @property
    def rejected(self) -> bool:
        """Port 0: the stream was refused (RFC 3264 §6)."""
        return self.port == 0

    @property
    def usable(self) -> bool:
        """A stream we can receive: not rejected and a common codec."""
        return not self.rejected and self.codec is not None

    @property
    def problem(self) -> str | None:
        """Why the stream is not usable, or None."""
        if self.rejected:
            return "audio stream rejected (port 0)"
        if self.codec is None:
            return "no common codec"
        return None


def _parse_connection(value: str) -> str:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SdpError(f"bad c= line {value!r}")
    addr = parts[2].split("/", 1)[0]
    if not addr:
        raise SdpError(f"bad c= address {value!r}")
    return addr


def parse_answer(body: bytes, offered: tuple[Codec, ...] = DEFAULT_CODECS) -> MediaAnswer:
    """Parse the first audio stream of an SDP answer; raises ``SdpError`` if malformed."""
    text = body.decode("utf-8", "replace")
    session_addr: str | None = None
    session_dir = "sendrecv"
    media: list[tuple[str, str]] | None = None  # (type, value) lines of the audio section
    m_line: str | None = None
    in_audio = False
    saw_v = False
    seen_m = False
    for raw in text.split("\n"):
        line = raw.rstrip("\r")
        if not line:
            continue
        if len(line) < 2 or line[1] != "=":
            raise SdpError(f"bad SDP line {line[:40]!r}")
        kind, value = line[0], line[2:]
        if kind == "v":
            saw_v = True
        if kind == "m":
            seen_m = True
            if media is not None:
                in_audio = False  # only the first audio stream matters
                continue
            in_audio = value.startswith("audio ")
            if in_audio:
                m_line = value
                media = []
            continue
        if in_audio and media is not None:
            media.append((kind, value))
        elif not seen_m:  # session level
            if kind == "c":
                session_addr = _parse_connection(value)
            elif kind == "a" and value in DIRECTIONS:
                session_dir = value
    if not saw_v:
        raise SdpError("not an SDP body (no v= line)")
    if m_line is None or media is None:
        raise SdpError("no m=audio stream")
    fields = m_line.split()
    if len(fields) < 3:
        raise SdpError(f"bad m= line {m_line!r}")
    port_s = fields[1].split("/", 1)[0]
    if not _is_int(port_s) or int(port_s) > 65535:
        raise SdpError(f"bad m= port {fields[1]!r}")
    port = int(port_s)
    pts: list[int] = []
    for f in fields[3:]:
        if _is_int(f) and int(f) < 128:
            pts.append(int(f))
        elif fields[2].upper().startswith("RTP/"):
            raise SdpError(f"bad payload type {f!r}")
    addr = session_addr
    direction = session_dir
    ptime: int | None = None
    rtpmap: dict[int, tuple[str, int]] = {}
    for kind, value in media:
        if kind == "c":
            addr = _parse_connection(value)
        elif kind == "a":
            name, _, rest = value.partition(":")
            if value in DIRECTIONS:
                direction = value
            elif name == "rtpmap":
                pt_s, _, enc = rest.partition(" ")
                enc_parts = enc.strip().split("/")
                if _is_int(pt_s) and len(enc_parts) >= 2 and _is_int(enc_parts[1]):
                    rtpmap[int(pt_s)] = (enc_parts[0], int(enc_parts[1]))
            elif name == "ptime" and _is_int(rest.strip()):
                ptime = int(rest.strip())
    if addr is None:
        if port == 0:
            addr = ""
        else:
            raise SdpError("no c= line for the audio stream")
    codec: Codec | None = None
    dtmf: int | None = None
    for pt in pts:
        name, rate = rtpmap.get(pt) or _STATIC.get(pt, ("", 0))
        if name.lower() == "telephone-event":
            if dtmf is None:
                dtmf = pt
            continue
        if codec is None:
            for ours in offered:
                if ours.name.lower() != "telephone-event" and ours.matches(name, rate):
                    codec = Codec(ours.name, ours.clock_rate, pt, ours.channels)
                    break
    return MediaAnswer(addr, port, codec, dtmf, direction, ptime, tuple(pts))
