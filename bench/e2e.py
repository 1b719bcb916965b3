"""End-to-end throughput of the daemon against the demo's sipp carriers (sipclient.demo.World).

    .venv/bin/python bench/e2e.py [--lines 24 100 200] [--per-line 20] [--out bench/out/e2e.json]
                                  [--profile DIR] [--daemons 1] [--server-rtt-ms 0]
                                  [--look-ahead 2]

`--daemons K` splits the lines over K daemon processes (as K instances of
systemd/sipclient@.service would): one asyncio loop is one core, and the CPU
figures are then the daemons' sum.

Starts the demo's world on loopback (server, kamailio, sipp carriers, the
daemon as a subprocess), pushes `lines * per_line` numbers spread over the
demo's mix of carriers, waits until the daemon finished them all and reads
every call's start and end from the daemon's own log (`call_classified`:
its timestamp is the end, `call_ms` the length, `extension` the line), so
no figure depends on how often the bench looks.

Figures (stdout and the JSON file):

- batch: numbers per line per hour from the push to the end of the last
  call; it includes the ramp-up (first /dialplan, registrations already done)
  and the tail (lines out of numbers while others finish a long call), so it
  depends on `per_line`;
- steady state, the figure to compare with the limit: the window runs from
  the moment every line has started its first call to the first moment a line
  ends its last call (from then on a line idles for good). Numbers whose call
  ended in the window, per line per hour, and the line utilisation (call time
  inside the window / lines / window: 1.0 means a line never waits between
  two calls). With the default 20 numbers a line the window is most of the run;
- per carrier: the median call length next to the `EVIDENCE_S` the limit
  assumes for it, so the gap per outcome is visible (call length includes
  INVITE -> first response and CANCEL -> 487, which the limit does not);
- decision time after the evidence started (median / p95): the classifier's
  `decided_ms` (audio received before it was sure); calls decided by
  signalling alone are counted apart;
- the daemon's log at info: lines and bytes a call (what journald takes);
- the daemon's memory: RSS after a tenth of the calls and at the end, and
  its growth a call over the second half of the run (a long `--per-line`
  shows whether a daemon left running for days keeps growing);
- the spool's backlog, sampled every second: the most records made and not
  yet taken by the server, and the oldest's age (how late the server, and the
  pusher's callback, hear of a call at that load);
- the garbage collector's pauses, per generation: collections, CPU ms in them and
  the longest pause (each daemon logs `gc_pauses` at its stop, agent/heap.py);
- the audio blocks the daemons analysed, in how many batches (one per turn of
  the event loop that completed a block: agent/analysis.py), the largest;
- the daemon's CPU: (utime + stime) of its process over the steady window
  (sampled every 0.2 s from /proc and interpolated) and over the batch, as a
  percentage of one core, and per call in ms; in the steady window also its
  event loop's thread alone (the rest is the worker threads: the spool's
  fsyncs, renames and reads);
- the physical limit of the mix: numbers per line per hour if every call took
  only the time its carrier needs to make the outcome knowable (EVIDENCE_S:
  a final response at once, a busy-tone cycle, a ringback burst, an
  announcement's first phrase, CRBT and a silent 180 as long as the
  classifier's own rules require), with no overhead between calls.

`--server-rtt-ms N` puts the server N ms of round trip away from the daemons:
they reach it through a TCP proxy in this process that holds every chunk N/2
ms in each direction (a WAN's distance without netem, which needs a network
namespace and root). Every control call pays it: /status, /dialplan, the
uploads, the heartbeat.

`--profile DIR` runs py-spy (if installed: `.venv/bin/pip install py-spy`) on
the daemon over the first 20 s after the push and writes a speedscope file
per line count there.

sipp (one process per carrier), kamailio and the server run on the same
cores as the daemon: figures are measured on whatever the machine is doing
meanwhile (say so when quoting them).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import datetime as dt
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sipclient.agent.spool import backlog as spool_backlog
from sipclient.demo import CARRIERS, Carrier, World, WorldOptions, carrier_for, numbers_for

EVIDENCE_S = {
    "empty_404_cause1": 0.0,
    "busy_486": 0.0,
    "unreachable_480": 0.0,
    "failed_503": 0.0,
    "busy_tone": 0.7,  # one 0.35/0.35 cadence cycle
    "ringing_ringback": 1.0,  # the 1 s burst of 450 Hz after a 180
    "empty_announcement": 1.5,  # the first words of the phrase
    "powered_off_announcement": 1.5,
    "suspended_announcement": 1.5,
    "ringing_crbt": 3.0,  # CallClassifier.crbt_ms: music is only "not an announcement" after it
    "ringing_180": 2.0,  # rtp.no_rtp_wait: a 180 with no media
}


def _crbt_rule_s() -> float | None:
    """CallClassifier's own CRBT rule (`crbt_ms`), to show next to EVIDENCE_S."""
    import inspect

    from sipclient.classify.decide import CallClassifier

    default = inspect.signature(CallClassifier).parameters["crbt_ms"].default
    return None if default is inspect.Parameter.empty else float(default) / 1000


