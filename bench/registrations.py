"""500 extensions registering and refreshing against kamailio from one process.

    .venv/bin/python bench/registrations.py [--extensions 500] [--expires 20]

Starts a lab kamailio (registrar with digest auth) on 127.0.0.1, one UDP
SipStack shared by every extension (`sip.socket_per_extension: false`),
registers all of them at once (401 then REGISTER with credentials each),
then waits for one refresh round (at half of the granted expiry). Prints
and writes to bench/out/registrations.json: time until all were registered,
time of the refresh round, and this process's CPU seconds for each phase
(the SIP layer plus asyncio; kamailio's CPU is not counted); retransmissions
show up as sent > received when kamailio falls behind the burst. Figures are
measured on whatever else runs on the machine: say so when you quote them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from sipclient.agent.transport import open_stack
from sipclient.agent.useragent import Account, UserAgent
from sipclient.config import HostPort
from sipclient.lab.kamailio import Kamailio, KamailioConfig
from sipclient.logs import configure
from sipclient.sip.registration import Registered

OUT = Path(__file__).with_name("out")


def cpu() -> float:
    t = os.times()
    return t.user + t.system


async def run(kam: Kamailio, n: int, expires: int) -> dict[str, float | int | str]:
    stack = await open_stack(
        transport="udp", bind=HostPort("127.0.0.1", 0), remote=("127.0.0.1", kam.port)
    )
    host = HostPort("127.0.0.1", kam.port)
    uas = [
        UserAgent(stack, Account(f"{2000 + i}", f"pw{2000 + i}", host), expires=expires)
        for i in range(n)
    ]
    refreshed: set[int] = set()
    counts = {id(ua.registration): 0 for ua in uas}

    for ua in uas:
        reg = ua.registration
        original = ua._on_event  # count Registered events per extension, then pass on

        def on_event(event: object, reg_id: int = id(reg), original: Any = original) -> None:
            if isinstance(event, Registered):
                counts[reg_id] += 1
                if counts[reg_id] >= 2:
                    refreshed.add(reg_id)
            original(event)

        stack.subscribe(reg, on_event)
    cpu0, t0 = cpu(), time.perf_counter()
    results = await asyncio.gather(*(ua.register(timeout=60) for ua in uas))
    t_all, cpu_all = time.perf_counter() - t0, cpu() - cpu0
    ok = sum(results)
    cpu1, t1 = cpu(), time.perf_counter()
    deadline = time.perf_counter() + expires * 2
    while len(refreshed) < ok and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    t_refresh, cpu_refresh = time.perf_counter() - t1, cpu() - cpu1
    cpu2 = cpu()
    await asyncio.gather(*(ua.stop(timeout=10) for ua in uas))
    cpu_unreg = cpu() - cpu2
    await stack.close()
    return {
        "extensions": n,
        "registered": ok,
        "refreshed": len(refreshed),
        "seconds_to_all_registered": round(t_all, 3),
        "cpu_seconds_register": round(cpu_all, 3),
        "seconds_refresh_round_wall": round(t_refresh, 3),
        "cpu_seconds_refresh_round": round(cpu_refresh, 3),
        "cpu_seconds_unregister": round(cpu_unreg, 3),
        "cpu_ms_per_registration": round(cpu_all * 1000 / max(ok, 1), 3),
        "sip_messages_sent": stack.sent,
        "sip_messages_received": stack.received,
        "expires": expires,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extensions", type=int, default=500)
    parser.add_argument("--expires", type=int, default=20)
    args = parser.parse_args()
    configure("warning", "console")
    exts = {f"{2000 + i}": f"pw{2000 + i}" for i in range(args.extensions)}
    kam = Kamailio(config=KamailioConfig(extensions=exts, children=2, min_expires=10))
    kam.start()
    try:
        figures = asyncio.run(run(kam, args.extensions, args.expires))
    finally:
        kam.cleanup()
    figures["note"] = "loopback, kamailio -n 2 on the same machine; shared 2-core box under load"
    OUT.mkdir(exist_ok=True)
    (OUT / "registrations.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
