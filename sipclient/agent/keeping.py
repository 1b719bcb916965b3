"""A finished call's record on its way into the spool: `RecordKeeper`.

The daemon hands every finished call's record (its /dial_wav fields and WAV) to
`RecordKeeper.keep`, which writes it to the spool (fsync'ed, off the loop); only
then is it counted and the uploader woken. A spool that cannot be written
(disk full, the folder gone) stops the dialling (`failing`): the record is
held, in memory and in the fallback spool when there is one (agent/spool.py),
no line starts a call, and the held records go to the spool, in order, as
soon as a write works again (`_retry_spool`); meanwhile each failed try sends
them straight to the server (`_upload_held`). Dialling on would make calls
whose results could only be thrown away, and the server would hand their
numbers out again. At start the records an earlier run left in the fallback
move into the spool (`adopt_fallback`); at a stop each held record gets one
more try (`last_try`).

Moved out of daemon.py (session 14), which keeps the dialling; the log events
are the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sipclient.agent.control import ControlClient, ControlError, Refused, Uploader
from sipclient.agent.spool import Spool, SpoolEntry, clean_fields, fallback_folder
from sipclient.config import DaemonConfig
from sipclient.disk import same_file_system
from sipclient.logs import get_logger

log = get_logger(__name__)

SPOOL_RETRY_MIN = 1.0
SPOOL_RETRY_MAX = 5.0
"""A spool write that failed is tried again after SPOOL_RETRY_MIN seconds,
doubling up to SPOOL_RETRY_MAX; no call starts meanwhile (`RecordKeeper.keep`). A
try is one small file write: with 30 s (before session 9) every line stood idle
up to 30 s after the disk came back, and the held records waited as long in
memory, lost to a kill -9 meanwhile (the soak saw 10 of them)."""


@dataclass
class CallRecord:
    """What one finished call leaves behind: its WAV and the /dial_wav fields.

    `wav` is a finished WAV file (possibly zero frames) the spool copies in, or,
    when `data` is set, only the name of one that was never written;
    `fields` are the (ext) form fields of PROTOCOL.md /dial_wav except
    extensionNum, phone and dialplanId, which the daemon adds.
    """

    wav: Path
    fields: dict[str, Any]
    verdict: str = "unknown"
    data: bytes | None = None
    """The WAV itself when it was built in memory (then no file exists at `wav`)."""
    pbx_fault: str = ""
    """Why the call says nothing of the number (PBX_FAULTS), else "": "no_response",
    the PBX sent nothing back to the INVITE (Timer B: the 408 is made up here);
    "credentials", it refused our digest for the INVITE (401/407)."""
    transient: bool = False
    """The outcome says nothing of the number, only of the network (503, cause 34...):
    the server dials it again; in a row, they pause the trunk (`Daemon._trunk_outcome`)."""


@dataclass
class HeldRecord:
    """A finished call's record the spool could not take (`RecordKeeper.keep`): its
    upload's fields, the record, and its copy in the fallback spool (None: in
    memory only). `earlier`: found in the fallback at start, left by an earlier
    run (not counted in this run's `decided`)."""

    fields: dict[str, Any]
    record: CallRecord
    copy: SpoolEntry | None = None
    earlier: bool = False


def fallback_spool(config: DaemonConfig) -> Spool | None:
    """The fallback spool (`spool.fallback`, agent/spool.py), None without one. One
    that cannot be made is logged and left out: the held records are then in memory
    only, as without it."""
    folder = fallback_folder(config.spool.fallback, os.environ)
    if folder is None:
        return None
    try:
        spool = Spool(folder)
    except OSError as exc:
        log.error("spool_fallback_unusable", folder=str(folder), error=str(exc))
        return None
    if same_file_system(folder, config.spool.dir):
        # still used: it covers the spool's folder going (removed, replaced, its
        # permissions changed), not the disk failing or filling up
        log.warning(
            "spool_fallback_same_file_system",
            folder=str(folder),
            spool=str(config.spool.dir),
            hint="a full or failing disk fails both; put spool.fallback on another"
            " file system (the default, systemd's RuntimeDirectory, is a tmpfs)",
        )
    return spool


class RecordKeeper:
    """The records of finished calls, into the spool or held (module docstring).

    `count` is called once for each record of this run the spool or the server
    took (the daemon's `decided`), `on_change` when what is held changes (the
    daemon's STATUS=), `on_writable` when the spool takes writes again (the dial
    loop wakes)."""

    def __init__(
        self,
        spool: Spool,
        fallback: Spool | None,
        uploader: Uploader,
        client: ControlClient,
        client_id: Callable[[], str | None],
        *,
        keep_wavs: bool,
        count: Callable[[], None],
        on_change: Callable[[], None],
        on_writable: Callable[[], None],
        on_sent: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.spool = spool
        self.fallback = fallback
        """Where held records are kept too (`spool.fallback`); None: memory only."""
        self.keep_wavs = keep_wavs
        """`recordings.keep`: a record's WAV file stays after it is spooled."""
        self.held: list[HeldRecord] = []
        """Finished calls the spool could not take yet, oldest first."""
        self._on_sent = on_sent
        """Told the fields of each held record the server took or refused for good
        straight from memory (`_upload_held`): it never reaches the spool."""
        self._uploader = uploader
        self._client = client
        self._client_id = client_id
        self._count = count
        self._on_change = on_change
        self._on_writable = on_writable
        self._retry: asyncio.Task[None] | None = None
        self._writing = False  # `_retry_spool` is in a write (a worker thread)

    def kept_in_fallback(self) -> int:
        """Records in the fallback spool (this run's held ones, or left for the next)."""
        return len(self.fallback) if self.fallback is not None else 0

    async def keep(self, fields: dict[str, Any], record: CallRecord) -> None:
        """One finished call's record (`fields`: the whole upload's): spooled, or held."""
        if self.held:  # after the ones held before it, in order
            await self._hold(fields, record, None)
            return
        try:
            await asyncio.to_thread(self._put, fields, record)
        except Exception as exc:  # OSError, or a bug: held and retried, never dropped
            await self._hold(fields, record, exc)
            return
        self._spooled(fields, record)

    def _put(
        self, fields: dict[str, Any], record: CallRecord, copy: SpoolEntry | None = None
    ) -> None:
        # one trip to a worker thread: the write, its fsyncs and the unlinks all
        # block on the disk (an unlink on the loop took ~3 ms on ext4). A record
        # moving in from the fallback keeps its seq, and its copy goes only once
        # the spool holds it: a crash between the two leaves the same entry in
        # each, which `adopt_fallback` then writes over, not beside
        seq = copy.seq if copy is not None else None
        if record.data is not None:
            self.spool.put(record.data, fields, seq)
        else:
            self.spool.put(record.wav, fields, seq)
            if not self.keep_wavs:
                with contextlib.suppress(OSError):
                    record.wav.unlink()
        if copy is not None and self.fallback is not None:
            self.fallback.remove(copy)

    def _copy(self, fields: dict[str, Any], record: CallRecord) -> SpoolEntry | None:
        """The record into the fallback spool (a worker thread); None: no fallback,
        or it failed too (logged: the record is then in memory only)."""
        if self.fallback is None:
            return None
        try:
            return self.fallback.put(record.wav if record.data is None else record.data, fields)
        except Exception as exc:  # OSError, or a bug: the record is still held in memory
            log.error(
                "spool_fallback_failed",
                phone=fields["phone"],
                folder=str(self.fallback.folder),
                error=f"{type(exc).__name__}: {exc}",
                hint="held in memory only: a kill -9 now loses it",
            )
            return None

    def _spooled(self, fields: dict[str, Any], record: CallRecord, earlier: bool = False) -> None:
        if not earlier:
            self._count()
        log.debug(
            "call_done",
            extension=fields["extensionNum"],
            phone=fields["phone"],
            local_verdict=record.verdict,
            sip_code=fields.get("sipCode"),
        )
        self._uploader.kick()

    async def _hold(
        self, fields: dict[str, Any], record: CallRecord, exc: Exception | None
    ) -> None:
        copy = await asyncio.to_thread(self._copy, fields, record)
        self.held.append(HeldRecord(fields, record, copy))
        if exc is not None:
            log.error(
                "spool_failed",
                phone=fields["phone"],
                error=f"{type(exc).__name__}: {exc}",
                held=len(self.held),
                kept_in=str(copy.meta.parent) if copy is not None else "memory",
                hint="not dialling until the spool can be written again",
            )
        self._start_spool_retry()

    def _start_spool_retry(self) -> None:
        if self._retry is None or self._retry.done():
            self._retry = asyncio.get_running_loop().create_task(self._retry_spool())
        self._on_change()

    @property
    def failing(self) -> bool:
        """The spool could not be written and has not been since (`_retry_spool` runs
        until it is): no call starts meanwhile."""
        return self._retry is not None and not self._retry.done()

    async def _retry_spool(self) -> None:
        """Write the held records, oldest first, backing off while the spool fails;
        meanwhile they go straight to the server (`_upload_held`). Ends once the
        spool took a write: the held records, or a probe when the server took them
        all."""
        delay = SPOOL_RETRY_MIN
        writable = False
        while not writable:
            await asyncio.sleep(delay)
            self._writing = True
            try:
                if not self.held:
                    await asyncio.to_thread(self.spool.probe)
                while self.held:
                    held = self.held[0]
                    await asyncio.to_thread(self._put, held.fields, held.record, held.copy)
                    self.held.pop(0)
                    self._spooled(held.fields, held.record, held.earlier)
                writable = True
            except Exception as exc:  # the task ending here would stop dialling for good
                log.warning(
                    "spool_still_failing",
                    error=f"{type(exc).__name__}: {exc}",
                    held=len(self.held),
                )
                try:
                    await self._upload_held()
                except Exception as bug:  # held still; the disk may yet come back
                    log.error("held_upload_failed", error=f"{type(bug).__name__}: {bug}")
                delay = min(delay * 2, SPOOL_RETRY_MAX)
            finally:
                self._writing = False
        log.info("spool_writable_again")
        self._on_change()
        self._on_writable()

    async def _upload_held(self) -> None:
        """The spool failing, the held records go straight to the server from
        memory, oldest first, until one does not go (the server away): once the
        server has a record, its copy in the fallback is removed. Dialling stays
        stopped until the spool takes a write (`failing`): the fallback is
        on a tmpfs (lost with a reboot), or absent and the record only in the
        process. One the server refuses (409 finished, 404 unknown number) is
        dropped, as the uploader would set it aside."""
        while self.held and (client_id := self._client_id()) is not None:
            held = self.held[0]
            fields, record = held.fields, held.record
            try:
                wav = record.data
                if wav is None:
                    wav = await asyncio.to_thread(record.wav.read_bytes)
                await self._client.upload_wav(client_id, clean_fields(fields), "call.wav", wav)
            except Refused as exc:
                log.warning("held_upload_refused", phone=fields["phone"], reason=str(exc))
            except (ControlError, OSError):
                return  # the server away, or the WAV unreadable: held, tried again later
            if self._on_sent is not None:
                self._on_sent(fields)
            self.held.pop(0)
            if not held.earlier:
                self._count()
            log.info("held_uploaded", phone=fields["phone"], held=len(self.held))
            await asyncio.to_thread(self._forget_held, held)
        self._on_change()

    def _forget_held(self, held: HeldRecord) -> None:
        """The files of a record the server has (a worker thread)."""
        if held.copy is not None and self.fallback is not None:
            with contextlib.suppress(OSError):
                self.fallback.remove(held.copy)
        if held.record.data is None and not self.keep_wavs:
            with contextlib.suppress(OSError):
                held.record.wav.unlink()

    async def adopt_fallback(self) -> None:
        """At start: the records an earlier run kept in the fallback spool (the
        spool failing as it was killed or stopped) move into the spool, oldest
        first, under their seq: one the spool already holds (a crash between
        the two) is written over, not added. While the spool still cannot
        be written they are held, as this run's would be (`_hold`): uploaded
        straight from memory, dialling waiting for the disk."""
        fallback = self.fallback
        if fallback is None:
            return
        entries = await asyncio.to_thread(lambda: list(fallback.entries()))
        moved = 0
        for entry in entries:
            try:
                data = await asyncio.to_thread(entry.wav.read_bytes)
            except OSError as exc:  # the fallback itself failing: left for the next start
                log.error("spool_fallback_unreadable", seq=entry.seq, error=str(exc))
                continue
            record = CallRecord(
                entry.wav, {}, entry.fields.get("localVerdict") or "unknown", data=data
            )
            held = HeldRecord(dict(entry.fields), record, entry, earlier=True)
            if self.held:
                self.held.append(held)
                continue
            try:
                await asyncio.to_thread(self._put, held.fields, record, entry)
            except Exception as exc:
                log.error("spool_failed", phone=held.fields.get("phone"), error=str(exc))
                self.held.append(held)
                continue
            moved += 1
        if moved or self.held:
            log.info(
                "spool_fallback_adopted",
                moved=moved,
                held=len(self.held),
                folder=str(fallback.folder),
            )
        if self.held:
            self._start_spool_retry()

    async def last_try(self) -> None:
        """Stopping with records held (the spool failing): one more try each, then
        straight to the server. What is left stays in the fallback spool for the
        next start; only a record without a copy there is lost (its number is
        still leased to us: the server hands it out again once it reclaims the
        lease)."""
        if self._retry is not None:
            # not in the middle of a write: cancelled, its thread would go on writing
            # the record this pass then writes again (a second upload of the number)
            while self._writing:
                await asyncio.sleep(0.05)
            self._retry.cancel()
            await asyncio.gather(self._retry, return_exceptions=True)
        pending, self.held = self.held, []
        for held in pending:
            try:
                await asyncio.to_thread(self._put, held.fields, held.record, held.copy)
            except Exception:
                self.held.append(held)
                continue
            self._spooled(held.fields, held.record, held.earlier)
        await self._upload_held()  # what the spool still cannot take
        kept = sum(1 for h in self.held if h.copy is not None)
        lost = len(self.held) - kept
        self.held.clear()
        if kept:
            log.warning(
                "held_in_fallback_at_stop",
                kept=kept,
                hint="moved into the spool (and uploaded) at the next start",
            )
        if lost:
            log.error("unspooled_at_stop", lost=lost, hint="dialled again after the lease reclaim")
