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

Files are recycled: a removed entry's two files move into ``.free/``
(up to FREE_MAX of them) and a new entry is written over one of those
(truncated, written, fsynced, renamed into place) instead of a new file.
Creating a file costs the file system an inode allocation, and on ext4
without a journal (the bench box's root file system) that allocation scans
past every inode freed in the last 5 s to 5 min (fs/ext4/ialloc.c,
`recently_deleted`): at 200 lines, ~170 records a second, each made of two
new files and each deleted after its upload, the daemon's worker threads
spent 1.6-1.9 ms of CPU a call, most of it in that scan (perf); with the
pool 1.1-1.2 ms, and 0.6 ms with the spool on a tmpfs, where an fsync costs
nothing (docs/daemon.md, "Twenty-second round"). A file in ``.free/``
is never read: a crash while one is being written leaves it there, not in
the spool. While the server is away the spool only grows and new files are
made as before; once the pool is full, a removed entry's files are deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import shutil
import threading
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


FREE_MAX = 64
"""Files kept in ``.free/`` for new entries to be written over (two an entry):
uploads keep pace with the calls within a few dozen entries, the rest is
deleted (a spool draining after an outage frees thousands)."""


def _temp_for(path: Path) -> Path:
    """The hidden name `path` is written under when no recycled file is at hand."""
    return path.with_name(f".{path.name}.tmp")


def _place_via(path: Path, source: Path | bytes, tmp: Path) -> None:
    """`source` (bytes, or a file to copy) written to `tmp` (truncated first: it may
    be a recycled file), fsynced, renamed to `path`: whole or not at all."""
    if isinstance(source, bytes):
        with open(tmp, "wb") as fh:
            fh.write(source)
            fh.flush()
            os.fsync(fh.fileno())
    else:
        shutil.copyfile(source, tmp)  # opens tmp "wb"
        with open(tmp, "rb+") as fh:
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
        self.free_folder = folder / ".free"
        """Files to write new entries over (module docstring)."""
        self._free: list[Path] = []
        self._free_lock = threading.Lock()  # put and remove run in different worker threads
        self._adopt_free()

    def _adopt_free(self) -> None:
        """The pool an earlier run left: kept up to FREE_MAX, the rest deleted. A pool
        that cannot be made leaves the spool making new files, as it did before."""
        try:
            self.free_folder.mkdir(exist_ok=True)
            for path in sorted(self.free_folder.iterdir()):
                if len(self._free) < FREE_MAX and path.is_file():
                    self._free.append(path)
                else:
                    with contextlib.suppress(OSError):  # a stray folder: left, never used
                        path.unlink()
        except OSError:
            pass  # a read-only spool: put fails and says so, not the constructor

    def _take_free(self) -> Path | None:
        with self._free_lock:
            return self._free.pop() if self._free else None

    def _recycle(self, path: Path) -> None:
        """`path` (a removed entry's file) into the pool, or deleted when the pool is
        full or cannot take it. Raises OSError as unlink does when the file can be
        neither moved nor deleted (it then stays where it was)."""
        with self._free_lock:
            full = len(self._free) >= FREE_MAX  # (threads racing past it: a few more)
        if not full:
            spare = self.free_folder / f"{time.time_ns():020d}-{next(self._counter):06d}"
            try:
                os.replace(path, spare)
                # emptied now: the pool holds no call's audio and no disk space
                os.truncate(spare, 0)
            except OSError:
                pass  # gone meanwhile, or the pool folder is: deleted below as before
            else:
                with self._free_lock:
                    self._free.append(spare)
                return
        path.unlink(missing_ok=True)

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
        self._place(wav, wav_source)
        clean = clean_fields(fields)
        self._place(meta, json.dumps(clean, ensure_ascii=False).encode())
        return SpoolEntry(seq, wav, meta, clean)

    def _place(self, path: Path, source: Path | bytes) -> None:
        """`source` (bytes, or a file copied in) into `path` whole or not at all:
        over a recycled file when the pool has one, else (or when that fails: the
        spool's folder swapped under us) through a new temp file."""
        spare = self._take_free()
        if spare is not None:
            try:
                _place_via(path, source, spare)
                return
            except OSError:
                # the new file's try below says whether the spool can be written; the
                # spare goes back unless it went with its folder (moved away, say)
                if spare.exists():
                    with self._free_lock:
                        self._free.append(spare)
        _place_via(path, source, _temp_for(path))

    def probe(self) -> None:
        """Raise (OSError) unless a file can be written in the spool now, as `put`
        writes one."""
        path = self.folder / "probe"
        _place_via(path, b"", _temp_for(path))
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
        """Forget an entry the server has accepted (WAV first: no orphan JSON); its
        files go into the pool new entries are written over."""
        self._recycle(entry.wav)
        self._recycle(entry.meta)

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
