"""Validation of what clients send; every refusal names the field (`errors.bad_request`)."""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sipclient.classify.verdicts import Signalling
from sipclient.config import LOOK_AHEAD_MAX, HostPort
from sipclient.server.errors import bad_request
from sipclient.server.store import AccountIn, iso_local
from sipclient.text import readable

MAX_PHONE_LEN = 64
MAX_PHONES = 100_000
MAX_TEXT = 256
STATUSES = ("idle", "during", "call", "unregistered")


def parse_json(raw: bytes) -> Any:
    """The body as JSON, or 400."""
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad_request("body", f"malformed JSON ({exc})") from None


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad_request(where, f"expected a JSON object, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "a number"
    )


def _text(obj: dict[str, Any], key: str, where: str, *, empty_ok: bool = False) -> str:
    if key not in obj:
        raise bad_request(where, "missing")
    value = obj[key]
    if not isinstance(value, str):
        raise bad_request(where, f"expected a string, got {_kind(value)}")
    if not value.strip() and not empty_ok:
        raise bad_request(where, "must not be empty")
    if len(value) > MAX_TEXT:
        raise bad_request(where, f"longer than {MAX_TEXT} characters")
    return value


def parse_accounts(body: Any) -> list[AccountIn]:
    """POST /api/account: {"account": [{host, name, pwd}, ...]} (+ ext transport, domain)."""
    obj = _object(body, "body")
    if "account" not in obj:
        raise bad_request("account", "missing")
    items = obj["account"]
    if not isinstance(items, list):
        raise bad_request("account", f"expected an array, got {_kind(items)}")
    if not items:
        raise bad_request("account", "must not be empty")
    out: list[AccountIn] = []
    for i, item in enumerate(items):
        where = f"account[{i}]"
        entry = _object(item, where)
        host = _text(entry, "host", f"{where}.host")
        try:
            HostPort.parse(host)
        except ValueError as exc:
            raise bad_request(f"{where}.host", str(exc)) from None
        name = _text(entry, "name", f"{where}.name")
        pwd = _text(entry, "pwd", f"{where}.pwd", empty_ok=True)
        transport = None
        if entry.get("transport") is not None:
            transport = _text(entry, "transport", f"{where}.transport")
            if transport not in ("udp", "tcp"):
                raise bad_request(f"{where}.transport", f"expected udp or tcp, got {transport!r}")
        domain = None
        if entry.get("domain") is not None:
            domain = _text(entry, "domain", f"{where}.domain")
        out.append(AccountIn(host, name, pwd, transport, domain))
    return out


