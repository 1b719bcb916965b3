"""Chaos soak of the no-loss guarantees: the demo's world under random faults.

    .venv/bin/python bench/soak.py [--seed 1] [--minutes 5] [--lines 12] [--numbers 500]
                                   [--faults kill9,sigstop,...] [--workdir DIR] [--keep]
    .venv/bin/python bench/soak.py --analyse DIR      # check a kept run's folder again

The world's lease timings can be set to the shipped defaults' ratios with
`--client-timeout`, `--heartbeat`, `--poll-max`, `--sweep-interval`
(defaults 10, 2, 1, 1 s: the demo's); `--max-tries` (default 2) lets the
server dial a transient outcome again.

Builds `sipclient.demo.World` on loopback (server, kamailio, one sipp carrier per
outcome of the demo's mix, the daemon), pushes `--numbers` numbers of that mix
in many pushes spread over the run (some one task per number, some one task for
the whole push), and meanwhile injects faults, one at a time, at moments and
for durations drawn from a `random.Random(--seed)`:

- `kill9`: kill -9 the daemon, start it again after 0-5 s;
- `sigterm`: SIGTERM the daemon (it must exit 0), start it again after 0-5 s;
- `sigstop`: SIGSTOP the daemon for 1-15 s, then SIGCONT (past the server's
  `client_timeout`, 10 s here, the server reclaims its lease: by design);
- `server`: SIGTERM the server, start it again on the same DB after 5-40 s;
- `server_kill9`: kill -9 the server, start it again after 0-10 s;
- `kamailio`: restart kamailio on its port (registrations are lost);
- `kamailio_freeze`: SIGSTOP kamailio for 1-8 s (a hung PBX);
- `spool`: the daemon's spool folder replaced by a file for 2-12 s (as
  tests/e2e's spool test does: every write fails).
- `stranded`: the server stopped and the spool folder a file, then after 2-8 s
  (calls end meanwhile: their records are held) kill -9 the daemon; both mended,
  it starts again after 0-3 s. The records held then are in the fallback spool
  (the lab's daemon/run/spool, the units' RuntimeDirectory): their numbers must
  not be dialled again.

After `--minutes` no more faults are injected and every pushed number is waited
for (at most `--drain-timeout` s); the daemon is stopped with SIGTERM, everything
else by pid, and the run is checked from the files it left (the server's SQLite
DB, the daemon's and server's logs, the sipp carriers' message traces):

- every pushed number is one dialplan, finished once with a verdict, and every
  task finished with its callback delivered (once) to the return_url receiver,
  which got the same result as the DB holds;
- verdicts against what each carrier was told to do (right as `sipclient demo`
  judges it: the carrier's `expected` or `also_ok`); a wrong one is shown with
  the faults that overlapped its call (a call cancelled by a SIGTERM, or cut by
  a PBX restart, may legitimately end otherwise);
- every call's RTP: a call whose receiver latched onto another carrier's media
  stream (each carrier streams from the one port its SDP names) heard another
  call's audio;
- how often each number reached a carrier (INVITEs by Call-ID in the sipp
  traces); every number dialled more than once is listed with its timeline
  (server hand-outs, the daemon's calls and warnings, uploads and their
  outcome, faults) and a reason: expected (a kill -9 with the call in flight or
  not yet spooled, a freeze past client_timeout, a transient retry, a PBX fault
  re-try) or SUSPICIOUS;
- ERROR lines and tracebacks in the daemon's and the server's logs, grouped;
- what is left in the spool (and refused/, bad/);
- the daemon's exit codes on SIGTERM; a daemon or server that exited by itself;
- no process left running (every pid started, and any process in one of
  their process groups).

The report is printed and written to WORKDIR/report.json; the run's own record
(faults, daemon processes, pushes, pids) goes to WORKDIR/state.json first, so
`bench/soak.py --analyse WORKDIR` checks a kept folder again without a run.
Exit 0 when no invariant was violated, 1 otherwise (or on Ctrl-C). The work folder (a temp one
unless `--workdir`) is removed after a clean run unless `--keep`; a failed
run's folder is kept and its path printed. Only loopback is used; every process
the soak starts is stopped by pid, also on Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import itertools
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sipclient.demo import (
    CARRIERS,
    LIVE_EXTRAS,
    CallbackReceiver,
    Carrier,
    World,
    WorldOptions,
    carrier_for,
    numbers_for,
)
from sipclient.lab.kamailio import LabError

FAULT_WEIGHTS: dict[str, float] = {
    "kill9": 3.0,
    "sigterm": 2.0,
    "sigstop": 2.0,
    "server": 2.0,
    "server_kill9": 1.0,
    "kamailio": 1.5,
    "kamailio_freeze": 1.0,
    "spool": 1.0,
    "stranded": 1.0,
}

PBX_FAULTS = {"kamailio", "kamailio_freeze"}
DAEMON_GONE = {"kill9", "sigterm"}


def _epoch(stamp: str) -> float:
    """A naive local ISO time (the logs', sipp's) as epoch seconds."""
    return dt.datetime.fromisoformat(stamp).timestamp()


def _clock(t: float) -> str:
    return dt.datetime.fromtimestamp(t).strftime("%H:%M:%S.%f")[:-3]


# ------------------------------------------------------------------- records


@dataclass
class Fault:
    """One injected fault: what, from when to when (epoch s), and what happened."""

    kind: str
    start: float
    end: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)

    def overlaps(self, a: float, b: float, slack: float = 0.0) -> bool:
        end = self.end or time.time()
        return self.start - slack <= b and a <= end + slack


@dataclass
class Incarnation:
    """One daemon process: its pid, start, where its lines begin in daemon.log."""

    pid: int
    started: float
    log_offset: int
    ended: float = 0.0
    how: str = ""
    exit_code: int | None = None


@dataclass
class Push:
    at: float
    phones: list[str]
    task_ids: list[int]
    one_task_each: bool


@dataclass
class Invite:
    """An INVITE a carrier received (one per Call-ID)."""

    at: float
    call_id: str
    phone: str
    carrier: str


class SoakReceiver(CallbackReceiver):
    """The demo's return_url receiver that also counts deliveries per task."""

    def __init__(self) -> None:
        super().__init__()
        self.task_deliveries: Counter[int] = Counter()
        self.task_results: dict[int, dict[str, str]] = {}

    def on_task(self, data: dict[str, Any]) -> None:
        with contextlib.suppress(TypeError, ValueError):
            task_id = int(data.get("id"))  # type: ignore[arg-type]
            self.task_deliveries[task_id] += 1
            self.task_results[task_id] = {
                str(dp.get("phone")): str(dp.get("result"))
                for dp in data.get("dialplans") or []
                if isinstance(dp, dict)
            }


# ---------------------------------------------------------------------- soak


