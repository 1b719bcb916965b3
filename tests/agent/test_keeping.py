"""`RecordKeeper` alone (agent/keeping.py): real spool folders on disk; the
uploader is the real one, never run (no server: nothing is uploaded here, the
daemon's tests and the e2e ones upload)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from sipclient.agent import keeping
from sipclient.agent.control import ControlClient, Uploader
from sipclient.agent.keeping import CallRecord, RecordKeeper
from sipclient.agent.spool import Spool
from sipclient.config import DaemonConfig, ServerLink, SpoolSettings
from sipclient.disk import same_file_system


class _Notes:
    def __init__(self) -> None:
        self.counted = 0
        self.changes = 0
        self.writable = 0

    def count(self) -> None:
        self.counted += 1

    def change(self) -> None:
        self.changes += 1

    def wake(self) -> None:
        self.writable += 1


def _keeper(tmp_path: Path, notes: _Notes, fallback: bool = True) -> RecordKeeper:
    spool = Spool(tmp_path / "spool")
    client = ControlClient("http://127.0.0.1:9")  # never called: no client id
    return RecordKeeper(
        spool,
        Spool(tmp_path / "run" / "spool") if fallback else None,
        Uploader(client, spool, lambda: None),
        client,
        lambda: None,
        keep_wavs=False,
        count=notes.count,
        on_change=notes.change,
        on_writable=notes.wake,
    )


def _fields(phone: str) -> dict[str, Any]:
    return {"extensionNum": "2001", "phone": phone, "dialplanId": "7", "sipCode": 487}


def _record(data: bytes = b"RIFF....WAVE") -> CallRecord:
    return CallRecord(Path("/nonexistent/call.wav"), {}, "busy", data=data)


def _break(spool: Spool) -> Path:
    """The spool's folder a file: every write fails. Returns where the folder went."""
    away = spool.folder.with_name("spool.away")
    spool.folder.rename(away)
    spool.folder.write_text("not a folder")
    return away


def _mend(spool: Spool, away: Path) -> None:
    spool.folder.unlink()
    away.rename(spool.folder)


async def test_a_record_goes_to_the_spool_and_is_counted(tmp_path: Path) -> None:
    notes = _Notes()
    keeper = _keeper(tmp_path, notes)
    await keeper.keep(_fields("1"), _record())
    assert [e.fields["phone"] for e in keeper.spool.entries()] == ["1"]
    assert notes.counted == 1 and not keeper.failing and keeper.kept_in_fallback() == 0


async def test_held_records_wait_in_the_fallback_and_move_in_under_their_seq(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keeping, "SPOOL_RETRY_MIN", 0.05)
    notes = _Notes()
    keeper = _keeper(tmp_path, notes)
    away = _break(keeper.spool)
    await keeper.keep(_fields("1"), _record(b"one"))
    await keeper.keep(_fields("2"), _record(b"two"))  # after the first, in order
    assert keeper.failing and [h.fields["phone"] for h in keeper.held] == ["1", "2"]
    assert keeper.fallback is not None
    copies = list(keeper.fallback.entries())
    assert [c.fields["phone"] for c in copies] == ["1", "2"] and notes.counted == 0
    assert [c.wav.read_bytes() for c in copies] == [b"one", b"two"]
    _mend(keeper.spool, away)
    async with asyncio.timeout(5):
        while keeper.failing:
            await asyncio.sleep(0.02)
    spooled = list(keeper.spool.entries())
    assert [e.seq for e in spooled] == [c.seq for c in copies]  # one entry each, not two
    assert [e.wav.read_bytes() for e in spooled] == [b"one", b"two"]
    assert keeper.kept_in_fallback() == 0 and keeper.held == []
    assert notes.counted == 2 and notes.writable == 1


async def test_without_a_fallback_a_held_record_is_in_memory_only(tmp_path: Path) -> None:
    notes = _Notes()
    keeper = _keeper(tmp_path, notes, fallback=False)
    _break(keeper.spool)
    await keeper.keep(_fields("1"), _record())
    assert keeper.failing and keeper.held[0].copy is None and keeper.kept_in_fallback() == 0


async def test_a_start_moves_what_an_earlier_run_left_in_the_fallback(tmp_path: Path) -> None:
    earlier = Spool(tmp_path / "run" / "spool")
    left = earlier.put(b"left", _fields("9"))
    notes = _Notes()
    keeper = _keeper(tmp_path, notes)
    await keeper.adopt_fallback()
    (entry,) = list(keeper.spool.entries())
    assert entry.seq == left.seq and entry.wav.read_bytes() == b"left"
    assert entry.fields["phone"] == "9" and keeper.kept_in_fallback() == 0
    assert notes.counted == 0  # an earlier run's: not this run's decided


async def test_a_start_with_the_spool_still_failing_holds_what_the_fallback_has(
    tmp_path: Path,
) -> None:
    Spool(tmp_path / "run" / "spool").put(b"left", _fields("9"))
    notes = _Notes()
    keeper = _keeper(tmp_path, notes)
    _break(keeper.spool)
    await keeper.adopt_fallback()
    assert keeper.failing and [h.fields["phone"] for h in keeper.held] == ["9"]
    assert keeper.held[0].earlier and keeper.kept_in_fallback() == 1
    await keeper.last_try()  # a stop: still in the fallback for the next start
    assert keeper.kept_in_fallback() == 1


def test_a_fallback_on_the_spools_own_file_system_is_used_and_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def config(fallback: Path) -> DaemonConfig:
        return DaemonConfig(
            server=ServerLink("http://127.0.0.1:9"),
            spool=SpoolSettings(tmp_path / "spool", fallback=fallback),
        )

    # not made yet, on the same file system as the spool's folder (tmp_path)
    spool = keeping.fallback_spool(config(tmp_path / "run" / "spool"))
    assert spool is not None and spool.folder == tmp_path / "run" / "spool"
    logged = capsys.readouterr().out
    assert "spool_fallback_same_file_system" in logged and "another file system" in logged


def test_same_file_system_tells_apart_and_looks_up_a_folder_not_made_yet(tmp_path: Path) -> None:
    assert same_file_system(tmp_path / "a" / "b", tmp_path / "c")
    assert not same_file_system(tmp_path, Path("/proc/self"))  # procfs: its own
    assert not same_file_system(Path("/proc/self"), tmp_path / "not" / "yet")
