"""Stop the server mid-task, start it again on the same database: nothing lost or doubled."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiohttp

from sipclient.config import ServerConfig, sqlite_path
from sipclient.server.app import DISPATCH
from sipclient.server.dispatch import FakeClock
from tests.server.conftest import ACCOUNTS, Api, LiveServer, UrlClient

URL = "http://127.0.0.1:9/cb"


async def test_restart_mid_task_loses_and_doubles_nothing(
    live: LiveServer, session: aiohttp.ClientSession, config: ServerConfig
) -> None:
    await live.start()
    api = Api(UrlClient(session, live))
    phones = [f"1380000{i:04d}" for i in range(7)]
    await api.ok("POST", "/api/account", json={"account": ACCOUNTS})
    task_id = (await api.ok("POST", "/api/dialplan", json={"phone": phones, "return_url": URL}))[
        "task_id"
    ]
    cid = await api.notify()
    await api.ok("GET", f"/accounts/{cid}?threadsNum=3")
    first = (await api.ok("GET", f"/dialplan/{cid}"))["dialplans"]
    assert len(first) == 3
    # One finished, two still busy when the server stops.
    status, _ = await api.upload(cid, first[0]["extensionNum"], first[0]["phoneNum"], sipCode=404)
    assert status == 200
    await live.stop()

    await live.start()  # a new port, the same database and recordings folder
    task = await api.ok("GET", f"/api/tasks/{task_id}")
    states = [p["status"] for p in task["dialplans"]]
    assert states.count("finish") == 1 and states.count("busy") == 2
    # The same client goes on: its lease survived, its in-flight uploads are taken.
    again = (await api.ok("GET", f"/accounts/{cid}?threadsNum=3"))["accounts"]
    assert len(again) == 3
    for plan in first[1:]:
        status, _ = await api.upload(cid, plan["extensionNum"], plan["phoneNum"], sipCode=486)
        assert status == 200
    status, _ = await api.upload(cid, first[0]["extensionNum"], first[0]["phoneNum"], sipCode=404)
    assert status == 409  # finished before the restart: never twice
    for _ in range(10):
        plans = (await api.ok("GET", f"/dialplan/{cid}"))["dialplans"]
        if not plans:
            break
        for plan in plans:
            status, _ = await api.upload(cid, plan["extensionNum"], plan["phoneNum"], sipCode=404)
            assert status == 200
    task = await api.ok("GET", f"/api/tasks/{task_id}")
    assert task["status"] == "finish"
    assert sorted(p["phone"] for p in task["dialplans"]) == sorted(phones)
    assert all(p["status"] == "finish" and p["tries"] == 1 for p in task["dialplans"])
    await live.stop()

    db = sqlite3.connect(sqlite_path(config.database))
    try:
        rows = db.execute(
            "SELECT dialplan_id, COUNT(*) FROM recordings WHERE outcome = 'finished'"
            " GROUP BY dialplan_id"
        ).fetchall()
        refused = db.execute(
            "SELECT COUNT(*) FROM recordings WHERE outcome = 'already_finished'"
        ).fetchone()[0]
    finally:
        db.close()
    assert len(rows) == 7 and all(n == 1 for _, n in rows)
    assert refused == 1
    wavs = list(Path(config.recordings.dir).rglob("*.wav"))
    assert len(wavs) == 8  # every upload kept on disk, the refused one too


async def test_schema_is_versioned_and_reopened(live: LiveServer, config: ServerConfig) -> None:
    await live.start()
    await live.stop()
    db = sqlite3.connect(sqlite_path(config.database))
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] >= 1
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()
    await live.start()  # migrations are not re-applied
    await live.stop()


async def _two_numbers_out(api: Api) -> tuple[int, str]:
    """A task of two numbers, both handed out to one client: (task id, clientId)."""
    await api.ok("POST", "/api/account", json={"account": ACCOUNTS})
    task = await api.ok("POST", "/api/dialplan", json={"phone": ["901", "902"], "return_url": URL})
    cid = await api.notify()
    await api.ok("GET", f"/accounts/{cid}?threadsNum=2")
    assert len((await api.ok("GET", f"/dialplan/{cid}"))["dialplans"]) == 2
    return int(task["task_id"]), cid


async def _states(api: Api, task_id: int) -> list[str]:
    return [p["status"] for p in (await api.ok("GET", f"/api/tasks/{task_id}"))["dialplans"]]


async def test_a_clock_jump_expires_nobody_and_the_timeouts_run_again_from_it(
    config: ServerConfig, session: aiohttp.ClientSession
) -> None:
    # An NTP step or a VM suspended and resumed: the wall clock moves on 700 s at
    # once while the steady clock moves 1 s. Every client looked silent, and its
    # numbers in flight went out again to other lines (dialled twice).
    clock, steady = FakeClock(), FakeClock(0.0)
    live = LiveServer(config, clock=clock, steady=steady)
    await live.start()
    try:
        api = Api(UrlClient(session, live))
        task_id, cid = await _two_numbers_out(api)
        clock.advance(100)
        steady.advance(100)  # up past client_timeout: from here a silence would count
        await api.ok("POST", f"/heartbeat/{cid}")
        assert (await live.app[DISPATCH].sweep()).expired_clients == []
        clock.advance(700)  # past client_timeout (60 s) and number_timeout (600 s)
        steady.advance(1)
        out = await live.app[DISPATCH].sweep()
        assert out.expired_clients == [] and out.freed_by_timeout == 0
        assert await _states(api, task_id) == ["busy", "busy"]
        # the timeouts run again from the jump: silent that long after it, it goes
        clock.advance(61)
        steady.advance(61)
        out = await live.app[DISPATCH].sweep()
        assert out.expired_clients == [cid]
    finally:
        await live.stop()


async def test_a_server_down_longer_than_client_timeout_expires_nobody_at_its_restart(
    config: ServerConfig, session: aiohttp.ClientSession
) -> None:
    # The daemons could not call while the server was down: silence then is not
    # theirs. Expired at the first sweep, their numbers in flight went to other lines
    # and were dialled twice, and every daemon had to start over with /notify.
    clock = FakeClock()
    live = LiveServer(config, clock=clock)
    await live.start()
    try:
        api = Api(UrlClient(session, live))
        task_id, cid = await _two_numbers_out(api)
        await live.stop()
        clock.advance(700)  # down past client_timeout (60 s) and number_timeout (600 s)
        await live.start()
        out = await live.app[DISPATCH].sweep()
        assert out.expired_clients == [] and out.freed_by_timeout == 0
        assert await _states(api, task_id) == ["busy", "busy"]
        # the timeouts run again from the restart: silent that long after it, it goes
        clock.advance(61)
        out = await live.app[DISPATCH].sweep()
        assert out.expired_clients == [cid]
    finally:
        await live.stop()
