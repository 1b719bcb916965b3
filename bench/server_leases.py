"""Throughput of the embedded server: N fake daemons cycling /dialplan -> /dial_wav.

Starts `sipclient server` as its own process on a free loopback port with a
fresh SQLite file, pushes the accounts and the numbers, then runs N
concurrent fake clients (real HTTP on loopback, aiohttp) that each lease
`--threads` extensions and loop: GET /dialplan, POST one /dial_wav per number
(a zero-frame WAV with sipCode=404, as a daemon uploads a call without media),
until every number is finished. Prints numbers leased and finished per second
and the p50/p99 latency of each call, and writes them to
bench/out/server_leases.json. Figures, never assertions.

    .venv/bin/python bench/server_leases.py --clients 8 --threads 16 --numbers 20000
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import soundfile

OUT = Path(__file__).resolve().parent / "out"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _empty_wav() -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, np.zeros(0, dtype=np.int16), 8000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


_BOUNDARY = "benchboundary7MA4YWxkTrZu0gW"
_FORM_HEADERS = {"Content-Type": f"multipart/form-data; boundary={_BOUNDARY}"}


def _multipart(fields: dict[str, str], wav: bytes) -> bytes:
    out = []
    for name, value in fields.items():
        out.append(
            f'--{_BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        )
    out.append(
        f'--{_BOUNDARY}\r\nContent-Disposition: form-data; name="file_name"; '
        'filename="call.wav"\r\nContent-Type: audio/wav\r\n\r\n'
    )
    return "".join(out).encode() + wav + f"\r\n--{_BOUNDARY}--\r\n".encode()


class Stats:
    def __init__(self) -> None:
        self.leased = 0
        self.finished = 0
        self.errors: dict[str, int] = {}
        self.latency: dict[str, list[float]] = {"dialplan": [], "dial_wav": []}

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


async def _call(
    session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> dict[str, Any]:
    async with session.request(method, url, **kwargs) as resp:
        body: dict[str, Any] = await resp.json()
        return body


async def fake_client(
    session: aiohttp.ClientSession, base: str, threads: int, wav: bytes, stats: Stats, total: int
) -> None:
    cid = (await _call(session, "GET", f"{base}/notify"))["data"]["clientId"]
    await _call(session, "GET", f"{base}/accounts/{cid}?threadsNum={threads}")

    async def upload(plan: dict[str, Any]) -> None:
        # Built by hand: aiohttp's FormData costs the (shared) CPU more than the server does.
        form = _multipart(
            {
                "extensionNum": plan["extensionNum"],
                "phone": plan["phoneNum"],
                "dialplanId": str(plan["dialplanId"]),
                "sipCode": "404",
            },
            wav,
        )
        t0 = time.perf_counter()
        body = await _call(
            session, "POST", f"{base}/dial_wav/{cid}", data=form, headers=_FORM_HEADERS
        )
        stats.latency["dial_wav"].append(time.perf_counter() - t0)
        if body["code"] == 200:
            stats.finished += 1
        else:
            stats.error(f"dial_wav {body['code']}")

    while stats.finished < total:
        t0 = time.perf_counter()
        body = await _call(session, "GET", f"{base}/dialplan/{cid}")
        stats.latency["dialplan"].append(time.perf_counter() - t0)
        if body["code"] != 200:
            stats.error(f"dialplan {body['code']}")
            return
        plans = body["data"]["dialplans"]
        if not plans:
            await asyncio.sleep(0.05)
            continue
        stats.leased += len(plans)
        await asyncio.gather(*(upload(p) for p in plans))


def _cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def start_server(
    work: Path, extra_yaml: str = "", python_args: list[str] | None = None, wrap: str = ""
) -> tuple[subprocess.Popen[bytes], str]:
    """`sipclient server` on a free loopback port with a fresh SQLite file in `work`;
    the process and its base URL (not waited for: the caller polls it)."""
    port = _free_port()
    config = work / "server.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{port}\n"
        f"database: sqlite:///{work / 'server.db'}\n"
        f"recordings:\n  dir: {work / 'recordings'}\n"
        "log:\n  level: warning\n  format: json\n" + extra_yaml
    )
    command = [sys.executable, *(python_args or []), "-m", "sipclient.cli", "server"]
    command += ["--config", str(config)]
    if wrap:  # e.g. --wrap "py-spy record -o prof.svg --threads --"
        command = [*wrap.split(), *command]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL), f"http://127.0.0.1:{port}"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-server-"))
    profile = ["-m", "cProfile", "-o", args.profile] if args.profile else []
    share = f"leases:\n  share: {args.share}\n" if args.share else ""
    server, base = start_server(work, share, python_args=profile, wrap=args.wrap or "")
    try:
        connector = aiohttp.TCPConnector(limit=args.clients * args.threads + 8)
        async with aiohttp.ClientSession(connector=connector) as session:
            for _ in range(200):
                try:
                    await _call(session, "GET", f"{base}/api/tasks")
                    break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
            accounts = [
                {"host": "127.0.0.1:5060", "name": str(10000 + i), "pwd": "x"}
                for i in range(args.clients * args.threads)
            ]
            await _call(session, "POST", f"{base}/api/account", json={"account": accounts})
            # The return_url is a closed loopback port: callbacks fail cheaply. Each
            # pusher (leases.share) has its own loopback address.
            chunk = args.task_size
            for k, start in enumerate(range(0, args.numbers, chunk)):
                phones = [f"1{n:010d}" for n in range(start, min(args.numbers, start + chunk))]
                url = f"http://127.0.0.{k % args.pushers + 1}:9/cb"
                body = {"phone": phones, "return_url": url}
                await _call(session, "POST", f"{base}/api/dialplan", json=body)

            stats = Stats()
            wav = _empty_wav()
            server_cpu0 = _cpu_seconds(server.pid)
            client_cpu0 = time.process_time()
            t0 = time.perf_counter()
            await asyncio.gather(
                *(
                    fake_client(session, base, args.threads, wav, stats, args.numbers)
                    for _ in range(args.clients)
                )
            )
            elapsed = time.perf_counter() - t0
            server_cpu = _cpu_seconds(server.pid) - server_cpu0
            client_cpu = time.process_time() - client_cpu0
            tasks = (await _call(session, "GET", f"{base}/api/tasks?size=1000"))["data"]
    finally:
        stop0 = time.perf_counter()
        server.send_signal(signal.SIGTERM)
        try:
            exit_code: int | None = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
            exit_code = None
        stop_seconds = time.perf_counter() - stop0
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0],
        "clients": args.clients,
        "threads_per_client": args.threads,
        "numbers": args.numbers,
        "task_size": args.task_size,
        "pushers": args.pushers,
        "share": args.share or "(default)",
        "seconds": round(elapsed, 3),
        "leased": stats.leased,
        "finished": stats.finished,
        "leased_per_s": round(stats.leased / elapsed, 1),
        "finished_per_s": round(stats.finished / elapsed, 1),
        "server_cpu_s": round(server_cpu, 2),
        "client_cpu_s": round(client_cpu, 2),
        "server_cpu_ms_per_number": round(server_cpu * 1000 / max(stats.finished, 1), 3),
        "tasks_finished": sum(1 for t in tasks if t["status"] == "finish"),
        "tasks": len(tasks),
        "errors": stats.errors,
        "latency_ms": {
            name: {
                "p50": round(_pct(values, 0.50), 2),
                "p99": round(_pct(values, 0.99), 2),
                "mean": round(statistics.fmean(values) * 1000, 2) if values else None,
                "count": len(values),
            }
            for name, values in stats.latency.items()
        },
        "server_exit_code": exit_code,
        "server_stop_s": round(stop_seconds, 2),
        "workdir": str(work),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent fake daemons")
    parser.add_argument("--threads", type=int, default=16, help="extensions per daemon")
    parser.add_argument("--numbers", type=int, default=20_000, help="numbers to dial")
    parser.add_argument("--task-size", type=int, default=10_000, help="numbers per task pushed")
    parser.add_argument("--pushers", type=int, default=1, help="return_url origins, in turn")
    parser.add_argument("--share", default="", help="leases.share (default: the server's)")
    parser.add_argument("--profile", default=None, help="run the server under cProfile to FILE")
    parser.add_argument("--keep", action="store_true", help="keep the database and WAVs")
    parser.add_argument("--wrap", default=None, help="command prefix for the server process")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    OUT.mkdir(exist_ok=True)
    (OUT / "server_leases.json").write_text(json.dumps(result, indent=2) + "\n")
    lat = result["latency_ms"]
    print(
        f"{result['numbers']} numbers, {result['clients']} clients x "
        f"{result['threads_per_client']} extensions, {result['seconds']} s "
        f"(load avg {result['loadavg_1m']:.2f} on {result['cpus']} CPUs)\n"
        f"leased   {result['leased_per_s']:>8.1f} numbers/s\n"
        f"finished {result['finished_per_s']:>8.1f} numbers/s\n"
        f"GET /dialplan  p50 {lat['dialplan']['p50']} ms  p99 {lat['dialplan']['p99']} ms\n"
        f"POST /dial_wav p50 {lat['dial_wav']['p50']} ms  p99 {lat['dial_wav']['p99']} ms\n"
        f"CPU: server {result['server_cpu_s']} s "
        f"({result['server_cpu_ms_per_number']} ms/number), "
        f"bench clients {result['client_cpu_s']} s\n"
        f"server stopped in {result['server_stop_s']} s, exit code {result['server_exit_code']}\n"
        f"tasks finished {result['tasks_finished']}/{result['tasks']}; errors {result['errors']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
