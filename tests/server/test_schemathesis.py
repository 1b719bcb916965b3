"""schemathesis against the live server over a real socket: no operation answers a 5xx."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from tests.server.conftest import LiveServer

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


async def test_no_5xx_from_any_generated_request(live: LiveServer, tmp_path: Path) -> None:
    url = await live.start()
    # Stateless phases only: a generated request can never finish a task, so the
    # server never calls a generated return_url (the tests stay on loopback).
    proc = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "15",
        "--seed",
        "1",
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--no-color",
        "--report",
        "ndjson",
        "--report-dir",
        str(tmp_path / "report"),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"},
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-4000:]
    # It really exercised every operation and every generated case passed.
    counts = re.search(r"(\d+) generated, (\d+) passed", text)
    assert counts is not None, text[-4000:]
    assert int(counts[1]) == int(counts[2]) > 100
    assert re.search(r"Tested: (\d+)", text) is not None
    report = next((tmp_path / "report").glob("*.ndjson")).read_text().splitlines()
    assert len(report) > 10