class Soak:
    """The world, the faults injected into it, and everything started (by pid)."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.rng = random.Random(args.seed)
        carriers: tuple[Carrier, ...] = CARRIERS + (LIVE_EXTRAS if args.extras else ())
        self.options = WorldOptions(
            lines=args.lines,
            carriers=carriers,
            client_timeout=args.client_timeout,
            number_timeout=args.number_timeout,
            max_tries=args.max_tries,
            heartbeat=getattr(args, "heartbeat", 2.0),
            poll_min=0.2,
            poll_max=getattr(args, "poll_max", 1.0),
            sweep_interval=getattr(args, "sweep_interval", 1.0),
        )
        self.world = World(workdir, self.options)
        self.receiver = SoakReceiver()
        self.world.receiver = self.receiver
        self.faults: list[Fault] = []
        self.incarnations: list[Incarnation] = []
        self.pushes: list[Push] = []
        self.pids: dict[int, str] = {}
        self.problems: list[str] = []
        """Things seen during the run (a process that exited by itself, a bad exit code)."""
        self.server_lock = asyncio.Lock()
        """Held by a push and by a server fault: a push never meets a server going away."""
        self.fault_active = False
        self.frozen = False
        self.spool_moved: Path | None = None
        self.t0 = time.time()
        self.injecting_until = 0.0

    # ------------------------------------------------------------ pieces

    @property
    def daemon_log(self) -> Path:
        return self.world.daemon_dir(0) / "daemon.log"

    @property
    def spool(self) -> Path:
        return self.world.daemon_dir(0) / "spool"

    def say(self, text: str) -> None:
        print(f"[{time.time() - self.t0:7.1f}s] {text}", flush=True)

    def start_daemon(self) -> None:
        offset = self.daemon_log.stat().st_size if self.daemon_log.exists() else 0
        self.world.start_daemon()
        assert self.world.daemon is not None
        pid = self.world.daemon.pid
        self.pids[pid] = "daemon"
        self.incarnations.append(Incarnation(pid, time.time(), offset))

    def _daemon_ended(self, how: str, code: int | None) -> None:
        if self.incarnations and not self.incarnations[-1].ended:
            inc = self.incarnations[-1]
            inc.ended, inc.how, inc.exit_code = time.time(), how, code

    def start_server(self) -> None:
        self.world.start_server()
        assert self.world.server is not None
        self.pids[self.world.server.pid] = "server"

    def _note_peers(self) -> None:
        k = self.world.kamailio
        if k is not None and k.proc is not None:
            self.pids[k.proc.pid] = "kamailio"
        for name, sipp in self.world.carriers.items():
            if sipp.proc is not None:
                self.pids[sipp.proc.pid] = f"sipp {name}"

    # ------------------------------------------------------------ faults

    async def _hold(self, lo: float, hi: float) -> float:
        seconds = round(self.rng.uniform(lo, hi), 2)
        await asyncio.sleep(seconds)
        return seconds

    async def fault_kill9(self, f: Fault) -> None:
        assert self.world.daemon is not None
        f.detail["pid"] = self.world.daemon.pid
        await asyncio.to_thread(self.world.kill_daemon)
        self._daemon_ended("kill9", -9)
        f.detail["down_s"] = await self._hold(0.0, 5.0)
        self.start_daemon()
        f.detail["new_pid"] = self.incarnations[-1].pid

    async def fault_sigterm(self, f: Fault) -> None:
        assert self.world.daemon is not None
        f.detail["pid"] = self.world.daemon.pid
        t = time.monotonic()
        code = await asyncio.to_thread(self.world.stop_daemon, 40.0)
        f.detail["exit_code"] = code
        f.detail["stop_s"] = round(time.monotonic() - t, 2)
        self._daemon_ended("sigterm", code)
        if code != 0:
            self.problems.append(f"daemon pid {f.detail['pid']} exited {code} on SIGTERM")
        f.detail["down_s"] = await self._hold(0.0, 5.0)
        self.start_daemon()
        f.detail["new_pid"] = self.incarnations[-1].pid

    async def fault_sigstop(self, f: Fault) -> None:
        assert self.world.daemon is not None
        pid = self.world.daemon.pid
        f.detail["pid"] = pid
        os.killpg(pid, signal.SIGSTOP)
        self.frozen = True
        try:
            f.detail["frozen_s"] = await self._hold(1.0, 15.0)
        finally:
            os.killpg(pid, signal.SIGCONT)
            self.frozen = False

    async def fault_server(self, f: Fault) -> None:
        async with self.server_lock:
            await asyncio.to_thread(self.world.stop_server)
            f.detail["down_s"] = await self._hold(5.0, 40.0)
            await asyncio.to_thread(self.start_server)

    async def fault_server_kill9(self, f: Fault) -> None:
        async with self.server_lock:
            proc = self.world.server
            assert proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 10)
            await asyncio.to_thread(self.world.stop_server)  # closes its log
            f.detail["down_s"] = await self._hold(0.0, 10.0)
            await asyncio.to_thread(self.start_server)

    async def fault_kamailio(self, f: Fault) -> None:
        await asyncio.to_thread(self.world.restart_kamailio)
        self._note_peers()

    async def fault_kamailio_freeze(self, f: Fault) -> None:
        k = self.world.kamailio
        assert k is not None
        k.freeze(True)
        try:
            f.detail["frozen_s"] = await self._hold(1.0, 8.0)
        finally:
            k.freeze(False)

    async def fault_spool(self, f: Fault) -> None:
        away = self.spool.with_name("spool.away")
        self.spool.rename(away)
        self.spool_moved = away
        self.spool.write_text("not a folder\n")
        try:
            f.detail["away_s"] = await self._hold(2.0, 12.0)
        finally:
            self._restore_spool()

    async def fault_stranded(self, f: Fault) -> None:
        assert self.world.daemon is not None
        f.detail["pid"] = self.world.daemon.pid
        async with self.server_lock:
            await asyncio.to_thread(self.world.stop_server)
            away = self.spool.with_name("spool.away")
            self.spool.rename(away)
            self.spool_moved = away
            self.spool.write_text("not a folder\n")
            try:
                f.detail["held_s"] = await self._hold(2.0, 8.0)
                await asyncio.to_thread(self.world.kill_daemon)
                self._daemon_ended("kill9", -9)
                kept = self.world.daemon_dir(0) / "run" / "spool"
                f.detail["kept"] = sorted(
                    json.loads(m.read_text()).get("phone", "") for m in kept.glob("*.json")
                )
            finally:
                self._restore_spool()
                await asyncio.to_thread(self.start_server)
        f.detail["down_s"] = await self._hold(0.0, 3.0)
        self.start_daemon()
        f.detail["new_pid"] = self.incarnations[-1].pid

    def _restore_spool(self) -> None:
        if self.spool_moved is None:
            return
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            if self.spool.is_file():
                self.spool.unlink()
        self.spool_moved.rename(self.spool)
        self.spool_moved = None

    async def inject(self, kind: str) -> None:
        f = Fault(kind, time.time())
        self.faults.append(f)
        act: Callable[[Fault], Awaitable[None]] = getattr(self, f"fault_{kind}")
        self.say(f"fault {len(self.faults)}: {kind} ...")
        self.fault_active = True
        try:
            await act(f)
        except LabError as exc:
            f.detail["error"] = str(exc)[:500]
            self.problems.append(f"fault {kind}: a peer did not come back: {exc}"[:600])
            raise
        finally:
            f.end = time.time()
            self.fault_active = False
        extra = ", ".join(f"{k}={v}" for k, v in f.detail.items())
        self.say(f"fault {len(self.faults)}: {kind} done in {f.end - f.start:.1f} s ({extra})")

    async def injector(self) -> None:
        kinds = [k for k in self.args.faults if k in FAULT_WEIGHTS]
        weights = [FAULT_WEIGHTS[k] for k in kinds]
        await asyncio.sleep(self.rng.uniform(5.0, 12.0))
        while time.time() < self.injecting_until:
            await self.inject(self.rng.choices(kinds, weights)[0])
            await asyncio.sleep(self.rng.uniform(self.args.gap_min, self.args.gap_max))

    # ------------------------------------------------------------ pushes

    def _push_plan(self, phones: list[str]) -> list[tuple[float, list[str]]]:
        """(seconds after the start, phones) for each push, the last at 3/4 of the run."""
        chunks: list[list[str]] = []
        first = max(1, len(phones) // 10)
        chunks.append(phones[:first])
        i = first
        while i < len(phones):
            n = self.rng.randint(5, 40)
            chunks.append(phones[i : i + n])
            i += n
        span = 0.75 * self.args.minutes * 60
        times = sorted(self.rng.uniform(2.0, span) for _ in chunks[1:])
        return list(zip([0.0, *times], chunks, strict=True))

    async def push(self, phones: list[str]) -> None:
        one_each = self.rng.random() < 0.5
        url = self.receiver.url
        ids: list[int] = []
        async with self.server_lock:
            if one_each:
                for p in phones:
                    data = await self.world.post("/api/dialplan", {"phone": [p], "return_url": url})
                    ids.append(int(data["data"]["task_id"]))
            else:
                data = await self.world.post("/api/dialplan", {"phone": phones, "return_url": url})
                ids.append(int(data["data"]["task_id"]))
        self.pushes.append(Push(time.time(), phones, ids, one_each))
        how = f"{len(ids)} tasks" if one_each else f"task {ids[0]}"
        self.say(f"pushed {len(phones)} numbers ({how})")

    async def pusher(self, phones: list[str]) -> None:
        for at, chunk in self._push_plan(phones):
            await asyncio.sleep(max(0.0, self.t0 + at - time.time()))
            await self.push(chunk)

    # ------------------------------------------------------------ watch

    async def watcher(self) -> None:
        """A daemon or server that exited by itself is a problem: say so, start it again."""
        last = 0.0
        while True:
            await asyncio.sleep(1.0)
            if not self.fault_active:
                d = self.world.daemon
                if d is not None and d.poll() is not None:
                    self.problems.append(f"daemon pid {d.pid} exited by itself with {d.returncode}")
                    self.say(f"PROBLEM: daemon exited by itself ({d.returncode}); restarting")
                    self._daemon_ended("exited", d.returncode)
                    self.world.daemon = None
                    self.start_daemon()
                s = self.world.server
                if s is not None and s.poll() is not None and not self.server_lock.locked():
                    self.problems.append(f"server pid {s.pid} exited by itself with {s.returncode}")
                    self.say(f"PROBLEM: server exited by itself ({s.returncode}); restarting")
                    await asyncio.to_thread(self.world.stop_server)
                    await asyncio.to_thread(self.start_server)
            if time.time() - last >= 20:
                last = time.time()
                pushed = sum(len(p.phones) for p in self.pushes)
                done = len(self.receiver.verdicts.results)
                self.say(f"progress: {done}/{pushed} pushed numbers called back")

    # ------------------------------------------------------------ run

    async def run(self) -> dict[str, Any]:
        args = self.args
        phones = numbers_for(args.numbers, self.options.carriers)
        self.rng.shuffle(phones)
        watcher: asyncio.Task[None] | None = None
        try:
            self.say(f"starting the world in {self.workdir} (seed {args.seed})")
            await self.world.start(daemon=False)
            assert self.world.server is not None
            self.pids[self.world.server.pid] = "server"
            self._note_peers()
            self.start_daemon()
            await asyncio.sleep(2.0)
            self.t0 = time.time()
            self.injecting_until = self.t0 + args.minutes * 60
            watcher = asyncio.create_task(self.watcher())
            await asyncio.gather(self.pusher(phones), self.injector())
            self.say(f"faults stopped after {len(self.faults)}; waiting for every number")
            drained = await self.world.wait_for(phones, args.drain_timeout)
            missing = sorted(set(phones) - set(self.receiver.verdicts.results))
            self.say(
                "every number called back"
                if drained
                else f"{len(missing)} numbers without a callback after {args.drain_timeout} s"
            )
            await asyncio.sleep(5.0)  # late duplicates, if any
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            watcher = None
            t = time.monotonic()
            code = await asyncio.to_thread(self.world.stop_daemon, 40.0)
            self._daemon_ended("final sigterm", code)
            self.say(f"daemon stopped: exit {code} in {time.monotonic() - t:.1f} s")
            if code != 0:
                self.problems.append(f"final SIGTERM: the daemon exited {code}")
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
            await self.cleanup()
        self.save_state(phones)
        return Analysis(self, phones).report()

    def save_state(self, phones: list[str]) -> None:
        state = {
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(self.args).items()},
            "phones": phones,
            "faults": [asdict(f) for f in self.faults],
            "incarnations": [asdict(i) for i in self.incarnations],
            "pushes": [asdict(p) for p in self.pushes],
            "pids": self.pids,
            "problems": self.problems,
            "task_deliveries": dict(self.receiver.task_deliveries),
            "results": {p: r for p, (r, _) in self.receiver.verdicts.results.items()},
            "duplicates": self.receiver.verdicts.duplicates,
        }
        (self.workdir / "state.json").write_text(json.dumps(state, indent=1))

    @classmethod
    def load(cls, workdir: Path) -> tuple[Soak, list[str]]:
        """A finished run's Soak from its state.json (for `--analyse`)."""
        state = json.loads((workdir / "state.json").read_text())
        args = argparse.Namespace(**state["args"])
        soak = cls(args, workdir)
        soak.faults = [Fault(**f) for f in state["faults"]]
        soak.incarnations = [Incarnation(**i) for i in state["incarnations"]]
        soak.pushes = [Push(**p) for p in state["pushes"]]
        soak.pids = {int(k): v for k, v in state["pids"].items()}
        soak.problems = state["problems"]
        soak.receiver.task_deliveries = Counter(
            {int(k): v for k, v in state["task_deliveries"].items()}
        )
        soak.receiver.verdicts.results = {p: (r, {}) for p, r in state["results"].items()}
        soak.receiver.verdicts.duplicates = state["duplicates"]
        return soak, state["phones"]

    async def cleanup(self) -> None:
        """Undo a fault in progress and stop everything, by pid; never raises."""
        d = self.world.daemon
        if self.frozen and d is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(d.pid, signal.SIGCONT)
            self.frozen = False
        with contextlib.suppress(Exception):
            self._restore_spool()
        self._note_peers()
        await self.world.stop()
        for inc in self.incarnations:
            if not inc.ended:
                inc.ended, inc.how = time.time(), "cleanup"


