"""A push inserted in slices: other writes go on meanwhile, and its task shows only whole.

Real server over a socket, real SQLite file; `PUSH_SLICE` is made small so a few
thousand numbers take many slices.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sipclient.server import sqlite as sqlite_store
from sipclient.server.app import STORE
from sipclient.server.sqlite import SqliteStore
from tests.server.conftest import ACCOUNTS, Api, LiveServer, UrlClient

URL = "http://127.0.0.1:9/cb"


@pytest.fixture(autouse=True)
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "PUSH_SLICE", 100)


async def test_a_push_in_slices_answers_what_the_task_shows_and_hides_it_until_whole(
    api: Api,
) -> None:
    await api.ok("POST", "/api/account", json={"account": ACCOUNTS})
    cid = await api.notify()
    await api.ok("GET", f"/accounts/{cid}?threadsNum=3")
    phones = [f"1{n:010d}" for n in range(3000)] + ["1380@x"]
    push = asyncio.ensure_future(
        api.ok("POST", "/api/dialplan", json={"phone": phones, "return_url": URL})
    )
    # while the slices go in, writes are served, and the task is either not to be seen
    # or whole (the last slice may land just before the push's answer reaches us)
    hidden = 0
    while not push.done():
        await api.ok("GET", f"/status/{cid}?status=idle&extensionNum=1001")
        code, body = await api.call("GET", "/api/tasks/1")
        if code == 404:
            hidden += 1
        else:
            assert len(body["data"]["dialplans"]) == len(phones)
    assert hidden >= 5  # the push did not hold the writer from its start to its end
    pushed = await push
    task = await api.ok("GET", f"/api/tasks/{pushed['task_id']}")
    assert pushed["dialplans"] == task["dialplans"]
    assert [d["phone"] for d in pushed["dialplans"]] == phones
    ids = [d["id"] for d in pushed["dialplans"]]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert pushed["dialplans"][-1]["detail"]["evidence"]["kind"] == "not_dialable"
    # whole now: its numbers go out, in order
    plans = (await api.ok("GET", f"/dialplan/{cid}"))["dialplans"]
    assert [p["phoneNum"] for p in plans] == phones[:3]


async def test_a_task_still_loading_is_neither_shown_nor_dialled(
    live: LiveServer, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    api = Api(UrlClient(session, live))
    await live.start()
    await api.ok("POST", "/api/account", json={"account": ACCOUNTS})
    cid = await api.notify()
    await api.ok("GET", f"/accounts/{cid}?threadsNum=3")
    # a push between two of its slices, as another connection sees the database
    with sqlite3.connect(tmp_path / "server.db") as conn:
        cur = conn.execute(
            "INSERT INTO tasks (status, return_url, remaining, created_at, updated_at, loading)"
            " VALUES ('free', ?, 2, 'x', 'x', 1)",
            (URL,),
        )
        task_id = cur.lastrowid
        conn.executemany(
            "INSERT INTO dialplans (task_id, phone, status, created_at, updated_at)"
            " VALUES (?, ?, 'free', 'x', 'x')",
            [(task_id, p) for p in ("7001", "7002")],
        )
    for share in ("pusher", "task", "none"):
        assert await live.app[STORE].lease_dialplans(cid, 1.0, share) == []
    assert (await api.ok("GET", f"/dialplan/{cid}"))["dialplans"] == []
    assert await api.ok("GET", "/api/tasks") == []
    assert (await api.call("GET", f"/api/tasks/{task_id}"))[0] == 404
    assert (await api.call("POST", f"/api/tasks/{task_id}/cancel"))[0] == 404
    with sqlite3.connect(tmp_path / "server.db") as conn:
        conn.execute("UPDATE tasks SET loading = 0")  # its last slice is in
    plans = (await api.ok("GET", f"/dialplan/{cid}"))["dialplans"]
    assert [p["phoneNum"] for p in plans] == ["7001", "7002"]


async def test_two_pushes_at_once_each_get_their_own_numbers(api: Api) -> None:
    first = [f"2{n:010d}" for n in range(1500)]
    second = [f"3{n:010d}" for n in range(1500)]
    a, b = await asyncio.gather(
        api.ok("POST", "/api/dialplan", json={"phone": first, "return_url": URL}),
        api.ok("POST", "/api/dialplan", json={"phone": second, "return_url": URL}),
    )
    for pushed, phones in ((a, first), (b, second)):
        task = await api.ok("GET", f"/api/tasks/{pushed['task_id']}")
        assert pushed["dialplans"] == task["dialplans"]
        assert [d["phone"] for d in task["dialplans"]] == phones


async def test_a_push_cut_short_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "PUSH_SLICE", 1000)
    store = SqliteStore(tmp_path / "db.sqlite")
    await store.open()
    # held once its task row and first slice are in: cut short there for sure (a
    # 50 ms sleep was the cut, and a fast run finished the whole push within it)
    sliced, hold = asyncio.Event(), asyncio.Event()
    real_run, jobs = store._writer.run, [0]

    async def run(job: Any) -> Any:
        out = await real_run(job)
        jobs[0] += 1
        if jobs[0] == 2:
            sliced.set()
            await hold.wait()
        return out

    monkeypatch.setattr(store._writer, "run", run)
    try:
        push = asyncio.ensure_future(
            store.create_task([f"4{n:010d}" for n in range(5000)], URL, 1.0)
        )
        await asyncio.wait_for(sliced.wait(), 10)
        assert not push.done()
        with sqlite3.connect(tmp_path / "db.sqlite") as conn:  # a slice is in, hidden
            assert conn.execute("SELECT COUNT(*) FROM dialplans").fetchone()[0] == 1000
        push.cancel()  # the server stopping mid-push
        with pytest.raises(asyncio.CancelledError):
            await push
        assert await store.list_tasks(1, 10) == []
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "db.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM dialplans").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0] == 0


async def test_a_push_the_server_died_in_is_dropped_at_the_next_start(
    live: LiveServer, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    api = Api(UrlClient(session, live))
    await live.start()
    kept = await api.ok("POST", "/api/dialplan", json={"phone": ["5001"], "return_url": URL})
    await live.stop()
    # kill -9 mid-push: its task row and the slices in so far, never shown
    with sqlite3.connect(tmp_path / "server.db") as conn:
        cur = conn.execute(
            "INSERT INTO tasks (status, return_url, remaining, created_at, updated_at, loading)"
            " VALUES ('free', ?, 3, 'x', 'x', 1)",
            (URL,),
        )
        conn.executemany(
            "INSERT INTO dialplans (task_id, phone, status, created_at, updated_at)"
            " VALUES (?, ?, 'free', 'x', 'x')",
            [(cur.lastrowid, p) for p in ("6001", "6002")],
        )
    await live.start()
    assert [t["id"] for t in await api.ok("GET", "/api/tasks")] == [kept["task_id"]]
    await api.ok("POST", "/api/account", json={"account": ACCOUNTS})
    cid = await api.notify()
    await api.ok("GET", f"/accounts/{cid}?threadsNum=3")
    plans = (await api.ok("GET", f"/dialplan/{cid}"))["dialplans"]
    assert [p["phoneNum"] for p in plans] == ["5001"]
    with sqlite3.connect(tmp_path / "server.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM dialplans").fetchone()[0] == 1
