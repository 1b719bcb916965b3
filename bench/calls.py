"""200 concurrent calls to a sipp UAS: 183 with SDP, then our CANCEL.

    .venv/bin/python bench/calls.py [--concurrent 200] [--calls 1000] [--hold 1.0] [--kamailio]

Every call: INVITE (with an SDP offer), 183 with SDP, `--hold` seconds of
"early media" (no RTP: this measures signalling), CANCEL, 200, 487, ACK. The
process keeps `--concurrent` calls in flight until `--calls` are done, on one
UDP SipStack, straight to sipp (or through a lab kamailio with `--kamailio`:
407 challenge, record-route). Prints and writes bench/out/calls.json: calls
per second, CPU milliseconds per call, and the CPU share of one core this
process used while `--concurrent` calls were in flight (goal: < 10 % for 200).
The CPU is this whole process (asyncio + the SIP layer), so the SIP layer's
share is at most that. Measured on a shared machine: quote it with that.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
from pathlib import Path

from sipclient.agent.call import CallOutcome
from sipclient.agent.transport import open_stack
from sipclient.agent.useragent import Account, UserAgent
from sipclient.config import HostPort
from sipclient.lab.kamailio import Kamailio, KamailioConfig, Route
from sipclient.lab.sipp import Sipp
from sipclient.logs import configure

OUT = Path(__file__).with_name("out")


def cpu() -> float:
    t = os.times()
    return t.user + t.system


async def one_call(ua: UserAgent, number: str, hold: float) -> CallOutcome:
    early = asyncio.Event()
    call = ua.call(
        number,
        local_rtp=("127.0.0.1", 40000),
        on_provisional=lambda status: early.set() if status == 183 else None,
    )
    await call.start()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(early.wait(), 10)
    await asyncio.sleep(hold)
    call.cancel()
    return await asyncio.wait_for(call.ended(), 60)


async def run(port: int, args: argparse.Namespace) -> dict[str, object]:
    stack = await open_stack(
        transport="udp", bind=HostPort("127.0.0.1", 0), remote=("127.0.0.1", port)
    )
    ua = UserAgent(stack, Account("1001", "secret1001", HostPort("127.0.0.1", port)))
    codes: dict[str, int] = {}
    limit = asyncio.Semaphore(args.concurrent)

    async def worker(i: int) -> None:
        async with limit:
            try:
                out = await one_call(ua, f"183{i:07d}", args.hold)
                key = str(out.sip_code)
            except TimeoutError:
                key = "timeout"
            codes[key] = codes.get(key, 0) + 1

    cpu0, t0 = cpu(), time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(args.calls)))
    wall, used = time.perf_counter() - t0, cpu() - cpu0
    await stack.close()
    return {
        "calls": args.calls,
        "concurrent": args.concurrent,
        "hold_seconds": args.hold,
        "through_kamailio": args.kamailio,
        "final_codes": codes,
        "wall_seconds": round(wall, 3),
        "calls_per_second": round(args.calls / wall, 1),
        "cpu_seconds": round(used, 3),
        "cpu_ms_per_call": round(used * 1000 / args.calls, 3),
        "cpu_share_of_one_core": round(used / wall, 4),
        "sip_messages_sent": stack.sent,
        "sip_messages_received": stack.received,
        "note": "loopback; sipp (and kamailio) on the same shared 2-core machine under load",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrent", type=int, default=200)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--hold", type=float, default=1.0)
    parser.add_argument("--kamailio", action="store_true")
    args = parser.parse_args()
    configure("warning", "console")
    uas = Sipp("uas_183_cancel.xml").start()
    kam: Kamailio | None = None
    try:
        port = uas.port
        if args.kamailio:
            kam = Kamailio(
                config=KamailioConfig(
                    extensions={"1001": "secret1001"},
                    routes=[Route("183", "127.0.0.1", uas.port)],
                    children=2,
                )
            ).start()
            port = kam.port
        figures = asyncio.run(run(port, args))
    finally:
        errors = uas.errors()
        if errors:
            print("sipp errors (first 1500 chars):", errors[:1500])
        uas.cleanup()
        if kam is not None:
            kam.cleanup()
    OUT.mkdir(exist_ok=True)
    name = "calls_kamailio.json" if args.kamailio else "calls.json"
    (OUT / name).write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