# ------------------------------------------------------------------ analysis


def _json_lines(
    path: Path, start: int = 0, end: int | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """(JSON log events, other lines) of a log file between bytes `start` and `end`."""
    events: list[dict[str, Any]] = []
    other: list[str] = []
    try:
        with path.open("rb") as fh:
            fh.seek(start)
            raw = fh.read() if end is None else fh.read(max(0, end - start))
            data = raw.decode("utf-8", errors="replace")
    except OSError:
        return events, other
    for line in data.splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
                continue
            except ValueError:
                pass
        if line.strip():
            other.append(line)
    return events, other


_TRACE_STAMP = re.compile(r"^-{20,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)[^\n]*\n", re.MULTILINE)


def carrier_invites(folder: Path, name: str) -> list[Invite]:
    """Every INVITE (one per Call-ID) a carrier's sipp received, from its trace."""
    try:
        text = (folder / "messages.log").read_text(errors="replace")
    except OSError:
        return []
    parts = _TRACE_STAMP.split(text)
    seen: dict[str, Invite] = {}
    for i in range(1, len(parts) - 1, 2):
        stamp, chunk = parts[i], parts[i + 1]
        head, _, msg = chunk.lstrip("\n").partition("\n")
        if "received" not in head:
            continue
        msg = msg.lstrip("\n")
        if not msg.startswith("INVITE "):
            continue
        call_id = ""
        for line in msg.replace("\r\n", "\n").split("\n")[1:]:
            key, sep, value = line.partition(":")
            if not sep:
                break
            if key.strip().lower() in ("call-id", "i"):
                call_id = value.strip()
                break
        uri = msg.split(" ", 2)[1]
        user = uri.split(":", 1)[-1].split("@", 1)[0]
        if call_id and call_id not in seen:
            seen[call_id] = Invite(_epoch(stamp), call_id, user, name)
    return list(seen.values())


_MEDIA_PORT = re.compile(r"o=carrier [^\n]*\n(?:[^\n]*\n){0,3}?m=audio (\d+)")


def carrier_media_port(folder: Path) -> int | None:
    """The port a carrier's sipp streams its early media from (its SDP's m= line)."""
    try:
        text = (folder / "messages.log").read_text(errors="replace").replace("\r", "")
    except OSError:
        return None
    found = _MEDIA_PORT.search(text)
    return int(found.group(1)) if found else None


class Analysis:
    """Everything checked after the run, from the files the world left."""

    def __init__(self, soak: Soak, phones: list[str], *, stop_left: bool = True) -> None:
        self.soak = soak
        self.stop_left = stop_left
        """Stop (SIGKILL, by pid) a process of ours found left running."""
        self.world = soak.world
        self.phones = phones
        self.pushed = [p for push in soak.pushes for p in push.phones]
        self.violations: list[str] = []
        self.notes: list[str] = []
        self.crossed: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------ data

    def _db(self) -> dict[str, list[sqlite3.Row]]:
        path = self.world.workdir / "server" / "sipclient.db"
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        db.row_factory = sqlite3.Row
        try:
            return {
                t: db.execute(f"SELECT * FROM {t}").fetchall()
                for t in ("tasks", "dialplans", "handouts", "recordings")
            }
        finally:
            db.close()

    def _daemon_events(self) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
        """Every daemon event (with `_inc`: its incarnation) and its non-JSON lines."""
        out: list[dict[str, Any]] = []
        other: list[tuple[int, str]] = []
        incs = self.soak.incarnations
        for i, inc in enumerate(incs):
            end = incs[i + 1].log_offset if i + 1 < len(incs) else None
            events, lines = _json_lines(self.soak.daemon_log, inc.log_offset, end)
            for e in events:
                e["_inc"] = i
                with contextlib.suppress(KeyError, ValueError, TypeError):
                    e["_t"] = _epoch(str(e["timestamp"]))
            out.extend(events)
            other.extend((i, x) for x in lines)
        return out, other

    def faults_near(self, a: float, b: float, slack: float = 1.0) -> list[Fault]:
        return [f for f in self.soak.faults if f.overlaps(a, b, slack)]

    @staticmethod
    def _fault_str(faults: list[Fault]) -> str:
        return ", ".join(f"{f.kind}@{_clock(f.start)}-{_clock(f.end)}" for f in faults) or "none"

    # ------------------------------------------------------------ report

    def report(self) -> dict[str, Any]:
        soak = self.soak
        db = self._db()
        dev, dother = self._daemon_events()
        sev, sother = _json_lines(self.world.workdir / "server" / "server.log")
        for e in sev:
            with contextlib.suppress(KeyError, ValueError, TypeError):
                e["_t"] = _epoch(str(e["timestamp"]))
        invites: list[Invite] = []
        for c in self.world.options.carriers:
            invites += carrier_invites(self.world.workdir / "carriers" / c.name, c.name)

        out: dict[str, Any] = {
            "seed": soak.args.seed,
            "workdir": str(self.world.workdir),
            "minutes": soak.args.minutes,
            "lines": soak.args.lines,
            "numbers_pushed": len(self.pushed),
            "pushes": len(soak.pushes),
            "tasks": sum(len(p.task_ids) for p in soak.pushes),
            "faults": [asdict(f) for f in soak.faults],
            "fault_counts": dict(Counter(f.kind for f in soak.faults)),
            "daemons": [asdict(i) for i in soak.incarnations],
        }
        out["db"] = self.check_db(db)
        out["callbacks"] = self.check_callbacks(db)
        out["rtp"] = self.check_rtp(dev)
        out["verdicts"] = self.check_verdicts(db, dev)
        out["dials"] = self.check_dials(db, dev, sev, invites)
        out["logs"] = self.check_logs(dev, dother, sev, sother)
        out["spool"] = self.check_spool()
        out["processes"] = self.check_processes()
        for p in soak.problems:
            self.violations.append(p)
        out["violations"] = self.violations
        out["notes"] = self.notes
        return out

    def check_db(self, db: dict[str, list[sqlite3.Row]]) -> dict[str, Any]:
        by_phone: dict[str, list[sqlite3.Row]] = defaultdict(list)
        for r in db["dialplans"]:
            by_phone[r["phone"]].append(r)
        not_pushed = len(set(self.phones) - set(self.pushed))
        if not_pushed:
            self.violations.append(f"{not_pushed} numbers were never pushed (the run ended early)")
        missing = [p for p in self.pushed if p not in by_phone]
        twice = [p for p in self.pushed if len(by_phone.get(p, [])) > 1]
        unfinished = [
            (p, r["status"], r["result"])
            for p in self.pushed
            for r in by_phone.get(p, [])
            if r["status"] != "finish" or not r["result"]
        ]
        ids = {i for push in self.soak.pushes for i in push.task_ids}
        tasks = {r["id"]: r for r in db["tasks"]}
        bad_tasks = [
            (i, tasks[i]["status"], tasks[i]["callback_state"])
            if i in tasks
            else (i, "missing", "")
            for i in sorted(ids)
            if i not in tasks
            or tasks[i]["status"] != "finish"
            or tasks[i]["callback_state"] != "delivered"
        ]
        for what, items in (
            ("pushed numbers with no dialplan in the DB", missing),
            ("pushed numbers with more than one dialplan", twice),
            ("dialplans not finished with a verdict", unfinished),
            ("tasks not finished with the callback delivered", bad_tasks),
        ):
            if items:
                self.violations.append(f"{len(items)} {what}: {items[:10]}")
        return {
            "dialplans": len(db["dialplans"]),
            "missing": missing,
            "more_than_one": twice,
            "unfinished": unfinished,
            "tasks_not_done": bad_tasks,
            "results": dict(Counter(r["result"] for r in db["dialplans"])),
        }

    def check_callbacks(self, db: dict[str, list[sqlite3.Row]]) -> dict[str, Any]:
        rcv = self.soak.receiver
        ids = [i for push in self.soak.pushes for i in push.task_ids]
        never = [i for i in ids if rcv.task_deliveries[i] == 0]
        dup = {i: rcv.task_deliveries[i] for i in ids if rcv.task_deliveries[i] > 1}
        results = {r["phone"]: r["result"] for r in db["dialplans"]}
        differ = [
            (p, rcv.verdicts.results[p][0], results.get(p))
            for p in self.pushed
            if p in rcv.verdicts.results and rcv.verdicts.results[p][0] != results.get(p)
        ]
        if never:
            self.violations.append(f"{len(never)} tasks never called back: {never[:10]}")
        if differ:
            self.violations.append(f"{len(differ)} callbacks differ from the DB: {differ[:10]}")
        if rcv.verdicts.duplicates:
            self.violations.append(
                f"a phone called back with two different results: {rcv.verdicts.duplicates[:10]}"
            )
        dup_notes = []
        for task_id, n in dup.items():
            # at least once: a server stopped between the receiver's 2xx and its write
            server = [f for f in self.soak.faults if f.kind in ("server", "server_kill9")]
            dup_notes.append(f"task {task_id} delivered {n} times (server faults: {len(server)})")
        if dup:
            self.notes.append(
                "duplicate callbacks (at least once across a server stop is documented): "
                + "; ".join(dup_notes[:10])
            )
        return {
            "tasks": len(ids),
            "never_delivered": never,
            "delivered_more_than_once": dup,
            "differ_from_db": differ,
        }

    def _finishing_recording(
        self, db: dict[str, list[sqlite3.Row]], dialplan_id: int
    ) -> sqlite3.Row | None:
        rows = [
            r
            for r in db["recordings"]
            if r["dialplan_id"] == dialplan_id and r["outcome"] == "finished"
        ]
        return rows[-1] if rows else None

    def check_rtp(self, dev: list[dict[str, Any]]) -> dict[str, Any]:
        """Calls whose RTP receiver latched onto another carrier's stream.

        Every carrier streams from one media port (its SDP): a call latched to
        another carrier's port heard another call's audio (a stream still
        playing to a port we reused), and its verdict is that audio's.
        """
        carriers = self.world.options.carriers
        media: dict[str, int | None] = {
            c.name: carrier_media_port(self.world.workdir / "carriers" / c.name) for c in carriers
        }
        by_port = {v: k for k, v in media.items() if v is not None}
        crossed: list[dict[str, Any]] = []
        for e in dev:
            rtp = e.get("rtp") if e.get("event") == "call_classified" else None
            if not isinstance(rtp, dict) or not rtp.get("latched"):
                continue
            c = carrier_for(str(e.get("phone")), carriers)
            port = int(str(rtp["latched"]).rsplit(":", 1)[1])
            if c is None or media.get(c.name) in (None, port):
                continue
            crossed.append(
                {
                    "phone": e.get("phone"),
                    "carrier": c.name,
                    "latched_to": by_port.get(port, f"port {port}"),
                    "verdict": e.get("verdict"),
                    "packets": rtp.get("packets"),
                    "foreign": rtp.get("foreign"),
                    "at": str(e.get("timestamp"))[11:23],
                    "daemon": e.get("_inc"),
                    "call_ms": e.get("call_ms"),
                }
            )
        self.crossed = {str(x["phone"]): x for x in crossed}
        if crossed:
            self.violations.append(
                f"{len(crossed)} calls heard another call's RTP (latched to another carrier's"
                f" stream): {[(x['phone'], x['latched_to'], x['verdict']) for x in crossed[:12]]}"
            )
        return {"carrier_media_ports": media, "cross_latched": crossed}

    def check_verdicts(
        self, db: dict[str, list[sqlite3.Row]], dev: list[dict[str, Any]]
    ) -> dict[str, Any]:
        carriers = self.world.options.carriers
        per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        wrong: list[dict[str, Any]] = []
        for r in db["dialplans"]:
            c = carrier_for(r["phone"], carriers)
            if c is None or r["phone"] not in self.pushed or not r["result"]:
                continue
            ok = r["result"] == c.expected or r["result"] in c.also_ok
            per[c.name][0 if ok else 1] += 1
            if ok:
                continue
            item: dict[str, Any] = {
                "phone": r["phone"],
                "carrier": c.name,
                "expected": c.expected,
                "got": r["result"],
            }
            rec = self._finishing_recording(db, r["id"])
            detail = json.loads(r["detail"] or "{}")
            item["evidence"] = detail.get("evidence")
            if rec is not None:
                fields = json.loads(rec["fields"])
                started = int(fields.get("startedAt") or 0) / 1000
                ring = int(fields.get("ringMs") or 0) / 1000
                end = started + max(ring, int(fields.get("mediaMs") or 0) / 1000) + 1
                item["sip"] = fields.get("sipCode")
                item["cancel_reason"] = fields.get("cancelReason")
                item["started"] = _clock(started) if started else None
                near = self.faults_near(started, end, 2.0) if started else []
                item["faults"] = self._fault_str(near)
                kinds = {f.kind for f in near}
                crossed = self.crossed.get(r["phone"])
                if crossed is not None:
                    why = (
                        f"RTP CROSS-TALK: latched to {crossed['latched_to']}'s stream"
                        f" ({crossed['foreign']} of its own packets dropped as foreign)"
                    )
                elif fields.get("cancelReason") == "shutdown":
                    why = "cancelled by the daemon's SIGTERM stop (its partial recording decided)"
                elif kinds & PBX_FAULTS:
                    why = "a PBX fault during the call"
                elif "sigstop" in kinds:
                    why = "the daemon was frozen during the call"
                elif kinds:
                    why = "a fault overlapped the call: check"
                else:
                    why = "UNEXPLAINED"
                item["why"] = why
            else:
                item["why"] = "no finishing recording (finished otherwise): check"
            wrong.append(item)
        stopped = [w["phone"] for w in wrong if str(w.get("why", "")).startswith("cancelled by")]
        if stopped:
            self.notes.append(
                f"{len(stopped)} numbers finished `unknown` (final, not dialled again) because"
                f" the daemon's SIGTERM cancelled their call before a verdict: {stopped[:10]}"
            )
        for w in wrong:
            if w["why"] == "UNEXPLAINED" or "check" in w["why"]:  # (cross-talk: check_rtp)
                self.violations.append(f"wrong verdict: {w}")
        return {"per_carrier": {k: {"right": v[0], "wrong": v[1]} for k, v in per.items()},
                "wrong": wrong}  # fmt: skip

    def check_dials(
        self,
        db: dict[str, list[sqlite3.Row]],
        dev: list[dict[str, Any]],
        sev: list[dict[str, Any]],
        invites: list[Invite],
    ) -> dict[str, Any]:
        by_phone: dict[str, list[Invite]] = defaultdict(list)
        for inv in invites:
            by_phone[inv.phone].append(inv)
        classified: dict[str, list[dict[str, Any]]] = defaultdict(list)
        phone_events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        session_of: dict[str, int] = {}
        for e in dev:
            if e.get("event") == "session":
                session_of[str(e.get("client_id"))] = e["_inc"]
            if "phone" in e:
                phone_events[str(e["phone"])].append(e)
                if e.get("event") == "call_classified":
                    classified[str(e["phone"])].append(e)
        plan_of = {r["phone"]: r for r in db["dialplans"]}
        handouts: dict[int, list[sqlite3.Row]] = defaultdict(list)
        for h in db["handouts"]:
            handouts[h["dialplan_id"]].append(h)
        recs: dict[int, list[sqlite3.Row]] = defaultdict(list)
        for rec in db["recordings"]:
            if rec["dialplan_id"] is not None:
                recs[rec["dialplan_id"]].append(rec)
        reclaims = [e for e in sev if e.get("event") == "leases reclaimed"]
        # a daemon leaving at its stop (ext /leave) ends its lease as an expiry would
        reclaims += [
            dict(e, clients=[e.get("clientId")]) for e in sev if e.get("event") == "client left"
        ]

        counts = Counter(len(by_phone.get(p, [])) for p in self.pushed)
        not_dialled = [
            p
            for p in self.pushed
            if not by_phone.get(p)
            and p in plan_of
            and (json.loads(plan_of[p]["detail"] or "{}").get("evidence") or {}).get("kind")
            not in ("not_dialable", "reused", "cancelled")
        ]
        multi: list[dict[str, Any]] = []
        for phone in self.pushed:
            calls = sorted(by_phone.get(phone, []), key=lambda i: i.at)
            if len(calls) < 2:
                continue
            plan = plan_of.get(phone)
            pid = plan["id"] if plan is not None else -1
            hs = sorted(handouts.get(pid, []), key=lambda h: h["leased_at"])
            rs = recs.get(pid, [])
            cls = {e.get("call_id"): e for e in classified.get(phone, [])}
            reasons: list[str] = []
            for prev, nxt in itertools.pairwise(calls):
                reasons.append(
                    self._why_again(prev, nxt, cls, hs, rs, reclaims, session_of, phone_events)
                )
            timeline = self._timeline(phone, calls, hs, rs, phone_events.get(phone, []), cls)
            item = {
                "phone": phone,
                "dials": len(calls),
                "handouts": len(hs),
                "uploads": [(r["client_id"][:8], r["outcome"]) for r in rs],
                "reasons": reasons,
                "timeline": timeline,
            }
            multi.append(item)
            if any(r.startswith("SUSPICIOUS") for r in reasons):
                self.violations.append(f"{phone} dialled {len(calls)} times: {'; '.join(reasons)}")
        if not_dialled:
            self.violations.append(
                f"{len(not_dialled)} numbers finished without reaching a carrier:"
                f" {not_dialled[:10]}"
            )
        extra_classified = [
            p for p, es in classified.items() if len(es) > len(by_phone.get(p, [])) and p
        ]
        if extra_classified:
            self.notes.append(
                f"numbers the daemon logged more calls for than reached a carrier (PBX faults):"
                f" {extra_classified[:10]}"
            )
        return {
            "dial_count_histogram": {str(k): v for k, v in sorted(counts.items())},
            "invites_total": len(invites),
            "call_classified_total": sum(len(v) for v in classified.values()),
            "dialled_more_than_once": multi,
            "finished_without_a_dial": not_dialled,
            "_session_of": {k[:8]: v for k, v in session_of.items()},
        }

    def _why_again(
        self,
        prev: Invite,
        nxt: Invite,
        cls: dict[Any, dict[str, Any]],
        hs: list[sqlite3.Row],
        rs: list[sqlite3.Row],
        reclaims: list[dict[str, Any]],
        session_of: dict[str, int],
        phone_events: dict[str, list[dict[str, Any]]],
    ) -> str:
        """Why `nxt` dialled the number again after `prev`: expected, or SUSPICIOUS."""
        soak = self.soak
        ct = soak.args.client_timeout
        done = cls.get(prev.call_id)
        # the upload of prev: the recording whose startedAt is just before its INVITE
        # (nearer to it than to nxt's: a daemon restarted within a second dials the
        # number again 2-3 s later, and that call's upload is not prev's)
        prev_rec = None
        window = min(3.0, (nxt.at - prev.at) / 2)
        for r in rs:
            started = int(json.loads(r["fields"]).get("startedAt") or 0) / 1000
            if abs(started - prev.at) < window:
                prev_rec = r
        if prev_rec is not None and prev_rec["outcome"] == "retry":
            return "expected: transient outcome, dialled again (retries.max_tries)"
        # hand-outs between the two calls
        h_prev = [h for h in hs if h["leased_at"] <= prev.at + 0.5]
        h_new = [h for h in hs if prev.at + 0.5 < h["leased_at"] <= nxt.at + 0.5]
        if not h_new:
            redial = [
                e
                for e in phone_events.get(prev.phone, [])
                if e.get("event") == "number_redial" and prev.at - 1 <= e.get("_t", 0) <= nxt.at + 1
            ]
            if redial:
                return (
                    "expected: the route guard found its route suspect (route_suspect) and"
                    " put it back on its line, dialled again once a call rang"
                )
            pbx = [
                e
                for e in phone_events.get(prev.phone, [])
                if str(e.get("event", "")).startswith("pbx_fault")
                and prev.at - 1 <= e.get("_t", 0) <= nxt.at + 1
            ]
            near = self.faults_near(prev.at, nxt.at, 2.0)
            if pbx and any(f.kind in PBX_FAULTS for f in near):
                return "expected: a PBX fault during the call, the number re-tried on its line"
            return (
                f"SUSPICIOUS: dialled again within one hand-out (pbx_fault lines: {len(pbx)},"
                f" faults near: {self._fault_str(near)})"
            )
        holder = h_prev[-1]["client_id"] if h_prev else ""
        inc = session_of.get(holder)
        inc_rec = soak.incarnations[inc] if inc is not None else None
        reclaim = [
            e
            for e in reclaims
            if holder in (e.get("clients") or []) and prev.at <= e.get("_t", 0) <= nxt.at + 1
        ]
        timed_out = [
            e
            for e in reclaims
            if e.get("numbers_timed_out") and prev.at <= e.get("_t", 0) <= nxt.at + 1
        ]
        why_free = (
            f"client {holder[:8]} expired at {_clock(reclaim[0]['_t'])}"
            if reclaim
            else "number lease timed out"
            if timed_out
            else "freed (no reclaim logged)"
        )
        let_go = [
            e
            for e in phone_events.get(prev.phone, [])
            if e.get("event") == "number_let_go" and prev.at <= e.get("_t", 0) <= nxt.at
        ]
        if let_go and prev_rec is None:
            # the daemon left it undialled or cut short (a stop before anything was
            # known, held past hold_max): by design the server hands it out again
            return f"expected: let go by the daemon ({let_go[0].get('reason')}; {why_free})"
        if inc_rec is not None and inc_rec.how == "kill9" and inc_rec.ended < nxt.at:
            if done is None and inc_rec.ended >= prev.at:
                return f"expected: kill -9 with the call in flight ({why_free})"
            if done is not None and prev_rec is None:
                spool = [
                    f
                    for f in soak.faults
                    if f.kind in ("spool", "stranded")
                    and f.overlaps(done.get("_t", prev.at), inc_rec.ended)
                ]
                if any(prev.phone in f.detail.get("kept", ()) for f in spool):
                    return (
                        f"SUSPICIOUS: kill -9 with its record in the fallback spool (the spool"
                        f" failing, the server away); the next start should have uploaded it"
                        f" ({why_free})"
                    )
                if spool and spool[-1].kind == "stranded":
                    return (
                        f"expected: kill -9 before its record reached the fallback spool"
                        f" ({why_free})"
                    )
                if spool:
                    back = inc_rec.ended - spool[-1].end
                    return (
                        f"expected: kill -9 while its record was held in memory (the spool had"
                        f" failed; it was writable again {back:.1f} s before the kill, the"
                        f" retry's back-off had not come round) ({why_free})"
                    )
                return (
                    f"expected: kill -9 after the call, before its upload was spooled ({why_free})"
                )
            if done is not None and prev_rec is not None:
                return (
                    f"SUSPICIOUS: kill -9 after the call; its upload arrived"
                    f" ({prev_rec['outcome']} at {prev_rec['created_at']}) but the number was"
                    f" handed out again ({why_free})"
                )
        if (
            inc_rec is not None
            and inc_rec.how == "sigterm"
            and done is None
            and prev.at <= inc_rec.ended <= nxt.at
        ):
            stop = [
                f for f in soak.faults if f.kind == "sigterm" and f.detail.get("pid") == inc_rec.pid
            ]
            stop_s = stop[0].detail.get("stop_s") if stop else None
            return (
                f"SUSPICIOUS (stop wait): the call was still up when the SIGTERM stop gave up"
                f" on it (stop took {stop_s} s); the daemon dropped it with no record and no"
                f" log line ({why_free})"
            )
        near = self.faults_near(prev.at, nxt.at, 1.0)
        frozen = [f for f in near if f.kind == "sigstop" and f.detail.get("frozen_s", 0) >= ct - 1]
        if frozen and reclaim:
            secs = frozen[0].detail["frozen_s"]
            return f"expected: daemon frozen {secs} s > client_timeout ({why_free})"
        server = [f for f in near if f.kind in ("server", "server_kill9")]
        if server and reclaim:
            down = server[0].detail.get("down_s")
            return (
                f"SUSPICIOUS (server outage): the server was away {down} s and expired"
                f" client {holder[:8]} on its return; upload of the first call:"
                f" {prev_rec['outcome'] if prev_rec is not None else 'none'}"
                f" ({why_free})"
            )
        kinds = ", ".join(f.kind for f in near) or "no fault"
        return (
            f"SUSPICIOUS: handed out again ({why_free}); faults between: {kinds};"
            f" first call {'logged' if done else 'not logged'} by the daemon, upload"
            f" {prev_rec['outcome'] if prev_rec is not None else 'none'}"
        )

    def _timeline(
        self,
        phone: str,
        calls: list[Invite],
        hs: list[sqlite3.Row],
        rs: list[sqlite3.Row],
        events: list[dict[str, Any]],
        cls: dict[Any, dict[str, Any]],
    ) -> list[str]:
        rows: list[tuple[float, str]] = []
        for h in hs:
            rows.append((h["leased_at"], f"handout to {h['client_id'][:8]} ext {h['extension']}"))
        for c in calls:
            rows.append((c.at, f"INVITE at {c.carrier} call {c.call_id[:12]}"))
        for r in rs:
            fields = json.loads(r["fields"])
            t = int(fields.get("startedAt") or 0) / 1000
            rows.append(
                (
                    _epoch(r["created_at"]),
                    f"upload from {r['client_id'][:8]} (call started {_clock(t)}):"
                    f" {r['outcome']}, sip {fields.get('sipCode')}",
                )
            )
        for e in events:
            if "_t" in e:
                extra = (
                    f" {e.get('verdict')} call {str(e.get('call_id'))[:12]}"
                    if e.get("event") == "call_classified"
                    else ""
                )
                rows.append(
                    (e["_t"], f"daemon#{e['_inc']} {e.get('event')} [{e.get('level')}]{extra}")
                )
        if calls:
            a, b = calls[0].at - 15, calls[-1].at + 5
            for f in self.faults_near(a, b):
                rows.append((f.start, f"FAULT {f.kind} {f.detail}"))
                rows.append((f.end, f"fault {f.kind} over"))
        return [f"{_clock(t)} {text}" for t, text in sorted(rows)]

    def check_logs(
        self,
        dev: list[dict[str, Any]],
        dother: list[tuple[int, str]],
        sev: list[dict[str, Any]],
        sother: list[str],
    ) -> dict[str, Any]:
        def group(events: list[dict[str, Any]]) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for e in events:
                if e.get("level") not in ("error", "critical", "exception"):
                    continue
                key = str(e.get("event"))
                slot = out.setdefault(key, {"count": 0, "first": None})
                slot["count"] += 1
                if slot["first"] is None:
                    slot["first"] = {k: v for k, v in e.items() if not k.startswith("_")}
            return out

        derr, serr = group(dev), group(sev)
        tracebacks = [x for _, x in dother if "Traceback" in x] + [
            x for x in sother if "Traceback" in x
        ]
        exc_events = [
            e for e in [*dev, *sev] if e.get("exception") or "Traceback" in str(e.get("exc_info"))
        ]
        if tracebacks or exc_events:
            self.violations.append(
                f"tracebacks in the logs: {len(tracebacks)} raw, {len(exc_events)} in events"
            )
        return {
            "daemon_errors": derr,
            "server_errors": serr,
            "daemon_other_lines": [x for _, x in dother][:40],
            "server_other_lines": sother[:40],
            "exception_events": [
                {k: v for k, v in e.items() if not k.startswith("_")} for e in exc_events[:10]
            ],
            "warnings": dict(
                Counter(str(e.get("event")) for e in [*dev, *sev] if e.get("level") == "warning")
            ),
        }

    def check_spool(self) -> dict[str, Any]:
        spool = self.soak.spool
        left = sorted(p.name for p in spool.glob("*.json")) if spool.is_dir() else ["NOT A DIR"]
        refused = sorted(p.name for p in (spool / "refused").glob("*.json"))
        bad = sorted(p.name for p in (spool / "bad").glob("*"))
        if left:
            self.violations.append(f"{len(left)} uploads left in the spool: {left[:5]}")
        if bad:
            self.violations.append(f"{len(bad)} spool entries set aside as bad: {bad[:5]}")
        refused_fields = []
        for name in refused:
            with contextlib.suppress(OSError, ValueError):
                refused_fields.append(json.loads((spool / "refused" / name).read_text()))
        return {"left": left, "refused": refused_fields, "bad": bad}

    def check_processes(self) -> dict[str, Any]:
        """Every pid we started, and any process in one of their process groups (each
        peer was started in its own session: kamailio's children, a daemon's helpers),
        must be gone. Only those are stopped here, by pid; a process of someone else
        that merely names the work folder (a shell, `timeout`, a `tail -f`) is left be."""
        ours = set(self.soak.pids)
        needle = str(self.world.workdir)
        left: list[tuple[int, str]] = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            pid = int(proc.name)
            try:
                stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            state, pgid = stat[0], int(stat[2])
            # each of ours names the work folder (its config or scenario): a pid
            # reused since by another program does not
            if state != "Z" and (pid in ours or pgid in ours) and needle in cmd:
                left.append(
                    (pid, f"{self.soak.pids.get(pid, 'group of ' + str(pgid))}: {cmd[:160]}")
                )
        if left:
            self.violations.append(f"processes left running: {left}")
            for pid, _ in left if self.stop_left else []:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        return {"started": len(ours), "left_running": left}


# -------------------------------------------------------------------- output


def print_report(r: dict[str, Any]) -> None:
    print()
    print("=" * 78)
    print(
        f"soak seed {r['seed']}: {r['minutes']} min, {r['lines']} lines,"
        f" {r['numbers_pushed']} numbers in {r['pushes']} pushes ({r['tasks']} tasks)"
    )
    print(f"faults ({len(r['faults'])}): {r['fault_counts']}")
    for f in r["faults"]:
        detail = ", ".join(f"{k}={v}" for k, v in f["detail"].items())
        print(f"  {_clock(f['start'])} {f['kind']:16} {f['end'] - f['start']:5.1f} s  {detail}")
    print(f"daemon processes: {len(r['daemons'])}")
    db = r["db"]
    print(f"DB: {db['dialplans']} dialplans, results {db['results']}")
    cb = r["callbacks"]
    print(
        f"callbacks: {cb['tasks']} tasks, never delivered {len(cb['never_delivered'])},"
        f" more than once {len(cb['delivered_more_than_once'])},"
        f" differ from DB {len(cb['differ_from_db'])}"
    )
    v = r["verdicts"]
    print(f"{'carrier':28} {'right':>5} {'wrong':>5}")
    for name, row in sorted(v["per_carrier"].items()):
        print(f"{name:28} {row['right']:5} {row['wrong']:5}")
    for w in v["wrong"]:
        print(
            f"  WRONG {w['phone']} ({w['carrier']}): {w['got']} not {w['expected']};"
            f" sip {w.get('sip')}, cancel {w.get('cancel_reason')!r}, started {w.get('started')},"
            f" faults {w.get('faults')}: {w['why']}"
        )
    rtp = r.get("rtp", {})
    for x in rtp.get("cross_latched", []):
        print(
            f"  CROSS-TALK {x['phone']} ({x['carrier']}, daemon #{x['daemon']}, ended {x['at']}):"
            f" latched to {x['latched_to']}, {x['foreign']}/{x['packets']} foreign,"
            f" verdict {x['verdict']}"
        )
    d = r["dials"]
    print(
        f"dials: {d['invites_total']} INVITEs at the carriers, {d['call_classified_total']}"
        f" call_classified lines; numbers by dials {d['dial_count_histogram']}"
    )
    for m in d["dialled_more_than_once"]:
        print(
            f"  {m['phone']}: {m['dials']} dials, {m['handouts']} hand-outs, uploads {m['uploads']}"
        )
        for reason in m["reasons"]:
            print(f"      -> {reason}")
        if any(x.startswith("SUSPICIOUS") for x in m["reasons"]):
            for line in m["timeline"]:
                print(f"         {line}")
    logs = r["logs"]
    for who in ("daemon", "server"):
        errs = logs[f"{who}_errors"]
        print(f"{who} ERROR events: {sum(x['count'] for x in errs.values())}")
        for name, slot in sorted(errs.items(), key=lambda kv: -kv[1]["count"]):
            first = json.dumps(slot["first"], ensure_ascii=False)[:240]
            print(f"  {slot['count']:4} {name}: {first}")
        other = logs[f"{who}_other_lines"]
        if other:
            print(f"  {who} non-JSON lines ({len(other)} shown at most 40):")
            for line in other[:15]:
                print(f"    {line[:200]}")
    print(f"warnings: {logs['warnings']}")
    sp = r["spool"]
    print(f"spool: {len(sp['left'])} left, {len(sp['refused'])} refused, {len(sp['bad'])} bad")
    for f in sp["refused"][:10]:
        print(f"  refused: phone {f.get('phone')} dialplan {f.get('dialplanId')}")
    print(f"processes: {r['processes']['started']} started, left running:"
          f" {r['processes']['left_running']}")  # fmt: skip
    for n in r["notes"]:
        print(f"note: {n}")
    print()
    if r["violations"]:
        print(f"VIOLATIONS ({len(r['violations'])}):")
        for x in r["violations"]:
            print(f"  - {x[:600]}")
    else:
        print("no invariant violated")
    print(f"work folder: {r['workdir']}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--minutes", type=float, default=5.0, help="how long faults are injected")
    p.add_argument("--lines", type=int, default=12)
    p.add_argument("--numbers", type=int, default=500)
    p.add_argument(
        "--faults",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        default=list(FAULT_WEIGHTS),
        help=f"comma list of {','.join(FAULT_WEIGHTS)} (default: all)",
    )
    p.add_argument("--gap-min", type=float, default=4.0, help="calm seconds between faults, min")
    p.add_argument("--gap-max", type=float, default=20.0, help="calm seconds between faults, max")
    p.add_argument("--drain-timeout", type=float, default=360.0)
    p.add_argument("--client-timeout", type=float, default=10.0)
    p.add_argument(
        "--number-timeout",
        type=float,
        default=120.0,
        help="the server's leases.number_timeout (the demo's 120 s): longer than the"
        " daemon's longest call (72 s here), else the daemon warns lease_shorter_than_a_call",
    )
    p.add_argument("--max-tries", type=int, default=2)
    p.add_argument("--heartbeat", type=float, default=2.0, help="the daemon's heartbeat.interval")
    p.add_argument("--poll-max", type=float, default=1.0, help="the daemon's dialplan.poll_max")
    p.add_argument("--sweep-interval", type=float, default=1.0, help="the server's lease sweep")
    p.add_argument("--extras", action="store_true", help="add the answered/rejected carriers")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--keep", action="store_true", help="keep the work folder after a clean run")
    p.add_argument("--analyse", type=Path, default=None, help="check a kept run's folder again")
    args = p.parse_args()
    if args.analyse is not None:
        old, phones = Soak.load(args.analyse)
        again = Analysis(old, phones, stop_left=False).report()
        (args.analyse / "report.json").write_text(json.dumps(again, indent=2, default=str))
        print_report(again)
        return 1 if again["violations"] else 0
    unknown = [k for k in args.faults if k not in FAULT_WEIGHTS]
    if unknown or not args.faults:
        p.error(f"--faults: unknown {unknown}; choose from {','.join(FAULT_WEIGHTS)}")
    for tool in ("sipp", "kamailio"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"soak: {tool} is not installed")
            return 1
    if args.workdir is not None:
        workdir = args.workdir
        if workdir.exists() and any(workdir.iterdir()):
            p.error(f"--workdir {workdir} is not empty")
    else:
        workdir = Path(tempfile.mkdtemp(prefix=f"sipclient-soak-s{args.seed}-"))
    soak = Soak(args, workdir)
    code = 1
    report: dict[str, Any] | None = None

    async def go() -> dict[str, Any]:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await soak.run()

    try:
        report = asyncio.run(go())
        (workdir / "report.json").write_text(json.dumps(report, indent=2, default=str))
        print_report(report)
        code = 1 if report["violations"] else 0
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("soak: interrupted; everything it started is stopped")
    except LabError as exc:
        print(f"soak: {exc}")
    finally:
        if code == 0 and args.workdir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"soak: files kept in {workdir}")
    return code


if __name__ == "__main__":
    sys.exit(main())
