"""A big push and a big task's GET against the embedded server, and what the 001 API
feels meanwhile.

Starts `sipclient server` as its own process (fresh SQLite file, loopback), has a
client /notify and then POST /heartbeat every 20 ms (a daemon's lightest call,
and a write: liveness), and meanwhile pushes one task of `--numbers` phones and
GETs it back. Prints how long each took, the answer's size and the worst
heartbeat latency during each (the daemons' HTTP timeout is 10 s; past it their
uploads wait), and writes them to bench/out/server_push.json. Figures, never
assertions.

    .venv/bin/python bench/server_push.py --numbers 100000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from server_leases import start_server  # bench/ is the script's folder, on sys.path

OUT = Path(__file__).resolve().parent / "out"


async def _heartbeats(
    session: aiohttp.ClientSession, url: str, out: list[float], stop: asyncio.Event
) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        async with session.post(url) as resp:
            await resp.read()
        out.append(time.perf_counter() - t)
        await asyncio.sleep(0.02)


def _worst_ms(latencies: list[float]) -> int:
    return round(1000 * max(latencies, default=0.0))


async def run(numbers: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-push-"))
    server, base = start_server(work, "max_body: 100000000\n")
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
            for _ in range(200):
                try:
                    async with s.get(base + "/api/tasks") as resp:
                        await resp.read()
                    break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
            async with s.get(base + "/notify") as resp:
                client_id = (await resp.json())["data"]["clientId"]
            latencies: list[float] = []
            stop = asyncio.Event()
            beats = asyncio.create_task(
                _heartbeats(s, f"{base}/heartbeat/{client_id}", latencies, stop)
            )
            await asyncio.sleep(0.5)
            idle = _worst_ms(latencies)
            latencies.clear()
            body = {
                "phone": [f"1{n:010d}" for n in range(numbers)],
                "return_url": "http://127.0.0.1:9/",
            }
            t = time.perf_counter()
            async with s.post(base + "/api/dialplan", json=body) as resp:
                task_id = (await resp.json())["data"]["task_id"]
            push_s, push_worst = time.perf_counter() - t, _worst_ms(latencies)
            latencies.clear()
            t = time.perf_counter()
            async with s.get(f"{base}/api/tasks/{task_id}") as resp:
                size = len(await resp.read())
            get_s, get_worst = time.perf_counter() - t, _worst_ms(latencies)
            stop.set()
            await beats
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    print(f"{numbers} numbers in one push:")
    print(f"  push          {push_s:6.2f} s   heartbeat worst meanwhile {push_worst} ms")
    mb = size / 1e6
    print(
        f"  GET the task  {get_s:6.2f} s   heartbeat worst meanwhile {get_worst} ms ({mb:.1f} MB)"
    )
    print(f"  idle server: heartbeat worst {idle} ms")
    out = {
        "numbers": numbers,
        "push_s": round(push_s, 3),
        "push_heartbeat_worst_ms": push_worst,
        "get_s": round(get_s, 3),
        "get_heartbeat_worst_ms": get_worst,
        "task_bytes": size,
        "idle_heartbeat_worst_ms": idle,
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "server_push.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {OUT / 'server_push.json'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numbers", type=int, default=100_000)
    asyncio.run(run(parser.parse_args().numbers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
