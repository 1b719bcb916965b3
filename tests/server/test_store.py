"""The SQLite repository on its own: migrations, group commit, job isolation."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from sipclient.config import ConfigError
from sipclient.server.sqlite import MIGRATIONS, SqliteStore
from sipclient.server.store import StoreError, open_store


async def test_fresh_database_gets_every_migration(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "a" / "b.db")
    await store.open()
    try:
        assert store.schema_version == len(MIGRATIONS)
    finally:
        await store.close()
    db = sqlite3.connect(tmp_path / "a" / "b.db")
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    db.close()
    assert {"accounts", "clients", "tasks", "dialplans", "handouts", "recordings"} <= tables


async def test_a_database_of_the_first_schema_is_migrated_keeping_its_rows(
    tmp_path: Path,
) -> None:
    # a server of session 5 left this file: schema 1, a task with a free number
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])
    db.execute(
        "INSERT INTO tasks (id, status, return_url, remaining, created_at, updated_at)"
        " VALUES (1, 'free', 'http://127.0.0.1:9/', 1, 't', 't')"
    )
    db.execute(
        "INSERT INTO dialplans (task_id, phone, status, created_at, updated_at)"
        " VALUES (1, '555', 'free', 't', 't')"
    )
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    store = SqliteStore(path)
    await store.open()
    try:
        assert store.schema_version == len(MIGRATIONS) >= 2
    finally:
        await store.close()
    db = sqlite3.connect(path)
    rows = db.execute("SELECT phone, status, retry_at FROM dialplans").fetchall()
    # migration 6 gave the task the origin its pusher is told apart by (leases.share)
    origins = db.execute("SELECT origin FROM tasks").fetchall()
    db.close()
    assert rows == [("555", "free", None)]
    assert origins == [("http://127.0.0.1:9",)]


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    store = SqliteStore(path)
    with pytest.raises(StoreError, match="newer"):
        await store.open()
    await store.close()


def test_postgresql_is_not_in_this_build() -> None:
    with pytest.raises(ConfigError, match="database"):
        open_store("postgresql://localhost/x")


async def test_concurrent_writes_share_transactions_and_stay_isolated(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "c.db")
    await store.open()
    try:
        ids = [f"c{i}" for i in range(200)]
        await asyncio.gather(*(store.create_client(cid, 1.0) for cid in ids))
        # A failing job (duplicate key) among good ones fails alone.
        results = await asyncio.gather(
            store.create_client("c5", 1.0),
            store.create_client("fresh", 1.0),
            return_exceptions=True,
        )
        assert isinstance(results[0], sqlite3.IntegrityError)
        assert results[1] is None
        states = await store.client_states()
        assert len(states) == 201 and set(states.values()) == {"active"}
    finally:
        await store.close()


async def test_pushed_task_and_pool_round_trip(tmp_path: Path) -> None:
    from sipclient.server.store import AccountIn

    store = SqliteStore(tmp_path / "d.db")
    await store.open()
    try:
        pool = await store.upsert_accounts([AccountIn("h:1", "1", "p")], 0.0)
        assert pool == [{"host": "h:1", "name": "1", "pwd": "p"}]
        task = await store.create_task(["a", "b"], "http://x/", 0.0)
        got = await store.get_task(task["task_id"])
        assert got is not None and [p["phone"] for p in got["dialplans"]] == ["a", "b"]
        assert await store.get_task(12345) is None
    finally:
        await store.close()