def parse_push(body: Any) -> tuple[list[str], str]:
    """POST /api/dialplan: the phones (exact strings, first occurrence kept) and return_url."""
    obj = _object(body, "body")
    if "phone" not in obj:
        raise bad_request("phone", "missing")
    phones = obj["phone"]
    if not isinstance(phones, list):
        raise bad_request("phone", f"expected an array of strings, got {_kind(phones)}")
    if not phones:
        raise bad_request("phone", "must not be empty")
    if len(phones) > MAX_PHONES:
        raise bad_request("phone", f"more than {MAX_PHONES} numbers in one task")
    seen: dict[str, None] = {}
    for i, phone in enumerate(phones):
        if not isinstance(phone, str):
            raise bad_request(f"phone[{i}]", f"expected a string, got {_kind(phone)}")
        if not phone.strip():
            raise bad_request(f"phone[{i}]", "must not be empty")
        if len(phone) > MAX_PHONE_LEN:
            raise bad_request(f"phone[{i}]", f"longer than {MAX_PHONE_LEN} characters")
        if any(ord(c) < 32 or ord(c) == 127 for c in phone):
            raise bad_request(f"phone[{i}]", "control characters are not allowed")
        seen.setdefault(phone, None)
    return_url = _text(obj, "return_url", "return_url")
    parts = urlsplit(return_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise bad_request("return_url", f"expected an http(s) URL, got {return_url!r}")
    return list(seen), return_url


def parse_positive_int(
    raw: str | None, where: str, *, default: int | None = None, high: int = 1_000_000
) -> int:
    """A query parameter that must be an integer in 1..high."""
    if raw is None or raw == "":
        if default is None:
            raise bad_request(where, "missing")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(where, f"expected an integer, got {raw!r}") from None
    if not 1 <= value <= high:
        raise bad_request(where, f"expected 1..{high}, got {value}")
    return value


def parse_next(query: Any) -> int:
    """GET /status (ext) `next`: N >= 1 asks for numbers in the reply (with
    status=idle: the extension's next one, to dial now, whatever N; with
    status=during: so many that the line holds N after that phone, to dial once
    it is done); absent or "0": no."""
    value = str(query.get("next", "0"))
    if value not in {str(n) for n in range(LOOK_AHEAD_MAX + 1)}:
        raise bad_request("next", f"expected 0..{LOOK_AHEAD_MAX}, got {value!r}")
    return int(value)


def parse_status(query: Any) -> tuple[str, str, str]:
    """GET /status: (status, extensionNum, phoneNum)."""
    status = query.get("status")
    if status is None:
        raise bad_request("status", "missing")
    if status not in STATUSES:
        raise bad_request("status", f"expected one of {', '.join(STATUSES)}, got {status!r}")
    extension = query.get("extensionNum")
    if not extension:
        raise bad_request("extensionNum", "missing")
    phone = query.get("phoneNum", "")
    if len(phone) > MAX_PHONE_LEN:
        raise bad_request("phoneNum", f"longer than {MAX_PHONE_LEN} characters")
    return status, extension, phone


HEALTH_MAX_BYTES = 4096
"""The most of a heartbeat's body read; a longer one is ignored, not refused."""
HEALTH_ALERTS_MAX = 16
HEALTH_TEXT_MAX = 300


def parse_health(raw: bytes) -> dict[str, Any] | None:
    """(ext) A heartbeat's optional body: the daemon's own view of itself, for the
    fleet listing. None when absent or not what we expect: a heartbeat is liveness
    first, and a body we cannot read never makes it fail.

    Kept: `summary` (its STATUS= text), `alerts` (short codes: route_suspect,
    trunk_failing, loop_lagging, ...), `decided` and `spooled` (counts)."""
    if not raw or len(raw) > HEALTH_MAX_BYTES:
        return None
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict):
        return None
    out: dict[str, Any] = {}
    summary = body.get("summary")
    if isinstance(summary, str):
        out["summary"] = readable(summary)[:HEALTH_TEXT_MAX]
    alerts = body.get("alerts")
    if isinstance(alerts, list):
        out["alerts"] = [
            readable(a)[:40] for a in alerts[:HEALTH_ALERTS_MAX] if isinstance(a, str) and a
        ]
    for key in ("decided", "spooled"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53:
            out[key] = value
    return out or None


@dataclass(frozen=True)
class WavInfo:
    frames: int
    samplerate: int
    channels: int
    bits: int
    format_tag: int


# WAVE format tags a recording may carry: PCM, IEEE float, A-law, mu-law, extensible.
_WAVE_FORMATS = {1, 3, 6, 7, 0xFFFE}


def check_wav(data: bytes) -> WavInfo:
    """The upload must be a RIFF/WAVE file with a usable `fmt ` and a `data` chunk.

    Read from the header alone (zero frames allowed): libsndfile would do as
    well, but at a cost per upload that shows at thousands of uploads a second;
    the classifier reads the samples afterwards anyway.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise bad_request("file_name", "not a WAV file (no RIFF/WAVE header)")
    fmt: tuple[int, int, int, int, int] | None = None
    pos = 12
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        body = pos + 8
        if chunk_id == b"fmt ":
            if size < 16 or body + 16 > len(data):
                raise bad_request("file_name", "not a readable WAV file (short fmt chunk)")
            tag, channels, rate = struct.unpack_from("<HHI", data, body)
            block, bits = struct.unpack_from("<HH", data, body + 12)
            fmt = (tag, channels, rate, block, bits)
        elif chunk_id == b"data":
            if fmt is None:
                raise bad_request("file_name", "not a readable WAV file (data before fmt)")
            tag, channels, rate, block, bits = fmt
            if tag not in _WAVE_FORMATS or channels < 1 or rate < 1 or block < 1:
                raise bad_request(
                    "file_name",
                    f"unsupported WAV format (tag {tag}, {channels} channels, {rate} Hz)",
                )
            # A streaming writer may leave the size at 0 or 0xFFFFFFFF: trust the file.
            available = len(data) - body
            length = available if size in (0xFFFFFFFF,) or size > available else size
            return WavInfo(length // block, rate, channels, bits, tag)
        pos = body + size + (size & 1)
    raise bad_request("file_name", "not a readable WAV file (no fmt/data chunk)")


@dataclass(frozen=True)
class UploadFields:
    """The form fields of a /dial_wav, typed."""

    extension: str
    phone: str
    dialplan_id: int | None
    sip_code: int | None
    sip_reason: str
    q850_cause: int | None
    answered: bool
    early_media: bool
    ringing: bool
    cancelled_by_us: bool
    cancel_reason: str
    started_at: str | None
    ring_ms: int | None
    media_ms: int | None
    local_verdict: str | None
    local_confidence: float | None

    def signalling(self) -> Signalling:
        return Signalling(
            sip_code=self.sip_code,
            sip_reason=self.sip_reason,
            q850_cause=self.q850_cause,
            ringing=self.ringing,
            early_media=self.early_media,
            answered=self.answered,
            cancelled_by_us=self.cancelled_by_us,
            cancel_reason=self.cancel_reason,
        )


_NAME_RE = re.compile(r';\s*name\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]+))', re.IGNORECASE)
_QUOTED_PAIR = re.compile(r"\\(.)")


def split_multipart(body: bytes, boundary: str) -> list[tuple[str, bytes]]:
    """(field name, content) of each part of a multipart/form-data body (RFC 7578).

    A whole-body parser: the body is bounded by max_body already, and this is
    several times cheaper per upload than a streaming reader. Raises ValueError
    on a body that is not multipart with this boundary.
    """
    delim = b"--" + boundary.encode("latin-1")
    if body.startswith(delim):
        rest = body[len(delim) :]
    else:
        start = body.find(b"\r\n" + delim)
        if start < 0:
            raise ValueError("no boundary line")
        rest = body[start + 2 + len(delim) :]
    parts: list[tuple[str, bytes]] = []
    closing = b"\r\n" + delim
    while not rest.startswith(b"--"):
        eol = rest.find(b"\r\n")
        if eol < 0:
            raise ValueError("truncated after a boundary")
        rest = rest[eol + 2 :]
        end = rest.find(closing)
        if end < 0:
            raise ValueError("no closing boundary")
        chunk, rest = rest[:end], rest[end + len(closing) :]
        if chunk.startswith(b"\r\n"):
            head, content = b"", chunk[2:]
        else:
            head, sep, content = chunk.partition(b"\r\n\r\n")
            if not sep:
                raise ValueError("a part without the blank line after its headers")
        name = ""
        for line in head.split(b"\r\n"):
            key, _, value = line.decode("utf-8", "replace").partition(":")
            if key.strip().lower() == "content-disposition":
                match = _NAME_RE.search(value)
                if match:
                    quoted, token = match.groups()
                    name = _QUOTED_PAIR.sub(r"\1", quoted) if quoted is not None else token
        parts.append((name, content))
    return parts


def _opt_int(form: dict[str, str], key: str, low: int, high: int) -> int | None:
    raw = form.get(key, "").strip()
    if raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(key, f"expected an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise bad_request(key, f"expected {low}..{high}, got {value}")
    return value


def _opt_flag(form: dict[str, str], key: str) -> bool:
    raw = form.get(key, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise bad_request(key, f"expected 0 or 1, got {raw!r}")


def _opt_float(form: dict[str, str], key: str) -> float | None:
    raw = form.get(key, "").strip()
    if raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise bad_request(key, f"expected a number, got {raw!r}") from None
    if not 0.0 <= value <= 1.0:
        raise bad_request(key, f"expected 0..1, got {raw!r}")
    return value


def parse_upload_fields(form: dict[str, str]) -> UploadFields:
    """The seed's extensionNum and phone, plus the optional (ext) signalling fields."""
    extension = form.get("extensionNum", "").strip()
    if not extension:
        raise bad_request("extensionNum", "missing")
    phone = form.get("phone", "")
    if not phone.strip():
        raise bad_request("phone", "missing")
    if len(phone) > MAX_PHONE_LEN:
        raise bad_request("phone", f"longer than {MAX_PHONE_LEN} characters")
    local_verdict = form.get("localVerdict", "").strip() or None
    started_at = _call_time(form.get("startedAt", ""))
    sip_code = _opt_int(form, "sipCode", 100, 699)
    return UploadFields(
        extension=extension,
        phone=phone,
        dialplan_id=_opt_int(form, "dialplanId", 1, 2**62),
        sip_code=sip_code,
        sip_reason=form.get("sipReason", "")[:MAX_TEXT],
        q850_cause=_opt_int(form, "q850Cause", 0, 127),
        answered=_opt_flag(form, "answered"),
        early_media=_opt_flag(form, "earlyMedia"),
        ringing=_opt_flag(form, "ringing"),
        # (ext) beyond PROTOCOL.md's field list: a daemon that does not send it dials
        # and hangs up once it has heard enough, so its 487 is its own CANCEL and the
        # recording decides (read as "not ours", every live number it hung up on was
        # `failed`)
        cancelled_by_us=_opt_flag(form, "cancelledByUs")
        if "cancelledByUs" in form
        else sip_code == 487,
        cancel_reason=form.get("cancelReason", "").strip()[:MAX_TEXT],
        started_at=started_at,
        ring_ms=_opt_int(form, "ringMs", 0, 10**9),
        media_ms=_opt_int(form, "mediaMs", 0, 10**9),
        local_verdict=local_verdict[:MAX_TEXT] if local_verdict else None,
        local_confidence=_opt_float(form, "localConfidence"),
    )


def _call_time(value: str) -> str | None:
    """`startedAt` as the callback's `calltime`: ISO 8601 local time without zone.

    Our daemon sends epoch milliseconds (PROTOCOL.md gives no format); the
    callback speaks the seed's timestamps, so a number of digits is converted
    (milliseconds from 10^11 on, seconds below). Anything else is a daemon's own
    rendering of the time and is kept as it is (cut to MAX_TEXT).
    """
    text = value.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit() and len(text) <= 15:
        number = int(text)
        try:
            return iso_local(number / 1000 if number >= 10**11 else number)
        except (OverflowError, OSError, ValueError):
            pass  # out of the platform's range: kept as sent
    return text[:MAX_TEXT]
