"""`sipclient fleet`: the daemons a server knows, one line each, alerting ones first.

For an operator of many dialing boxes: what `GET /api/clients` (ext) says,
with each daemon's health from its latest heartbeat (`Daemon.health`: alert
codes such as `route_suspect`, `trunk_failing`, `loop_lagging`), as a table
or as JSON (`--json`). With `--check` it is a monitoring probe: exit 3 when
any daemon has an alert (the alerting ones are printed), 0 when none, 1 when
the server cannot be asked (and 2 for a usage error, as every subcommand).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from typing import Any

import aiohttp

EXIT_ALERTING = 3
PAGE = 1000
"""Clients a request (the server's most)."""


async def fetch(server: str, token: str, state: str) -> dict[str, Any]:
    """Every client in `state` and the totals, all pages read."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    clients: list[dict[str, Any]] = []
    totals: dict[str, Any] = {}
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as http:
        page = 1
        while True:
            url = f"{server.rstrip('/')}/api/clients"
            params = {"state": state, "page": str(page), "size": str(PAGE)}
            async with http.get(url, params=params) as resp:
                body = await resp.json(content_type=None)
            if not isinstance(body, dict) or body.get("code") != 200:
                msg = body.get("msg") if isinstance(body, dict) else None
                raise RuntimeError(f"GET /api/clients: HTTP {resp.status}: {msg or body!r}")
            data = body["data"]
            clients += data["clients"]
            totals = data["totals"]
            if len(data["clients"]) < PAGE:
                return {"clients": clients, "totals": totals}
            page += 1


def _alerts(client: dict[str, Any]) -> list[str]:
    return list((client.get("health") or {}).get("alerts") or [])


def render(fleet: dict[str, Any], only_alerting: bool = False) -> str:
    """The table: alerting clients first (with their summary), then the rest."""
    clients = sorted(fleet["clients"], key=lambda c: not _alerts(c))
    if only_alerting:
        clients = [c for c in clients if _alerts(c)]
    rows = [
        f"{'CLIENT':<10}{'LAST SEEN':<21}{'LINES':>6}{'IDLE':>6}{'DURING':>8}{'CALL':>6}"
        f"{'UNREG':>7}{'DECIDED':>10}{'SPOOLED':>9}  ALERTS"
    ]
    for c in clients:
        states = Counter(e.get("status", "unknown") for e in c.get("extensions") or [])
        health = c.get("health") or {}
        decided = health.get("decided")
        spooled = health.get("spooled")
        rows.append(
            f"{str(c['id'])[:8]:<10}{str(c.get('last_seen') or '-')[:19]:<21}"
            f"{states.total():>6}{states['idle']:>6}{states['during']:>8}{states['call']:>6}"
            f"{states['unregistered']:>7}"
            f"{'-' if decided is None else f'{decided:,}':>10}"
            f"{'-' if spooled is None else f'{spooled:,}':>9}"
            f"  {','.join(_alerts(c)) or ('-' if health else 'no health yet')}"
        )
        if _alerts(c) and health.get("summary"):
            rows.append(f"{'':<10}{health['summary']}")
    t = fleet["totals"]
    rows.append(
        f"total: {t.get('clients', 0):,} clients, {t.get('extensions', 0):,} extensions,"
        f" {t.get('alerting', 0):,} alerting"
    )
    return "\n".join(rows)


def fleet_main(args: argparse.Namespace) -> int:
    """Entry of `sipclient fleet --server URL [--token T] [--expired] [--json] [--check]`."""
    try:
        fleet = asyncio.run(fetch(args.server, args.token, "expired" if args.expired else "active"))
    except (aiohttp.ClientError, TimeoutError, OSError, RuntimeError, ValueError) as exc:
        print(f"sipclient fleet: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    alerting = any(_alerts(c) for c in fleet["clients"])
    if args.json:
        print(json.dumps(fleet, ensure_ascii=False, indent=2))
    else:
        print(render(fleet, only_alerting=args.check))
    return EXIT_ALERTING if args.check and alerting else 0
