"""The box's disk: kept recordings pruned by age, a warning before the disk is full."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import structlog

from sipclient import disk
from sipclient.agent.housekeeping import expired_recordings, prune_recordings, run_housekeeping

DAY = 86400.0


def _wav(folder: Path, name: str, age_days: float, now: float) -> Path:
    path = folder / name
    path.write_bytes(b"RIFF")
    os.utime(path, (now - age_days * DAY, now - age_days * DAY))
    return path


def test_only_wavs_older_than_keep_days_go(tmp_path: Path) -> None:
    now = 1_800_000_000.0
    old = _wav(tmp_path, "2001-138-1.wav", 3.5, now)
    edge = _wav(tmp_path, "2001-138-2.wav", 2.9, now)
    fresh = _wav(tmp_path, "2001-138-3.wav", 0.1, now)
    other = tmp_path / "notes.txt"  # not ours: left alone whatever its age
    other.write_text("x")
    os.utime(other, (now - 30 * DAY, now - 30 * DAY))
    assert expired_recordings(tmp_path, now, 3) == [old]
    assert expired_recordings(tmp_path, now, 0) == []  # 0 keeps everything
    assert prune_recordings(tmp_path, now, 2) == 2
    assert not old.exists() and not edge.exists()
    assert fresh.exists() and other.exists()
    assert expired_recordings(tmp_path / "missing", now, 1) == []


async def test_the_pass_prunes_at_once_and_warns_when_the_spool_disk_is_nearly_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    rec, spool = tmp_path / "rec", tmp_path / "spool"
    rec.mkdir()
    spool.mkdir()
    old = _wav(rec, "a.wav", 8, now)
    kept = _wav(rec, "b.wav", 1, now)
    # a unit test of the warning: the file system's figures are made up
    real = shutil.disk_usage(spool)
    full = type(real)(total=real.total, used=real.total - real.total // 50, free=real.total // 50)
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda _p: full)
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(run_housekeeping(rec, 7, spool, every=3600))
        for _ in range(200):
            if any(e["event"] == "disk_low" for e in logs):
                break
            await asyncio.sleep(0.01)
        task.cancel()
    events: list[dict[str, Any]] = logs
    assert not old.exists() and kept.exists()
    assert [e["files"] for e in events if e["event"] == "recordings_pruned"] == [1]
    (low,) = [e for e in events if e["event"] == "disk_low"]
    assert low["folder"] == str(spool) and low["log_level"] == "warning"