class DelayProxy:
    """127.0.0.1 TCP proxy to a port known only when a connection comes (the
    server's), holding each chunk `one_way` seconds in each direction, in order."""

    def __init__(self, target_port: Callable[[], int], one_way: float) -> None:
        self._target_port = target_port
        self._one_way = one_way
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self._target_port())
        except OSError:
            writer.close()
            return
        for src, dst in ((reader, up_w), (up_r, writer)):
            task = asyncio.ensure_future(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def late() -> None:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not data:
                    dst.close()
                    return
                dst.write(data)
                await dst.drain()

        sender = asyncio.ensure_future(late())
        try:
            while True:
                data = await src.read(65536)
                queue.put_nowait((loop.time() + self._one_way, data))
                if not data:
                    break
            await sender
        except OSError:  # (read() never raises IncompleteReadError)
            dst.close()
        finally:
            sender.cancel()


CPU_SAMPLE_S = 0.2
PROFILE_S = 20


@dataclass(frozen=True)
class CallSpan:
    """One finished call as the daemon logged it (epoch seconds)."""

    extension: str
    phone: str
    start: float
    end: float
    decided_ms: float | None

    @property
    def seconds(self) -> float:
        return self.end - self.start


def _cpu_seconds(pid: int, thread: int | None = None) -> float:
    """utime + stime of process `pid`, or of its thread `thread` alone."""
    stat = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _spool_backlog(world: World) -> tuple[int, float]:
    """Records in the daemons' spools now (made, not yet taken by the server) and
    the age of the oldest, in seconds (`spool.backlog`)."""
    count, oldest = 0, None
    for i in range(max(1, world.options.daemons)):
        n, made = spool_backlog(world.daemon_dir(i) / "spool")
        count += n
        if made is not None:
            oldest = made if oldest is None else min(oldest, made)
    return count, 0.0 if oldest is None else max(0.0, time.time() - oldest)


def backlog_figures(samples: list[tuple[int, float]]) -> dict[str, Any]:
    """The spool's backlog sampled every second: the most records waiting at once
    and the oldest wait seen (how late the server, and the pusher's callback,
    hear of a call at this load)."""
    if not samples:
        return {}
    return {
        "max_records": max(c for c, _ in samples),
        "mean_records": round(statistics.fmean(c for c, _ in samples), 1),
        "max_wait_s": round(max(a for _, a in samples), 1),
    }


def memory_figures(samples: list[tuple[int, int]]) -> dict[str, Any]:
    """RSS (kB, every daemon summed) against calls finished, sampled every second:
    the RSS after the first tenth of the calls (warm: caches, pools and the
    library are in), at the end, and the slope over the second half of the run
    (least squares, kB a call), which is what a daemon left running for days
    would grow by."""
    if len(samples) < 4 or samples[-1][0] == 0:
        return {}
    total = samples[-1][0]
    warm = next(kb for calls, kb in samples if calls >= total // 10)
    half = [(c, kb) for c, kb in samples if c >= total // 2]
    slope = None
    if len(half) >= 3 and half[-1][0] > half[0][0]:
        xs = [float(c) for c, _ in half]
        ys = [float(kb) for _, kb in half]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        if sxx > 0:
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    thin = samples[:: max(1, len(samples) // 200)]  # the series, ~200 points
    if thin[-1] != samples[-1]:
        thin.append(samples[-1])
    return {
        "samples_calls_rss_kb": thin,
        "rss_mb_warm": round(warm / 1024, 1),
        "rss_mb_end": round(samples[-1][1] / 1024, 1),
        "calls": total,
        "rss_kb_per_call_second_half": None if slope is None else round(slope, 3),
    }


def _limit_per_line_hour(carriers: list[Carrier]) -> float:
    mean = statistics.fmean(EVIDENCE_S.get(c.name, 0.0) for c in carriers)
    return 3600.0 / max(mean, 1e-3)


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def _daemon_events(world: World, event: str = "call_classified") -> list[dict[str, Any]]:
    """Every daemon's log lines of `event`, parsed."""
    out = []
    quoted = f'"{event}"'
    for i in range(max(1, world.options.daemons)):
        log = world.daemon_dir(i) / "daemon.log"
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("{") and quoted in line:
                out.append(json.loads(line))
    return out


def _log_volume(world: World) -> tuple[int, int]:
    """Bytes and lines of every daemon's log (at info, as the bench runs it)."""
    size = lines = 0
    for i in range(max(1, world.options.daemons)):
        data = (world.daemon_dir(i) / "daemon.log").read_bytes()
        size += len(data)
        lines += data.count(b"\n")
    return size, lines


def _span(event: dict[str, Any]) -> CallSpan:
    # structlog's TimeStamper(fmt="iso", utc=False): naive local time, when the line was written
    end = dt.datetime.fromisoformat(event["timestamp"]).timestamp()
    decided = event.get("decided_ms")
    return CallSpan(
        str(event.get("extension", "")),
        str(event["phone"]),
        end - float(event["call_ms"]) / 1000,
        end,
        None if decided is None else float(decided),
    )


def _cpu_at(samples: list[tuple[float, float]], t: float) -> float:
    """The daemon's CPU seconds at epoch `t`, interpolated between samples."""
    times = [s[0] for s in samples]
    i = bisect.bisect_left(times, t)
    if i <= 0:
        return samples[0][1]
    if i >= len(samples):
        return samples[-1][1]
    (t0, c0), (t1, c1) = samples[i - 1], samples[i]
    return c0 + (c1 - c0) * (t - t0) / max(t1 - t0, 1e-9)


def steady_window(spans: list[CallSpan]) -> tuple[float, float]:
    """(every line has started its first call, the first line ended its last call)."""
    by_line: dict[str, list[CallSpan]] = defaultdict(list)
    for s in spans:
        by_line[s.extension].append(s)
    start = max(min(s.start for s in calls) for calls in by_line.values())
    end = min(max(s.end for s in calls) for calls in by_line.values())
    return start, end


def between_calls(spans: list[CallSpan]) -> list[float]:
    """Seconds each line waited between the end of a call and the start of its next
    (the round trips to the server, the look-ahead's, the daemon's own work)."""
    by_line: dict[str, list[CallSpan]] = defaultdict(list)
    for s in spans:
        by_line[s.extension].append(s)
    gaps = []
    for calls in by_line.values():
        calls.sort(key=lambda c: c.start)
        gaps += [b.start - a.end for a, b in itertools.pairwise(calls)]
    return gaps


def _mean_median_ms(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {}
    return {
        "mean": round(1000 * statistics.mean(seconds), 1),
        "median": round(1000 * statistics.median(seconds), 1),
    }


def figures(
    spans: list[CallSpan],
    lines: int,
    push_at: float,
    cpu: list[tuple[float, float]],
    loop_cpu: list[tuple[float, float]] | None = None,
) -> dict[str, Any]:
    """Every figure of one run from the calls' spans (pure: the tests can feed it).
    `loop_cpu`: the CPU samples of the daemons' event-loop threads alone (the rest
    of `cpu` is their worker threads: the spool's disk work)."""
    limit = _limit_per_line_hour(list(CARRIERS))
    last_end = max(s.end for s in spans)
    batch_s = last_end - push_at
    w0, w1 = steady_window(spans)
    window = w1 - w0
    steady: dict[str, Any] = {"window_s": round(window, 2)}
    if window > 0:
        ended = sum(1 for s in spans if w0 < s.end <= w1)
        busy = sum(max(0.0, min(s.end, w1) - max(s.start, w0)) for s in spans)
        per_line_hour = ended / lines / window * 3600
        cpu_s = _cpu_at(cpu, w1) - _cpu_at(cpu, w0)
        steady.update(
            numbers=ended,
            numbers_per_line_per_hour=round(per_line_hour, 1),
            ratio_to_limit=round(per_line_hour / limit, 3),
            line_utilisation=round(busy / lines / window, 3),
            between_calls_ms=_mean_median_ms(between_calls(spans)),
            daemon_cpu_percent_of_one_core=round(100 * cpu_s / window, 1),
            daemon_cpu_ms_per_call=round(1000 * cpu_s / max(ended, 1), 2),
        )
        if loop_cpu:
            loop_s = _cpu_at(loop_cpu, w1) - _cpu_at(loop_cpu, w0)
            steady["daemon_loop_cpu_ms_per_call"] = round(1000 * loop_s / max(ended, 1), 2)
    batch_cpu = _cpu_at(cpu, last_end) - _cpu_at(cpu, push_at)
    batch_per_line_hour = len(spans) / lines / batch_s * 3600
    per_carrier: dict[str, Any] = {}
    by_carrier: dict[str, list[float]] = defaultdict(list)
    for s in spans:
        c = carrier_for(s.phone)
        by_carrier[c.name if c else "?"].append(s.seconds)
    for name, secs in sorted(by_carrier.items()):
        med = statistics.median(secs)
        evidence = EVIDENCE_S.get(name, 0.0)
        per_carrier[name] = {
            "calls": len(secs),
            "median_call_s": round(med, 3),
            "evidence_s": evidence,
            "gap_s": round(med - evidence, 3),
        }
    decided_ms = [s.decided_ms for s in spans if s.decided_ms is not None]
    call_s = [s.seconds for s in spans]
    return {
        "lines": lines,
        "limit_per_line_per_hour": round(limit, 1),
        "limit_mean_call_s": round(3600 / limit, 3),
        "batch": {
            "wall_s": round(batch_s, 2),
            "numbers_per_line_per_hour": round(batch_per_line_hour, 1),
            "ratio_to_limit": round(batch_per_line_hour / limit, 3),
            "daemon_cpu_percent_of_one_core": round(100 * batch_cpu / batch_s, 1),
            "daemon_cpu_ms_per_call": round(1000 * batch_cpu / len(spans), 2),
        },
        "steady": steady,
        "mean_call_s": round(statistics.fmean(call_s), 3),
        "call_s": {"median": _quantile(call_s, 0.5), "p95": _quantile(call_s, 0.95)},
        "per_carrier": per_carrier,
        "decision_after_evidence_ms": {
            "count": len(decided_ms),
            "median": _quantile(decided_ms, 0.5),
            "p95": _quantile(decided_ms, 0.95),
        },
        "decided_by_signalling_alone": len(spans) - len(decided_ms),
    }


def _start_profile(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        print("py-spy not installed: no profile", file=sys.stderr)
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(PROFILE_S)]
    cmd += ["--format", "speedscope", "--nonblocking", "-o", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop_profile(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    try:
        proc.wait(timeout=PROFILE_S + 10)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def run(
    lines: int,
    per_line: int,
    workdir: Path,
    timeout: float,
    profile: Path | None,
    daemons: int = 1,
    server_rtt_ms: float = 0.0,
    look_ahead: int = 2,
) -> dict[str, Any]:
    options = WorldOptions(
        lines=lines,
        daemons=daemons,
        log_level="info",
        poll_min=0.1,
        poll_max=0.5,
        heartbeat=5.0,
        client_timeout=60.0,
        look_ahead=look_ahead,
    )
    world = World(workdir, options)
    proxy: DelayProxy | None = None
    if server_rtt_ms > 0:
        proxy = DelayProxy(lambda: world.server_port, server_rtt_ms / 2000)
        options.daemon_server_url = f"http://127.0.0.1:{await proxy.start()}"
    phones = numbers_for(lines * per_line, CARRIERS)
    prof: subprocess.Popen[bytes] | None = None
    try:
        await world.start()
        assert world.daemon is not None
        pid = world.daemon.pid
        pids = [p.pid for p in world.daemons]

        def cpu_now() -> float:  # every daemon's CPU seconds, summed
            return sum(_cpu_seconds(p) for p in pids)

        def loop_cpu_now() -> float:  # ...of their event loops' threads (the main ones)
            return sum(_cpu_seconds(p, p) for p in pids)

        # let every line register before the clock starts
        await asyncio.sleep(2.0)
        cpu: list[tuple[float, float]] = [(time.time(), cpu_now())]
        loop_cpu: list[tuple[float, float]] = [(time.time(), loop_cpu_now())]
        push_at = time.time()
        await world.push_numbers(phones, one_task_each=False)
        if profile is not None:
            prof = _start_profile(pid, profile / f"daemon-{lines}lines.speedscope.json")
        deadline = time.monotonic() + timeout
        events: list[dict[str, Any]] = []
        rss: list[tuple[int, int]] = []  # (calls finished, RSS kB) every second
        backlog: list[tuple[int, float]] = []  # (records spooled, oldest's age) every second
        polls = 0
        while time.monotonic() < deadline:
            await asyncio.sleep(CPU_SAMPLE_S)
            cpu.append((time.time(), cpu_now()))
            loop_cpu.append((time.time(), loop_cpu_now()))
            polls += 1
            # reading the log is the costly part: every second is enough
            if polls % 5 == 0:
                events = _daemon_events(world)
                rss.append((len(events), sum(_rss_kb(p) for p in pids)))
                backlog.append(_spool_backlog(world))
                if len(events) >= len(phones):
                    break
        events = _daemon_events(world)
        cpu.append((time.time(), cpu_now()))
        loop_cpu.append((time.time(), loop_cpu_now()))
        # the server posts the callbacks after the uploads; under load it lags behind
        got_callbacks = await world.wait_for(phones, 90)
        await asyncio.to_thread(_stop_profile, prof)
        prof = None
        spans = [_span(e) for e in events]
        if not spans:
            raise RuntimeError("the daemon finished no call")
        out = figures(spans, lines, push_at, cpu, loop_cpu)
        log_bytes, log_lines = _log_volume(world)
        out.update(
            log_bytes_per_call=round(log_bytes / len(spans)),
            log_lines_per_call=round(log_lines / len(spans), 2),
            daemons=len(pids),
            numbers=len(phones),
            finished_by_daemon=len(events),
            callbacks_complete=got_callbacks,
            evidence_s_assumed=EVIDENCE_S,
            classifier_crbt_s=_crbt_rule_s(),
            memory=memory_figures(rss),
            spool_backlog=backlog_figures(backlog),
            server_rtt_ms=server_rtt_ms,
            look_ahead=look_ahead,
        )
    finally:
        if prof is not None:
            prof.kill()
            prof.wait()
        await world.stop()
        if proxy is not None:
            await proxy.stop()
    out["gc"] = _gc_pauses(world)  # logged by each daemon at its stop
    out["analysis"] = _analysis(world)  # likewise
    return out


def _gc_pauses(world: World) -> dict[str, Any] | None:
    """The daemons' `gc_pauses` (agent/heap.py): collections and ms summed, the
    longest pause of any, per generation; None when a daemon did not log it."""
    found = _daemon_events(world, "gc_pauses")
    if len(found) < max(1, world.options.daemons):
        return None
    return {
        "collections": [sum(f["collections"][g] for f in found) for g in range(3)],
        "ms": [round(sum(f["ms"][g] for f in found), 1) for g in range(3)],
        "longest_ms": [max(f["longest_ms"][g] for f in found) for g in range(3)],
    }


def _analysis(world: World) -> dict[str, Any] | None:
    """The daemons' `audio_analysis` (agent/analysis.py): audio blocks analysed, in
    how many batches (one per loop turn with a block), the largest batch."""
    found = _daemon_events(world, "audio_analysis")
    if len(found) < max(1, world.options.daemons):
        return None
    blocks, batches = sum(f["blocks"] for f in found), sum(f["batches"] for f in found)
    return {
        "blocks": blocks,
        "batches": batches,
        "per_batch": round(blocks / batches, 2) if batches else 0.0,
        "largest": max(f["largest"] for f in found),
        "failures": sum(f["failures"] for f in found),
    }


def _print(r: dict[str, Any]) -> None:
    b, s, d = r["batch"], r["steady"], r["decision_after_evidence_ms"]
    print(
        f"{r['lines']:4} lines ({r.get('daemons', 1)} daemon(s)):"
        f" {r['finished_by_daemon']}/{r['numbers']} numbers"
        f" (callbacks {'complete' if r['callbacks_complete'] else 'MISSING'});"
        f" limit {r['limit_per_line_per_hour']:.0f}/line/h"
        f" (mean {r['limit_mean_call_s']} s a call)"
        + (f"; server {r['server_rtt_ms']:g} ms away" if r.get("server_rtt_ms") else "")
        + f"; look-ahead {r.get('look_ahead')}",
        flush=True,
    )
    if "numbers_per_line_per_hour" in s:
        print(
            f"      steady {s['window_s']} s: {s['numbers_per_line_per_hour']:.0f}/line/h,"
            f" ratio {s['ratio_to_limit']:.2f}, line utilisation {s['line_utilisation']:.2f},"
            f" daemon CPU {s['daemon_cpu_percent_of_one_core']} % of one core"
            f" ({s['daemon_cpu_ms_per_call']} ms a call)"
        )
        if "daemon_loop_cpu_ms_per_call" in s:
            in_loop = s["daemon_loop_cpu_ms_per_call"]
            print(
                f"      of which the event loop's thread {in_loop} ms a call, the worker"
                f" threads (the spool's disk work) {s['daemon_cpu_ms_per_call'] - in_loop:.2f} ms"
            )
        gap = s.get("between_calls_ms") or {}
        if gap:
            print(
                f"      a line waits between two calls: mean {gap['mean']} ms,"
                f" median {gap['median']} ms"
            )
    print(
        f"      batch  {b['wall_s']} s: {b['numbers_per_line_per_hour']:.0f}/line/h,"
        f" ratio {b['ratio_to_limit']:.2f}, daemon CPU {b['daemon_cpu_percent_of_one_core']} %"
        f" ({b['daemon_cpu_ms_per_call']} ms a call)"
    )
    print(
        f"      mean call {r['mean_call_s']} s; decision after evidence median {d['median']} ms,"
        f" p95 {d['p95']} ms ({d['count']} by audio,"
        f" {r['decided_by_signalling_alone']} by signalling)"
    )
    if "log_bytes_per_call" in r:
        print(
            f"      daemon log at info: {r['log_lines_per_call']} lines,"
            f" {r['log_bytes_per_call']} bytes a call (start and registrations included)"
        )
    m = r.get("memory") or {}
    if m:
        print(
            f"      daemon RSS {m['rss_mb_warm']} MB after a tenth of the calls,"
            f" {m['rss_mb_end']} MB after {m['calls']};"
            f" {m['rss_kb_per_call_second_half']} kB a call over the second half"
        )
    k = r.get("spool_backlog") or {}
    if k:
        print(
            f"      spool backlog (sampled every second): at most {k['max_records']} records"
            f" waiting (mean {k['mean_records']}), the oldest {k['max_wait_s']} s old"
        )
    g = r.get("gc")
    if g:
        print(
            f"      garbage collector (young, middle, old): {g['collections']} collections,"
            f" {g['ms']} ms of CPU, longest pause {g['longest_ms']} ms"
        )
    a = r.get("analysis")
    if a:
        print(
            f"      audio blocks analysed together: {a['blocks']} in {a['batches']} batches"
            f" ({a['per_batch']} a batch, at most {a['largest']}; {a['failures']} failed)"
        )
    crbt = r.get("classifier_crbt_s")
    if crbt is not None and crbt != EVIDENCE_S["ringing_crbt"]:
        print(
            f"      note: EVIDENCE_S ringing_crbt is {EVIDENCE_S['ringing_crbt']} s but"
            f" CallClassifier.crbt_ms is {crbt} s (the limit is left as it is)"
        )
    print("      carrier                    calls  median call s  evidence s    gap s")
    for name, c in r["per_carrier"].items():
        print(
            f"      {name:26} {c['calls']:5}  {c['median_call_s']:13.3f}"
            f"  {c['evidence_s']:10.1f}  {c['gap_s']:7.3f}"
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lines", type=int, nargs="+", default=[24])
    p.add_argument("--per-line", type=int, default=20)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--out", type=Path, default=Path("bench/out/e2e.json"))
    p.add_argument("--keep", type=Path, default=None, help="keep the worlds' files here")
    p.add_argument("--profile", type=Path, default=None, help="py-spy speedscope files here")
    p.add_argument(
        "--daemons",
        type=int,
        default=1,
        help="daemon processes sharing the lines (CPU figures are their sum)",
    )
    p.add_argument(
        "--server-rtt-ms",
        type=float,
        default=0.0,
        help="put the server this many ms of round trip away (a delaying proxy)",
    )
    p.add_argument(
        "--look-ahead",
        type=int,
        default=2,
        help="the daemons' dialplan.look_ahead (numbers a line holds while it dials)",
    )
    args = p.parse_args()
    results = []
    for lines in args.lines:
        opts = (args.daemons, args.server_rtt_ms, args.look_ahead)
        if args.keep is not None:
            workdir = args.keep / f"lines{lines}"
            r = asyncio.run(run(lines, args.per_line, workdir, args.timeout, args.profile, *opts))
        else:
            with tempfile.TemporaryDirectory(prefix="sipclient-bench-e2e-") as tmp:
                r = asyncio.run(
                    run(lines, args.per_line, Path(tmp), args.timeout, args.profile, *opts)
                )
        results.append(r)
        _print(r)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": " ".join(sys.argv),
                "note": "2 shared cores (sipp, kamailio, server, daemon): figures are under "
                "contention",
                "results": results,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
