"""Leases: clients, the accounts and numbers they hold, and their reclaim on silence.

Every decision takes its time from an injected `clock` (epoch seconds), so a
test advances a number instead of sleeping. A client that has sent nothing
(heartbeat, status, or any other 001 call) for `leases.client_timeout`
seconds is expired: its accounts go back to the pool and its busy numbers to
`free`. Its later calls answer 404 so the daemon calls /notify again; only a
late /dial_wav is still taken (the number is finished if nobody finished it
meanwhile, refused with 409 otherwise). A number handed out longer than
`leases.number_timeout` ago is freed the same way even if its client lives.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

from sipclient.config import LeaseSettings, RetrySettings
from sipclient.logs import get_logger
from sipclient.server.errors import ApiError
from sipclient.server.store import (
    JSON,
    FinishOutcome,
    FinishStatus,
    Store,
    SweepOutcome,
    Upload,
    iso_local,
)

log = get_logger(__name__)

Clock = Callable[[], float]

ACTIVE = "active"
EXPIRED = "expired"


CLOCK_JUMP_S = 10.0
"""How much further the wall clock may run than the steady one between two sweeps
before the server counts it as a restart (`Dispatch._watch_clock`). Well above a
slewing NTP's drift, well below `leases.client_timeout`."""


class FakeClock:
    """A settable clock for tests and benchmarks: `advance(s)` moves time on."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Dispatch:
    """The 001 API's state machine over a `Store`."""

    def __init__(
        self,
        store: Store,
        leases: LeaseSettings,
        retries: RetrySettings,
        clock: Clock = time.time,
        steady: Clock | None = None,
    ) -> None:
        self.store = store
        self.leases = leases
        self.retries = retries
        self.clock = clock
        # Cache of client states: the server is the only writer of the clients,
        # so an unknown id is refused without a trip to the database.
        self._clients: dict[str, str] = {}
        # Heartbeats not yet written (client id -> when): `note_heard` writes them,
        # before a sweep looks for silent clients and before the fleet is listed.
        self._heard: dict[str, float] = {}
        self.health: dict[str, JSON] = {}
        """(ext) What each active client said of itself at its latest heartbeat."""
        self._started_at = clock()
        """When this server started, or its clock last jumped: silence before it is
        not the clients' (`sweep`)."""
        self.steady = steady
        """A clock that only runs forward with time (time.monotonic), read next to
        `clock` at each sweep to see the wall clock jump; None: not watched."""
        self._last_read: tuple[float, float] | None = None  # (clock, steady) at the last sweep

    async def load(self) -> None:
        """Read the known clients (after a restart)."""
        self._clients = await self.store.client_states()

    def _check(self, client_id: str, *, allow_expired: bool = False) -> None:
        state = self._clients.get(client_id)
        if state is None:
            raise ApiError(404, f"clientId: unknown client {client_id!r}; call /notify")
        if state == EXPIRED and not allow_expired:
            raise ApiError(404, f"clientId: client {client_id!r} expired; call /notify again")

    def _expired(self, client_id: str) -> None:
        """Mark an id expired here; what its heartbeats said of it goes with it."""
        self._clients[client_id] = EXPIRED
        self.health.pop(client_id, None)

    def _gone(self, client_id: str) -> ApiError:
        self._expired(client_id)
        return ApiError(404, f"clientId: client {client_id!r} expired; call /notify again")

    async def notify(self) -> str:
        """Register a new client; answer its id."""
        client_id = uuid.uuid4().hex
        await self.store.create_client(client_id, self.clock())
        self._clients[client_id] = ACTIVE
        log.info("client registered", clientId=client_id)
        return client_id

    async def heartbeat(self, client_id: str, health: JSON | None = None) -> int:
        """Liveness; answers the server's time in epoch ms. `health` (ext): what the
        daemon says of itself (`payloads.parse_health`), shown by the fleet
        listing; kept in memory only (a restart shows none until the next beat).

        Kept in memory until the next sweep (or fleet listing) writes it; the
        cache of client states says whether the id is active. A heartbeat was a
        write job of its own and waited behind whatever the one writer was
        doing: 0.75-1.6 s behind a 100,000-number push. A restart loses at most
        one sweep interval of them, far inside `leases.client_timeout`.
        """
        self._check(client_id)
        now = self.clock()
        self._heard[client_id] = now
        if health is not None:
            self.health[client_id] = {**health, "at": iso_local(now)}
        return int(now * 1000)

    async def leave(self, client_id: str) -> tuple[int, int]:
        """(ext) The client stops (a daemon's SIGTERM with its spool empty): its lease
        ends now, not `leases.client_timeout` later. Its accounts go back to the pool
        at once, so the daemon started in its place (a restart, an upgrade) has lines
        at once instead of after the timeout, and its busy numbers (none but the
        calls its stop cut short) are handed out again."""
        self._check(client_id)
        out = await self.store.leave_client(client_id, self.clock())
        if out is None:
            raise self._gone(client_id)
        self._expired(client_id)
        self._heard.pop(client_id, None)
        log.info("client left", clientId=client_id, accounts=out[0], numbers=out[1])
        return out

    async def lease_accounts(self, client_id: str, count: int) -> list[JSON]:
        self._check(client_id)
        accounts = await self.store.lease_accounts(client_id, count, self.clock())
        if accounts is None:
            raise self._gone(client_id)
        return accounts

    async def lease_dialplans(self, client_id: str) -> list[JSON]:
        """GET /dialplan: a number for each free extension of the client."""
        self._check(client_id)
        plans = await self.store.lease_dialplans(client_id, self.clock(), self.leases.share)
        if plans is None:
            raise self._gone(client_id)
        return self._with_lease(plans)

    def _with_lease(self, plans: list[JSON]) -> list[JSON]:
        # (ext) how long the number is the client's: past it the sweep hands it out
        # again, so a daemon holding it undialled lets it go well before (its
        # dialplan.hold_max, capped at half of this)
        lease = self.leases.number_timeout
        return [dict(plan, leaseSeconds=lease) for plan in plans]

    async def record_status(
        self, client_id: str, status: str, extension: str, phone: str, want_next: int = 0
    ) -> tuple[int, list[JSON] | None]:
        """GET /status: (epoch ms, the numbers `next` handed: None when not asked).

        (ext) `want_next`: with "idle", the line's next number, the extension then
        recorded `during` it; with "during", numbers to hold while it dials `phone`,
        so that it holds that many (`Store.record_status`)."""
        self._check(client_id)
        now = self.clock()
        asks = status == "idle" or (status == "during" and phone != "")
        share = self.leases.share if want_next and asks else None
        known, plans = await self.store.record_status(
            client_id, status, extension, phone, now, share, max(1, want_next)
        )
        if known is None:
            raise self._gone(client_id)
        if not known:
            raise ApiError(
                404, f"extensionNum: {extension!r} is not leased to client {client_id!r}"
            )
        return int(now * 1000), None if plans is None else self._with_lease(plans)

    def check_uploader(self, client_id: str) -> None:
        """An upload is taken from an expired client too (a late /dial_wav)."""
        self._check(client_id, allow_expired=True)

    async def finish(self, upload: Upload) -> FinishOutcome:
        """Apply an upload; raise the refusals (404 unknown number, 409 finished)."""
        self.check_uploader(upload.client_id)
        out = await self.store.finish_dialplan(
            upload, self.retries.max_tries, self.clock(), self.retries.spacing
        )
        if out.status is FinishStatus.NOT_FOUND:
            what = (
                f"dialplanId: no dialplan {upload.dialplan_id}"
                if upload.dialplan_id is not None
                else f"phone: no dialplan for {upload.phone!r} was handed to this client"
            )
            raise ApiError(404, what)
        if out.status is FinishStatus.MISMATCH:
            raise ApiError(409, f"phone: dialplan {upload.dialplan_id} is not for {upload.phone!r}")
        if out.status is FinishStatus.ALREADY_FINISHED:
            raise ApiError(
                409, f"phone: dialplan {out.dialplan_id} ({upload.phone!r}) is already finished"
            )
        return out

    async def note_heard(self) -> None:
        """Write the heartbeats heard since the last time (`heartbeat`)."""
        heard, self._heard = self._heard, {}
        await self.store.note_seen(heard)

    async def sweep(self) -> SweepOutcome:
        """Reclaim the leases of silent clients and of numbers held too long.

        Only time this server was up counts: a client is silent for
        `leases.client_timeout` (a number held for `leases.number_timeout`) at the
        earliest that long after the server started. While it was down no daemon
        could call it, and its calls in flight go on: expired at the restart's
        first sweep, their numbers went to other lines (dialled twice) and every
        daemon had to start over.
        """
        await self.note_heard()
        now = self.clock()
        self._watch_clock(now)
        up = now - self._started_at
        never = float("-inf")
        client_cutoff = (
            now - self.leases.client_timeout if up >= self.leases.client_timeout else never
        )
        number_cutoff = (
            now - self.leases.number_timeout if up >= self.leases.number_timeout else never
        )
        out = await self.store.sweep(client_cutoff, number_cutoff, now)
        for cid in out.expired_clients:
            self._expired(cid)
        if out.expired_clients or out.freed_by_timeout:
            log.info(
                "leases reclaimed",
                clients=out.expired_clients,
                numbers_of_clients=out.freed_by_client,
                numbers_timed_out=out.freed_by_timeout,
            )
        return out

    def _watch_clock(self, now: float) -> None:
        """A wall clock that moved on CLOCK_JUMP_S more than the steady one since the
        last sweep counts as a restart (`_started_at`).

        An NTP step after a boot with a wrong RTC, or a VM suspended and resumed
        (live migration, a host's snapshot: CLOCK_MONOTONIC does not count the
        suspension), moves the wall clock on at once: every client then looked
        silent past `leases.client_timeout` at the next sweep, and every number
        in flight went out again to other lines, dialled twice. While the server
        was suspended nobody could call it, as while it was down.
        """
        if self.steady is None:
            return
        steady = self.steady()
        last, self._last_read = self._last_read, (now, steady)
        if last is None:
            return
        jump = (now - last[0]) - (steady - last[1])
        if jump > CLOCK_JUMP_S:
            self._started_at = now
            log.warning("clock jumped: lease timeouts run again from now", seconds=round(jump, 1))

    async def run_sweeper(self) -> None:
        """Sweep every `leases.sweep_interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.leases.sweep_interval)
            try:
                await self.sweep()
            except Exception:
                log.exception("lease sweep failed")
