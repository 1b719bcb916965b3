"""aiohttp client of the 001 control API (PROTOCOL.md), the uploader and the status reporter.

Errors are sorted into what the daemon does about them:

- `ServerUnavailable`: no answer, a timeout, an HTTP 5xx, a body that is not
  the envelope or one over `REPLY_MAX_BYTES`. Try again later; nothing is
  dropped.
- `UnknownClient`: the server does not know our clientId (HTTP 404, or a 404
  `code`, unless its message names another field, e.g. "extensionNum: not
  leased" or "dialplanId: no dialplan": those are `Refused`). The daemon calls
  /notify again and starts over with the new id.
- `Refused`: any other non-200 `code`. Final for that request (e.g. an upload
  for a number that is already finished answers 409).

`Uploader` drains the spool in order, one entry at a time, and deletes an
entry only after the server accepted it; a refused entry moves to
``refused/`` beside the spool for a person to look at. `StatusReporter`
keeps the latest state of each extension and sends it when it can, so a
server that was down for a minute receives one /status per extension, not a
backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

from sipclient.agent.spool import Spool, SpoolEntry
from sipclient.logs import get_logger

log = get_logger(__name__)

REPLY_MAX_BYTES = 8 * 1024 * 1024
"""The most of an envelope reply read. The largest reply the contract has is the
library listing: ~200 bytes a template, 8 MiB is ~40,000 templates, far past the
mirror's own cap (`classify.mirror_max_mb`); a dialplan of 200 numbers is ~20 KB.
A server sending more is broken or hostile: it gets no more of our memory."""
AHEAD_REST_S = 1.0
"""After a "during" that asked ahead got no number (the server keeps a list's end
for free lines), no "during" asks ahead for this long (`StatusReporter`)."""


class ControlError(Exception):
    """A 001 call that did not succeed."""

    def __init__(self, message: str, code: int | None = None, http_status: int = 0) -> None:
        super().__init__(message)
        self.code = code
        """The envelope's `code`; None when the answer had no envelope."""
        self.http_status = http_status


class ServerUnavailable(ControlError):
    """No usable answer: try again later."""


class Unauthorized(ServerUnavailable):
    """401: our `server.token` is missing or wrong. Nothing is refused for good (the
    uploads stay in the spool, the statuses wait): the operator fixes the token."""


class UnknownClient(ControlError):
    """The server does not know this clientId: /notify again."""


class Refused(ControlError):
    """The server answered a definitive non-200 code."""


@dataclass(frozen=True)
class Account:
    """One leased extension (`host`, `transport`, `domain` are the (ext) fields)."""

    extension: str
    password: str
    host: str | None = None
    transport: str | None = None
    domain: str | None = None


@dataclass(frozen=True)
class DialplanItem:
    """One number to dial now on one extension."""

    extension: str
    phone: str
    dialplan_id: str | None = None
    taken_at: float = 0.0
    """Loop time the daemon took it onto its line (`Daemon._take`); 0: not yet."""
    lease_s: float | None = None
    """(ext) `leaseSeconds`: how long the server leaves it to us before handing it
    out again (its leases.number_timeout); None from a server that does not say."""
    redial: bool = False
    """Its call met a suspect route (`agent.route`): dialled again once the route
    is proven, not as the probe while a fresh number waits on the line."""
    during_recorded: bool = False
    """(ext) Handed in the reply to an "idle" by a server that recorded its extension
    `during` it at once (`duringRecorded`): the daemon need not send that state."""


_NOT_THE_CLIENT = ("extensionNum:", "phone:", "phoneNum:", "dialplanId:", "task_id:")


def _names_other_field(msg: object) -> bool:
    """A 404 about something else than our clientId (the embedded server's messages
    start with the field they are about): an extension no longer leased to us, a
    number the server does not know. Those are refusals, not a reason to /notify."""
    return isinstance(msg, str) and msg.startswith(_NOT_THE_CLIENT)


