"""`sipclient fleet` against the real server over a socket."""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp
import pytest

from sipclient.cli import main
from sipclient.lab.ports import free_port
from tests.server.conftest import LiveServer

_LOG = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")


async def _fleet(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    # the command runs its own event loop: off this one
    code = await asyncio.to_thread(main, ["fleet", *argv])
    out, err = capsys.readouterr()
    # the in-process server logs to the same stdout: keep the command's lines
    out = "".join(line for line in out.splitlines(keepends=True) if not _LOG.match(line))
    return code, out, err


async def test_fleet_lists_the_daemons_alerting_first_and_check_exits_3_on_alerts(
    live: LiveServer, session: aiohttp.ClientSession, capsys: pytest.CaptureFixture[str]
) -> None:
    url = await live.start()

    async def notify() -> str:
        async with session.get(f"{url}/notify") as r:
            return str((await r.json())["data"]["clientId"])

    calm, broken = await notify(), await notify()
    said = {
        "summary": "24/24 registered, 0 in call, 1,204 decided, route suspect (404 to every"
        " number): dialling paused (5 s left)",
        "alerts": ["route_suspect"],
        "decided": 1204,
        "spooled": 0,
    }
    async with session.post(f"{url}/heartbeat/{broken}", json=said) as r:
        assert r.status == 200
    async with session.post(f"{url}/heartbeat/{calm}", json={"alerts": [], "decided": 7}) as r:
        assert r.status == 200

    code, out, _ = await _fleet(capsys, "--server", url)
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("CLIENT")
    assert lines[1].startswith(broken[:8]) and lines[1].endswith("route_suspect")
    assert "1,204" in lines[1] and "route suspect (404 to every number)" in lines[2]
    assert lines[3].startswith(calm[:8]) and lines[3].rstrip().endswith("-")
    assert lines[-1] == "total: 2 clients, 0 extensions, 1 alerting"

    code, out, _ = await _fleet(capsys, "--server", url, "--check")
    assert code == 3 and broken[:8] in out and calm[:8] not in out
    code, out, _ = await _fleet(capsys, "--server", url, "--json")
    data = json.loads(out)
    assert code == 0 and {c["id"] for c in data["clients"]} == {calm, broken}

    # the alert is gone from the latest beat: --check is quiet
    async with session.post(f"{url}/heartbeat/{broken}", json={"alerts": []}) as r:
        assert r.status == 200
    code, out, _ = await _fleet(capsys, "--server", url, "--check")
    assert code == 0 and out.splitlines()[-1].endswith("0 alerting")


async def test_fleet_says_why_when_the_server_cannot_be_asked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = await _fleet(capsys, "--server", f"http://127.0.0.1:{free_port()}")
    assert code == 1 and err.startswith("sipclient fleet: ClientConnectorError")
