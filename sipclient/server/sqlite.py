"""`Store` on SQLite: WAL, one writer thread with group commit, one reader thread.

No SQLite call runs on the event loop. Writes queue to a single thread that
owns the only write connection; it takes every job waiting in the queue,
runs each in its own SAVEPOINT inside one transaction, and commits once
(synchronous=FULL: a commit is durable). Under load many requests share one
fsync, which is what lets a small box lease and finish thousands of numbers
per second; alone, a request still gets its own transaction at once. A job
that raises rolls back only its savepoint. Reads go to a second thread with
its own connection (WAL readers never block the writer).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import queue
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from sipclient.config import LOOK_AHEAD_MAX
from sipclient.logs import get_logger
from sipclient.server.store import (
    JSON,
    AccountIn,
    CallbackDue,
    FinishOutcome,
    FinishStatus,
    Store,
    StoreError,
    SweepOutcome,
    Upload,
    iso_local,
)

log = get_logger(__name__)

T = TypeVar("T")

AHEAD_LINES = 3
"""Numbers to hold (`next` with "during") only while free numbers are more than
this many times the accounts leased to clients (`SqliteStore._lease`): a line
holding two has dialled them before three a line are gone..."""
AHEAD_PLENTY_S = 1.0
"""...counted again after this long, or once the hand-outs since used up what the
count found beyond that margin (`SqliteStore._ahead_budget`)..."""
AHEAD_COUNT_MORE = 1000
"""...counting up to this many free numbers past the margin."""
Job = Callable[[sqlite3.Connection], Any]

# Schema migrations, applied in order at start; PRAGMA user_version counts them.
MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE accounts (
        id INTEGER PRIMARY KEY,
        host TEXT NOT NULL,
        name TEXT NOT NULL,
        pwd TEXT NOT NULL,
        transport TEXT,
        domain TEXT,
        client_id TEXT,
        leased_at REAL,
        state TEXT,
        state_phone TEXT,
        state_at REAL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        UNIQUE (host, name)
    );
    CREATE INDEX accounts_client ON accounts (client_id);
    CREATE TABLE clients (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        created_at REAL NOT NULL,
        last_seen REAL NOT NULL
    );
    CREATE INDEX clients_active ON clients (last_seen) WHERE state = 'active';
    CREATE TABLE tasks (
        id INTEGER PRIMARY KEY,
        status TEXT NOT NULL,
        return_url TEXT NOT NULL,
        remaining INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        callback_state TEXT NOT NULL DEFAULT 'none',
        callback_tries INTEGER NOT NULL DEFAULT 0,
        callback_next_at REAL,
        callback_last_status INTEGER,
        callback_last_error TEXT,
        callback_delivered_at TEXT
    );
    CREATE INDEX tasks_callback_due ON tasks (callback_next_at)
        WHERE callback_state = 'pending';
    CREATE TABLE dialplans (
        id INTEGER PRIMARY KEY,
        task_id INTEGER NOT NULL REFERENCES tasks (id),
        phone TEXT NOT NULL,
        status TEXT NOT NULL,
        client_id TEXT,
        account_id INTEGER,
        extension TEXT,
        leased_at REAL,
        tries INTEGER NOT NULL DEFAULT 0,
        result TEXT,
        detail TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        UNIQUE (task_id, phone)
    );
    CREATE INDEX dialplans_free ON dialplans (id) WHERE status = 'free';
    CREATE INDEX dialplans_busy_account ON dialplans (account_id) WHERE status = 'busy';
    CREATE INDEX dialplans_busy_client ON dialplans (client_id) WHERE status = 'busy';
    CREATE INDEX dialplans_busy_leased ON dialplans (leased_at) WHERE status = 'busy';
    CREATE INDEX dialplans_phone ON dialplans (phone);
    CREATE TABLE handouts (
        dialplan_id INTEGER NOT NULL,
        client_id TEXT NOT NULL,
        extension TEXT NOT NULL,
        leased_at REAL NOT NULL
    );
    CREATE INDEX handouts_dialplan ON handouts (dialplan_id, client_id);
    CREATE TABLE recordings (
        id INTEGER PRIMARY KEY,
        dialplan_id INTEGER,
        client_id TEXT NOT NULL,
        extension TEXT NOT NULL,
        phone TEXT NOT NULL,
        path TEXT NOT NULL,
        outcome TEXT NOT NULL,
        fields TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX recordings_dialplan ON recordings (dialplan_id);
    """,
    # 2: a transient number waits before it is handed out again (retries.spacing)
    """
    ALTER TABLE dialplans ADD COLUMN retry_at REAL;
    """,
    # 3: (ext) a task can be cancelled (POST /api/tasks/{id}/cancel)
    """
    ALTER TABLE tasks ADD COLUMN cancelled_at TEXT;
    """,
    # 4: lines shared between unfinished tasks (leases.share): their free numbers
    # task by task, and the unfinished tasks without reading the finished ones
    """
    CREATE INDEX dialplans_free_task ON dialplans (task_id, id) WHERE status = 'free';
    CREATE INDEX tasks_open ON tasks (id) WHERE status != 'finish';
    """,
    # 5: a push is inserted in slices (PUSH_SLICE); its task stays hidden until whole
    """
    ALTER TABLE tasks ADD COLUMN loading INTEGER NOT NULL DEFAULT 0;
    """,
    # 6: the groups of leases.share read from an index, not from the oldest 256 open
    # tasks (one-number tasks past them starved lines and later pushers)
    """
    ALTER TABLE tasks ADD COLUMN origin TEXT NOT NULL DEFAULT '';
    UPDATE tasks SET origin = url_origin(return_url);
    CREATE INDEX tasks_ready_origin ON tasks (origin, id) WHERE status != 'finish' AND loading = 0;
    CREATE INDEX tasks_ready ON tasks (id) WHERE status != 'finish' AND loading = 0;
    DROP INDEX IF EXISTS tasks_open;
    """,
]

PUSH_SLICE = 10_000
"""Numbers of a push inserted per writer job. One job for a whole push held every
other write (a /status, an upload, a hand-out) behind it: ~0.9 s for 100,000
numbers, the most one push carries. A slice takes ~0.1 s; the task stays hidden
(`tasks.loading`) until its last slice is in, and a push cut short (the
server stopped, the pusher gone) is deleted (`_drop_loading`)."""

SHARE_EMPTY_MAX = 64
"""Groups of tasks (`leases.share`) without a number free now that one hand-out
looks past at most (their numbers all out on lines, or waiting out a retry
spacing); the rotation starts the next hand-out where this one stopped."""

