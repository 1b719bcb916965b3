"""Daemon internals that need no server: STATUS= coalescing, in-memory WAVs to the spool."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sipclient.agent import daemon as daemon_mod
from sipclient.agent.control import Account, DialplanItem
from sipclient.agent.daemon import CallRecord, Daemon, Line
from sipclient.config import DaemonConfig, RecordingSettings, ServerLink, SpoolSettings


def _config(tmp_path: Path) -> DaemonConfig:
    return DaemonConfig(
        # never contacted by these tests
        server=ServerLink("http://127.0.0.1:9", timeout=0.5),
        recordings=RecordingSettings(dir=tmp_path / "rec"),
        spool=SpoolSettings(tmp_path / "spool"),
    )


def _no_backend(_account: Account) -> daemon_mod.LineBackend:
    raise AssertionError("no line is started here")


async def test_status_updates_are_coalesced_and_the_latest_state_goes_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon_mod, "STATUS_EVERY", 0.05)
    notes: list[str] = []
    daemon = Daemon(_config(tmp_path), _no_backend, notify=lambda *a: notes.extend(a) or True)
    daemon._set_status()
    assert notes == ["STATUS=0/0 registered, 0 in call, 0 decided"]  # the first goes at once
    for n in range(1, 101):  # a burst of calls ending
        daemon.decided = n
        daemon._set_status()
    assert len(notes) == 1  # nothing more until the interval is over
    for _ in range(100):
        if len(notes) == 2:
            break
        await asyncio.sleep(0.02)
    assert notes[1] == "STATUS=0/0 registered, 0 in call, 100 decided"  # one, with the last state
    await asyncio.sleep(0.1)
    assert len(notes) == 2  # no timer left behind


async def test_an_in_memory_recording_goes_to_the_spool_without_a_file(tmp_path: Path) -> None:
    daemon = Daemon(_config(tmp_path), _no_backend, notify=lambda *a: True)
    line = Line(Account("2001", "pw"), backend=None)  # type: ignore[arg-type]
    item = DialplanItem("2001", "13800000001", "7")
    wav = b"RIFF....WAVEfmt whatever"
    record = CallRecord(tmp_path / "rec" / "never-written.wav", {"sipCode": 404}, "empty", wav)
    await daemon._spool(line, item, record)
    entries = list(daemon.spool.entries())
    assert len(entries) == 1 and daemon.decided == 1
    assert entries[0].wav.read_bytes() == wav
    assert entries[0].fields["phone"] == "13800000001" and entries[0].fields["sipCode"] == "404"
    assert not record.wav.exists()
    await daemon.client.close()
