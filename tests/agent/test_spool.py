"""The upload spool: order, atomicity, crash debris, broken entries kept aside."""

import json
import shutil
from pathlib import Path

from sipclient.agent.spool import FREE_MAX, Spool


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


def _inodes(*paths: Path) -> set[int]:
    return {p.stat().st_ino for p in paths}


def test_a_removed_entrys_files_are_written_over_by_the_next_entry(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    first = spool.put(b"RIFF" + b"x" * 5000, {"phone": "13800000001", "note": "y" * 300})
    used = _inodes(first.wav, first.meta)
    spool.remove(first)
    assert not first.wav.exists() and not first.meta.exists()
    # the pool holds the two files, emptied: no call's audio stays on disk
    pool = list(spool.free_folder.iterdir())
    assert _inodes(*pool) == used and all(p.stat().st_size == 0 for p in pool)
    second = spool.put(b"RIFFab", {"phone": "2"})  # shorter than the first: truncated
    assert _inodes(second.wav, second.meta) == used
    assert second.wav.read_bytes() == b"RIFFab"
    assert [e.fields for e in spool.entries()] == [{"phone": "2"}]
    assert list(spool.free_folder.iterdir()) == []


def test_the_pool_is_capped_and_kept_across_a_restart(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    spool = Spool(folder)
    entries = [spool.put(b"RIFF", {"phone": str(i)}) for i in range(FREE_MAX // 2 + 8)]
    for entry in entries:
        spool.remove(entry)
    assert len(list(spool.free_folder.iterdir())) == FREE_MAX  # the rest deleted
    assert list(spool.entries()) == []
    # an earlier run's pool, with a file written half-way when it was killed: never read
    (spool.free_folder / "99999999999999999999-000000").write_bytes(b'{"phone": "x"}')
    again = Spool(folder)
    assert len(list(again.free_folder.iterdir())) == FREE_MAX
    pool = _inodes(*again.free_folder.iterdir())
    entry = again.put(b"RIFFnew", {"phone": "new"})
    assert _inodes(entry.wav, entry.meta) <= pool
    assert [e.fields["phone"] for e in again.entries()] == ["new"]


def test_a_pool_gone_under_the_spool_falls_back_to_new_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.remove(spool.put(b"RIFF", {"phone": "1"}))
    shutil.rmtree(spool.free_folder)  # e.g. an operator clearing the folder's contents
    entry = spool.put(b"RIFFok", {"phone": "2"})
    assert entry.wav.read_bytes() == b"RIFFok"
    assert [e.fields["phone"] for e in spool.entries()] == ["2"]
    spool.remove(entry)  # the pool cannot take its files: deleted, as before the pool
    assert list(spool.entries()) == [] and not entry.wav.exists()


def test_a_file_source_written_over_a_longer_recycled_file_is_whole(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.remove(spool.put(b"RIFF" + b"z" * 9000, {"phone": "1", "long": "w" * 500}))
    src = tmp_path / "kept.wav"  # recordings.keep: the spool copies the kept file in
    src.write_bytes(b"RIFFshort")
    entry = spool.put(src, {"phone": "2"})
    assert entry.wav.read_bytes() == b"RIFFshort"
    assert json.loads(entry.meta.read_text()) == {"phone": "2"}
    assert list(spool.free_folder.iterdir()) == []  # both written over pool files
