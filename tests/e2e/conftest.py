"""The demo's world (sipclient.demo.World) for the end-to-end tests, stopped by pid.

`make_world(**options)` builds one World in the test's tmp dir with short
timeouts (lease reclaim, polls, heartbeat) so the suite stays short; every
process it started is stopped at teardown, also when the test fails, and the
daemon's log is printed on failure to help whoever reads the report.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from sipclient.demo import World, WorldOptions


@pytest.fixture
async def make_world(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Callable[..., World]]:
    worlds: list[World] = []

    def make(**options: Any) -> World:
        base: dict[str, Any] = {
            "lines": 4,
            "ring_timeout": 20.0,
            "poll_min": 0.1,
            "poll_max": 0.5,
            "heartbeat": 0.5,
            "client_timeout": 3.0,
            "number_timeout": 60.0,
            "sweep_interval": 0.5,
            "max_tries": 1,
        }
        base.update(options)
        world = World(tmp_path / f"world{len(worlds)}", WorldOptions(**base))
        worlds.append(world)
        return world

    yield make
    for world in worlds:
        await world.stop()
        log = world.workdir / "daemon" / "daemon.log"
        if log.exists() and getattr(request.node, "failed", False):
            print(log.read_text(errors="replace")[-6000:])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        item.failed = True  # type: ignore[attr-defined]
