"""A big push and a big task's GET against the embedded server, and what the 001 API
feels meanwhile.

Starts `sipclient server` as its own process (fresh SQLite file, loopback). A
client /notify's, leases one extension, and then sends, every 20 ms each, a
POST /heartbeat (liveness: kept in memory since session 8) and a GET /status
(a database write, as /dialplan and /dial_wav are). Meanwhile one task of
`--numbers` phones is pushed and then GET back. Prints how long each took, the
answer's size and the worst latency of each kind of call during each (the
daemons' HTTP timeout is 10 s; past it their uploads wait), and writes them to
bench/out/server_push.json. Figures, never assertions.

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


async def _ping(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    out: dict[str, list[float]],
    key: str,
    stop: asyncio.Event,
) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        async with session.request(method, url) as resp:
            await resp.read()
        out[key].append(time.perf_counter() - t)
        await asyncio.sleep(0.02)


def _worst_ms(latencies: dict[str, list[float]]) -> dict[str, int]:
    worst = {k: round(1000 * max(v, default=0.0)) for k, v in latencies.items()}
    for v in latencies.values():
        v.clear()
    return worst


async def run(numbers: int) -> dict[str, object]:
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
            account = {"host": "127.0.0.1:5060", "name": "2001", "pwd": "x"}
            async with s.post(base + "/api/account", json={"account": [account]}) as resp:
                await resp.read()
            async with s.get(base + "/notify") as resp:
                client_id = (await resp.json())["data"]["clientId"]
            async with s.get(f"{base}/accounts/{client_id}?threadsNum=1") as resp:
                await resp.read()
            latencies: dict[str, list[float]] = {"heartbeat": [], "status": []}
            stop = asyncio.Event()
            status_url = f"{base}/status/{client_id}?status=idle&extensionNum=2001"
            pings = [
                asyncio.create_task(
                    _ping(s, "POST", f"{base}/heartbeat/{client_id}", latencies, "heartbeat", stop)
                ),
                asyncio.create_task(_ping(s, "GET", status_url, latencies, "status", stop)),
            ]
            await asyncio.sleep(0.5)
            idle = _worst_ms(latencies)
            body = {
                "phone": [f"1{n:010d}" for n in range(numbers)],
                "return_url": "http://127.0.0.1:9/",
            }
            t = time.perf_counter()
            async with s.post(base + "/api/dialplan", json=body) as resp:
                answer = await resp.json()
                if answer.get("code") != 200:
                    raise SystemExit(
                        f"the push was refused: {answer.get('code')} {answer.get('msg')}"
                    )
                task_id = answer["data"]["task_id"]
            push_s, push_worst = time.perf_counter() - t, _worst_ms(latencies)
            t = time.perf_counter()
            async with s.get(f"{base}/api/tasks/{task_id}") as resp:
                size = len(await resp.read())
            get_s, get_worst = time.perf_counter() - t, _worst_ms(latencies)
            stop.set()
            await asyncio.gather(*pings)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    print(f"{numbers} numbers in one push (worst latency meanwhile: heartbeat / status):")
    print(
        f"  push          {push_s:6.2f} s   {push_worst['heartbeat']} / {push_worst['status']} ms"
    )
    print(
        f"  GET the task  {get_s:6.2f} s   {get_worst['heartbeat']} / {get_worst['status']} ms"
        f" ({size / 1e6:.1f} MB)"
    )
    print(f"  idle server:              {idle['heartbeat']} / {idle['status']} ms")
    return {
        "numbers": numbers,
        "push_s": round(push_s, 3),
        "push_worst_ms": push_worst,
        "get_s": round(get_s, 3),
        "get_worst_ms": get_worst,
        "task_bytes": size,
        "idle_worst_ms": idle,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numbers", type=int, default=100_000)
    out = asyncio.run(run(parser.parse_args().numbers))
    OUT.mkdir(exist_ok=True)
    (OUT / "server_push.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {OUT / 'server_push.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
