"""The upload spool: order, atomicity, crash debris, broken entries kept aside."""

import json
from pathlib import Path

from sipclient.agent.spool import Spool


def test_entries_come_back_in_order_with_their_fields(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for i in range(5):
        spool.put(b"RIFF" + bytes([i]), {"phone": f"1380000000{i}", "extensionNum": "1001"})
    entries = list(spool.entries())
    assert [e.fields["phone"] for e in entries] == [f"1380000000{i}" for i in range(5)]
    assert entries[2].wav.read_bytes() == b"RIFF\x02"
    assert len(spool) == 5


def test_entries_survive_a_restart_and_removal_is_final(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    first = Spool(folder).put(b"wav-a", {"phone": "1"})
    Spool(folder).put(b"wav-b", {"phone": "2"})
    again = Spool(folder)  # a restart
    assert [e.fields["phone"] for e in again.entries()] == ["1", "2"]
    again.remove(next(e for e in again.entries() if e.seq == first.seq))
    assert [e.fields["phone"] for e in Spool(folder).entries()] == ["2"]


def test_a_file_source_is_copied_and_none_fields_become_empty(tmp_path: Path) -> None:
    src = tmp_path / "call.wav"
    src.write_bytes(b"RIFFdata")
    entry = Spool(tmp_path / "s").put(src, {"phone": "5", "q850Cause": None})
    assert entry.wav.read_bytes() == b"RIFFdata"
    assert json.loads(entry.meta.read_text())["q850Cause"] == ""


def test_crash_debris_is_cleaned_and_broken_entries_are_kept_aside(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    folder.mkdir()
    (folder / "00000000000000000001-000000.wav").write_bytes(b"half")  # JSON never written
    (folder / ".00000000000000000002-000000.json.tmp").write_bytes(b"{")
    (folder / "00000000000000000003-000000.wav").write_bytes(b"RIFF")
    (folder / "00000000000000000003-000000.json").write_text("not json")
    spool = Spool(folder)
    assert not (folder / "00000000000000000001-000000.wav").exists()
    assert not list(folder.glob(".*.tmp"))
    assert list(spool.entries()) == []
    kept = sorted(p.name for p in (folder / "bad").iterdir())
    assert kept == ["00000000000000000003-000000.json", "00000000000000000003-000000.wav"]