class ControlClient:
    """The 001 API. One instance per daemon; close it with `close()`."""

    def __init__(self, base_url: str, *, timeout: float = 10.0, token: str = "") -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        self.lease_seen_at: float | None = None
        """Loop time at which the latest request was sent that the server answered
        200 while knowing our clientId (anything but an upload, which it takes from
        an expired id too): the numbers it handed us were still ours then."""
        self.lease_trust_s = math.inf
        """How long after `lease_seen_at` they are taken to be ours still
        (`lease_alive`); the daemon sets it from its heartbeat interval. Never more
        than half the server's `leases.client_timeout` when /notify said it."""
        self.server_client_timeout: float | None = None
        """(ext) `clientTimeout` of the latest /notify reply."""
        self.on_lease_back: Callable[[], None] | None = None
        """Called when such an answer comes after `lease_trust_s` without one."""

    def lease_alive(self, now: float) -> bool:
        """Whether the server answered, within `lease_trust_s` of `now`, a request it
        could only answer 200 while our clientId (and its leases) lived."""
        seen = self.lease_seen_at
        if seen is None:
            return False
        trust = self.lease_trust_s
        if self.server_client_timeout is not None:
            trust = min(trust, self.server_client_timeout / 2)
        return now - seen <= trust

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._auth)
        return self._session

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        proves_lease: bool = True,
    ) -> dict[str, Any]:
        url = self.base_url + path
        sent = asyncio.get_running_loop().time()
        try:
            async with self._http().request(
                method, url, params=params, data=data, headers=headers
            ) as resp:
                status = resp.status
                raw = await _read_at_most(resp, REPLY_MAX_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ServerUnavailable(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        if len(raw) > REPLY_MAX_BYTES:
            raise ServerUnavailable(
                f"{method} {path}: HTTP {status}, a reply over {REPLY_MAX_BYTES} bytes"
            )
        try:
            body = json.loads(raw)
        except ValueError:  # UnicodeDecodeError included
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("code"), int):
            if status == 404:
                raise UnknownClient(f"{method} {path}: HTTP 404", 404)
            raise ServerUnavailable(f"{method} {path}: HTTP {status}, not the envelope")
        code: int = body["code"]
        if code == 200:
            if proves_lease:
                self._lease_seen(sent)
            data_obj = body.get("data")
            return data_obj if isinstance(data_obj, dict) else {}
        message = f"{method} {path}: code {code}: {body.get('msg')}"
        if code == 401 or status == 401:
            raise Unauthorized(message + " (check server.token)", code)
        if (code == 404 or status == 404) and not _names_other_field(body.get("msg")):
            raise UnknownClient(message, code)
        if status >= 500 or code >= 500:
            raise ServerUnavailable(message, code, status)
        raise Refused(message, code, status)

    def _lease_seen(self, sent: float) -> None:
        back = not self.lease_alive(sent)
        if self.lease_seen_at is None or sent > self.lease_seen_at:
            self.lease_seen_at = sent
        if back and self.on_lease_back is not None:
            self.on_lease_back()

    async def notify(self) -> str:
        """Register this daemon; its clientId."""
        data = await self._call("GET", "/notify")
        client_id = data.get("clientId")
        if client_id in (None, ""):
            raise ServerUnavailable("/notify: no clientId in the answer")
        timeout = data.get("clientTimeout")
        if isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > 0:
            # (ext) the server's own leases.client_timeout: its leases are trusted half
            # that long at most, whatever our heartbeat (`lease_alive`)
            self.server_client_timeout = float(timeout)
        else:
            self.server_client_timeout = None
        return str(client_id)

    async def accounts(self, client_id: str, threads: int) -> list[Account]:
        """Lease up to `threads` extension accounts."""
        data = await self._call(
            "GET", f"/accounts/{client_id}", params={"threadsNum": str(threads)}
        )
        out = []
        for a in data.get("accounts") or []:
            if not isinstance(a, dict) or not a.get("extensionNum"):
                log.warning("account_ignored", reason="no extensionNum", account=str(a)[:200])
                continue
            out.append(
                Account(
                    extension=str(a["extensionNum"]),
                    password=str(a.get("password") or ""),
                    host=str(a["host"]) if a.get("host") else None,
                    transport=str(a["transport"]).lower() if a.get("transport") else None,
                    domain=str(a["domain"]) if a.get("domain") else None,
                )
            )
        return out

    async def dialplan(self, client_id: str) -> list[DialplanItem]:
        """Numbers to dial now; an empty list means nothing to do."""
        return _dialplan_items(await self._call("GET", f"/dialplan/{client_id}"))

    async def heartbeat(
        self, client_id: str, health: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Liveness; (ext) `health`, the daemon's view of itself, goes as a JSON body
        the embedded server shows in its fleet listing (a server that knows only
        the seed ignores it). The reply's data: (ext) `library`, the version of the
        template library the server offers."""
        if health is None:
            return await self._call("POST", f"/heartbeat/{client_id}")
        body = json.dumps(health, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json"}
        return await self._call("POST", f"/heartbeat/{client_id}", data=body, headers=headers)

    async def library(self) -> dict[str, Any]:
        """(ext) The listing of the server's template library (`GET /library`)."""
        return await self._call("GET", "/library")

    async def library_file(self, name: str, max_bytes: int | None = None) -> bytes:
        """(ext) One template's WAV (`GET /library/{file}`); any failure is
        ServerUnavailable (never a reason to start over, as a 404 of `_call` is).
        With `max_bytes`, no more than `max_bytes` + 1 bytes of the body are read: a
        longer body comes back cut there, longer than `max_bytes` for the caller to
        refuse, and the rest is never read (the connection is dropped), so a server
        that sends more than it listed cannot fill our memory."""
        path = f"/library/{urllib.parse.quote(name)}"
        try:
            async with self._http().get(self.base_url + path) as resp:
                status = resp.status
                if status != 200:  # its body is not used: not read either
                    data = b""
                elif max_bytes is None:
                    data = await resp.read()
                else:
                    data = await _read_at_most(resp, max_bytes + 1)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ServerUnavailable(f"GET {path}: {type(exc).__name__}: {exc}") from None
        if status != 200:
            raise ServerUnavailable(f"GET {path}: HTTP {status}", None, status)
        return data

    async def leave(self, client_id: str) -> dict[str, Any]:
        """(ext) We stop: our lease ends now (accounts, numbers released)."""
        return await self._call("POST", f"/leave/{client_id}")

    async def status(
        self,
        client_id: str,
        status: str,
        extension: str,
        phone: str = "",
        *,
        want_next: int = 0,
    ) -> list[DialplanItem] | None:
        """State change of one extension.

        `want_next` (ext, with "idle"): the server hands the extension its next number
        in the reply, saving the GET /dialplan round trip between two calls; with
        "during": numbers for the line to hold while it dials `phone`, so that it
        holds that many (the look-ahead). Returns those numbers (maybe none), or
        None when the reply has no `dialplans` (a server that knows only the seed,
        or not asked).
        """
        params = {"status": status, "extensionNum": extension, "phoneNum": phone}
        if want_next:
            params["next"] = str(want_next)
        data = await self._call("GET", f"/status/{client_id}", params=params)
        if not want_next or "dialplans" not in data:
            return None
        return _dialplan_items(data, during_recorded=data.get("duringRecorded") is True)

    async def upload(self, client_id: str, entry: SpoolEntry) -> None:
        """POST /dial_wav with the entry's WAV and fields (`form_data`)."""
        with open(entry.wav, "rb") as fh:
            wav = fh.read()
        await self.upload_wav(client_id, entry.fields, entry.wav.name, wav)

    async def upload_wav(
        self, client_id: str, fields: dict[str, str], name: str, wav: bytes
    ) -> None:
        """POST /dial_wav with `wav` (named `name`) and `fields` (`form_data`)."""
        body, content_type = form_data(fields, "file_name", name, wav)
        await self._call(
            "POST",
            f"/dial_wav/{client_id}",
            data=body,
            headers={"Content-Type": content_type},
            proves_lease=False,  # a late upload from an expired clientId is taken
        )


def _dialplan_items(data: dict[str, Any], *, during_recorded: bool = False) -> list[DialplanItem]:
    """The numbers of a reply's `dialplans` (GET /dialplan, or GET /status with `next`)."""
    out = []
    for d in data.get("dialplans") or []:
        if not isinstance(d, dict) or not d.get("extensionNum") or not d.get("phoneNum"):
            log.warning("dialplan_ignored", reason="incomplete", item=str(d)[:200])
            continue
        dp_id = d.get("dialplanId")
        lease = d.get("leaseSeconds")
        out.append(
            DialplanItem(
                str(d["extensionNum"]),
                str(d["phoneNum"]),
                None if dp_id is None else str(dp_id),
                lease_s=float(lease)
                if isinstance(lease, int | float) and not isinstance(lease, bool) and lease > 0
                else None,
                during_recorded=during_recorded,
            )
        )
    return out


async def _read_at_most(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """Up to `limit` bytes of `resp`'s body (fewer only at its end)."""
    chunks: list[bytes] = []
    got = 0
    while got < limit:
        chunk = await resp.content.read(limit - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def form_data(
    fields: dict[str, str], file_field: str, filename: str, content: bytes
) -> tuple[bytes, str]:
    """A multipart/form-data body (RFC 7578) of text `fields` and one file; the body
    and its Content-Type.

    Built as one buffer: aiohttp's FormData writes each part's boundary,
    headers and value separately, ~70 socket writes for an upload's 15 fields.
    It cost the daemon 1.05 ms of CPU an upload against 0.29 ms for this
    (`bench/upload.py`, 30 KB WAV), about 4 % of what a call costs it at 100
    lines. Names are ours; a value may hold any text (a SIP reason phrase):
    the random boundary cannot occur in it by chance.
    """
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{_quote(name)}"\r\n\r\n'.encode()
        + value.encode("utf-8")
        + b"\r\n"
        for name, value in fields.items()
    ]
    parts.append(
        f"--{boundary}\r\nContent-Disposition: form-data; "
        f'name="{_quote(file_field)}"; filename="{_quote(filename)}"\r\n'
        "Content-Type: audio/wav\r\n\r\n".encode()
        + content
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _quote(name: str) -> str:
    """A quoted-string's inside (RFC 7578 4.2): backslash and quote escaped, no line breaks."""
    return name.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")


T = TypeVar("T")


async def _in_flight(
    items: list[T], limit: int, step: Callable[[T], Awaitable[bool | None]]
) -> bool:
    """`step` over `items`, started in order, up to `limit` at a time; True unless a
    step returned False, after which no new one starts (those running finish)."""
    todo = iter(items)
    stopped = False

    async def worker() -> None:
        nonlocal stopped
        for item in todo:
            if stopped or await step(item) is False:
                stopped = True
                return

    await asyncio.gather(*(worker() for _ in range(min(limit, len(items)))))
    return not stopped


async def _retry_forever(
    step: Callable[[], Awaitable[bool]], wake: asyncio.Event, low: float, high: float, name: str
) -> None:
    """Run `step` whenever woken; while it reports unfinished work, retry with back-off.

    A step that raises is logged and retried like unfinished work: this loop is
    the uploader's (or the status reporter's) whole life, and nothing restarts
    it. Until session 8 one OSError from the spool's disk work (an unlink as the
    spool's folder went away) ended the uploader: nothing was uploaded until the
    daemon stopped, and every number was dialled again after its lease ran out.
    """
    delay = low
    while True:
        wake.clear()
        try:
            done = await step()
        except Exception as exc:  # CancelledError is no Exception: a stop still stops
            log.error(f"{name}_failed", error=f"{type(exc).__name__}: {exc}", retry_in=delay)
            done = False
        if done:
            delay = low
            await wake.wait()
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=delay)
            delay = min(delay * 2, high)


class Uploader:
    """Drains the spool to the server, oldest first; wake it with `kick()`."""

    def __init__(
        self,
        client: ControlClient,
        spool: Spool,
        client_id: Callable[[], str | None],
        *,
        retry_min: float = 0.5,
        retry_max: float = 30.0,
        concurrency: int = 8,
    ) -> None:
        self.client = client
        self.spool = spool
        self.concurrency = max(1, concurrency)
        """Uploads in flight at most (`drain_once`)."""
        self._client_id = client_id
        self._wake = asyncio.Event()
        self._draining = asyncio.Lock()
        self._retry_min = retry_min
        self._retry_max = retry_max
        self.uploaded = 0
        self.refused = 0
        self._sent: set[str] = set()
        """Seqs of entries the server took whose files could not be removed (the
        spool's folder gone): removed, not sent again, at the next pass."""
        self.on_unknown_client: Callable[[], None] | None = None
        self.on_uploaded: Callable[[SpoolEntry], None] | None = None
        """Called as each upload is accepted (the daemon asks for the next number then)."""
        self.on_refused: Callable[[SpoolEntry], None] | None = None
        """Called after each upload refused for good (set aside in refused/)."""

    def kick(self) -> None:
        """Something was spooled, or the server may be back."""
        self._wake.set()

    async def drain_once(self) -> bool:
        """Upload what is spooled; True when the spool is empty afterwards.

        Entries are started oldest first, up to `concurrency` at a time: an upload
        waits ~40 ms on the server's fsyncs and judging, and one at a time fell
        behind at 100 lines (the spool grew, and a server that frees a line only
        when its upload is in kept the line idle that long).
        They may finish out of order; each is removed only after its own 200, and
        the first "server away" stops starting new ones (the rest stay spooled).
        The spool's disk work (listing, unlinks) runs in a worker thread.

        One pass at a time: the background loop (`run`) and the shutdown's last
        pass would otherwise list the same entries and upload each twice; the
        second copy is refused (already finished) while the first removes its
        files (seen in CI: a SIGTERM mid-call exited 1 on the vanished file).
        """
        async with self._draining:
            entries = await asyncio.to_thread(lambda: list(self.spool.entries()))
            if self._sent:
                entries = await asyncio.to_thread(self._forget_sent, entries)
            return await _in_flight(entries, self.concurrency, self._upload)

    def _forget_sent(self, entries: list[SpoolEntry]) -> list[SpoolEntry]:
        """`entries` without those the server already has, whose files go now (a
        worker thread). Sent again, each was refused as finished (409) and set
        aside in refused/ for nothing (seen in a soak: the spool's folder swapped
        between an upload's 200 and its unlink)."""
        left = []
        for entry in entries:
            if entry.seq not in self._sent:
                left.append(entry)
                continue
            try:
                self.spool.remove(entry)
            except OSError:
                continue  # still not removable: still not sent again
            self._sent.discard(entry.seq)
        return left

    async def _upload(self, entry: SpoolEntry) -> bool | None:
        """One entry: True uploaded, None refused (kept aside), False stop draining."""
        client_id = self._client_id()
        if client_id is None:
            return False
        try:
            await self.client.upload(client_id, entry)
        except UnknownClient:
            if self.on_unknown_client is not None:
                self.on_unknown_client()
            return False
        except ServerUnavailable as exc:
            log.info("upload_deferred", reason=str(exc), spooled=len(self.spool))
            return False
        except Refused as exc:
            self.refused += 1
            log.warning("upload_refused", reason=str(exc), seq=entry.seq, **entry.fields)
            await asyncio.to_thread(self.spool.refuse, entry)
            if self.on_refused is not None:
                self.on_refused(entry)
            return None
        self.uploaded += 1
        # said before the unlink's thread hop: the server may hand the number out
        # again (a transient outcome's next try) before it is back
        if self.on_uploaded is not None:
            self.on_uploaded(entry)
        try:
            await asyncio.to_thread(self.spool.remove, entry)
        except OSError as exc:  # the server has it: removed at a later pass (`_sent`)
            self._sent.add(entry.seq)
            log.warning("spool_remove_failed", seq=entry.seq, error=f"{type(exc).__name__}: {exc}")
        log.debug("uploaded", seq=entry.seq, phone=entry.fields.get("phone"))
        return True

    async def run(self) -> None:
        """Forever: drain, and back off while the server is away."""
        await _retry_forever(
            self.drain_once, self._wake, self._retry_min, self._retry_max, "upload_pass"
        )


class StatusReporter:
    """The latest /status of each extension, delivered when the server can take it."""

    def __init__(
        self,
        client: ControlClient,
        client_id: Callable[[], str | None],
        *,
        retry_min: float = 0.5,
        retry_max: float = 30.0,
        concurrency: int = 8,
    ) -> None:
        self.client = client
        self._client_id = client_id
        self._pending: dict[str, tuple[str, str]] = {}
        self._recorded: dict[str, tuple[str, str]] = {}
        """extension -> (clientId, phone): the server recorded it `during` that number
        when it handed it (`DialplanItem.during_recorded`), and nothing since."""
        self._wake = asyncio.Event()
        self._reported = asyncio.Event()  # a state came while `flush` runs
        self._retry_min = retry_min
        self._retry_max = retry_max
        self.concurrency = max(1, concurrency)
        """Extensions whose state is in flight at once (`flush`)."""
        self.sent = 0
        self.unsent_during = 0
        """"during" states left unsent: the server had recorded them (`report`)."""
        self.on_unknown_client: Callable[[], None] | None = None
        self.on_sent: Callable[[str, str], None] | None = None
        """Called with (extension, status) once the server took it (the daemon asks
        for the line's next number when an "idle" went in)."""
        self.ask_next = True
        """Whether an "idle" asks for the next number (with `on_numbers` set); turned off
        for good by a server that refuses the question (a 400 for the `next` it does
        not know: the state then goes again without it)."""
        self.on_numbers: Callable[[list[DialplanItem]], None] | None = None
        """Set: an "idle" asks the server for the line's next number in its reply
        (`ControlClient.status` `want_next`), and the numbers handed that way are
        given to it, before `on_sent` (which is then told "idle_served")."""
        self.may_hold: Callable[[str], int] | None = None
        """Set, with `on_numbers`: a "during" asks the server for numbers for the line
        to hold while it dials, so that it holds as many as this says (ext `next`,
        the look-ahead); the numbers go to `on_numbers` too."""
        self.ask_ahead = True
        """Turned off for good by a server whose reply to such a "during" hands nothing
        or refuses its `next` (one that knows `next` with "idle" only: session 18's)."""
        self._ahead_rest_until = 0.0
        """Loop time before which no "during" asks ahead (AHEAD_REST_S)."""

    def report(self, extension: str, status: str, phone: str = "") -> None:
        """Queue a state; an older unsent state of the same extension is replaced.

        A "during" the server recorded itself, when it handed the number in the
        reply to the line's "idle" (`duringRecorded`), is not sent, so long as
        nothing else was reported for that extension in between. Sent, it was
        still in flight when a call ended at once (a 486 after 2 ms), and the
        line's "idle", which must follow it, waited a round trip more to the
        server: at 50 ms from it, 104 ms between such calls instead of 54.
        """
        recorded = self._recorded.pop(extension, None)
        if (
            status == "during"
            and recorded is not None
            and recorded == (self._client_id(), phone)
            and extension not in self._pending
            and not self._asks_ahead(extension)  # that "during" carries a question
        ):
            self.unsent_during += 1
            return
        self._pending[extension] = (status, phone)
        self._wake.set()
        self._reported.set()

    def withdraw_idle(self, extension: str) -> None:
        """Drop an unsent "idle" of the extension: its line holds a number after all
        (an "idle" in flight is past recall)."""
        if self._pending.get(extension) == ("idle", ""):
            del self._pending[extension]

    def _asks_ahead(self, extension: str) -> int:
        """How many numbers a "during" of `extension` asks for (0: a plain one).

        None for AHEAD_REST_S after a question that got none: at a list's end
        (free numbers no more than three times the lines, docs/server.md) every
        "during" asking ahead was sent and answered `[]`, where the server had
        recorded that state already (`report`), and after a call shorter than the
        round trip the line's "idle" waited for that reply: two round trips
        between two calls instead of one (24 lines at 100 ms from the server, the
        list's last 15 %).
        """
        if not (self.ask_ahead and self.ask_next and self.on_numbers and self.may_hold):
            return 0
        if asyncio.get_running_loop().time() < self._ahead_rest_until:
            return 0
        return self.may_hold(extension)

    @property
    def pending(self) -> int:
        """States not yet delivered."""
        return len(self._pending)

    async def flush(self) -> bool:
        """Send what is pending, and what is reported meanwhile; True when all went.

        Up to `concurrency` extensions at a time, one state each: a line's "idle"
        is what lets the server hand it the next number, and one request at a
        time (each a server write) queued every line's behind the others'. A
        state reported while others are in flight starts at once if a slot is
        free: until session 18 it waited for the whole batch it missed, up to a
        round trip to the server between a line's calls. States of one extension
        stay in order: a newer one starts when its older one is answered. The
        first "server away" stops starting new ones (those running finish).
        """
        running: dict[str, asyncio.Future[bool]] = {}
        ok = True
        failure: BaseException | None = None
        while True:
            self._reported.clear()
            if ok:
                for extension, state in list(self._pending.items()):
                    if len(running) >= self.concurrency:
                        break
                    if extension not in running:
                        running[extension] = asyncio.ensure_future(self._send((extension, state)))
            if not running:
                if failure is not None:
                    raise failure
                return ok
            reported = asyncio.ensure_future(self._reported.wait())
            waiting: list[asyncio.Future[Any]] = [*running.values(), reported]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            reported.cancel()
            for extension, task in list(running.items()):
                if task.done():
                    del running[extension]
                    if task.exception() is not None:
                        failure = failure or task.exception()
                        ok = False
                    elif task.result() is False:
                        ok = False

    async def _send(self, item: tuple[str, tuple[str, str]]) -> bool:
        """One extension's state; False: stop (server away, unknown client)."""
        extension, state = item
        status, phone = state
        client_id = self._client_id()
        if client_id is None:
            return False
        want_next = 0
        if status == "idle":
            want_next = int(self.on_numbers is not None and self.ask_next)
        elif status == "during" and phone:
            want_next = self._asks_ahead(extension)
        handed: list[DialplanItem] | None = None
        try:
            handed = await self.client.status(
                client_id, status, extension, phone, want_next=want_next
            )
        except UnknownClient:
            if self.on_unknown_client is not None:
                self.on_unknown_client()
            return False
        except ServerUnavailable:
            return False
        except Refused as exc:
            if want_next and exc.http_status == 400:
                # a server that refuses what it does not know (a bad request, not an
                # extension it does not lease us): ask plainly from now on, and this
                # state again so (the flush sends it, still pending). Session 18's
                # server takes `next=1` with "idle" but refuses `next=2`, which only
                # a "during" asks: then only the look-ahead is off.
                if status == "during" and want_next > 1:
                    self.ask_ahead = False
                    log.info("look_ahead_unsupported", hint="the server refused next=N")
                else:
                    self.ask_next = False
                    log.warning("status_next_refused", reason=str(exc))
                return True
            log.warning("status_refused", extension=extension, status=status, reason=str(exc))
        if self._pending.get(extension) == state:
            del self._pending[extension]
        self.sent += 1
        if want_next and status == "during" and handed is None:
            # a server that knows `next` with "idle" only: the line's next number comes
            # with its "idle" (or GET /dialplan), as before the look-ahead
            self.ask_ahead = False
            log.info("look_ahead_unsupported", hint="the server hands no number ahead")
        elif want_next and status == "during" and not handed:
            self._ahead_rest_until = asyncio.get_running_loop().time() + AHEAD_REST_S
        if handed is not None and self.on_numbers is not None:
            # the server took `next`: whatever the line gets next came in this reply
            for number in handed:
                if number.during_recorded and number.extension not in self._pending:
                    self._recorded[number.extension] = (client_id, number.phone)
            self.on_numbers(handed)
            if status == "idle":
                status = "idle_served"
        if self.on_sent is not None:
            self.on_sent(extension, status)
        return True

    async def run(self) -> None:
        """Forever: deliver states, backing off while the server is away."""
        await _retry_forever(
            self.flush, self._wake, self._retry_min, self._retry_max, "status_pass"
        )
