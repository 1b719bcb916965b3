"""Calls a dead daemon left up, ended by the next one (`calls.jsonl` in `spool.dir`).

A daemon killed -9, by the OOM killer or by systemd's watchdog leaves its calls
in flight at the PBX: an INVITE not cancelled rings the callee's phone until
the carrier's own no-answer timer (a minute and more: a missed call from
nobody on a real person's phone, and billed if they pick up), and its early
media goes on streaming to a port the next daemon hands out again (the soak's
cross-talk, docs/media.md). So each call writes here the request that would
end it as it stands: the CANCEL of its INVITE until it is answered, then the
BYE of its dialog; and a line that forgets it when it ends. The next daemon
reads what is left at its start and sends each one (`end_leftovers`) while
its lines register.

The journal is a file of JSON lines appended with one write(2) each and never
fsynced: a process killed keeps what it wrote (the page cache is the
kernel's), only a power loss takes it, and then the PBX's calls are gone too.
Two lines a call, ~1 kB; past JOURNAL_MAX bytes the file is written again with
the calls still up (a few).

Best effort, on purpose: the request goes out from a new socket (the dead
one's port is gone, so its answer is lost), three times over 1.5 s over UDP,
once over TCP. A PBX that matches the CANCEL to its INVITE transaction (RFC
3261 §9.2: by the Via branch, which is the INVITE's) relays it and the
carrier stops ringing; one that does not answers 481, and nothing is worse
than without it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from sipclient.logs import get_logger

log = get_logger(__name__)

JOURNAL = "calls.jsonl"
JOURNAL_MAX = 1 << 20
"""Bytes after which the journal is written again with only the calls still up."""
UDP_SENDS_S = (0.0, 0.5, 1.5)
"""When each copy of a leftover request goes out over UDP (a datagram may be lost)."""
TCP_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Leftover:
    """The request that ends one call: where it goes and its bytes."""

    call_id: str
    method: str
    host: str
    port: int
    transport: str
    data: bytes


class CallJournal:
    """The calls in flight and the request that would end each (module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._open: dict[str, Leftover] = {}
        self._fd = -1
        self._size = 0
        self.failed = False
        """A write failed (disk full, folder gone): the journal is off until restart."""

    @classmethod
    def open(cls, folder: Path) -> tuple[CallJournal, list[Leftover]]:
        """The journal in `folder`, started afresh, and the calls the last run left up."""
        journal = cls(folder / JOURNAL)
        left = journal._read()
        journal._rewrite()
        return journal, left

    def record(self, left: Leftover) -> None:
        """`left` is now what ends its call (a call's newer request replaces the older)."""
        self._open[left.call_id] = left
        self._append(_line(left))

    def forget(self, call_id: str) -> None:
        """The call ended: nothing to end after a crash."""
        if self._open.pop(call_id, None) is not None:
            self._append(json.dumps({"call": call_id}) + "\n")

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):  # already gone with the disk
                os.close(fd)

    def _read(self) -> list[Leftover]:
        entries: dict[str, Leftover] = {}
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.warning("call_journal_unreadable", path=str(self.path), error=str(exc))
            return []
        for raw in text.splitlines():
            try:
                row = json.loads(raw)
                call_id = str(row["call"])
                if "data" not in row:
                    entries.pop(call_id, None)
                    continue
                entries[call_id] = Leftover(
                    call_id,
                    str(row["method"]),
                    str(row["host"]),
                    int(row["port"]),
                    str(row["transport"]),
                    base64.b64decode(row["data"]),
                )
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by the kill: the rest still counts
        return list(entries.values())

    def _rewrite(self) -> None:
        """The file again with only the calls still up (at start: none)."""
        self.close()
        tmp = self.path.with_suffix(".tmp")
        text = "".join(_line(left) for left in self._open.values())
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, self.path)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            self._size = len(text)
        except OSError as exc:
            self._off(exc)

    def _append(self, text: str) -> None:
        if self.failed:
            return
        if self._size > JOURNAL_MAX:
            self._rewrite()
            if self.failed:
                return
        data = text.encode()
        try:
            os.write(self._fd, data)
        except OSError as exc:
            self._off(exc)
            return
        self._size += len(data)

    def _off(self, exc: OSError) -> None:
        if not self.failed:
            log.warning(
                "call_journal_failed",
                path=str(self.path),
                error=str(exc),
                hint="calls a crash leaves up will not be ended by the next start",
            )
        self.failed = True
        self.close()


def _line(left: Leftover) -> str:
    return (
        json.dumps(
            {
                "call": left.call_id,
                "method": left.method,
                "host": left.host,
                "port": left.port,
                "transport": left.transport,
                "data": base64.b64encode(left.data).decode(),
            }
        )
        + "\n"
    )


async def end_leftovers(leftovers: list[Leftover]) -> int:
    """Send each leftover request (UDP: three times over 1.5 s; TCP: once); how many
    went out. Never raises: an unreachable PBX is logged."""
    if not leftovers:
        return 0
    sent = await asyncio.gather(*(_send(left) for left in leftovers))
    done = sum(sent)
    log.warning(
        "leftover_calls_ended",
        calls=len(leftovers),
        sent=done,
        cancels=sum(1 for left in leftovers if left.method == "CANCEL"),
        byes=sum(1 for left in leftovers if left.method == "BYE"),
        hint="the last run ended without ending its calls (kill -9, a crash, the watchdog)",
    )
    return done


async def _send(left: Leftover) -> bool:
    try:
        if left.transport == "tcp":
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(left.host, left.port), TCP_TIMEOUT_S
            )
            writer.write(left.data)
            await asyncio.wait_for(writer.drain(), TCP_TIMEOUT_S)
            await asyncio.sleep(0.5)  # let the PBX read it before the connection goes
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True
        family = socket.AF_INET6 if ":" in left.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            waited = 0.0
            for at in UDP_SENDS_S:
                await asyncio.sleep(at - waited)
                waited = at
                sock.sendto(left.data, (left.host, left.port))
        return True
    except (OSError, TimeoutError) as exc:
        log.warning(
            "leftover_call_not_ended",
            call_id=left.call_id,
            method=left.method,
            pbx=f"{left.host}:{left.port}",
            error=str(exc) or type(exc).__name__,
        )
        return False
