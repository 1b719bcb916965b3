"""The upload spool: every recording goes to disk before it goes to the server.

An entry is two files in `spool.dir`, written atomically (temp name, fsync,
rename): ``<seq>.wav`` and ``<seq>.json`` (the upload's form fields). The JSON
is renamed last, so an entry exists only once both are whole; a WAV without
its JSON is debris of a crash mid-write and is removed at start. `seq` is a
zero-padded nanosecond time plus a counter, so entries replay in the order
they were made, across restarts. An entry is deleted only after the server
accepted it (or refused it for good, e.g. the number was already finished);
an entry that cannot be read is moved to ``bad/``, never deleted.

The fallback spool (`spool.fallback`, `fallback_folder`) is a second `Spool`
on another file system, by default systemd's RuntimeDirectory (a tmpfs under
/run): while `spool.dir` cannot be written, a finished call's record is kept
there as well as in memory, so a kill -9 or a stop does not lose it. It
survives the daemon's restarts, not a reboot. An entry moves from it into the
spool under the same `seq` (`put(..., seq=)`), so a copy found in both after a
crash between the two is one entry, not two uploads.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sipclient.text import readable


def clean_fields(fields: dict[str, Any]) -> dict[str, str]:
    """An upload's fields as they are sent: text, None as empty. Readable: a peer's
    non-UTF-8 text (a GBK reason phrase) cannot go into JSON or a form as is."""
    return {k: "" if v is None else readable(str(v)) for k, v in fields.items()}


@dataclass(frozen=True)
class SpoolEntry:
    """One upload waiting for the server."""

    seq: str
    wav: Path
    meta: Path
    fields: dict[str, str]


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def backlog(folder: Path) -> tuple[int, float | None]:
    """(entries in the spool `folder`, when the oldest was made, Unix seconds; None
    when there is none), in one listing and without touching the folder (a bench
    reads a running daemon's): an entry's name starts with the time_ns of its
    making (`Spool.put`), kept when it moves in from the fallback."""
    count, oldest = 0, None
    for meta in folder.glob("*.json"):
        count += 1
        head = meta.name[:20]
        if head.isdigit():
            made = int(head) / 1e9
            oldest = made if oldest is None or made < oldest else oldest
    return count, oldest


class Spool:
    """A folder of uploads in the order they were made."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.bad = folder / "bad"
        folder.mkdir(parents=True, exist_ok=True)
        self._counter = itertools.count()
        self._clean_debris()

    def _clean_debris(self) -> None:
        for tmp in self.folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        for wav in self.folder.glob("*.wav"):
            if not wav.with_suffix(".json").exists():
                wav.unlink(missing_ok=True)

    def put(
        self, wav_source: Path | bytes, fields: dict[str, Any], seq: str | None = None
    ) -> SpoolEntry:
        """Store one upload; `wav_source` is a file (copied in) or the WAV bytes.
        `seq`: the entry's name when it moves in from the fallback (its place in
        the order is when it was made), else a new one."""
        if seq is None:
            seq = f"{time.time_ns():020d}-{next(self._counter):06d}"
        wav = self.folder / f"{seq}.wav"
        meta = self.folder / f"{seq}.json"
        if isinstance(wav_source, bytes):
            _write_atomic(wav, wav_source)
        else:
            tmp = wav.with_name(f".{wav.name}.tmp")
            shutil.copyfile(wav_source, tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, wav)
        clean = clean_fields(fields)
        _write_atomic(meta, json.dumps(clean, ensure_ascii=False).encode())
        return SpoolEntry(seq, wav, meta, clean)

    def probe(self) -> None:
        """Raise (OSError) unless a file can be written in the spool now, as `put`
        writes one."""
        path = self.folder / "probe"
        _write_atomic(path, b"")
        path.unlink()

    def entries(self) -> Iterator[SpoolEntry]:
        """Whole entries, oldest first; unreadable ones are moved to bad/."""
        for meta in sorted(self.folder.glob("*.json")):
            wav = meta.with_suffix(".wav")
            try:
                fields = json.loads(meta.read_text(encoding="utf-8"))
                if not isinstance(fields, dict) or not wav.exists():
                    raise ValueError("incomplete entry")
            except (OSError, ValueError):
                self.quarantine(meta)
                continue
            yield SpoolEntry(meta.stem, wav, meta, {str(k): str(v) for k, v in fields.items()})

    def __len__(self) -> int:
        return sum(1 for _ in self.folder.glob("*.json"))

    def backlog(self) -> tuple[int, float | None]:
        """`backlog` of this spool's folder."""
        return backlog(self.folder)

    def remove(self, entry: SpoolEntry) -> None:
        """Forget an entry the server has accepted (WAV first: no orphan JSON)."""
        entry.wav.unlink(missing_ok=True)
        entry.meta.unlink(missing_ok=True)

    def quarantine(self, meta: Path) -> None:
        """Keep a broken entry aside for a person to look at."""
        _set_aside((meta, meta.with_suffix(".wav")), self.bad)

    def refuse(self, entry: SpoolEntry) -> None:
        """Keep an entry the server refused for good aside, in ``refused/``."""
        _set_aside((entry.wav, entry.meta), self.folder / "refused")


def fallback_folder(setting: Path | None, environ: Mapping[str, str]) -> Path | None:
    """Where the fallback spool is: `spool.fallback` if set, else ``spool`` in
    systemd's RuntimeDirectory (``$RUNTIME_DIRECTORY``, its first entry), else none
    (a record the spool cannot take is held in memory only)."""
    if setting is not None:
        return setting
    runtime = environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return Path(runtime) / "spool" if runtime else None


class SpoolBusy(RuntimeError):
    """Another running process holds the spool folder."""


def claim(folder: Path) -> int:
    """Hold `folder` for this process's life (an flock on ``.lock``); the open fd.

    Two daemons on one spool would each upload the other's entries: the server
    refuses the second copy and one daemon sets the entry aside while the other
    still sends it. Raises SpoolBusy naming the holder's pid.
    """
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise SpoolBusy(f"{folder} is held by another running daemon (pid {holder})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _set_aside(files: tuple[Path, ...], folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    for f in files:
        with contextlib.suppress(FileNotFoundError):  # gone meanwhile: nothing to keep
            os.replace(f, folder / f.name)
