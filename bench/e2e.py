"""End-to-end throughput of the daemon against the demo's sipp carriers (sipclient.demo.World).

    .venv/bin/python bench/e2e.py [--lines 24] [--per-line 4] [--out bench/out/e2e.json]

Starts the demo's world on loopback (server, kamailio, sipp carriers, the
daemon as a subprocess), pushes `lines * per_line` numbers spread over the
demo's mix of carriers, and measures, from the push to the last number the
daemon finished:

- numbers decided per line per hour (the daemon's own count of finished
  calls, from its log; the server's callbacks are only checked for loss);
- decision time after the evidence started (median / p95): the carriers start
  their tone, music or announcement with the 183, so this is the classifier's
  `decided_ms` (audio received before it was sure); calls decided by
  signalling alone are counted apart;
- the daemon's CPU: (utime + stime) of its process over the window / wall time;
- the physical limit of the mix: numbers per line per hour if every call took
  only the time its carrier needs to make the outcome knowable (EVIDENCE_S:
  a final response at once, a busy-tone cycle, a ringback burst, an
  announcement's first phrase, CRBT and a silent 180 as long as the
  classifier's own rules require), with no overhead between calls. The ratio
  measured / limit is what the pipeline (polls, status, upload, setup) costs.

Figures go to stdout and to the JSON file; they are measured on whatever the
machine is doing meanwhile (say so when quoting them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sipclient.demo import CARRIERS, Carrier, World, WorldOptions, numbers_for

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
    "ringing_crbt": 4.0,  # CallClassifier.crbt_ms: music is only "not an announcement" after it
    "ringing_180": 2.0,  # rtp.no_rtp_wait: a 180 with no media
}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _limit_per_line_hour(carriers: list[Carrier]) -> float:
    mean = statistics.fmean(EVIDENCE_S.get(c.name, 0.0) for c in carriers)
    return 3600.0 / max(mean, 1e-3)


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def _daemon_events(world: World) -> list[dict[str, Any]]:
    out = []
    log = world.workdir / "daemon" / "daemon.log"
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"call_classified"' in line:
            out.append(json.loads(line))
    return out


async def run(lines: int, per_line: int, workdir: Path, timeout: float) -> dict[str, Any]:
    options = WorldOptions(
        lines=lines,
        log_level="info",
        poll_min=0.1,
        poll_max=0.5,
        heartbeat=5.0,
        client_timeout=60.0,
    )
    world = World(workdir, options)
    phones = numbers_for(lines * per_line, CARRIERS)
    try:
        await world.start()
        assert world.daemon is not None
        pid = world.daemon.pid
        # let every line register before the clock starts
        await asyncio.sleep(2.0)
        cpu0, t0 = _cpu_seconds(pid), time.monotonic()
        await world.push_numbers(phones, one_task_each=False)
        deadline = t0 + timeout
        events: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            events = _daemon_events(world)
            if len(events) >= len(phones):
                break
            await asyncio.sleep(0.5)
        t1, cpu1 = time.monotonic(), _cpu_seconds(pid)
        got_callbacks = await world.wait_for(phones, 30)
        wall = t1 - t0
        decided = [e for e in events if e.get("decided_ms") is not None]
        decided_ms = [float(e["decided_ms"]) for e in decided]
        call_ms = [float(e["call_ms"]) for e in events]
        per_line_hour = len(events) / lines / wall * 3600
        limit = _limit_per_line_hour(list(CARRIERS))
        return {
            "lines": lines,
            "numbers": len(phones),
            "finished_by_daemon": len(events),
            "callbacks_complete": got_callbacks,
            "wall_s": round(wall, 2),
            "numbers_per_line_per_hour": round(per_line_hour, 1),
            "limit_per_line_per_hour": round(limit, 1),
            "ratio_to_limit": round(per_line_hour / limit, 3),
            "decision_after_evidence_ms": {
                "count": len(decided_ms),
                "median": _quantile(decided_ms, 0.5),
                "p95": _quantile(decided_ms, 0.95),
            },
            "decided_by_signalling_alone": len(events) - len(decided),
            "call_ms": {"median": _quantile(call_ms, 0.5), "p95": _quantile(call_ms, 0.95)},
            "daemon_cpu_percent_of_one_core": round(100 * (cpu1 - cpu0) / wall, 1),
            "evidence_s_assumed": EVIDENCE_S,
        }
    finally:
        await world.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lines", type=int, nargs="+", default=[24])
    p.add_argument("--per-line", type=int, default=4)
    p.add_argument("--timeout", type=float, default=240.0)
    p.add_argument("--out", type=Path, default=Path("bench/out/e2e.json"))
    p.add_argument("--keep", type=Path, default=None, help="keep the worlds' files here")
    args = p.parse_args()
    results = []
    for lines in args.lines:
        if args.keep is not None:
            r = asyncio.run(run(lines, args.per_line, args.keep / f"lines{lines}", args.timeout))
        else:
            with tempfile.TemporaryDirectory(prefix="sipclient-bench-e2e-") as tmp:
                r = asyncio.run(run(lines, args.per_line, Path(tmp), args.timeout))
        results.append(r)
        d = r["decision_after_evidence_ms"]
        print(
            f"{lines:4} lines: {r['finished_by_daemon']}/{r['numbers']} numbers in {r['wall_s']} s,"
            f" {r['numbers_per_line_per_hour']:.0f} per line per hour"
            f" (limit {r['limit_per_line_per_hour']:.0f}, ratio {r['ratio_to_limit']:.2f});"
            f" decision after evidence median {d['median']} ms, p95 {d['p95']} ms"
            f" ({d['count']} by audio, {r['decided_by_signalling_alone']} by signalling);"
            f" daemon CPU {r['daemon_cpu_percent_of_one_core']} % of one core",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": " ".join(sys.argv),
                "note": "2 shared cores, other work running: figures are under contention",
                "results": results,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
