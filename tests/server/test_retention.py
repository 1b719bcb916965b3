"""Uploaded recordings past recordings.keep_days go, a day folder at a time."""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from sipclient.config import ServerRecordingSettings
from sipclient.server.app import create_app
from sipclient.server.dispatch import FakeClock
from sipclient.server.retention import expired_folders, prune
from tests.server.conftest import ACCOUNTS, Api, make_config

NOON = time.mktime((2026, 11, 23, 12, 0, 0, 0, 0, -1))  # local time, as dial_wav names days


def _day(root: Path, name: str, wavs: int = 2) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for i in range(wavs):
        (folder / f"{i}.wav").write_bytes(b"RIFF")
    return folder


def test_only_day_folders_older_than_keep_days_expire(tmp_path: Path) -> None:
    for name in ("20261115", "20261116", "20261117", "20261123"):
        _day(tmp_path, name)
    _day(tmp_path, "notes")  # an operator's own folder
    _day(tmp_path, "20261399")  # not a date
    # 7 days: the 16th and after stay (a week back from the 23rd), the 15th goes
    assert [p.name for p in expired_folders(tmp_path, NOON, 7)] == ["20261115"]
    assert [p.name for p in expired_folders(tmp_path, NOON, 6)] == ["20261115", "20261116"]
    assert expired_folders(tmp_path, NOON, 0) == []  # keep everything
    assert prune(tmp_path, NOON, 6) == [("20261115", 2), ("20261116", 2)]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["20261117", "20261123", "20261399", "notes"]


async def test_the_server_prunes_at_start_and_keeps_todays_uploads(
    tmp_path: Path,
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient[Any, Any]]],
) -> None:
    clock = FakeClock(NOON)
    folder = tmp_path / "recordings"
    old = _day(folder, "20261101", wavs=3)
    recent = _day(folder, "20261122")
    config = make_config(tmp_path, recordings=ServerRecordingSettings(folder, keep_days=2))
    api = Api(await aiohttp_client(create_app(config, clock=clock)))
    # an upload today lands in today's folder, which stays
    await api.ok("POST", "/api/account", json={"account": ACCOUNTS})
    await api.ok("POST", "/api/dialplan", json={"phone": ["12345"], "return_url": "http://x:9/"})
    cid = await api.notify()
    await api.ok("GET", f"/accounts/{cid}?threadsNum=1")
    [plan] = (await api.ok("GET", f"/dialplan/{cid}"))["dialplans"]
    status, _ = await api.upload(cid, plan["extensionNum"], "12345", sipCode=404)
    assert status == 200
    async with asyncio.timeout(10):
        while old.exists():
            await asyncio.sleep(0.05)
    today = datetime.date.fromtimestamp(NOON).strftime("%Y%m%d")
    assert recent.is_dir() and len(list((folder / today).glob("*.wav"))) == 1