_BATCH_MAX = 256


class _SerialThread:
    """One thread, one connection; queued jobs run in batches, one transaction per batch."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], name: str, *, write: bool):
        self._connect = connect
        self._write = write
        self._queue: queue.SimpleQueue[tuple[Job, asyncio.Future[Any]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise StoreError(f"cannot open the database: {self._start_error}")

    async def run(self, job: Callable[[sqlite3.Connection], T]) -> T:
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put((job, fut))
        return await fut

    def stop(self) -> None:
        """Let queued jobs finish, then close the connection."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _main(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            self._start_error = exc
            self._started.set()
            return
        self._started.set()
        try:
            stopping = False
            while not stopping:
                first = self._queue.get()
                if first is None:
                    break
                batch = [first]
                while len(batch) < _BATCH_MAX:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stopping = True
                        break
                    batch.append(nxt)
                self._run_batch(conn, batch)
        finally:
            conn.close()

    def _run_batch(
        self, conn: sqlite3.Connection, batch: list[tuple[Job, asyncio.Future[Any]]]
    ) -> None:
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE" if self._write else "BEGIN")
            for job, fut in batch:
                conn.execute("SAVEPOINT job")
                try:
                    value = job(conn)
                except Exception as exc:  # the job's own failure: undo just it
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    results.append((fut, None, exc))
                else:
                    conn.execute("RELEASE job")
                    results.append((fut, value, None))
            conn.execute("COMMIT")
        except Exception as exc:  # the transaction itself failed: every job failed
            if conn.in_transaction:
                conn.rollback()
            results = [(fut, None, exc) for _, fut in batch]
        assert self._loop is not None
        # RuntimeError: the loop is closed, nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(_settle, results)


