"""The dialing daemon: `sipclient run --config FILE` (PROTOCOL.md 001, operating contract).

One `Daemon` supervises, on one asyncio loop:

- the session with the server: GET /notify -> clientId (retried with back-off
  while the server is down), GET /accounts?threadsNum=`threads`, and the
  start-over when the server says it does not know us (`UnknownClient` from
  any call): a new /notify, a new lease, lines kept where the account is the
  same, calls in flight left to finish (their uploads go out under the new id,
  since the uploader asks for the current id at each try);
- one `Line` per leased account: a registered extension (its SIP side is a
  `LineBackend`, see below) and at most one call at a time;
- the dial loop: GET /dialplan, each number onto its line; an empty plan backs
  off from `dialplan.poll_min` doubling to `dialplan.poll_max`; a number for a
  line that is not registered (or still busy) is kept on that line and dialled
  when it can be, and reported (log + /status unregistered), never dropped;
- per call: /status during -> the call (`LineBackend.dial`) -> /status call
  when answered -> /status idle (the line may take its next number) while the
  WAV and the /dial_wav fields go to the spool (atomic, fsync'ed) -> the
  uploader is kicked; the server keeps the number busy until its upload is in;
  a call that finds no free port in `rtp.ports` was never dialled: its number
  goes back to the head of its line and is tried again after a back-off
  (PORT_WAIT_MIN..MAX), the line staying "during" meanwhile, nothing uploaded;
  a spool that cannot be written holds the records (in memory and the fallback
  spool) and stops all dialling until a write works again (agent/keeping.py,
  `RecordKeeper`); per PBX, a trunk
  failing every call pauses its lines (`agent.trunk`) and a run of identical
  bare rejections (a PBX with no route out) is held back and dialled again
  once a call through it rings (`agent.route`, `Daemon._route_outcome`);
- the heartbeat (POST /heartbeat every `heartbeat.interval`), the uploader and
  the status reporter of `control.py`, systemd notifications (READY=1 after
  the first registrations, WATCHDOG=1 from the loop, STATUS= lines, STOPPING=1).

Signals: SIGTERM/SIGINT stop taking numbers, cancel the calls in flight, wait
(bounded) for their uploads, unregister and exit 0 (what could not be uploaded
stays in the spool and is replayed at the next start); SIGHUP reloads the
template library and the log level from the config file.

The SIP/media/classifier side of a line is behind the `LineBackend` protocol so
the control logic stays readable and testable on its own; `SipLine`
(agent/siplines.py) joins the user agent, the call, the RTP receiver, the
recorder and the streaming classifier.

CPU choices (docs/daemon.md has the figures): a call task sleeps until the
call ends, the daemon stops or the stuck limit passes; answers come through
`Call`'s `on_answered` hook and the classifier's no-RTP clock runs on a timer
only before the first audio (no 100 ms poll per call). Without
`recordings.keep` the WAV is built in memory and the spool writes the only
file. STATUS= goes out at most once a second. The media modules (aiortc's
import is ~350 ms) are imported at start, off the loop, not by the first call.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import math
import os
import signal
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import structlog

from sipclient.agent.control import (
    Account,
    ControlClient,
    ControlError,
    DialplanItem,
    ServerUnavailable,
    StatusReporter,
    Unauthorized,
    UnknownClient,
    Uploader,
)
from sipclient.agent.heap import HeapPolicy
from sipclient.agent.housekeeping import run_housekeeping
from sipclient.agent.keeping import CallRecord, HeldRecord, RecordKeeper, fallback_spool
from sipclient.agent.leftovers import CallJournal, end_leftovers
from sipclient.agent.library_sync import LibraryMirror, LibraryUser, mirror_folder
from sipclient.agent.route import Canary, RejectionKey, RouteWatch, Step
from sipclient.agent.siplines import CallHooks, SipSide, longest_call_s
from sipclient.agent.spool import Spool, SpoolBusy, SpoolEntry, claim, fallback_folder
from sipclient.agent.trunk import TrunkGuard, TrunkState
from sipclient.config import ConfigError, DaemonConfig, load_config
from sipclient.logs import configure, get_logger
from sipclient.media.ports import PortsExhausted
from sipclient.phone import not_dialable

log = get_logger(__name__)

UPLOAD_WAIT_ON_STOP = 10.0
"""Seconds SIGTERM waits for the uploads of the calls it cancelled."""

READY_AFTER = 15.0
"""Seconds after the session started when READY=1 goes out even if lines still hang."""

UPLOADS_BEHIND_S = 60.0
"""A record waiting this long for the server raises `uploads_behind` (STATUS= "uploads
N s behind", the heartbeat's alerts): the server is away, or the uploads cannot keep
up with the calls (`server.uploads_in_flight` against the round trip to the server).
A number whose record waits past its lease may be handed to another line."""

CALL_FINISH_AT_STOP = 5.0
"""Seconds SIGTERM lets the calls in flight reach their verdict before it cancels
them: a call cut short before anything was known of its number is let go and
dialled again (`_let_go_at_stop`), a second ring for that subscriber, and most
calls know within 3 s (an announcement, a tone, a 180, the no-RTP wait). Until
session 17 they were cancelled at once: 13 numbers dialled twice over three
SIGTERMs at 16 lines in a soak (seed 30)."""

CALL_STOP_WAIT = 10.0
"""Seconds SIGTERM waits for cancelled calls to end."""

LEAVE_WAIT_ON_STOP = 2.0
"""Seconds SIGTERM waits for the server to take our /leave (`Daemon._leave`)."""

UNREGISTER_WAIT_ON_STOP = 3.0
"""Seconds SIGTERM waits for the lines' un-REGISTERs (all at once) to be answered."""

STATUS_EVERY = 1.0
"""Seconds between two STATUS= notifications at most (see `Daemon._set_status`)."""

PORT_WAIT_MIN = 0.2
PORT_WAIT_MAX = 5.0
"""A number that found no free RTP port is tried again on its line after
PORT_WAIT_MIN seconds, doubling per failure in a row up to PORT_WAIT_MAX (one of
our calls ending frees a port in well under a second; other programs holding
the ports may take longer, and the log says which)."""

HELD_IDLE_S = 1.0
"""Seconds with no call up, no number waiting and the server handing out nothing
after which the route guard's held rejections are uploaded (`agent.route`,
`Daemon._release_held_when_done`): the list is done."""

UNSENT_FORGET_S = 3600.0
"""How long a record waiting for the server keeps its number from being dialled
again (`_record_unsent`) at most: a safety net, each path that sends a record says so."""

PBX_FAULT_TRIES_MAX = 3
"""How often one number may meet a PBX fault (`CallRecord.pbx_fault`: no answer
at all to its INVITE, or our credentials refused) before its record (`failed`)
is uploaded. Until then each such call is not the number's outcome but the
PBX's or ours: the number goes back to the head of its line, and the line asks
the registrar again (`Daemon._recheck`) before it dials anything more."""

OWN_FAULT_AFTER = 3
"""The daemon's own breaker (`Daemon._own_outcome`, a `TrunkGuard` with the
trunk's pauses, `trunk.pause_min` doubling up to `trunk.pause_max`): this many
calls in a row that fail in the daemon itself (an exception in our code: a bug,
a broken install, a library the unit's sandbox refuses) pause all dialling, then
one call probes. Until session 12 each such call was uploaded as a local
failure, judged `unknown` for good: a daemon that could not record (the
MemoryError of a soundfile callback under the unit's MemoryDenyWriteExecute)
turned a whole list into `unknown`, and no alert said so."""
OWN_FAIL_TRIES_MAX = 3
"""How often one number may fail in the daemon while other calls go through (a
number that trips a bug of ours) before its local-failure record is uploaded.
A failure that finds the daemon's breaker open, or opens it, is not counted
against the number: the daemon is broken, not the number."""
OWN_RETRY_S = 1.0
"""A number kept back after our own failure waits this long on its line, so the
other lines' calls tell a number that trips a bug from a daemon that is broken."""

PBX_FAULTS = {
    "no_response": "no answer at all to the INVITE (Timer B): the PBX is hung or gone",
    "credentials": "the PBX refused our credentials for the INVITE (401/407)",
}
"""`CallRecord.pbx_fault` values and what they tell the operator."""

LAG_EVERY = 0.1
"""How often the event loop's lag is measured (`Daemon._lag_monitor`)."""
SESSION_RESTART_MIN = 1.0
SESSION_RESTART_MAX = 30.0
"""A failed dial loop or heartbeat starts again after this pause, doubling (`_run_session`)."""
HEARTBEAT_REFUSED_MAX = 3
"""Heartbeats in a row answered with a non-200 `code` (not 401) before the daemon
takes it for an unknown clientId and calls /notify again (`Daemon._heartbeat`)."""
LEASE_TRUST_BEATS = 2.0
"""A number waiting on a line starts only while the server answered, within this
many heartbeat intervals, a request it answers only to a clientId it still knows
(`ControlClient.lease_alive`; `Daemon._free`). Past its `leases.client_timeout` of
silence (the box frozen, cut off, the server down) the server expires the id and
hands its numbers out again: started then, the number was dialled twice (soak
seed 35 of session 19: a 14 s SIGSTOP, 12 numbers held by the look-ahead). Never
longer than half the client_timeout the server's /notify states (ext)."""
LAG_WARN = 0.1
"""Smoothed lag above which STATUS= and the log say the daemon is overloaded."""
LAG_WARN_EVERY = 30.0
"""At most one `loop_lagging` log line this often."""
LAG_SHOWN_S = 2.0
"""STATUS= and the heartbeat show the highest smoothed lag of this many last
seconds (`Daemon.lag_shown`). A loop swamped in bursts swings its smoothed lag
across LAG_WARN several times a second; shown as it stood at the moment of a
STATUS= update (at most one a second), an overload could be missed by every
update (CI saw it: the one update after the warning fell on a dip)."""
MEMORY_MIN_UPTIME_S = 600.0
"""No memory restart (`memory.restart_above_mb`) before this much uptime: a cap
below what the daemon needs costs a restart every 10 minutes, not a loop."""
MEMORY_CHECK_S = 30.0
"""How often the resident memory is read (`Daemon._memory_watch`)."""
MEMORY_DRAIN_MAX_S = 60.0
"""A memory restart first lets the calls in flight end by themselves (no new call
starts), this long at most, then stops: a call the stop cut short would be dialled
again, and its number rung twice, for no urgent reason."""
EXIT_MEMORY_RESTART = 75
"""The exit code after a memory restart (EX_TEMPFAIL): a graceful stop, for the
service manager to start the daemon again."""
# ------------------------------------------------------------------ results


class LineBackend(Protocol):
    """The SIP side of one extension, as the control loop sees it."""

    @property
    def registered(self) -> bool:
        """Whether the extension is registered now."""
        ...

    async def start(self, on_change: Callable[[bool, str], None]) -> None:
        """Begin registering; `on_change(registered, reason)` on every change."""
        ...

    async def dial(
        self, item: DialplanItem, on_answered: CallHooks, cancel: asyncio.Event
    ) -> CallRecord:
        """Dial one number to its end; set `cancel` to hang up early. Never raises
        for a call outcome (busy, 404, timeout...): that is in the record."""
        ...

    async def recheck(self) -> bool:
        """REGISTER again now; True when the registrar granted it. A refusal or no
        answer also comes through `on_change(False, reason)`."""
        ...

    async def stop(self) -> None:
        """Unregister and release the extension's sockets."""
        ...


BackendFactory = Callable[[Account], LineBackend]


# -------------------------------------------------------------------- lines


@dataclass
class Line:
    """One leased extension and its call, if any."""

    account: Account
    backend: LineBackend
    registered: bool = False
    reason: str = ""
    current: DialplanItem | None = None
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    pending: list[DialplanItem] = field(default_factory=list)
    known: bool = False
    """A registration outcome came (until then the server hears nothing of the line)."""
    retired: bool = False
    """No longer leased to us: stop once the call in flight is done."""
    hold_until: float = 0.0
    """Loop time before which the line starts no call: its number waits for an RTP
    port, or a moment after it failed in our own code (OWN_RETRY_S)."""
    port_waits: int = 0
    """Calls in a row that found no free RTP port (the back-off grows with it)."""
    fault_tries: dict[tuple[str, str], int] = field(default_factory=dict)
    """Per number (dialplan id, phone): its calls that met a PBX fault."""
    rechecking: bool = False
    """A call met a PBX fault: the line dials nothing until the registrar answers."""
    probing: bool = False
    """Its call in flight is its trunk's probe after a pause (`TrunkGuard`)."""
    own_probe: bool = False
    """Its call in flight is the daemon's probe after its own failures paused
    dialling (`Daemon._own_failure`)."""
    trunk: TrunkGuard | None = None
    """The breaker of the PBX it dials through (`Daemon._trunk`), shared by lines."""

    @property
    def extension(self) -> str:
        return self.account.extension

    @property
    def busy(self) -> bool:
        return self.current is not None


Held = tuple[Line, DialplanItem, CallRecord]
"""A finished call the route guard holds back (`Daemon._route_outcome`)."""


def _bare_key(record: CallRecord) -> RejectionKey | None:
    """What the PBX said when `record` is a bare rejection (`agent.route`), else None.

    Bare: a final >= 300 with no 180/183, no audio, not answered, not our CANCEL,
    not transient (the trunk breaker's), not a PBX fault (`_pbx_fault`'s)."""
    f = record.fields
    code = f.get("sipCode")
    if not isinstance(code, int) or code < 300 or record.transient or record.pbx_fault:
        return None
    if _proves_route(record) or f.get("cancelledByUs"):
        return None
    cause = f.get("q850Cause")
    return (code, cause if isinstance(cause, int) else None)


def _proves_route(record: CallRecord) -> bool:
    """The call went out through the PBX: it rang, played audio or was answered."""
    f = record.fields
    return bool(f.get("answered") or f.get("ringing") or f.get("earlyMedia") or f.get("mediaMs"))


def _same_account(a: Account, b: Account) -> bool:
    return (a.extension, a.password, a.host, a.transport, a.domain) == (
        b.extension,
        b.password,
        b.host,
        b.transport,
        b.domain,
    )


def _fmt_int(n: int) -> str:
    return f"{n:,}"


# ------------------------------------------------------------------ sd_notify


class Notifier(Protocol):
    def __call__(self, *lines: str) -> bool: ...


def _notifier() -> Notifier:
    """`sipclient.sdnotify.notify` (one datagram of newline-separated states)."""
    from sipclient import sdnotify

    def notify(*lines: str) -> bool:
        return sdnotify.notify("\n".join(lines))

    return notify


# -------------------------------------------------------------------- daemon


class Daemon:
    """The control loop; `await run()` until `stop()`; returns the exit code."""

    def __init__(
        self,
        config: DaemonConfig,
        backend_factory: BackendFactory,
        *,
        client: ControlClient | None = None,
        notify: Notifier | None = None,
    ) -> None:
        self.config = config
        self.backend_factory = backend_factory
        self.client = client or ControlClient(
            config.server.url, timeout=config.server.timeout, token=config.server.token
        )
        self.client.lease_trust_s = LEASE_TRUST_BEATS * config.heartbeat.interval
        self.client.on_lease_back = self._wake_dialer_soon
        self.spool = Spool(config.spool.dir)
        self.client_id: str | None = None
        self.lines: dict[str, Line] = {}
        self.notify = notify or _notifier()
        self.uploader = Uploader(
            self.client,
            self.spool,
            lambda: self.client_id,
            retry_min=0.2,
            retry_max=10.0,
            concurrency=config.server.uploads_in_flight,
        )
        # A line's next number waits for its "idle": at a hundred lines two states a
        # call arrive ~80 a second, and the server commits concurrent ones together.
        self.status = StatusReporter(
            self.client, lambda: self.client_id, retry_min=0.2, retry_max=10.0, concurrency=32
        )
        self.uploader.on_unknown_client = self._unknown_client
        self.status.on_unknown_client = self._unknown_client
        self.decided = 0
        self.calls_started = 0
        self.port_waits = 0
        """Calls put back because no RTP port was free (`_wait_for_port`)."""
        self.pbx_faults = 0
        """Calls that met a PBX fault (`_pbx_fault`)."""
        self.let_go = 0
        """Numbers held past `dialplan.hold_max` and left to the server (`_let_go_stale`)."""
        self.started_held = 0
        """Calls started the moment the line's call before ended, from the number it
        held through that call (the look-ahead): said at the stop (`stopped`)."""
        self._short_lease: float | None = None
        """The shortest `leaseSeconds` shorter than a call can last, since the last
        lease long enough (`_check_lease`); None: no such lease."""
        self._trunks: dict[tuple[str, str], TrunkGuard] = {}
        t = config.trunk
        self._own = TrunkGuard(OWN_FAULT_AFTER, t.pause_min, max(t.pause_min, t.pause_max))
        """The daemon's own breaker: calls failing in our code pause dialling."""
        self._own_error = ""
        """The last of our own failures, shown while `_own` is open."""
        self.own_failures = 0
        """Calls that failed in the daemon itself (not a number's outcome)."""
        """The breaker of each PBX the lines dial through (`_trunk`)."""
        self._routes: dict[tuple[str, str], RouteWatch[Held]] = {}
        """The route guard of each PBX (`_route`), keyed as `_trunks`."""
        self._route_timer: asyncio.TimerHandle | None = None
        self._canaries_wanted: list[RouteWatch[Held]] = []
        """Route guards waiting for a free line to dial `trunk.canary` on."""
        self._last_call_end = 0.0
        """Loop time the latest call ended (`_release_held_when_done`)."""
        self.redials = 0
        """Numbers put back on their line by a suspect route (`_redial`)."""
        self._next_start = 0.0
        """Loop time before which no call starts (`dialplan.max_cps`, `_start_pending`)."""
        self._pace_timer: asyncio.TimerHandle | None = None
        self._rechecks: set[asyncio.Task[None]] = set()
        self._orphans: dict[str, list[DialplanItem]] = {}
        """Numbers of a dropped line, for the line that replaces it (`_add_line`)."""
        self._leased: set[str] = set()
        """The extensions of the latest lease (`_adopt_lines`)."""
        self._stopping = asyncio.Event()
        self._renotify = asyncio.Event()
        self._wake_dialer = asyncio.Event()
        self.keeper = RecordKeeper(
            self.spool,
            fallback_spool(config),
            self.uploader,
            self.client,
            lambda: self.client_id,
            keep_wavs=config.recordings.keep,
            count=self._count_decided,
            on_change=self._set_status,
            on_writable=self._wake_dialer.set,
            on_sent=self._record_sent,
        )
        """The finished calls' records into the spool, or held while it fails."""
        self._unsent: dict[tuple[str, str], float] = {}
        """(dialplanId, phone) of each record of this run the server has not taken
        yet (`_spool` until the uploader or the keeper says), when it was made: that
        number handed out again meanwhile is not dialled again (`_take`)."""
        self._ready_sent = False
        self._adopting = False
        self._tasks: list[asyncio.Task[Any]] = []
        self._call_tasks: set[asyncio.Task[None]] = set()
        self._on_reload: list[Callable[[], None]] = []
        self._status_timer: asyncio.TimerHandle | None = None
        self.library_user: LibraryUser | None = None
        """Who uses the template library (`SipSide`): with `classify.sync`, the library
        the server offers is mirrored for it (`_library_offered`)."""
        self._mirror = (
            LibraryMirror(mirror_folder(config), config.classify.mirror_max_mb)
            if config.classify.sync
            else None
        )
        self._syncing: asyncio.Task[None] | None = None
        self._library_behind = ""
        """Why the library the server offers is not in use (its last mirroring failed)."""
        self.exit_code = 0
        """What `run` returns: 0 after a stop, EXIT_MEMORY_RESTART after a memory restart."""
        self.loop_lag = 0.0
        """The event loop's lag, smoothed (seconds; `_lag_monitor`)."""
        self._lag_recent: collections.deque[float] = collections.deque(
            maxlen=round(LAG_SHOWN_S / LAG_EVERY)
        )
        self._lag_warned = float("-inf")
        self._status_sent = float("-inf")
        # The server frees an extension for its next number once the line reported
        # "idle" after its latest hand-out (or, failing that, once the upload is in):
        # ask for numbers when either went in, not before (docs/daemon.md).
        self.uploader.on_uploaded = self._uploaded
        self.uploader.on_refused = lambda entry: self._record_sent(entry.fields)
        self.status.on_sent = self._status_sent_to_server
        self.status.on_numbers = self._numbers_handed
        self.status.may_hold = self._may_hold

    # ---------------------------------------------------------------- public

    def stop(self) -> None:
        """Stop taking numbers and shut down (SIGTERM/SIGINT)."""
        if not self._stopping.is_set():
            log.info("stopping")
            self._stopping.set()
            self._wake_dialer.set()

    def on_reload(self, fn: Callable[[], None]) -> None:
        """Register something to redo on SIGHUP."""
        self._on_reload.append(fn)

    def reload(self) -> None:
        """SIGHUP: run the reload hooks (template library, log level)."""
        for fn in self._on_reload:
            try:
                fn()
            except Exception as exc:  # a bad reload must not kill the daemon
                log.error("reload_failed", error=f"{type(exc).__name__}: {exc}")
        log.info("reloaded")

    @property
    def in_call(self) -> int:
        return sum(1 for line in self.lines.values() if line.busy)

    @property
    def registered(self) -> int:
        return sum(1 for line in self.lines.values() if line.registered and not line.retired)

    def status_line(self, backlog: tuple[int, float | None] | None = None) -> str:
        """The systemd STATUS= text, e.g. "24/24 registered, 18 in call, 1,204 decided"."""
        total = sum(1 for line in self.lines.values() if not line.retired)
        spooled, oldest = self.spool.backlog() if backlog is None else backlog
        return (
            f"{self.registered}/{total} registered, {self.in_call} in call, "
            f"{_fmt_int(self.decided)} decided"
            + (f", {spooled} spooled" if spooled else "")
            + "".join(f", {text}" for _code, text in self._conditions(oldest) if text)
        )

    def _conditions(self, oldest_spooled: float | None = None) -> list[tuple[str, str]]:
        """(alert code, STATUS= text) of each state an operator must act on, as the
        heartbeat (`health`) and STATUS= (`status_line`) tell it. `oldest_spooled`:
        when the oldest record waiting for the server was made (`Spool.backlog`)."""
        out: list[tuple[str, str]] = []
        if oldest_spooled is not None:
            behind = time.time() - oldest_spooled
            if behind >= UPLOADS_BEHIND_S:
                out.append(("uploads_behind", f"uploads {round(behind)} s behind"))
        if self.registered < sum(1 for line in self.lines.values() if not line.retired):
            out.append(("lines_unregistered", ""))  # STATUS= counts them already
        waiting = sum(1 for line in self.lines.values() if line.port_waits and line.pending)
        if waiting:
            out.append(("rtp_ports_short", f"{waiting} waiting for an RTP port"))
        rechecking = sum(1 for line in self.lines.values() if line.rechecking)
        if rechecking:
            out.append(("pbx_fault", f"{rechecking} re-registering after a PBX fault"))
        trunk = self._trunks_status()
        if trunk:
            out.append(trunk)
        if self.spool_failing:
            held = len(self._unspooled)
            out.append(("spool_unwritable", f"spool unwritable ({held} held): not dialling"))
        if self._own.state is not TrunkState.CLOSED:
            left = self._own.seconds_left(asyncio.get_running_loop().time())
            when = f"{round(left)} s left" if left else "probing"
            out.append(("calls_failing", f"our calls failing ({self._own_error}): paused, {when}"))
        if self.draining:
            out.append(("memory_restart", "restarting: memory past its limit"))
        if self._library_behind:
            out.append(("library_behind", f"templates not the server's ({self._library_behind})"))
        if self._short_lease is not None:
            longest = longest_call_s(self.config)
            out.append(("short_lease", f"lease {self._short_lease:g} s < a call's {longest:g} s"))
        lag = self.lag_shown
        if lag > LAG_WARN:
            out.append(("loop_lagging", f"loop {round(lag * 1000)} ms late"))
        return out

    @property
    def draining(self) -> bool:
        """A memory restart is due: no call starts, the ones in flight end first."""
        return self.exit_code == EXIT_MEMORY_RESTART

    @property
    def lag_shown(self) -> float:
        """The loop's lag as the operator sees it: the highest smoothed lag of the
        last LAG_SHOWN_S seconds (seconds)."""
        return max(self._lag_recent, default=self.loop_lag)

    def health(self) -> dict[str, Any]:
        """What each heartbeat tells the server of us (ext; its fleet listing shows
        it): the STATUS= text, the counts, and the alert code of each state an
        operator of many boxes must act on (`_conditions`), so one query finds the
        box whose PBX lost its route or whose loop cannot keep up."""
        backlog = self.spool.backlog()
        return {
            "summary": self.status_line(backlog),
            "alerts": [code for code, _text in self._conditions(backlog[1])],
            "decided": self.decided,
            "spooled": backlog[0],
        }

    async def run(self) -> int:
        """The whole life of the daemon; 0 after a clean stop, EXIT_MEMORY_RESTART (75)
        after a memory restart (`_memory_watch`)."""
        await self.keeper.adopt_fallback()  # records an earlier run kept in the fallback
        self._remember_spooled()  # before the uploader can take any
        self.uploader.kick()  # replay what an earlier run left in the spool
        self._tasks = [
            asyncio.create_task(self.uploader.run(), name="uploader"),
            asyncio.create_task(self.status.run(), name="status"),
            asyncio.create_task(self._watchdog(), name="watchdog"),
            asyncio.create_task(self._lag_monitor(), name="lag"),
            asyncio.create_task(self._memory_watch(), name="memory"),
            asyncio.create_task(
                run_housekeeping(
                    self.config.recordings.dir,
                    self.config.recordings.keep_days if self.config.recordings.keep else 0,
                    self.config.spool.dir,
                ),
                name="housekeeping",
            ),
        ]
        try:
            while not self._stopping.is_set():
                if not await self._start_session():
                    break
                await self._run_session()
                if self._renotify.is_set() and not self._stopping.is_set():
                    log.warning("unknown_client", old_client_id=self.client_id)
                    self._forget_old_lease()
                    self.client_id = None
        finally:
            await self._shutdown()
        return self.exit_code

    # --------------------------------------------------------------- session

    async def _run_session(self) -> None:
        """The dial loop and the heartbeat of one clientId, until a stop, an unknown
        clientId, or a task that ends by itself (no clientId: start over).

        A task that fails (a bug) is logged and started again after a pause
        (doubling from SESSION_RESTART_MIN to SESSION_RESTART_MAX), in the same
        session. Until session 8 such a failure ended the session: the daemon
        called /notify again, its lease stayed with the old id until the server's
        client_timeout, and its lines stood idle meanwhile.
        """
        makers = {"dial": self._dial_loop, "heartbeat": self._heartbeat}
        tasks = {name: asyncio.create_task(make(), name=name) for name, make in makers.items()}
        failures = dict.fromkeys(makers, 0)
        stop_w = asyncio.create_task(self._stopping.wait())
        renot_w = asyncio.create_task(self._renotify.wait())
        try:
            while True:
                done, _ = await asyncio.wait(
                    [*tasks.values(), stop_w, renot_w], return_when=asyncio.FIRST_COMPLETED
                )
                if stop_w in done or renot_w in done:
                    return
                failed = [
                    n
                    for n, t in tasks.items()
                    if t.done() and not t.cancelled() and t.exception() is not None
                ]
                if not failed:
                    return  # ended by itself: the session is over
                for name in failed:
                    pause = min(SESSION_RESTART_MIN * 2 ** failures[name], SESSION_RESTART_MAX)
                    failures[name] += 1
                    log.error(
                        "session_task_failed",
                        task=name,
                        error=repr(tasks[name].exception()),
                        restart_in=pause,
                        hint="a bug: the task starts again, the clientId and lease are kept",
                    )
                    if await self._sleep_or_stop(pause):
                        return
                    tasks[name] = asyncio.create_task(makers[name](), name=name)
        finally:
            for t in (*tasks.values(), stop_w, renot_w):
                t.cancel()
            await asyncio.gather(*tasks.values(), stop_w, renot_w, return_exceptions=True)

    def _unknown_client(self) -> None:
        if self.client_id is not None:
            self._renotify.set()

    def _forget_old_lease(self) -> None:
        """The server no longer knows our clientId: the numbers it handed to that id
        and still waiting on our lines (undialled) are not ours any more.

        It forgets an id it expired (we were frozen or cut off past
        `leases.client_timeout`) or lost (a fresh database), and the numbers of that
        lease go back to its pool: handed out again, maybe to another of our own
        lines. Kept and dialled after the start-over they were dialled twice, a
        live subscriber rung twice and the second upload refused (soak seed 8 of
        session 11: one line dialled its number from the old lease while the new
        lease had given it to another). Calls in flight finish and upload (a late
        upload from an expired id is taken); numbers whose record is held for
        upload are not touched either.
        """
        for line in self.lines.values():
            if line.pending:
                self._left_to_reclaim(line.extension, line.pending, "start_over")
                line.pending = []
        for ext, items in self._orphans.items():
            self._left_to_reclaim(ext, items, "start_over")
        self._orphans.clear()

    async def _sleep_or_stop(self, seconds: float) -> bool:
        """Sleep; True when a stop came meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        return self._stopping.is_set()

    async def _start_session(self) -> bool:
        """/notify and /accounts with back-off; False when stopped meanwhile."""
        self._renotify.clear()
        delay = self.config.dialplan.poll_min
        while not self._stopping.is_set():
            try:
                client_id = await self.client.notify()
                accounts = await self.client.accounts(client_id, self.config.threads)
            except (ServerUnavailable, UnknownClient) as exc:
                log.warning("server_unavailable", step="notify", reason=str(exc), retry_in=delay)
            except Exception as exc:  # a refused /notify or a surprise: retry, never die
                log.error("session_start_failed", reason=f"{type(exc).__name__}: {exc}")
            else:
                self.client_id = client_id
                log.info("session", client_id=client_id, accounts=len(accounts))
                await self._adopt(accounts)
                self.uploader.kick()
                for line in self.lines.values():
                    if not line.retired and line.known:
                        self._report_line(line)
                self._set_status()
                asyncio.get_running_loop().call_later(READY_AFTER, self._ready_anyway)
                return True
            if await self._sleep_or_stop(delay):
                return False
            delay = min(delay * 2, max(self.config.dialplan.poll_max, 5.0))
        return False

    def _lease_changed(self, accounts: list[Account]) -> bool:
        """Whether `accounts` differ from the lines we run (added, gone or changed)."""
        ours = {e: x.account for e, x in self.lines.items() if not x.retired}
        if len(ours) != len({a.extension for a in accounts}):
            return True
        return any(
            a.extension not in ours or not _same_account(a, ours[a.extension]) for a in accounts
        )

    async def _adopt(self, accounts: list[Account]) -> None:
        """Make the lines match a (new) lease; keep lines whose account is unchanged."""
        self._adopting = True
        try:
            await self._adopt_lines(accounts)
        finally:
            self._adopting = False
        self._maybe_ready()

    async def _adopt_lines(self, accounts: list[Account]) -> None:
        wanted = {a.extension: a for a in accounts}
        self._leased = set(wanted)
        for ext in [e for e in self._orphans if e not in wanted]:
            self._left_to_reclaim(ext, self._orphans.pop(ext))
        for ext, line in list(self.lines.items()):
            acc = wanted.get(ext)
            if acc is not None and _same_account(acc, line.account) and not line.retired:
                continue
            line.retired = True
            if not line.busy:
                await self._drop_line(line)
        for ext, acc in wanted.items():
            if ext in self.lines and not self.lines[ext].retired:
                continue
            if ext in self.lines:  # retired with a call in flight: wait for it
                log.info("line_waits_for_call", extension=ext)
                continue
            await self._add_line(acc)

    async def _add_line(self, account: Account) -> None:
        backend = self.backend_factory(account)
        line = Line(account, backend)
        # numbers the line held before its account changed (a new password) are its own
        line.pending = self._orphans.pop(account.extension, [])
        self.lines[account.extension] = line

        def changed(registered: bool, reason: str) -> None:
            self._line_changed(line, registered, reason)

        try:
            await backend.start(changed)
        except Exception as exc:
            log.error("line_start_failed", extension=account.extension, reason=str(exc))
            changed(False, f"start failed: {exc}")

    async def _drop_line(self, line: Line) -> None:
        if self.lines.get(line.extension) is line:
            del self.lines[line.extension]
        if line.pending and not self._stopping.is_set():
            if line.extension in self._leased:
                # its account changed (a new password): the line replacing it dials them
                self._orphans.setdefault(line.extension, []).extend(line.pending)
            else:
                self._left_to_reclaim(line.extension, line.pending)
            line.pending = []
        try:
            await line.backend.stop()
        except Exception as exc:
            log.warning("line_stop_failed", extension=line.extension, reason=str(exc))

    @staticmethod
    def _left_to_reclaim(
        extension: str, items: list[DialplanItem], why: str = "extension_gone"
    ) -> None:
        log.warning(
            "numbers_left_to_reclaim",
            extension=extension,
            phones=[i.phone for i in items],
            reason=why,
            hint="handed to a clientId the server no longer knows: it hands them out again"
            if why == "start_over"
            else "the extension is no longer leased to us: the server hands them out again",
        )

    def _line_changed(self, line: Line, registered: bool, reason: str) -> None:
        was = line.registered
        line.registered, line.reason, line.known = registered, reason, True
        if was != registered:
            log.info(
                "registered" if registered else "unregistered",
                extension=line.extension,
                reason=reason,
            )
        if not line.retired:
            self._report_line(line)
        if registered:
            self._wake_dialer.set()
        self._maybe_ready()
        self._set_status()

    def _maybe_ready(self) -> None:
        """READY=1 once every leased line has a first registration outcome.

        Not while the lease is still being turned into lines: a line that registers
        at once would otherwise be "every line" and READY=1 would go out with 1/N.
        """
        if self._adopting or self._ready_sent or not self.lines:
            return
        if all(x.known for x in self.lines.values()):
            self._ready_sent = True
            self.notify("READY=1", f"STATUS={self.status_line()}")

    def _ready_anyway(self) -> None:
        """READY=1 even if some registrations hang: the daemon works with the others."""
        if not self._ready_sent and not self._stopping.is_set():
            self._ready_sent = True
            self.notify("READY=1", f"STATUS={self.status_line()}")

    def _report_line(self, line: Line) -> None:
        if line.busy and line.current is not None:
            self.status.report(line.extension, "during", line.current.phone)
        elif line.registered:
            if line.pending:
                # it holds a number it cannot start yet (its max_cps turn, a paused
                # trunk, the server silent): not free, and an "idle" had the server hand
                # it another to hold. Its "during" comes when it starts; if that number
                # is let go instead, its "idle" then (`_let_go_stale`)
                self.status.withdraw_idle(line.extension)
                return
            self.status.report(line.extension, "idle")
        else:
            self.status.report(line.extension, "unregistered")

    def _status_sent_to_server(self, extension: str, status: str) -> None:
        # "idle_served": the server handed the line's next number (if any) in the reply
        # to its "idle" (`_numbers_handed`); asking /dialplan now would get none
        if status == "idle":
            self._wake_dialer.set()

    def _numbers_handed(self, items: list[DialplanItem]) -> None:
        """Numbers the server handed in its reply to a line's "idle" or "during" (ext):
        taken as from GET /dialplan, one round trip sooner; one handed with a
        "during" waits on its busy line for that call's end (the look-ahead,
        docs/daemon.md, "Life of the daemon")."""
        for item in items:
            self._take(item, quiet=True)
        lines = [line for item in items if (line := self.lines.get(item.extension))]
        if lines:
            self._start_pending(lines)  # those lines alone: a reply a call, at 100s a second
        for line in lines:
            if line.pending and not line.busy:
                # one it cannot start yet: an "idle" queued behind that reply goes
                self._report_line(line)

    def _may_hold(self, extension: str) -> int:
        """How many numbers the line dialling on `extension` asks to hold behind its
        call (`dialplan.look_ahead`: the server hands what it lacks of that). 0
        when it holds that many, and when its next call could not start at once
        anyway (a stop, a drain, the spool failing, a paused trunk...): such a number
        would only wait, leased, on the line."""
        line = self.lines.get(extension)
        depth = self.config.dialplan.look_ahead
        if line is None or len(line.pending) >= depth:
            return 0
        now = asyncio.get_running_loop().time()
        return depth if not self._stopping.is_set() and self._may_dial(line, now) else 0

    def _set_status(self) -> None:
        """STATUS= at most once every STATUS_EVERY seconds, the latest state last.

        Every call's start and end changes the line, and `status_line` counts the
        spool's files: at a hundred calls a second that was a directory scan and a
        datagram each time for a line nobody reads that often.
        """
        if self._status_timer is not None:
            return  # a trailing update is due and will carry this change
        loop = asyncio.get_running_loop()
        wait = self._status_sent + STATUS_EVERY - loop.time()
        if wait <= 0:
            self._send_status()
        else:
            self._status_timer = loop.call_later(wait, self._send_status)

    def _send_status(self) -> None:
        self._status_timer = None
        self._status_sent = asyncio.get_running_loop().time()
        self.notify(f"STATUS={self.status_line()}")

    async def _heartbeat(self) -> None:
        """POST /heartbeat, then GET /accounts and adopt what changed.

        The lease is asked for at every beat: while we hold fewer accounts than
        `threads` (after a restart the old lease is the server's to reclaim first)
        it grows, and an account the operator pushed again with a new password or
        host reaches its line within one beat (the line is replaced, its numbers
        kept). Until session 6 it was asked only while short of `threads`: a line
        whose password changed on the PBX stayed refused until a restart.

        PROTOCOL.md: a call with an unknown clientId answers "a non-200 code";
        the embedded server's is 404 (`UnknownClient` at once). A server that
        knows only the seed may say it with any code, so HEARTBEAT_REFUSED_MAX
        heartbeats in a row answered with a code that is not 200 in an envelope
        on an HTTP status under 500 (the server is up and speaking; a 5xx is its
        own failure, 401 our token, not our id) are taken the same way. A
        heartbeat carries nothing but the id, so little else can make it fail
        that often; a false start-over costs only the new id's lease (lines
        whose account stays keep their calls).
        """
        refused, refused_for = 0, ""
        while True:
            await asyncio.sleep(self.config.heartbeat.interval)
            client_id = self.client_id
            if client_id is None:
                continue
            try:
                try:
                    reply = await self.client.heartbeat(client_id, self.health())
                except (UnknownClient, Unauthorized):
                    raise
                except ControlError as exc:
                    if exc.code is None or exc.http_status >= 500:
                        # no envelope, or an HTTP 5xx (the embedded server's answer to
                        # its own failure): the server is away or failing, not refusing us
                        raise
                    # counted for this id only (a start-over elsewhere begins afresh)
                    refused = refused + 1 if refused_for == client_id else 1
                    refused_for = client_id
                    log.warning(
                        "heartbeat_refused", reason=str(exc), code=exc.code, in_a_row=refused
                    )
                    if refused >= HEARTBEAT_REFUSED_MAX:
                        raise UnknownClient(str(exc), exc.code) from None
                    continue
                refused = 0
                self._library_offered(reply.get("library"))
                accounts = await self.client.accounts(client_id, self.config.threads)
                if self._lease_changed(accounts):
                    active = sum(1 for line in self.lines.values() if not line.retired)
                    log.info("lease_changed", accounts=len(accounts), had=active)
                    await self._adopt(accounts)
                    self._set_status()
            except UnknownClient:
                refused = 0
                self._unknown_client()
            except Exception as exc:
                log.info("heartbeat_failed", reason=str(exc))

    async def _watchdog(self) -> None:
        """WATCHDOG=1 at half the interval systemd asked for (a blocked loop misses it)."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return
        try:
            every = max(int(usec) / 2e6, 0.05)
        except ValueError:
            return
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(every)

    async def _lag_monitor(self) -> None:
        """How late the loop runs (a sleep of LAG_EVERY waking up late), for the operator.

        One daemon is one loop on one core: past what that core carries, every
        packet, timer and classifier block waits its turn and decisions come
        late. Shown in STATUS= and logged (`loop_lagging`, at most every
        LAG_WARN_EVERY) above LAG_WARN: fewer lines, or another daemon
        (systemd/sipclient@.service). Capping the calls in flight from it was
        tried and cost 20-35 % of the numbers finished at 100-200 lines on the
        e2e bench for 0.2-0.4 s shorter calls (docs/daemon.md).
        """
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(LAG_EVERY)
            now = loop.time()
            was_late = self.lag_shown > LAG_WARN
            self.loop_lag = 0.7 * self.loop_lag + 0.3 * max(0.0, now - t - LAG_EVERY)
            self._lag_recent.append(self.loop_lag)
            late = self.lag_shown > LAG_WARN
            if late != was_late:
                # STATUS= otherwise changes with the calls: a loop that falls behind
                # (or catches up) while no call starts or ends would not show it
                self._set_status()
            if self.loop_lag > LAG_WARN and now - self._lag_warned >= LAG_WARN_EVERY:
                self._lag_warned = now
                log.warning(
                    "loop_lagging",
                    loop_lag_ms=round(self.loop_lag * 1000),
                    in_call=self.in_call,
                    hint="more calls than one core serves: fewer lines or another daemon",
                )

    async def _memory_watch(self) -> None:
        """A graceful restart once the resident memory passes `memory.restart_above_mb`
        (after MEMORY_MIN_UPTIME_S): the stop of SIGTERM, then exit 75."""
        limit = self.config.memory.restart_above_mb
        if not limit:
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        every = min(MEMORY_CHECK_S, max(0.05, MEMORY_MIN_UPTIME_S / 4))
        while not self._stopping.is_set():
            await asyncio.sleep(every)
            rss = _rss_mb()
            if rss is None:
                return  # no /proc: nothing to watch
            uptime = loop.time() - started
            if rss > limit and uptime >= MEMORY_MIN_UPTIME_S:
                log.warning(
                    "memory_restart",
                    rss_mb=round(rss, 1),
                    limit_mb=limit,
                    uptime_s=round(uptime),
                    decided=self.decided,
                    in_call=self.in_call,
                    hint="no new call; once those in flight end, a graceful stop and exit"
                    " 75 for the service manager to start the daemon again. The heap"
                    " creeps with fragmentation (docs/daemon.md)",
                )
                self.exit_code = EXIT_MEMORY_RESTART  # and so `draining`
                self._set_status()
                drained_by = loop.time() + MEMORY_DRAIN_MAX_S
                while self.in_call and loop.time() < drained_by:
                    if self._stopping.is_set():
                        return
                    await asyncio.sleep(0.1)
                self.stop()
                return

    # ------------------------------------------------------- template library

    def _library_offered(self, version: object) -> None:
        """A heartbeat reply named the version of the server's library (ext): mirror
        it unless it is the one in use or a mirroring runs (agent/library_sync.py)."""
        user = self.library_user
        if self._mirror is None or user is None or not isinstance(version, str) or not version:
            return
        if version == user.library_version or (self._syncing and not self._syncing.done()):
            return
        self._syncing = asyncio.get_running_loop().create_task(
            self._sync_library(version), name="library-sync"
        )
        self._tasks.append(self._syncing)  # cancelled at a stop

    async def _sync_library(self, offered: str) -> None:
        assert self._mirror is not None and self.library_user is not None
        try:
            library, version = await self._mirror.sync(self.client)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the library in use stays; the next heartbeat tries again
            log.warning(
                "library_sync_failed",
                offered=offered,
                error=f"{type(exc).__name__}: {exc}",
                hint="the library in use stays; mirrored again at the next heartbeat",
            )
            self._library_behind = f"{type(exc).__name__}: {exc}"[:80]
            self._set_status()
            return
        self.library_user.use_library(library, version)
        self._library_behind = ""
        self._set_status()
        log.info("library_synced", version=version, templates=len(library))

    # ------------------------------------------------------------ dial loop

    async def _dial_loop(self) -> None:
        delay = self.config.dialplan.poll_min
        while not self._stopping.is_set():
            self._start_pending()
            client_id = self.client_id
            if client_id is None:
                return
            if not any(self._free(line) and not line.pending for line in self.lines.values()):
                # nothing to dial on; still ask now and then, since the server's view of
                # our lines may differ from ours (a number it hands to a line that is not
                # registered is kept on that line and reported)
                await self._wait_dialer(self.config.dialplan.poll_max)
                if self._stopping.is_set() or not self.lines:
                    continue
            try:
                items = await self.client.dialplan(client_id)
            except UnknownClient:
                self._unknown_client()
                return
            except ServerUnavailable as exc:
                log.info("dialplan_unavailable", reason=str(exc), retry_in=delay)
                await self._wait_dialer(delay)
                delay = min(delay * 2, self.config.dialplan.poll_max)
                continue
            except Exception as exc:
                log.warning("dialplan_failed", reason=f"{type(exc).__name__}: {exc}")
                await self._wait_dialer(delay)
                delay = min(delay * 2, self.config.dialplan.poll_max)
                continue
            if not items:
                self._release_held_when_done()
                woken = await self._wait_dialer(delay)
                # a line freed or an upload accepted: ask again at once, no back-off
                delay = (
                    self.config.dialplan.poll_min
                    if woken
                    else min(delay * 2, self.config.dialplan.poll_max)
                )
                continue
            delay = self.config.dialplan.poll_min
            for item in items:
                self._take(item)
            self._start_pending()
            # numbers came: ask again soon, sooner when a line frees up
            await self._wait_dialer(self.config.dialplan.poll_min)

    async def _wait_dialer(self, seconds: float) -> bool:
        """Wait up to `seconds`; True when woken (a line freed, an upload went in)."""
        woken = True
        try:
            await asyncio.wait_for(self._wake_dialer.wait(), timeout=seconds)
        except TimeoutError:
            woken = False
        self._wake_dialer.clear()
        return woken

    def _wake_dialer_soon(self) -> None:
        # (the server answered again after a silence: numbers held on lines may start)
        self._wake_dialer.set()

    def _free(self, line: Line) -> bool:
        """Whether `line` may start a number now."""
        now = asyncio.get_running_loop().time()
        return not line.busy and self.client.lease_alive(now) and self._may_dial(line, now)

    def _may_dial(self, line: Line, now: float) -> bool:
        """What lets a line dial, busy or not: registered, not held back, its trunk and
        the daemon's own breaker closed, the spool writable, no drain."""
        return (
            not self.spool_failing
            and line.registered
            and not line.retired
            and not line.rechecking
            and line.hold_until <= now
            and self._trunk(line).allows(now)
            and self._own_allows_numbers(now)
            and not self.draining
        )

    def _own_allows_numbers(self, now: float) -> bool:
        """Whether the daemon's own breaker lets a number start: closed, or probing
        with no probe in flight. With `trunk.canary` set, the probe is a call to
        the canary (`_start_own_canary`), never a number: a bug that fails after
        the INVITE went out would ring a held subscriber at every pause."""
        if self.config.trunk.canary:
            return self._own.state is TrunkState.CLOSED
        return self._own.allows(now)

    def _trunk(self, line: Line) -> TrunkGuard:
        """The breaker of the PBX `line` dials through (its account's host, else pbx.host)."""
        if line.trunk is not None:
            return line.trunk
        key = self._pbx_key(line)
        guard = self._trunks.get(key)
        if guard is None:
            t = self.config.trunk
            guard = TrunkGuard(t.fault_after, t.pause_min, max(t.pause_min, t.pause_max))
            self._trunks[key] = guard
        line.trunk = guard
        return guard

    def _trunk_outcome(
        self, line: Line, item: DialplanItem, record: CallRecord, transient: bool
    ) -> None:
        """Count a call's outcome for its trunk; log and schedule the probe on a change."""
        guard = self._trunk(line)
        loop = asyncio.get_running_loop()
        probe, line.probing = line.probing, False
        if not guard.finished(transient, loop.time(), probe=probe):
            return
        if guard.seconds_left(loop.time()) > 0:
            log.error(
                "trunk_fault",
                extension=line.extension,
                phone=item.phone,
                sip_code=record.fields.get("sipCode"),
                q850=record.fields.get("q850Cause"),
                pause_s=guard.pause,
                hint="the probe call failed too"
                if probe
                else f"{guard.fault_after} calls in a row failed in the network",
            )
            # the probe starts once the pause is over: wake the dialler then
            loop.call_later(guard.pause, self._wake_dialer.set)
        else:
            log.info("trunk_recovered", extension=line.extension, phone=item.phone)
            self._wake_dialer.set()
        self._set_status()

    def _trunks_status(self) -> tuple[str, str] | None:
        """(alert code, STATUS= text) while a PBX's calls are paused, else None."""
        now = asyncio.get_running_loop().time()
        paused = [g for g in self._trunks.values() if g.state is not TrunkState.CLOSED]
        code, what = "trunk_failing", "trunk failing"
        suspect = next((w.key for w in self._routes.values() if w.suspect and w.key), None)
        if suspect is not None:
            code, what = "route_suspect", f"route suspect ({suspect[0]} to every number)"
        if not paused:
            return None if suspect is None else (code, what)
        left = max(g.seconds_left(now) for g in paused)
        if left:
            return code, f"{what}: dialling paused ({round(left)} s left)"
        return code, f"{what}: one probe call"

    def _pbx_key(self, line: Line) -> tuple[str, str]:
        """The PBX `line` dials through: its account's host, else pbx.host, and transport."""
        cfg = self.config
        return (
            line.account.host or str(cfg.pbx.host),
            (line.account.transport or cfg.pbx.transport).lower(),
        )

    def _route(self, line: Line) -> RouteWatch[Held]:
        """The route guard of the PBX `line` dials through (keyed as `_trunk`)."""
        key = self._pbx_key(line)
        watch = self._routes.get(key)
        if watch is None:
            t = self.config.trunk
            watch = RouteWatch(t.same_rejections, t.rejection_hold, verify=bool(t.canary))
            self._routes[key] = watch
        return watch

    def _route_outcome(
        self, line: Line, item: DialplanItem, record: CallRecord
    ) -> tuple[CallRecord | None, list[Held]]:
        """Pass a call's outcome through its PBX's route guard and its trunk breaker.

        Returns the record to upload now (None: held back, or to be dialled again)
        and the held calls to upload before it."""
        watch = self._route(line)
        key = _bare_key(record)
        step: Step[Held] = Step()
        if key is not None:
            step = watch.bare(key, (line, item, record), asyncio.get_running_loop().time())
        elif _proves_route(record):
            step = watch.proven()
        self._route_step(line, watch, step, item.phone)
        # for the breaker, a rejection put back by the suspect route is a failed call
        # (a failed probe: the pause doubles), and so is, while it is suspect, an
        # outcome that proves nothing (a local failure, no ring before our CANCEL);
        # one held is the number's outcome
        failed = bool(step.redial) or (watch.suspect and not _proves_route(record))
        self._trunk_outcome(line, item, record, record.transient or failed)
        if step.held or step.redial:
            return None, step.release
        return record, step.release

    def _route_step(
        self, line: Line, watch: RouteWatch[Held], step: Step[Held], phone: str
    ) -> None:
        """Carry out what the route guard said (all but uploading `step.release`)."""
        loop = asyncio.get_running_loop()
        for held in step.redial:
            self._redial(*held)
        if step.tripped:
            trunk = self._trunk(line)
            trunk.trip(loop.time())  # before the call's outcome: not counted again
            code, cause = watch.key or (None, None)
            log.error(
                "route_suspect",
                extension=line.extension,
                phone=phone,
                sip_code=code,
                q850=cause,
                in_a_row=watch.same_after,
                canary=self.config.trunk.canary or None,
                pause_s=trunk.pause,
                hint=f"{watch.same_after} calls in a row rejected alike with no ring and no"
                " audio"
                + (", and the canary too" if phone == self.config.trunk.canary else "")
                + ": the PBX may have no route out for our extensions, or bar them."
                " Those numbers are dialled again once a call through it rings",
            )
            loop.call_later(trunk.pause, self._wake_dialer.set)
        elif step.recovered:
            log.info("route_proven", extension=line.extension, phone=phone)
        if step.verify:
            self._canaries_wanted.append(watch)
            self._wake_dialer.set()
        if watch.held and self._route_timer is None:
            self._arm_route_timer()

    def _start_canaries(self) -> None:
        """Dial the canary for each route guard that asked, on a free line of its PBX
        (before any number: the held rejections wait for it)."""
        now = asyncio.get_running_loop().time()
        for watch in list(self._canaries_wanted):
            line = self._idle_line(now, functools.partial(self._routes_through, watch))
            if line is None:
                continue  # every line of that PBX is busy: the next one to end takes it
            self._canaries_wanted.remove(watch)
            self._call_canary(line, now, functools.partial(self._canary, watch=watch), "canary")

    def _routes_through(self, watch: RouteWatch[Held], line: Line) -> bool:
        return self._route(line) is watch

    def _idle_line(self, now: float, also: Callable[[Line], bool]) -> Line | None:
        """A line that could dial now (registered, free, not held back) and `also`."""
        return next(
            (
                ln
                for ln in self.lines.values()
                if ln.registered
                and not ln.busy
                and not ln.retired
                and not ln.rechecking
                and ln.hold_until <= now
                and also(ln)
            ),
            None,
        )

    def _call_canary(
        self,
        line: Line,
        now: float,
        run: Callable[[Line, DialplanItem], Coroutine[Any, Any, None]],
        name: str,
    ) -> None:
        """`run` a call to `trunk.canary` on `line` as a call of the line."""
        item = DialplanItem(line.extension, self.config.trunk.canary, taken_at=now)
        line.current = item
        line.cancel = asyncio.Event()
        task = asyncio.create_task(run(line, item), name=f"{name}-{line.extension}")
        line.task = task
        self._call_tasks.add(task)
        task.add_done_callback(self._call_tasks.discard)

    def _start_own_canary(self) -> None:
        """The probe of the daemon's own breaker, with `trunk.canary` set: once its
        pause is over, one call to the canary on a free line (`_own_canary`)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self.spool_failing or self.draining or not self._own.allows(now):
            return  # paused still, or its probe is in flight
        line = self._idle_line(now, lambda ln: self._trunk(ln).allows(now))
        if line is None:
            return  # the next line to come free takes it
        self._own.started(now)  # the probe: no other call starts until it ends
        self._call_canary(line, now, self._own_canary, "own-canary")

    async def _own_canary(self, line: Line, item: DialplanItem) -> None:
        """The own breaker's probe call to the canary: never uploaded, never reported
        to the server. It went through (whatever the canary's outcome): closed, the
        held numbers are dialled. It failed in our code: paused again, longer."""
        structlog.contextvars.bind_contextvars(extension=line.extension, phone=item.phone)
        try:
            record = await line.backend.dial(item, lambda: None, line.cancel)
        except asyncio.CancelledError:
            self._own.abandon_probe()
            raise
        except PortsExhausted as exc:  # no word either way: the next start probes
            self._own.abandon_probe()
            log.warning("canary_failed", error=str(exc))
            return
        except Exception as exc:
            self._own_failed(exc, probe=True, probe_call="canary")
            return
        finally:
            line.current = None
            line.task = None
            self._wake_dialer.set()
        self._drop_record(record)
        self._own_went_through(probe=True, probe_call="canary")

    async def _canary(self, line: Line, item: DialplanItem, watch: RouteWatch[Held]) -> None:
        """One canary call: never uploaded, never reported to the server; what it
        did goes to the route guard."""
        structlog.contextvars.bind_contextvars(extension=line.extension, phone=item.phone)
        record: CallRecord | None = None
        try:
            record = await line.backend.dial(item, lambda: None, line.cancel)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # no port, our failure: no word from it
            log.warning("canary_failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            line.current = None
            line.task = None
            self._wake_dialer.set()
        result = Canary.UNKNOWN
        if record is not None:
            self._drop_record(record)
            if record.pbx_fault or record.transient:
                result = Canary.UNKNOWN
            elif _proves_route(record):
                result = Canary.RANG
            elif _bare_key(record) is not None:
                result = Canary.REJECTED
        held = watch.held
        step = watch.canary(result)
        log.info(
            "canary_called",
            result=result,
            sip_code=record.fields.get("sipCode") if record else None,
            held=held,
            released=len(step.release),
            suspect=watch.suspect,
        )
        self._route_step(line, watch, step, item.phone)
        if step.recovered and self._trunk(line).finished(False, asyncio.get_running_loop().time()):
            log.info("trunk_recovered", extension=line.extension, phone=item.phone)
            self._set_status()
        await self._spool_held(step.release)

    def _redial(self, line: Line, item: DialplanItem, record: CallRecord) -> None:
        """Put a number whose call met a suspect route back on its line (its record
        says nothing of it); dialled again once the route is proven. Still leased to
        us: `_let_go_stale` lets it go at half its lease if the route stays suspect."""
        self._drop_record(record)
        self.redials += 1
        if line.retired or self._stopping.is_set():
            log.warning(
                "number_let_go",
                extension=line.extension,
                phone=item.phone,
                reason="its call met a suspect route and the line is gone",
                hint="dialled again after the server reclaims our lease",
            )
            return
        line.pending.append(replace(item, redial=True))
        log.info("number_redial", extension=line.extension, phone=item.phone)

    def _arm_route_timer(self) -> None:
        due = [d for w in self._routes.values() if (d := w.next_due()) is not None]
        self._route_timer = None
        if due:
            loop = asyncio.get_running_loop()
            self._route_timer = loop.call_at(min(due), self._route_due)

    def _route_due(self) -> None:
        """The held rejections no call proved or disproved in time: uploaded, or the
        canary asked for."""
        self._route_timer = None
        # a timer may fire a hair before its time (the loop's clock resolution)
        now = asyncio.get_running_loop().time() + 0.001
        self._settle_held(lambda w: w.due(now))
        self._arm_route_timer()

    def _settle_held(self, ask: Callable[[RouteWatch[Held]], Step[Held]]) -> None:
        released: list[Held] = []
        for watch in self._routes.values():
            step = ask(watch)
            released += step.release
            if step.verify:
                self._canaries_wanted.append(watch)
                self._wake_dialer.set()
        if released:
            task = asyncio.get_running_loop().create_task(self._spool_held(released))
            self._call_tasks.add(task)
            task.add_done_callback(self._call_tasks.discard)

    def _release_held_when_done(self) -> None:
        """The server has nothing for us, no call is up and no number waits, for
        HELD_IDLE_S since the last call ended: the list is done, and no call will
        come to prove or disprove the held rejections. Uploaded as they are now,
        not after `trunk.rejection_hold`. (Not at the first empty answer: one
        comes while a line's "idle" is still on its way.)"""
        if not any(w.held for w in self._routes.values()):
            return
        if any(line.busy or line.pending for line in self.lines.values()):
            return
        if asyncio.get_running_loop().time() - self._last_call_end < HELD_IDLE_S:
            return
        self._settle_held(lambda w: w.at_rest())

    async def _spool_held(self, held: list[Held]) -> None:
        for h in held:
            await self._spool(*h)

    def _take(self, item: DialplanItem, *, quiet: bool = False) -> None:
        """Put a number on its line (kept there until the line can dial it); `quiet`:
        one asked for while the line dials, not worth a log line on a busy line."""
        line = self.lines.get(item.extension)
        if line is None:
            log.warning(
                "dialplan_for_unknown_extension", extension=item.extension, phone=item.phone
            )
            return  # not ours: the server reclaims it
        same = [
            p
            for p in ([line.current] if line.current else []) + line.pending
            if p.phone == item.phone and p.dialplan_id == item.dialplan_id
        ]
        if same:
            return  # handed again while we still hold it
        if self._record_unsent(item):
            log.info("dialplan_for_number_in_spool", extension=item.extension, phone=item.phone)
            return  # its record goes up: the server then has the number's outcome
        self._check_lease(item)
        line.pending.append(replace(item, taken_at=asyncio.get_running_loop().time()))
        if not line.registered:
            log.warning(
                "dialplan_for_unregistered_extension",
                extension=item.extension,
                phone=item.phone,
                reason=line.reason,
            )
            self.status.report(line.extension, "unregistered")
        elif line.busy and not quiet:
            log.info("dialplan_for_busy_extension", extension=item.extension, phone=item.phone)

    def _check_lease(self, item: DialplanItem) -> None:
        """Warn when the server's lease of a number (`leaseSeconds`) is shorter than
        one of our calls can last: a call that rings out, then waits 64*T1 for its
        CANCEL's 487, is still up when the server hands its number out again, and
        the number is dialled twice (the lab's 60 s lease did that to a 62 s call).
        The fix is the server's `leases.number_timeout` (or our `sip.ring_timeout`):
        said once, and again only for a shorter lease; `health` lists it
        (`short_lease`) until a number comes with a lease long enough."""
        lease, longest = item.lease_s, longest_call_s(self.config)
        if lease is None:
            return
        if lease >= longest:
            self._short_lease = None  # the server's lease was raised: the alert goes
            return
        if self._short_lease is not None and lease >= self._short_lease:
            return
        self._short_lease = lease
        log.warning(
            "lease_shorter_than_a_call",
            lease_s=lease,
            longest_call_s=longest,
            hint="raise the server's leases.number_timeout past it (or lower"
            " sip.ring_timeout): a call still up past its lease has its number dialled"
            " again",
        )

    def _start_pending(self, only: Iterable[Line] | None = None) -> None:
        """Start the numbers lines hold, on the lines free for them (`only`: of these)."""
        if self._stopping.is_set():
            return
        if self._canaries_wanted and not self.spool_failing and not self.draining:
            self._start_canaries()
        if self.config.trunk.canary and self._own.state is not TrunkState.CLOSED:
            self._start_own_canary()
        cps = self.config.dialplan.max_cps
        loop = asyncio.get_running_loop()
        for line in self.lines.values() if only is None else only:
            if line.pending:
                self._let_go_stale(line, loop.time())
            if line.pending and self._free(line):
                if cps > 0:
                    # paced, not bursty: carriers police CPS over short windows
                    now = loop.time()
                    if now < self._next_start:
                        if self._pace_timer is None:
                            self._pace_timer = loop.call_at(self._next_start, self._paced)
                        return
                    self._next_start = now + 1.0 / cps
                item = line.pending.pop(self._next_pending(line))
                self._start_call(line, item)

    def _next_pending(self, line: Line) -> int:
        """Which of `line.pending` to dial: the first, but while its PBX's route is
        suspect a fresh number before one put back by it (`_redial`), so the probe
        says something new."""
        if self._route(line).suspect:
            for i, p in enumerate(line.pending):
                if not p.redial:
                    return i
        return 0

    def _hold_limit(self, item: DialplanItem) -> float:
        """Seconds `item` may wait on its line: `dialplan.hold_max` (0: no limit),
        and at most half the lease the server gave it (`leaseSeconds`, ext), so an
        operator need not keep the two configs in step; inf when neither says.

        Nor longer than the lease less the longest a call can last
        (`longest_call_s`): a number dialled at the limit must end inside its
        lease, or the server hands it out again while it is still up (with a
        180 s lease and the shipped 102 s longest call, half the lease let a
        number wait 90 s and then ring until 192 s). A lease shorter than a
        call leaves no such room; half of it stays the limit then, as letting
        every waiting number go at once would idle the box, and
        `lease_shorter_than_a_call` says what to mend.
        """
        limit = self.config.dialplan.hold_max or math.inf
        if item.lease_s is not None:
            limit = min(limit, item.lease_s / 2)
            room = item.lease_s - longest_call_s(self.config)
            if room > 0:
                limit = min(limit, room)
        return limit

    def _let_go_stale(self, line: Line, now: float) -> None:
        """Drop the numbers held on `line` longer than `_hold_limit` allows.

        A number waits on its line while the line cannot dial (unregistered, a
        PBX fault, a paused trunk, no RTP port, the spool failing). Past the
        server's `leases.number_timeout` the server hands it out again, to
        another line or box; dialled here after that, it was dialled twice (the
        second upload refused, a live subscriber rung twice). Let go of, it
        stays the server's: busy until that reclaim, then handed out anew.
        """
        stale = [p for p in line.pending if now - p.taken_at > self._hold_limit(p)]
        if not stale:
            return
        gone = {id(p) for p in stale}
        line.pending = [p for p in line.pending if id(p) not in gone]
        if not line.pending and not line.busy and line.registered:
            self._report_line(line)  # it held a number, so it had not said "idle"
        for item in stale:
            self.let_go += 1
            log.warning(
                "number_let_go",
                extension=line.extension,
                phone=item.phone,
                held_s=round(now - item.taken_at, 1),
                registered=line.registered,
                limit_s=round(self._hold_limit(item), 1),
                hint="held past dialplan.hold_max (or what its lease leaves): the server's lease"
                " reclaim hands it out again",
            )

    def _paced(self) -> None:
        self._pace_timer = None
        self._wake_dialer.set()

    def _start_call(self, line: Line, item: DialplanItem) -> None:
        line.current = item
        line.cancel = asyncio.Event()
        now = asyncio.get_running_loop().time()
        line.probing = self._trunk(line).started(now)
        line.own_probe = self._own.started(now)
        self.calls_started += 1
        task = asyncio.create_task(self._call(line, item), name=f"call-{line.extension}")
        line.task = task
        self._call_tasks.add(task)
        task.add_done_callback(self._call_tasks.discard)

    async def _call(self, line: Line, item: DialplanItem) -> None:
        # This task's own context: every log line of the call carries these.
        structlog.contextvars.bind_contextvars(
            client_id=self.client_id, extension=line.extension, phone=item.phone
        )
        ext = line.extension
        self.status.report(ext, "during", item.phone)
        self._set_status()
        record: CallRecord | None = None
        released: list[Held] = []
        no_port = False
        try:
            record = await line.backend.dial(
                item, lambda: self.status.report(ext, "call", item.phone), line.cancel
            )
            self._own_outcome(line, None, item)
            line.port_waits = 0
            if self._stopping.is_set() and _cut_short(record):
                self._let_go_at_stop(item)
                record = None
            elif record.pbx_fault and self._pbx_fault(line, item, record):
                record, no_port = None, True  # back on its line (as for a port)
            else:
                line.fault_tries.pop((item.dialplan_id or "", item.phone), None)
                record, released = self._route_outcome(line, item, record)
        except asyncio.CancelledError:
            raise
        except PortsExhausted as exc:
            # Not the number's outcome but ours: it was never dialled. It goes back to
            # the head of the line and waits for a port (one is freed when any of our
            # calls ends). Uploaded as a failure it would come back `unknown`.
            no_port = True
            self._wait_for_port(line, item, exc)
        except Exception as exc:
            # still upload so the number ends: a number no call can carry (a server
            # before session 6 handed those out), or our own failure (a bug)
            why = not_dialable(item.phone)
            if why:
                log.warning("number_not_dialable", extension=ext, phone=item.phone, reason=why)
                record = _failed_record(self.config, exc)
            elif self._own_outcome(line, exc, item):
                no_port = True  # back on its line (as for a port)
            else:
                record = _failed_record(self.config, exc)
        finally:
            # The line is free as soon as the call is over: its next number may start
            # while this task writes the upload to the spool (~10 ms alone, 100 ms and
            # more with a hundred lines sharing the disk). Nothing is lost by that: this
            # number stays busy on the server until its upload is in, and if we die
            # before the spool has it, the server's lease brings it back to be dialled
            # again. The task (in _call_tasks) lives until the spool has it; a stop
            # waits for it.
            line.current = None
            line.task = None
            self._last_call_end = asyncio.get_running_loop().time()
            if line.probing:  # no outcome counted (no port, a PBX fault, our failure)
                line.probing = False
                self._trunk(line).abandon_probe()
            if line.own_probe:  # no outcome either way (no port, cancelled)
                line.own_probe = False
                self._own.abandon_probe()
            if line.retired:
                asyncio.get_running_loop().create_task(self._drop_line(line))
            elif not self._stopping.is_set() and not no_port:
                if line.pending:
                    # the number it held while this call ran (the look-ahead) starts
                    # now, with no round trip to the server: its own "during" tells it
                    self._start_pending([line])
                    self.started_held += line.busy
                if not line.busy:
                    # (a line whose number waits for a port stays "during": not idle,
                    # or the server would hand it more numbers to hold)
                    self._report_line(line)
            if line.pending or line.retired or not line.registered:
                # a number already held for this line starts now; otherwise the
                # next one is asked for once the "idle" above went in
                self._wake_dialer.set()
            self._set_status()
            for held in released:  # they ended before this one
                await self._spool(*held)
            if record is not None:
                await self._spool(line, item, record)

    def _let_go_at_stop(self, item: DialplanItem) -> None:
        """Our stop cut this call short before anything was known of the number: not
        its outcome. Uploaded, it came back `unknown` for good (4-7 numbers a stop at
        12 lines, in the soak of session 9); not uploaded, the number is still
        leased to our clientId, and the server hands it out again when we leave
        (`_leave`) or once it reclaims that lease, as after a kill -9."""
        log.warning(
            "number_let_go",
            phone=item.phone,
            reason="stopped mid-call before anything was known",
            hint="dialled again after the server reclaims our lease",
        )

    def _wait_for_port(self, line: Line, item: DialplanItem, exc: PortsExhausted) -> None:
        """Keep `item` on `line` and try it again after a back-off (PORT_WAIT_*)."""
        line.pending.insert(0, item)
        delay = min(PORT_WAIT_MIN * 2**line.port_waits, PORT_WAIT_MAX)
        line.port_waits += 1
        loop = asyncio.get_running_loop()
        line.hold_until = loop.time() + delay
        loop.call_later(delay, self._wake_dialer.set)
        self.port_waits += 1
        log.error(
            "call_waits_for_rtp_port",
            extension=line.extension,
            phone=item.phone,
            retry_in=round(delay, 3),
            in_a_row=line.port_waits,
            error=str(exc),
            hint="rtp.ports is smaller than the lines need, or other programs hold its ports",
        )

    def _own_outcome(self, line: Line, exc: Exception | None, item: DialplanItem) -> bool:
        """Count a call for the daemon's own breaker (`_own`): `exc` is our own
        failure (an exception in our code), None a call that went through whatever
        its outcome. True when the failed number was kept back: it goes to the head
        of its line (OWN_FAIL_TRIES_MAX), and dialling pauses while our calls keep
        failing (OWN_FAULT_AFTER); stopping, it is left to the server's lease
        reclaim. False: upload the local failure (`failed`, judged `unknown`)."""
        loop = asyncio.get_running_loop()
        probe, line.own_probe = line.own_probe, False
        if exc is None:
            self._own_went_through(probe, extension=line.extension, phone=item.phone)
            return False
        was_closed = self._own.state is TrunkState.CLOSED
        opened = self._own_failed(exc, probe)
        key = (item.dialplan_id or "", item.phone)
        tries = line.fault_tries.get(key, 0) + (0 if opened or not was_closed else 1)
        kept = tries < OWN_FAIL_TRIES_MAX
        log.error(
            "call_failed",
            extension=line.extension,
            phone=item.phone,
            error=repr(exc),
            tries=tries,
            hint="a failure of ours: the number waits on its line"
            if kept
            else "a failure of ours, again for this number: uploaded as a local failure",
        )
        if not kept:
            line.fault_tries.pop(key, None)
            return False
        if self._stopping.is_set():
            return True
        line.fault_tries[key] = tries
        line.pending.insert(0, item)
        line.hold_until = loop.time() + OWN_RETRY_S
        loop.call_later(OWN_RETRY_S, self._wake_dialer.set)
        return True

    def _own_went_through(self, probe: bool, **where: str) -> None:
        """A call went through our code, whatever its outcome: counted for `_own`
        (`probe`: it was the breaker's probe); closing it resumes dialling."""
        if self._own.finished(False, asyncio.get_running_loop().time(), probe=probe):
            log.info("calls_recovered", **where)
            self._wake_dialer.set()
            self._set_status()

    def _own_failed(self, exc: Exception, probe: bool, **where: str) -> bool:
        """A call failed in our code: counted for `_own`. True when that paused
        dialling (opened, or a failed probe opened it again for longer)."""
        loop = asyncio.get_running_loop()
        self.own_failures += 1
        self._own_error = f"{type(exc).__name__}: {exc}"[:80]
        opened = self._own.finished(True, loop.time(), probe=probe)
        if opened:
            log.error(
                "calls_failing",
                pause_s=self._own.pause,
                error=self._own_error,
                hint="calls fail in the daemon itself (see call_failed): dialling paused,"
                " the numbers wait on their lines; a probe call (trunk.canary if set)"
                " after the pause",
                **where,
            )
            loop.call_later(self._own.pause, self._wake_dialer.set)
            self._set_status()
        return opened

    def _pbx_fault(self, line: Line, item: DialplanItem, record: CallRecord) -> bool:
        """The call met a PBX fault (PBX_FAULTS): True when the number was kept back.

        No answer at all for 64*T1 (32 s), not even 100 Trying: the PBX is hung,
        gone, or drops our INVITEs. Our credentials refused: the extension's
        password changed on the PBX. Neither says anything of the number; uploaded,
        it would be `failed` for good, and so would every number dialled on that
        line until its registration refresh failed (minutes). So the number goes
        back to the head of its line and the line asks the registrar (a REGISTER
        now): when that is granted the line dials on, the number first; when it is
        not, the line is unregistered (reported so) and dials again once it
        registers: the PBX is back, or the new password reached us with the lease
        (`_heartbeat`). A number that meets a fault PBX_FAULT_TRIES_MAX times with
        the registrar granting in between (a PBX that drops only INVITEs, or only
        this one) is uploaded as it is: `failed`. Stopping, the number is left to
        the server's lease reclaim.
        """
        key = (item.dialplan_id or "", item.phone)
        tries = line.fault_tries.get(key, 0) + 1
        self.pbx_faults += 1
        failed = tries >= PBX_FAULT_TRIES_MAX
        stopping = self._stopping.is_set()
        if failed or not stopping:
            log.error(
                "pbx_fault_number_failed" if failed else "pbx_fault",
                extension=line.extension,
                phone=item.phone,
                fault=record.pbx_fault,
                tries=tries,
                hint="uploaded as failed: the registrar answers, the INVITE does not go through"
                if failed
                else PBX_FAULTS.get(record.pbx_fault, record.pbx_fault)
                + "; the number waits, the line registers again",
            )
        if failed:
            line.fault_tries.pop(key, None)
            return False
        self._drop_record(record)
        if stopping:
            log.warning("pbx_fault_at_stop", extension=line.extension, phone=item.phone)
            return True
        line.fault_tries[key] = tries
        line.pending.insert(0, item)
        if not line.rechecking:
            line.rechecking = True
            task = asyncio.get_running_loop().create_task(self._recheck(line))
            self._rechecks.add(task)
            task.add_done_callback(self._rechecks.discard)
        return True

    async def _recheck(self, line: Line) -> None:
        """REGISTER the line again; it dials once the registrar has answered."""
        ok = False
        try:
            ok = await line.backend.recheck()
        except Exception as exc:  # never leave the line held for good
            log.error("recheck_failed", extension=line.extension, error=repr(exc))
        finally:
            line.rechecking = False
            self._wake_dialer.set()
            self._set_status()
        log.info(
            "registrar_granted_after_fault" if ok else "unregistered_after_fault",
            extension=line.extension,
            registered=line.registered,
        )

    @staticmethod
    def _drop_record(record: CallRecord) -> None:
        if record.data is None:
            with contextlib.suppress(OSError):
                record.wav.unlink()

    async def _spool(self, line: Line, item: DialplanItem, record: CallRecord) -> None:
        """The record of a call on `line` for `item` to the spool, or held while the
        spool fails (agent/keeping.py: no call starts meanwhile)."""
        fields: dict[str, Any] = {
            "extensionNum": line.extension,
            "phone": item.phone,
            "dialplanId": item.dialplan_id or "",
        }
        fields.update(record.fields)
        self._unsent[(fields["dialplanId"], item.phone)] = asyncio.get_running_loop().time()
        await self.keeper.keep(fields, record)

    def _record_unsent(self, item: DialplanItem) -> bool:
        """Whether a record of `item` made by this run waits for the server.

        The server hands a number out again once it has reclaimed our lease of it
        (its `number_timeout`, or our clientId expired while the daemon was frozen)
        without knowing that our record of its call waits in the spool. Dialled
        again, it rang twice and the second upload was refused (`bench/soak.py
        --seed 25`: a 14 s SIGSTOP, six numbers). A record older than
        UNSENT_FORGET_S no longer counts: a safety net, should a path that sends
        records not say so.
        """
        key = (item.dialplan_id or "", item.phone)
        made = self._unsent.get(key)
        if made is None:
            return False
        if asyncio.get_running_loop().time() - made < UNSENT_FORGET_S:
            return True
        del self._unsent[key]
        return False

    def _remember_spooled(self) -> None:
        """The records an earlier run left in the spool wait for the server too.

        They normally go up at the start, long before the server frees that
        run's leases. With the server away longer than its `number_timeout`
        they do not: the server hands their numbers out again when it is back,
        maybe to us before the spool has drained, and such a number rang twice.
        Read once at the start (before the uploader runs, so no entry is read
        while it is removed); each entry's upload or refusal forgets it as for
        this run's own records.
        """
        now = asyncio.get_running_loop().time()
        for entry in self.spool.entries():
            key = (entry.fields.get("dialplanId", ""), entry.fields.get("phone", ""))
            if key[1]:
                self._unsent[key] = now

    def _record_sent(self, fields: dict[str, Any]) -> None:
        """The server took (or refused for good) a record with these fields."""
        self._unsent.pop((str(fields.get("dialplanId", "")), str(fields.get("phone", ""))), None)

    def _uploaded(self, entry: SpoolEntry) -> None:
        self._record_sent(entry.fields)
        self._wake_dialer.set()

    def _count_decided(self) -> None:
        self.decided += 1

    @property
    def spool_failing(self) -> bool:
        """The spool could not be written and has not been since: no call starts."""
        return self.keeper.failing

    @property
    def _unspooled(self) -> list[HeldRecord]:
        """Finished calls the spool could not take yet, oldest first."""
        return self.keeper.held

    async def _shutdown(self) -> None:
        if self._status_timer is not None:
            self._status_timer.cancel()
            self._status_timer = None
        self.notify("STOPPING=1", f"STATUS=stopping: {self.status_line()}")
        for line in self.lines.values():
            line.pending.clear()  # no call starts any more (`_stopping`)
        calls: set[asyncio.Task[None]] = {t for t in self._call_tasks if not t.done()}
        if calls:
            log.info("finishing_calls", calls=len(calls), wait_s=CALL_FINISH_AT_STOP)
            _done, calls = await asyncio.wait(calls, timeout=CALL_FINISH_AT_STOP)
        for line in self.lines.values():
            line.cancel.set()
        if calls:
            log.info("cancelling_calls", calls=len(calls))
            _done, late = await asyncio.wait(calls, timeout=CALL_STOP_WAIT)
            for t in late:
                t.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._route_timer is not None:
            self._route_timer.cancel()
            self._route_timer = None
        # held rejections of a route not suspect: uploaded as they are (as their
        # rejection_hold would have); a suspect route's numbers are back on their
        # lines, cleared above: the server hands them out again
        await self._spool_held([h for w in self._routes.values() for h in w.release_all()])
        await self.keeper.last_try()
        # bounded wait for the uploads; what is left stays in the spool
        deadline = time.monotonic() + UPLOAD_WAIT_ON_STOP
        while len(self.spool) and time.monotonic() < deadline and self.client_id:
            if await self.uploader.drain_once():
                break
            await asyncio.sleep(0.2)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.status.flush(), timeout=2.0)
        # every line un-REGISTERs at once: one after the other, a PBX that does not
        # answer held each for its timeout (24 lines: 72 s, past systemd's 40 s)
        await asyncio.gather(
            *(
                asyncio.wait_for(self._drop_line(line), timeout=UNREGISTER_WAIT_ON_STOP)
                for line in list(self.lines.values())
            ),
            return_exceptions=True,
        )
        for t in (*self._tasks, *self._rechecks):
            t.cancel()
        await asyncio.gather(*self._tasks, *self._rechecks, return_exceptions=True)
        await self._leave()
        await self.client.close()
        log.info(
            "stopped",
            spooled=len(self.spool),
            decided=self.decided,
            started_held=self.started_held,
        )

    async def _leave(self) -> None:
        """Tell the server we are gone (ext /leave), so the daemon started in our place
        gets the accounts at once: otherwise they stay ours until the server's
        `leases.client_timeout` (60 s) and the new daemon's lines stand idle that
        long. Only with nothing left in the spool: a number whose upload waits
        there is still ours, and freed now it would be dialled again before that
        upload came in. A server without /leave answers 404: no harm, the lease
        then ends at its timeout."""
        kept = self.keeper.kept_in_fallback()
        if not self.client_id or len(self.spool) or self._unspooled or kept:
            return
        try:
            out = await asyncio.wait_for(self.client.leave(self.client_id), LEAVE_WAIT_ON_STOP)
        except (ControlError, TimeoutError) as exc:
            log.info("leave_not_taken", reason=str(exc) or type(exc).__name__)
            return
        log.info("left_the_server", accounts=out.get("accounts"), numbers=out.get("numbers"))


def _cut_short(record: CallRecord) -> bool:
    """A call that ended (with the daemon stopping) before the audio or the
    signalling said anything of the number: no final response but the 487 to our
    own CANCEL, or none at all (given up, CALL_GIVE_UP_AT_STOP), and no verdict. A
    180 (`ringing`), another final response or a decision all say something."""
    code = record.fields.get("sipCode")
    ours = code in ("", None) or (code == 487 and bool(record.fields.get("cancelledByUs")))
    return ours and record.verdict == "unknown"


def _rss_mb() -> float | None:
    """This process's resident memory in MB (Linux /proc), None where unreadable."""
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def _failed_record(config: DaemonConfig, exc: BaseException) -> CallRecord:
    """A zero-frame WAV and `failed` fields for a call we could not make.

    The WAV is built in memory: the failure may be the recordings folder itself
    (a file in its place, a full disk), and writing there raised again from the
    error handler, so the call's task died and its number was never uploaded."""
    from sipclient.media.recorder import Recorder

    path = config.recordings.dir / f"failed-{time.time_ns()}.wav"
    data = Recorder(path, in_memory=True).close().data
    return CallRecord(
        path,
        {
            "sipCode": "",
            "sipReason": f"local failure: {type(exc).__name__}: {exc}"[:200],
            "q850Cause": "",
            "answered": 0,
            "earlyMedia": 0,
            "startedAt": int(time.time() * 1000),
            "ringMs": 0,
            "mediaMs": 0,
            "localVerdict": "failed",
            "localConfidence": 0.0,
        },
        "failed",
        data,
    )


async def _amain(config: DaemonConfig, config_path: Path | None) -> int:
    loop = asyncio.get_running_loop()
    # the calls the last run left up (killed -9, crashed) are ended first thing
    journal, leftovers = CallJournal.open(config.spool.dir)
    ending = loop.create_task(end_leftovers(leftovers), name="leftovers")
    stack = SipSide(config)
    stack.journal = journal
    await stack.start()
    daemon = Daemon(config, stack.backend)
    daemon.library_user = stack
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stop)

    reloads: set[asyncio.Task[None]] = set()  # referenced until done

    def reload_config() -> None:
        if config_path is None:
            return
        fresh = load_config(DaemonConfig, config_path)
        configure(fresh.log.level, fresh.log.format)
        task = loop.create_task(stack.reload_library(fresh))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    daemon.on_reload(reload_config)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload)
    heap = HeapPolicy()
    heap.install()  # what the start built lives as long as the process (agent/heap.py)
    try:
        return await daemon.run()
    finally:
        await stack.close()
        await ending
        journal.close()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        log.info("gc_pauses", **heap.figures())
        log.info("audio_analysis", **stack.analysis.figures())
        heap.remove()


def run_main(args: argparse.Namespace, config: DaemonConfig) -> int:
    """Entry of `sipclient run --config FILE`."""
    configure(config.log.level, config.log.format)
    config.recordings.dir.mkdir(parents=True, exist_ok=True)
    try:
        held = [claim(config.spool.dir)]  # released when the process ends
    except SpoolBusy as exc:
        raise ConfigError("spool.dir", f"{exc}: each daemon needs its own") from None
    try:
        fallback = fallback_folder(config.spool.fallback, os.environ)
        if fallback is not None:
            with contextlib.suppress(OSError):  # unusable: the daemon says so and goes on
                held.append(claim(fallback))
    except SpoolBusy as exc:
        for fd in held:
            os.close(fd)
        raise ConfigError("spool.fallback", f"{exc}: each daemon needs its own") from None
    try:
        return asyncio.run(_amain(config, getattr(args, "config", None)))
    finally:
        for fd in held:
            os.close(fd)
