"""The server's persistence, as a small repository interface.

Routes and dispatch speak only to `Store`; `SqliteStore` (server/sqlite.py)
is the one implementation today. A PostgreSQL one can be added beside it
without touching the routes: every method is one transaction, takes the
current time as an argument (so the dispatch clock, fake in tests, is the
only clock) and answers JSON-ready dicts in the wire shapes of PROTOCOL.md.

Business refusals (an unknown dialplan, a finished number) are answers, not
exceptions, so that a refused upload is still recorded in the same
transaction.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sipclient.config import ConfigError, sqlite_path

JSON = dict[str, Any]


def iso_local(epoch: float) -> str:
    """ISO 8601 local time without zone, to the second, as the seed writes it."""
    return datetime.fromtimestamp(epoch).isoformat(timespec="seconds")


@dataclass(frozen=True)
class AccountIn:
    """One extension account pushed to the pool (key: host + name)."""

    host: str
    name: str
    pwd: str
    transport: str | None = None
    domain: str | None = None


@dataclass(frozen=True)
class Upload:
    """What one /dial_wav brought, after validation.

    `dialplan_id` (ext) names the number exactly; without it the number is
    found by client, extension and phone. `outcome` is None when the
    classifier judged the call transient and it is to be dialled again.
    """

    client_id: str
    extension: str
    phone: str
    dialplan_id: int | None
    result: str
    transient: bool
    detail: JSON
    recording_path: str
    fields: JSON = field(default_factory=dict)


class FinishStatus(enum.StrEnum):
    """How an upload ended for its dialplan."""

    FINISHED = "finished"  # the dialplan is now `finish`
    RETRY = "retry"  # transient outcome: back to `free`, tries + 1
    NOT_FOUND = "not_found"  # no dialplan matches the upload
    ALREADY_FINISHED = "already_finished"  # it was finished before (409)
    MISMATCH = "mismatch"  # dialplanId names another phone
    REPLAYED = "replayed"  # the same call's upload again (its reply was lost): no change


@dataclass(frozen=True)
class FinishOutcome:
    status: FinishStatus
    dialplan_id: int | None = None
    task_id: int | None = None
    task_finished: bool = False
    tries: int = 0
    dialplan_status: str = ""
    """The dialplan's status after the upload (`finish`, `free`; a replay: whatever
    it is now, `busy` too), as /dial_wav answers it."""


@dataclass(frozen=True)
class SweepOutcome:
    expired_clients: list[str]
    freed_by_client: int
    freed_by_timeout: int


@dataclass(frozen=True)
class CallbackDue:
    task_id: int
    return_url: str
    tries: int


class StoreError(RuntimeError):
    """The database cannot be used (schema too new, file unreadable, ...)."""


class Store(abc.ABC):
    """The repository: every method is one transaction."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and apply pending schema migrations."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish queued work and disconnect."""

    # ---- 000: accounts and tasks
    @abc.abstractmethod
    async def upsert_accounts(self, accounts: Sequence[AccountIn], now: float) -> list[JSON]:
        """Add or update accounts; answer the whole pool as {host, name, pwd}."""

    @abc.abstractmethod
    async def create_task(
        self,
        phones: Sequence[str],
        return_url: str,
        now: float,
        finished: Mapping[str, tuple[str, JSON]] | None = None,
    ) -> JSON:
        """A task of `phones` (already de-duplicated): {task_id, dialplans, return_url}.

        `finished` maps phones that are finished at once, never handed out, to
        their (result, detail): numbers no call can carry. A task of only those is
        finished, and its callback due, at once."""

    @abc.abstractmethod
    async def recent_results(self, phones: Sequence[str], since: float) -> dict[str, JSON]:
        """The latest verdict on each of `phones` finished at `since` or later that says
        something of the number (not `failed`, `unknown`, nor itself reused): phone ->
        its dialplan (as in a task's `dialplans`)."""

    @abc.abstractmethod
    async def fleet(self, state: str, page: int, size: int) -> JSON:
        """The daemons (clients) in `state` ("active" or "expired"), last seen first, a
        page of them, each with its leased extensions and their latest /status:
        {clients: [...], totals: {...}} (totals over every client in that state)."""

    @abc.abstractmethod
    async def list_tasks(self, page: int, size: int) -> list[JSON]:
        """Tasks newest first, without their dialplans."""

    @abc.abstractmethod
    async def cancel_task(self, task_id: int, now: float) -> JSON | None:
        """(ext) Stop a task: its numbers not out on a line are finished now,
        `unknown` with `detail.evidence.kind` "cancelled"; those being dialled
        finish with their call. Answers `{task_id, cancelled, in_flight}`; None
        when there is no such task. A task left with nothing to finish is
        finished and its callback is due."""

    @abc.abstractmethod
    async def resend_callback(self, task_id: int) -> bool | None:
        """(ext) Deliver a finished task's callback again, from its first try (a
        receiver that was down past every try, or lost what it got): True when
        queued (or already on its way: left as it is), False when the task is not
        finished yet, None when there is none."""

    @abc.abstractmethod
    async def get_task(self, task_id: int) -> JSON | None:
        """One task with its dialplans and its callback state, or None."""

    # ---- 001: clients and leases
    @abc.abstractmethod
    async def create_client(self, client_id: str, now: float) -> None: ...

    @abc.abstractmethod
    async def client_states(self) -> dict[str, str]:
        """Every client id with its state ("active" or "expired")."""

    @abc.abstractmethod
    async def note_seen(self, seen: Mapping[str, float]) -> None:
        """Liveness heard meanwhile (client id -> when), kept in memory by the
        dispatcher: each active client's `last_seen` becomes at least that."""

    @abc.abstractmethod
    async def leave_client(self, client_id: str, now: float) -> tuple[int, int] | None:
        """The client says it is gone: as its expiry, at once. (accounts released,
        numbers freed); None when it is not an active client."""

    @abc.abstractmethod
    async def lease_accounts(self, client_id: str, count: int, now: float) -> list[JSON] | None:
        """The client's lease topped up to `count` accounts; None: client not active."""

    @abc.abstractmethod
    async def lease_dialplans(
        self, client_id: str, now: float, share: str = "none", extension: str | None = None
    ) -> list[JSON] | None:
        """One free number per free extension of the client (of `extension` alone when
        given); None: client not active.

        Free: no busy number on it, or its client reported it idle after the
        latest hand-out (docs/server.md). `share` (`leases.share`): "none" hands
        out the oldest free numbers first; "pusher" and "task" take them in turn
        from the groups of unfinished tasks (by return_url origin, or each task)."""

    @abc.abstractmethod
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
        """Extension state: (known, numbers). known: False: extension not leased to
        it; None: client not active.

        `next_share` (ext `next`; the `leases.share` to hand out with): in the same
        transaction, so no GET /dialplan in between takes the number, hand the
        extension numbers (numbers: [] when none, None when not asked):
        - with "idle", its next one by the free rule of `lease_dialplans`, and
          record the extension `during` it (the daemon need not say so);
        - with "during", numbers to hold while it dials `phone`: so many that the
          numbers handed to it after `phone` are `ahead` (LOOK_AHEAD_MAX at most;
          none if `phone` is not out on it: asked twice, none more), and
          only while free numbers are more than AHEAD_LINES times the lines leased
          (a list's end goes to lines that are free, not to lines that would hold
          it behind a call).
        """

    @abc.abstractmethod
    async def finish_dialplan(
        self, upload: Upload, max_tries: int, now: float, spacing: float = 0.0
    ) -> FinishOutcome:
        """Apply an upload's verdict to its dialplan; the upload is recorded whatever happens.

        A transient outcome short of `max_tries` frees the number for a hand-out
        no sooner than `spacing` × 2^(tries-1) seconds from `now`. Counts as
        liveness of an active uploader (an expired one stays expired)."""

    @abc.abstractmethod
    async def sweep(self, client_cutoff: float, number_cutoff: float, now: float) -> SweepOutcome:
        """Expire clients silent since before `client_cutoff`; free numbers leased before
        `number_cutoff`."""

    # ---- callbacks
    @abc.abstractmethod
    async def due_callbacks(self, now: float, limit: int) -> list[CallbackDue]: ...

    @abc.abstractmethod
    async def next_callback_at(self) -> float | None:
        """When the earliest pending delivery is due, or None."""

    @abc.abstractmethod
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
        """One delivery try: delivered, failed for good (next_at None) or retry at next_at."""


def open_store(database_url: str) -> Store:
    """The Store for a `database` URL of the config."""
    if database_url.startswith("sqlite:///"):
        from sipclient.server.sqlite import SqliteStore

        return SqliteStore(sqlite_path(database_url))
    raise ConfigError("database", "only sqlite:/// is implemented in this build")