def _settle(results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, value, exc in results:
        if fut.done():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA foreign_keys=ON")
    # migration 6 fills tasks.origin from return_url with the code the pushes use
    conn.create_function("url_origin", 1, _origin, deterministic=True)
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Apply the migrations the database lacks; answer the schema version."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > len(MIGRATIONS):
        raise StoreError(
            f"database schema version {version} is newer than this program ({len(MIGRATIONS)})"
        )
    for number in range(version + 1, len(MIGRATIONS) + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(MIGRATIONS[number - 1]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.rollback()
            raise
    return len(MIGRATIONS)


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


# ------------------------------------------------------------------ row shapes


def _account_json(row: sqlite3.Row) -> JSON:
    return {"host": row["host"], "name": row["name"], "pwd": row["pwd"]}


def _lease_json(row: sqlite3.Row) -> JSON:
    out: JSON = {"extensionNum": row["name"], "password": row["pwd"], "host": row["host"]}
    if row["transport"]:
        out["transport"] = row["transport"]
    if row["domain"]:
        out["domain"] = row["domain"]
    return out


_LINE_STATES = ("idle", "during", "call", "unregistered", "unknown")
"""An extension's latest /status in the fleet view; "unknown" before its first."""
_IN_CHUNK = 500
"""Phones per `IN (...)` query (SQLite allows 32,766 parameters; a push 100,000)."""


def _dialplan_json(row: sqlite3.Row) -> JSON:
    return {
        "id": row["id"],
        "phone": row["phone"],
        "client_id": row["client_id"],
        "status": row["status"],
        "result": row["result"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "task_id": row["task_id"],
        "extensionNum": row["extension"],
        "tries": row["tries"],
        "detail": json.loads(row["detail"]) if row["detail"] else None,
    }


_TASK_IDS_AFTER = "SELECT id FROM dialplans WHERE task_id = ? AND id > ? ORDER BY id"


def _new_dialplan_json(
    dialplan_id: int, phone: str, task_id: int, stamp: str, finished: tuple[str, JSON] | None
) -> JSON:
    """`_dialplan_json` of a row `create_task` has just inserted."""
    return {
        "id": dialplan_id,
        "phone": phone,
        "client_id": None,
        "status": "free" if finished is None else "finish",
        "result": None if finished is None else finished[0],
        "created_at": stamp,
        "updated_at": stamp,
        "task_id": task_id,
        "extensionNum": None,
        "tries": 0,
        "detail": None if finished is None else json.loads(json.dumps(finished[1])),
    }


def _task_json(row: sqlite3.Row) -> JSON:
    return {
        "id": row["id"],
        "status": row["status"],
        "return_url": row["return_url"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def _callback_json(row: sqlite3.Row) -> JSON:
    return {
        "state": row["callback_state"],
        "tries": row["callback_tries"],
        "last_status": row["callback_last_status"],
        "last_error": row["callback_last_error"],
        "delivered_at": row["callback_delivered_at"],
    }


def _placeholders(n: int) -> str:
    return ",".join("?" * n)


_FREE_SET = (
    "status = 'free', client_id = NULL, account_id = NULL, extension = NULL, "
    "leased_at = NULL, updated_at = ?"
)


class SqliteStore(Store):
    """The SQLite repository (see the module docstring for the threading)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer = _SerialThread(self._open_writer, "sqlite-writer", write=True)
        self._reader = _SerialThread(lambda: _connect(self.path), "sqlite-reader", write=False)
        self.schema_version = 0
        self._share_after: str | int | None = None
        """The group of tasks served last (an origin, or a task id): the next
        hand-out starts with the group after it (`_shared_plans`; the writer
        thread's alone)."""
        self._plenty_until = -math.inf
        self._ahead_budget = 0
        """Free numbers past the look-ahead's margin at the last count, less those
        handed out since (`_lease`), trusted until `_plenty_until`: counting up to
        AHEAD_LINES times the lines out at every "during" that asks was up to
        thousands of index rows a call for a fleet. The writer thread's alone."""

    def _open_writer(self) -> sqlite3.Connection:
        conn = _connect(self.path)
        try:
            self.schema_version = migrate(conn)
            conn.execute("BEGIN IMMEDIATE")
            dropped = _drop_loading(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        if dropped:
            # the server stopped mid-push: that pusher got no task id and pushes again
            log.warning("partial_push_dropped", tasks=dropped)
        return conn

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.path.parent.mkdir, parents=True, exist_ok=True)
        # The writer migrates before the reader opens, so the reader sees the schema.
        await loop.run_in_executor(None, self._writer.start, loop)
        await loop.run_in_executor(None, self._reader.start, loop)

    async def close(self) -> None:
        await asyncio.to_thread(self._reader.stop)
        await asyncio.to_thread(self._writer.stop)

    # ------------------------------------------------------------ 000

    async def upsert_accounts(self, accounts: Sequence[AccountIn], now: float) -> list[JSON]:
        stamp = iso_local(now)

        def job(conn: sqlite3.Connection) -> list[JSON]:
            conn.executemany(
                "INSERT INTO accounts (host, name, pwd, transport, domain, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (host, name) DO UPDATE SET pwd = excluded.pwd,"
                " transport = excluded.transport, domain = excluded.domain,"
                " updated_at = excluded.updated_at",
                [(a.host, a.name, a.pwd, a.transport, a.domain, stamp, stamp) for a in accounts],
            )
            rows = conn.execute("SELECT host, name, pwd FROM accounts ORDER BY id").fetchall()
            return [_account_json(r) for r in rows]

        return await self._writer.run(job)

    async def create_task(
        self,
        phones: Sequence[str],
        return_url: str,
        now: float,
        finished: Mapping[str, tuple[str, JSON]] | None = None,
    ) -> JSON:
        stamp = iso_local(now)
        done = finished or {}
        remaining = sum(1 for p in phones if p not in done)

        def begin(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "INSERT INTO tasks (status, return_url, origin, remaining, created_at,"
                " updated_at, loading) VALUES ('free', ?, ?, ?, ?, ?, 1)",
                (return_url, _origin(return_url), remaining, stamp, stamp),
            )
            assert cur.lastrowid is not None  # an INSERT's row id
            return cur.lastrowid

        def insert(task_id: int, part: Sequence[str], after: int) -> Callable[..., list[JSON]]:
            def job(conn: sqlite3.Connection) -> list[JSON]:
                conn.executemany(
                    "INSERT INTO dialplans (task_id, phone, status, result, detail, created_at,"
                    " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (task_id, p, "free", None, None, stamp, stamp)
                        if p not in done
                        else (
                            task_id,
                            p,
                            "finish",
                            done[p][0],
                            json.dumps(done[p][1], ensure_ascii=False),
                            stamp,
                            stamp,
                        )
                        for p in part
                    ],
                )
                # The answer is what was just inserted: only the ids are read back. They
                # ascend in insertion order, so they pair with `part`. Reading the rows
                # back whole took 0.4 s of 1 s for 100,000 numbers, during which every
                # other write waited.
                ids = [r[0] for r in conn.execute(_TASK_IDS_AFTER, (task_id, after))]
                return [
                    _new_dialplan_json(i, p, task_id, stamp, done.get(p))
                    for i, p in zip(ids, part, strict=True)
                ]

            return job

        def show(task_id: int) -> Callable[..., None]:
            def job(conn: sqlite3.Connection) -> None:
                conn.execute("UPDATE tasks SET loading = 0 WHERE id = ?", (task_id,))
                if remaining == 0:
                    # nothing to dial: finished, its callback due at once (as in _finish)
                    conn.execute(
                        "UPDATE tasks SET status = 'finish', callback_state = 'pending',"
                        " callback_next_at = 0 WHERE id = ?",
                        (task_id,),
                    )

            return job

        task_id = await self._writer.run(begin)
        plans: list[JSON] = []
        try:
            for start in range(0, len(phones), PUSH_SLICE):
                after = plans[-1]["id"] if plans else 0
                part = phones[start : start + PUSH_SLICE]
                plans += await self._writer.run(insert(task_id, part, after))
            await self._writer.run(show(task_id))
        except BaseException:
            # the pusher got no task id: nothing of it may stay (a restart would drop it too)
            await asyncio.shield(self._writer.run(lambda conn: _drop_loading(conn, task_id)))
            raise
        return {"task_id": task_id, "dialplans": plans, "return_url": return_url}

    async def cancel_task(self, task_id: int, now: float) -> JSON | None:
        stamp = iso_local(now)

        def job(conn: sqlite3.Connection) -> JSON | None:
            cur = conn.execute(
                "UPDATE tasks SET cancelled_at = COALESCE(cancelled_at, ?)"
                " WHERE id = ? AND loading = 0",
                (stamp, task_id),
            )
            if cur.rowcount == 0:
                return None
            cancelled = _finish_cancelled(conn, task_id, stamp)
            left = conn.execute("SELECT remaining FROM tasks WHERE id = ?", (task_id,)).fetchone()
            return {"task_id": task_id, "cancelled": cancelled, "in_flight": int(left[0])}

        return await self._writer.run(job)

    async def resend_callback(self, task_id: int) -> bool | None:
        def job(conn: sqlite3.Connection) -> bool | None:
            row = conn.execute(
                "SELECT status, callback_state FROM tasks WHERE id = ? AND loading = 0",
                (task_id,),
            ).fetchone()
            if row is None:
                return None
            if row["status"] != "finish":
                return False
            if row["callback_state"] == "pending":
                return True  # already on its way: a reset under a delivery would send twice
            # due at once (epoch 0), as a task that has just finished
            conn.execute(
                "UPDATE tasks SET callback_state = 'pending', callback_tries = 0,"
                " callback_next_at = 0 WHERE id = ?",
                (task_id,),
            )
            return True

        return await self._writer.run(job)

    async def recent_results(self, phones: Sequence[str], since: float) -> dict[str, JSON]:
        stamp = iso_local(since)
        wanted = list(dict.fromkeys(phones))

        def job(conn: sqlite3.Connection) -> dict[str, JSON]:
            out: dict[str, JSON] = {}
            for i in range(0, len(wanted), _IN_CHUNK):
                chunk = wanted[i : i + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    f"SELECT * FROM dialplans WHERE phone IN ({marks}) AND status = 'finish'"
                    " AND result NOT IN ('failed', 'unknown') AND updated_at >= ?"
                    " ORDER BY id",
                    (*chunk, stamp),
                ).fetchall()
                for row in rows:  # oldest first: the latest of a phone wins
                    plan = _dialplan_json(row)
                    evidence = (plan["detail"] or {}).get("evidence") or {}
                    if evidence.get("kind") != "reused":  # its window ran from the call
                        out[plan["phone"]] = plan
            return out

        return await self._reader.run(job)

    async def fleet(self, state: str, page: int, size: int) -> JSON:
        def job(conn: sqlite3.Connection) -> JSON:
            clients = conn.execute(
                "SELECT * FROM clients WHERE state = ? ORDER BY last_seen DESC, id"
                " LIMIT ? OFFSET ?",
                (state, size, (page - 1) * size),
            ).fetchall()
            ids = [c["id"] for c in clients]
            marks = ",".join("?" * len(ids))
            lines: dict[str, list[JSON]] = {i: [] for i in ids}
            busy: dict[str, int] = {}
            if ids:
                for a in conn.execute(
                    f"SELECT * FROM accounts WHERE client_id IN ({marks}) ORDER BY name, host",
                    ids,
                ):
                    lines[a["client_id"]].append(
                        {
                            "extensionNum": a["name"],
                            "host": a["host"],
                            "status": a["state"] or "unknown",
                            "phone": a["state_phone"] or "",
                            "since": iso_local(a["state_at"]) if a["state_at"] else None,
                        }
                    )
                busy = {
                    r[0]: r[1]
                    for r in conn.execute(
                        "SELECT client_id, COUNT(*) FROM dialplans WHERE status = 'busy'"
                        f" AND client_id IN ({marks}) GROUP BY client_id",
                        ids,
                    )
                }
            totals: JSON = {"clients": 0, "extensions": 0}
            totals.update({s: 0 for s in _LINE_STATES})
            totals["clients"] = conn.execute(
                "SELECT COUNT(*) FROM clients WHERE state = ?", (state,)
            ).fetchone()[0]
            for s, n in conn.execute(
                "SELECT COALESCE(a.state, 'unknown'), COUNT(*) FROM accounts a"
                " JOIN clients c ON c.id = a.client_id WHERE c.state = ? GROUP BY 1",
                (state,),
            ):
                totals[s if s in _LINE_STATES else "unknown"] += n
                totals["extensions"] += n
            return {
                "clients": [
                    {
                        "id": c["id"],
                        "state": c["state"],
                        "created_at": iso_local(c["created_at"]),
                        "last_seen": iso_local(c["last_seen"]),
                        "busy_numbers": busy.get(c["id"], 0),
                        "extensions": lines[c["id"]],
                    }
                    for c in clients
                ],
                "totals": totals,
            }

        return await self._reader.run(job)

    async def list_tasks(self, page: int, size: int) -> list[JSON]:
        def job(conn: sqlite3.Connection) -> list[JSON]:
            rows = conn.execute(
                "SELECT * FROM tasks WHERE loading = 0 ORDER BY id DESC LIMIT ? OFFSET ?",
                (size, (page - 1) * size),
            ).fetchall()
            return [_task_json(r) for r in rows]

        return await self._reader.run(job)

    async def get_task(self, task_id: int) -> JSON | None:
        def job(conn: sqlite3.Connection) -> JSON | None:
            row = conn.execute(
                "SELECT * FROM tasks WHERE id = ? AND loading = 0", (task_id,)
            ).fetchone()
            if row is None:
                return None
            task = _task_json(row)
            plans = conn.execute(
                "SELECT * FROM dialplans WHERE task_id = ? ORDER BY id", (task_id,)
            ).fetchall()
            task["dialplans"] = [_dialplan_json(r) for r in plans]
            task["callback"] = _callback_json(row)
            task["cancelled_at"] = row["cancelled_at"]  # (ext), as callback: not in listings
            return task

        return await self._reader.run(job)

    # ------------------------------------------------------------ 001

    async def create_client(self, client_id: str, now: float) -> None:
        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO clients (id, state, created_at, last_seen) VALUES (?, 'active', ?, ?)",
                (client_id, now, now),
            )

        await self._writer.run(job)

    async def client_states(self) -> dict[str, str]:
        def job(conn: sqlite3.Connection) -> dict[str, str]:
            return {r["id"]: r["state"] for r in conn.execute("SELECT id, state FROM clients")}

        return await self._reader.run(job)

    async def note_seen(self, seen: Mapping[str, float]) -> None:
        rows = [(at, cid) for cid, at in seen.items()]
        if not rows:
            return

        def job(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE clients SET last_seen = MAX(last_seen, ?)"
                " WHERE id = ? AND state = 'active'",
                rows,
            )

        await self._writer.run(job)

    async def lease_accounts(self, client_id: str, count: int, now: float) -> list[JSON] | None:
        def job(conn: sqlite3.Connection) -> list[JSON] | None:
            if not _touch(conn, client_id, now):
                return None
            held = conn.execute(
                "SELECT * FROM accounts WHERE client_id = ? ORDER BY id", (client_id,)
            ).fetchall()
            names = {r["name"] for r in held}
            new: list[sqlite3.Row] = []
            if len(held) < count:
                # A client addresses its extensions by name: never two of one name.
                for row in conn.execute(
                    "SELECT * FROM accounts WHERE client_id IS NULL ORDER BY id"
                ):
                    if len(held) + len(new) >= count:
                        break
                    if row["name"] not in names:
                        names.add(row["name"])
                        new.append(row)
                conn.executemany(
                    "UPDATE accounts SET client_id = ?, leased_at = ?, state = NULL,"
                    " state_phone = NULL, state_at = NULL WHERE id = ?",
                    [(client_id, now, r["id"]) for r in new],
                )
            return [_lease_json(r) for r in [*held, *new]]

        return await self._writer.run(job)

    async def lease_dialplans(
        self, client_id: str, now: float, share: str = "none", extension: str | None = None
    ) -> list[JSON] | None:
        def job(conn: sqlite3.Connection) -> list[JSON] | None:
            if not _touch(conn, client_id, now):
                return None
            return self._lease(conn, client_id, now, share, extension)

        return await self._writer.run(job)

    def _lease(
        self,
        conn: sqlite3.Connection,
        client_id: str,
        now: float,
        share: str,
        extension: str | None = None,
        during: bool = False,
        ahead_of: str | None = None,
        ahead: int = 1,
    ) -> list[JSON]:
        """The hand-out of `lease_dialplans`, and of `record_status`'s `next` (`during`:
        record each extension `during` its number; `ahead_of`: the number the
        extension dials, `ahead` how many it asks to hold, see the Store's
        docstrings). In the writer's transaction."""
        if ahead_of is not None:
            # (ext) Its next numbers, held while it dials `ahead_of`: so many that the
            # numbers handed to the extension after that one are `ahead` (and
            # LOOK_AHEAD_MAX at most), so a question asked twice (a reply lost) gets
            # nothing more the second time; and only while free numbers are more than
            # AHEAD_LINES times the lines out: at a list's end a number held behind a
            # call (seconds) would keep a free line waiting, and the numbers held
            # before that are dialled by the time the last ones go (a batch of 1,000
            # numbers on 100 lines ended 0.7 s later than without the look-ahead
            # with "more than the lines").
            if now >= self._plenty_until or self._ahead_budget <= 0:
                lines = conn.execute(
                    "SELECT COUNT(*) FROM accounts WHERE client_id IS NOT NULL"
                ).fetchone()[0]
                margin = AHEAD_LINES * lines
                left = conn.execute(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM dialplans WHERE status = 'free' LIMIT ?)",
                    (margin + AHEAD_COUNT_MORE,),
                ).fetchone()[0]
                self._ahead_budget = left - margin
                self._plenty_until = now + AHEAD_PLENTY_S
                if self._ahead_budget <= 0:
                    return []
            return self._hand_ahead(conn, client_id, now, share, extension, ahead_of, ahead)
        only = "" if extension is None else " AND a.name = ?"
        args: tuple[str, ...] = (client_id,) if extension is None else (client_id, extension)
        # An extension is free when no number is out on it, or when its client
        # reported it idle after the latest hand-out: that number's result is in
        # the client's spool on its way here, and waiting for the upload (~40 ms
        # of writes and judging) left every line idle that long between calls.
        free_when = (
            " AND NOT EXISTS (SELECT 1 FROM dialplans d"
            "   WHERE d.status = 'busy' AND d.account_id = a.id"
            "   AND NOT (a.state = 'idle' AND a.state_at > d.leased_at))"
        )
        idle = conn.execute(
            "SELECT a.id, a.name FROM accounts a WHERE a.client_id = ?"
            " AND COALESCE(a.state, '') != 'unregistered'"
            f"{only}{free_when} ORDER BY a.id",
            args,
        ).fetchall()
        if not idle:
            return []
        free = self._shared_plans(conn, now, len(idle), share)
        return self._hand(conn, client_id, now, list(zip(idle, free, strict=False)), during)

    def _hand_ahead(
        self,
        conn: sqlite3.Connection,
        client_id: str,
        now: float,
        share: str,
        extension: str | None,
        ahead_of: str,
        ahead: int,
    ) -> list[JSON]:
        """`_lease`'s numbers to hold on `extension` while it dials `ahead_of`.

        The latest hand-out of `ahead_of` to the extension, not its dialplan row:
        after a call shorter than the round trip to the server the upload (on its
        own connection) often finished the number before its "during" came, and the
        row had left the account (24 lines at 100 ms from the server: such a
        "during" got none, and the daemon then asked nothing ahead for a second).
        """
        account = conn.execute(
            "SELECT id, name FROM accounts WHERE client_id = ? AND name = ?"
            " AND COALESCE(state, '') != 'unregistered'",
            (client_id, extension),
        ).fetchone()
        if account is None:
            return []
        # held: the numbers on it handed after that one; one reply's numbers share
        # a leased_at and go in the order of their ids (below), which the daemon
        # dials them in
        row = conn.execute(
            "SELECT (SELECT COUNT(*) FROM dialplans e"
            "   WHERE e.status = 'busy' AND e.account_id = ? AND (e.leased_at > h.leased_at"
            "   OR (e.leased_at = h.leased_at AND e.id > h.dialplan_id))) AS held"
            " FROM dialplans d JOIN handouts h ON h.dialplan_id = d.id"
            " AND h.client_id = ? AND h.extension = ?"
            " WHERE d.phone = ? ORDER BY h.rowid DESC LIMIT 1",
            (account["id"], client_id, extension, ahead_of),
        ).fetchone()
        if row is None:
            return []
        # asked again: none more; and no more than the count left past the margin
        want = min(min(ahead, LOOK_AHEAD_MAX) - row["held"], self._ahead_budget)
        if want <= 0:
            return []
        free = sorted(self._shared_plans(conn, now, want, share), key=lambda plan: plan["id"])
        return self._hand(conn, client_id, now, [(account, plan) for plan in free], False)

    def _hand(
        self,
        conn: sqlite3.Connection,
        client_id: str,
        now: float,
        pairs: list[tuple[sqlite3.Row, sqlite3.Row]],
        during: bool,
    ) -> list[JSON]:
        """Lease each (account, dialplan) pair: the rows, the hand-outs, the tasks."""
        stamp = iso_local(now)
        self._ahead_budget -= len(pairs)  # (every hand-out: GET /dialplan's too)
        conn.executemany(
            "UPDATE dialplans SET status = 'busy', client_id = ?,"
            " account_id = ?, extension = ?, leased_at = ?, updated_at = ? WHERE id = ?",
            [(client_id, acc["id"], acc["name"], now, stamp, plan["id"]) for acc, plan in pairs],
        )
        # Every hand-out is kept: a late upload is matched against it.
        conn.executemany(
            "INSERT INTO handouts (dialplan_id, client_id, extension, leased_at)"
            " VALUES (?, ?, ?, ?)",
            [(plan["id"], client_id, acc["name"], now) for acc, plan in pairs],
        )
        if during:
            conn.executemany(
                "UPDATE accounts SET state = 'during', state_phone = ?, state_at = ? WHERE id = ?",
                [(plan["phone"], now, acc["id"]) for acc, plan in pairs],
            )
        tasks = sorted({plan["task_id"] for _, plan in pairs})
        if tasks:
            conn.execute(
                "UPDATE tasks SET status = 'running', updated_at = ?"
                f" WHERE status = 'free' AND id IN ({_placeholders(len(tasks))})",
                (stamp, *tasks),
            )
        return [
            {"extensionNum": acc["name"], "phoneNum": plan["phone"], "dialplanId": plan["id"]}
            for acc, plan in pairs
        ]

    def _shared_plans(
        self, conn: sqlite3.Connection, now: float, count: int, share: str
    ) -> list[sqlite3.Row]:
        """Up to `count` free numbers taken in turn from the groups of unfinished
        tasks (`leases.share`: by "pusher", the return_url's origin, or by "task";
        "none" is one group), each group's oldest task first. The groups take turns
        in a fixed cycle (origins in text order, tasks by id): the hand-out starts
        with the group after the one the last hand-out served last. A task still
        being inserted is in no group.

        Every group is read from an index (`tasks_ready_origin`, `tasks_ready`):
        until session 10 only the 256 oldest unfinished tasks were, and a pusher of
        one-number tasks left every line past the 256th idle and every later
        pusher waiting until its backlog was done.
        """
        keys = _group_keys(conn, share, self._share_after, count + SHARE_EMPTY_MAX, now)
        if not keys:
            return []
        # each group's share of this hand-out and a few more (a phone out on another
        # line waits); read again in full only when the groups fell short
        per = -(-count // min(count, len(keys))) + 2
        lists: list[list[sqlite3.Row]] = []
        visited: list[str | int | None] = []
        empty = 0
        for key in keys:
            plans = _free_plans(conn, now, per, share, key)
            if plans:
                lists.append(plans)
                visited.append(key)
                if len(lists) == count:
                    break  # one number each at least: the rest wait for their turn
            else:
                empty += 1
                if empty > SHARE_EMPTY_MAX:
                    break
        chosen = _unique_phones(lists, count)
        if len(chosen) < count and any(len(plans) == per for plans in lists):
            lists = [_free_plans(conn, now, count + 8, share, key) for key in visited]
            chosen = _unique_phones(lists, count)
        if chosen and share in ("pusher", "task"):
            last = chosen[-1]
            self._share_after = last["task_id"] if share == "task" else last["origin"]
        elif not chosen and empty > SHARE_EMPTY_MAX:
            self._share_after = keys[SHARE_EMPTY_MAX]  # the rest's turn next
        return chosen

    async def record_status(
        self,
        client_id: str,
        status: str,
        extension: str,
        phone: str,
        now: float,
        next_share: str | None = None,
        ahead: int = 1,
    ) -> tuple[bool | None, list[JSON] | None]:
        def job(conn: sqlite3.Connection) -> tuple[bool | None, list[JSON] | None]:
            if not _touch(conn, client_id, now):
                return None, None
            cur = conn.execute(
                "UPDATE accounts SET state = ?, state_phone = ?, state_at = ?"
                " WHERE client_id = ? AND name = ?",
                (status, phone, now, client_id, extension),
            )
            if cur.rowcount == 0:
                return False, None
            if next_share is None or status not in ("idle", "during"):
                return True, None
            if status == "idle":
                return True, self._lease(conn, client_id, now, next_share, extension, during=True)
            return True, self._lease(
                conn, client_id, now, next_share, extension, ahead_of=phone, ahead=ahead
            )

        return await self._writer.run(job)

    async def finish_dialplan(
        self, upload: Upload, max_tries: int, now: float, spacing: float = 0.0
    ) -> FinishOutcome:
        stamp = iso_local(now)

        def job(conn: sqlite3.Connection) -> FinishOutcome:
            _touch(conn, upload.client_id, now)  # liveness; an expired client stays expired
            outcome = _finish(conn, upload, max_tries, now, stamp, spacing)
            conn.execute(
                "INSERT INTO recordings (dialplan_id, client_id, extension, phone, path, outcome,"
                " fields, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    outcome.dialplan_id,
                    upload.client_id,
                    upload.extension,
                    upload.phone,
                    upload.recording_path,
                    outcome.status.value,
                    json.dumps(upload.fields, ensure_ascii=False),
                    stamp,
                ),
            )
            return outcome

        return await self._writer.run(job)

    async def sweep(self, client_cutoff: float, number_cutoff: float, now: float) -> SweepOutcome:
        stamp = iso_local(now)

        def job(conn: sqlite3.Connection) -> SweepOutcome:
            gone = [
                r["id"]
                for r in conn.execute(
                    "SELECT id FROM clients WHERE state = 'active' AND last_seen < ?",
                    (client_cutoff,),
                )
            ]
            freed_by_client = sum(_expire_client(conn, cid, stamp)[1] for cid in gone)
            cur = conn.execute(
                f"UPDATE dialplans SET {_FREE_SET} WHERE status = 'busy' AND leased_at < ?",
                (stamp, number_cutoff),
            )
            if freed_by_client or cur.rowcount:
                _finish_cancelled_freed(conn, stamp)
            return SweepOutcome(gone, freed_by_client, cur.rowcount)

        return await self._writer.run(job)

    async def leave_client(self, client_id: str, now: float) -> tuple[int, int] | None:
        stamp = iso_local(now)

        def job(conn: sqlite3.Connection) -> tuple[int, int] | None:
            row = conn.execute("SELECT state FROM clients WHERE id = ?", (client_id,)).fetchone()
            if row is None or row["state"] != "active":
                return None
            accounts, numbers = _expire_client(conn, client_id, stamp)
            if numbers:
                _finish_cancelled_freed(conn, stamp)
            return accounts, numbers

        return await self._writer.run(job)

    # ------------------------------------------------------------ callbacks

    async def due_callbacks(self, now: float, limit: int) -> list[CallbackDue]:
        def job(conn: sqlite3.Connection) -> list[CallbackDue]:
            rows = conn.execute(
                "SELECT id, return_url, callback_tries FROM tasks"
                " WHERE callback_state = 'pending' AND callback_next_at <= ?"
                " ORDER BY callback_next_at LIMIT ?",
                (now, limit),
            ).fetchall()
            return [CallbackDue(r["id"], r["return_url"], r["callback_tries"]) for r in rows]

        return await self._reader.run(job)

    async def next_callback_at(self) -> float | None:
        def job(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(
                "SELECT MIN(callback_next_at) FROM tasks WHERE callback_state = 'pending'"
            ).fetchone()
            return None if row[0] is None else float(row[0])

        return await self._reader.run(job)

    async def record_callback(
        self,
        task_id: int,
        *,
        delivered: bool,
        http_status: int | None,
        error: str | None,
        next_at: float | None,
        now: float,
    ) -> None:
        stamp = iso_local(now)
        if delivered:
            state = "delivered"
        elif next_at is None:
            state = "failed"
        else:
            state = "pending"

        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE tasks SET callback_state = ?, callback_tries = callback_tries + 1,"
                " callback_next_at = ?, callback_last_status = ?, callback_last_error = ?,"
                " callback_delivered_at = ? WHERE id = ? AND callback_state = 'pending'",
                (state, next_at, http_status, error, stamp if delivered else None, task_id),
            )

        await self._writer.run(job)


def _group_keys(
    conn: sqlite3.Connection, share: str, after: str | int | None, limit: int, now: float
) -> list[str | int | None]:
    """Up to `limit` groups of unfinished tasks (`leases.share`) in their cycle,
    starting with the one after `after`: origins ("pusher"), task ids ("task"),
    or the one group of every task ("none": [None]).

    Tasks are walked only where a number is free now (one index probe each,
    inside SQLite): with one number a task most of the tasks after a wrap of
    the cycle are out on lines, and walking them one query each, 64 a
    hand-out, left a number due again behind them waiting a poll per 64."""
    ready = "status != 'finish' AND loading = 0"
    if share == "task":
        first = after if isinstance(after, int) else 0
        free = (
            " AND EXISTS (SELECT 1 FROM dialplans d WHERE d.task_id = tasks.id"
            " AND d.status = 'free' AND (d.retry_at IS NULL OR d.retry_at <= ?))"
        )
        ids: list[str | int | None] = [
            int(r[0])
            for r in conn.execute(
                f"SELECT id FROM tasks WHERE {ready} AND id > ?{free} ORDER BY id LIMIT ?",
                (first, now, limit),
            )
        ]
        if len(ids) < limit:
            ids += [
                int(r[0])
                for r in conn.execute(
                    f"SELECT id FROM tasks WHERE {ready} AND id <= ?{free} ORDER BY id LIMIT ?",
                    (first, now, limit - len(ids)),
                )
            ]
        return ids
    if share == "pusher":
        # the distinct origins, one index seek each (a skip scan): a pusher's
        # 100,000 open tasks cost what one costs
        origins: list[str | int | None] = []
        start = after if isinstance(after, str) else None
        passes: list[tuple[str | None, str | None]] = [(start, None)]
        if start is not None:
            passes.append((None, start))
        for lo, hi in passes:  # after `after` to the end, then from the start up to it
            while len(origins) < limit:
                where, args = ready, list[str]()
                if lo is not None:
                    where, args = where + " AND origin > ?", [lo]
                if hi is not None:
                    where, args = where + " AND origin <= ?", [*args, hi]
                row = conn.execute(
                    f"SELECT origin FROM tasks WHERE {where} ORDER BY origin LIMIT 1", args
                ).fetchone()
                if row is None:
                    break
                lo = str(row[0])
                origins.append(lo)
        return origins
    exists = conn.execute(f"SELECT 1 FROM tasks WHERE {ready} LIMIT 1").fetchone()
    return [None] if exists else []


def _free_plans(
    conn: sqlite3.Connection, now: float, limit: int, share: str, key: str | int | None
) -> list[sqlite3.Row]:
    """Free numbers of the group `key` (`_group_keys`) that may go out now, oldest
    task first.

    Never the same phone twice at once (two tasks may hold it): our second call
    would find the callee's line taken by the first and come back `busy`, so a
    copy waits until the phone is free. A transient outcome waits out its spacing
    (retry_at) before it goes again.
    """
    group, args = "", list[str | int | None]()
    if share == "pusher":
        group, args = " AND t.origin = ?", [key]
    elif share == "task":
        group, args = " AND t.id = ?", [key]
    return conn.execute(
        "SELECT d.id, d.task_id, d.phone, t.origin"
        " FROM tasks t CROSS JOIN dialplans d ON d.task_id = t.id AND d.status = 'free'"
        f" WHERE t.status != 'finish' AND t.loading = 0{group}"
        " AND (d.retry_at IS NULL OR d.retry_at <= ?)"
        " AND NOT EXISTS (SELECT 1 FROM dialplans b"
        "   WHERE b.phone = d.phone AND b.status = 'busy')"
        " ORDER BY t.id, d.id LIMIT ?",
        (*args, now, limit),
    ).fetchall()


def _unique_phones(lists: Sequence[Sequence[sqlite3.Row]], count: int) -> list[sqlite3.Row]:
    """Up to `count` plans taken from `lists` in turn, one phone once (lists may share
    phones: two tasks may hold one)."""
    chosen: list[sqlite3.Row] = []
    phones: set[str] = set()
    iters = [iter(plans) for plans in lists]
    while iters and len(chosen) < count:
        for it in list(iters):
            for plan in it:
                if plan["phone"] not in phones:
                    phones.add(plan["phone"])
                    chosen.append(plan)
                    break
            else:
                iters.remove(it)
            if len(chosen) == count:
                break
    return chosen


@functools.lru_cache(maxsize=1024)
def _origin(url: str) -> str:
    """Who pushed a task, as far as the server can tell: its return_url's origin."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _expire_client(conn: sqlite3.Connection, client_id: str, stamp: str) -> tuple[int, int]:
    """The client is gone: its accounts back to the pool, its busy numbers free again;
    how many of each."""
    conn.execute("UPDATE clients SET state = 'expired' WHERE id = ?", (client_id,))
    accounts = conn.execute(
        "UPDATE accounts SET client_id = NULL, leased_at = NULL, state = NULL,"
        " state_phone = NULL, state_at = NULL WHERE client_id = ?",
        (client_id,),
    ).rowcount
    numbers = conn.execute(
        f"UPDATE dialplans SET {_FREE_SET} WHERE status = 'busy' AND client_id = ?",
        (stamp, client_id),
    ).rowcount
    return accounts, numbers


def _finish_cancelled_freed(conn: sqlite3.Connection, stamp: str) -> None:
    """Numbers just freed in a cancelled task are finished, not handed out again."""
    for (task_id,) in conn.execute(
        "SELECT DISTINCT d.task_id FROM dialplans d JOIN tasks t ON t.id = d.task_id"
        " WHERE d.status = 'free' AND t.cancelled_at IS NOT NULL"
    ).fetchall():
        _finish_cancelled(conn, task_id, stamp)


def _drop_loading(conn: sqlite3.Connection, task_id: int | None = None) -> int:
    """Delete a push that was not inserted whole (all such, at start); how many."""
    where = "loading = 1" + ("" if task_id is None else " AND id = ?")
    args = () if task_id is None else (task_id,)
    ids = [r[0] for r in conn.execute(f"SELECT id FROM tasks WHERE {where}", args)]
    for dropped in ids:
        conn.execute("DELETE FROM dialplans WHERE task_id = ?", (dropped,))
        conn.execute("DELETE FROM tasks WHERE id = ?", (dropped,))
    return len(ids)


def _touch(conn: sqlite3.Connection, client_id: str, now: float) -> bool:
    cur = conn.execute(
        "UPDATE clients SET last_seen = ? WHERE id = ? AND state = 'active'", (now, client_id)
    )
    return cur.rowcount > 0


def _finish_cancelled(conn: sqlite3.Connection, task_id: int, stamp: str) -> int:
    """Finish the cancelled task's numbers not out on a line (`free`, transient ones
    waiting for a try included) as `unknown`, evidence "cancelled"; how many.

    Run at the cancel and again whenever a number of such a task comes back free
    (the sweep's reclaim): handed out again, a cancelled task would go on dialling.
    """
    free = conn.execute(
        "SELECT id, tries, detail FROM dialplans WHERE task_id = ? AND status = 'free'",
        (task_id,),
    ).fetchall()
    if not free:
        return 0
    rows = []
    for r in free:
        detail: JSON = {"evidence": {"kind": "cancelled", "at": stamp}, "tries": r["tries"]}
        if r["detail"]:  # what an earlier try said stays readable
            detail["before"] = json.loads(r["detail"])
        rows.append((json.dumps(detail, ensure_ascii=False), stamp, r["id"]))
    conn.executemany(
        "UPDATE dialplans SET status = 'finish', result = 'unknown', detail = ?,"
        " account_id = NULL, leased_at = NULL, retry_at = NULL, updated_at = ?"
        " WHERE id = ?",
        rows,
    )
    conn.execute(
        "UPDATE tasks SET remaining = remaining - ?, updated_at = ? WHERE id = ?",
        (len(rows), stamp, task_id),
    )
    left = conn.execute("SELECT remaining FROM tasks WHERE id = ?", (task_id,)).fetchone()[0]
    if left == 0:
        # as in _finish: due at once, the callback worker keeps its own clock
        conn.execute(
            "UPDATE tasks SET status = 'finish', callback_state = 'pending',"
            " callback_next_at = 0 WHERE id = ?",
            (task_id,),
        )
    return len(rows)


def _replayed(conn: sqlite3.Connection, dialplan_id: int, upload: Upload) -> bool:
    """`upload` is one this dialplan already took: the same extension's call, by its
    (ext) `startedAt`, recorded as `finished` or `retry`. A daemon sends an upload
    again when the reply to it was lost (a kill -9 between the server's 200 and
    the spool's unlink, the connection cut): that copy answered 409 and was set
    aside in the daemon's refused/ (three at once in soak 21), or, for a
    transient outcome, counted a second try. An upload without `startedAt` (the
    seed's fields) is never taken for a replay."""
    started = upload.fields.get("startedAt")
    if not started:
        return False
    for rec in conn.execute(
        "SELECT fields FROM recordings WHERE dialplan_id = ? AND extension = ?"
        " AND outcome IN ('finished', 'retry')",
        (dialplan_id, upload.extension),
    ):
        try:
            earlier = json.loads(rec["fields"])
        except ValueError:
            continue
        if isinstance(earlier, dict) and earlier.get("startedAt") == started:
            return True
    return False


def _finish(
    conn: sqlite3.Connection,
    upload: Upload,
    max_tries: int,
    now: float,
    stamp: str,
    spacing: float = 0.0,
) -> FinishOutcome:
    row: sqlite3.Row | None
    if upload.dialplan_id is not None:
        row = conn.execute("SELECT * FROM dialplans WHERE id = ?", (upload.dialplan_id,)).fetchone()
        if row is None:
            return FinishOutcome(FinishStatus.NOT_FOUND)
        if row["phone"] != upload.phone:
            return FinishOutcome(FinishStatus.MISMATCH, row["id"], row["task_id"])
    else:
        row = conn.execute(
            "SELECT * FROM dialplans WHERE status = 'busy' AND client_id = ? AND extension = ?"
            " AND phone = ? ORDER BY id LIMIT 1",
            (upload.client_id, upload.extension, upload.phone),
        ).fetchone()
        if row is None:
            # A late upload: its lease was reclaimed (the number may be free again,
            # or leased to another client). The oldest unfinished one it held wins.
            row = conn.execute(
                "SELECT * FROM dialplans d WHERE d.phone = ? AND EXISTS (SELECT 1 FROM handouts h"
                "   WHERE h.dialplan_id = d.id AND h.client_id = ?)"
                " ORDER BY d.status = 'finish', d.id LIMIT 1",
                (upload.phone, upload.client_id),
            ).fetchone()
        if row is None:
            return FinishOutcome(FinishStatus.NOT_FOUND)
    dialplan_id, task_id = int(row["id"]), int(row["task_id"])
    if _replayed(conn, dialplan_id, upload):
        return FinishOutcome(
            FinishStatus.REPLAYED,
            dialplan_id,
            task_id,
            tries=int(row["tries"]),
            dialplan_status=str(row["status"]),
        )
    if row["status"] == "finish":
        return FinishOutcome(
            FinishStatus.ALREADY_FINISHED, dialplan_id, task_id, tries=int(row["tries"])
        )
    tries = int(row["tries"]) + 1
    detail = dict(upload.detail, tries=tries)
    cancelled = conn.execute(
        "SELECT cancelled_at IS NOT NULL FROM tasks WHERE id = ?", (task_id,)
    ).fetchone()[0]
    if upload.transient and tries < max_tries and not cancelled:
        retry_at = now + spacing * 2 ** (tries - 1)
        conn.execute(
            f"UPDATE dialplans SET {_FREE_SET}, tries = ?, detail = ?, retry_at = ? WHERE id = ?",
            (stamp, tries, json.dumps(detail, ensure_ascii=False), retry_at, dialplan_id),
        )
        return FinishOutcome(
            FinishStatus.RETRY, dialplan_id, task_id, tries=tries, dialplan_status="free"
        )
    conn.execute(
        "UPDATE dialplans SET status = 'finish', client_id = ?, extension = ?,"
        " account_id = NULL, leased_at = NULL, tries = ?, result = ?, detail = ?,"
        " updated_at = ? WHERE id = ?",
        (
            upload.client_id,
            upload.extension,
            tries,
            upload.result,
            json.dumps(detail, ensure_ascii=False),
            stamp,
            dialplan_id,
        ),
    )
    conn.execute(
        "UPDATE tasks SET remaining = remaining - 1, status = 'running', updated_at = ?"
        " WHERE id = ?",
        (stamp, task_id),
    )
    left = conn.execute("SELECT remaining FROM tasks WHERE id = ?", (task_id,)).fetchone()[0]
    finished = left == 0
    if finished:
        # Due at once (epoch 0): the callback worker keeps its own real clock.
        conn.execute(
            "UPDATE tasks SET status = 'finish', callback_state = 'pending',"
            " callback_next_at = 0 WHERE id = ?",
            (task_id,),
        )
    return FinishOutcome(
        FinishStatus.FINISHED, dialplan_id, task_id, finished, tries, dialplan_status="finish"
    )
