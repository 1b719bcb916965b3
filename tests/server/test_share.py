"""leases.share: unfinished tasks take turns for the lines, over a real socket and SQLite."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sipclient.config import ServerConfig
from sipclient.server.dispatch import FakeClock
from tests.server.conftest import ACCOUNTS, Api, make_config

# two pushers as the server tells them apart: their return_url's origin
FIRST = "http://127.0.0.1:9/cb"
SECOND = "http://127.0.0.2:9/cb"


@pytest.fixture
def config(tmp_path: Path, request: pytest.FixtureRequest) -> ServerConfig:
    base = make_config(tmp_path)
    share = getattr(request, "param", "pusher")
    return replace(base, leases=replace(base.leases, share=share))


async def _push(api: Api, phones: list[str], url: str) -> int:
    await api.ok("POST", "/api/account", json={"account": ACCOUNTS})
    task = await api.ok("POST", "/api/dialplan", json={"phone": phones, "return_url": url})
    return int(task["task_id"])


async def _dial_all_on_one_line(api: Api) -> list[str]:
    """Hand-outs to one line, each number finished before the next: the order dialled."""
    cid = await api.notify()
    await api.ok("GET", f"/accounts/{cid}?threadsNum=1")
    order: list[str] = []
    while True:
        plans = (await api.ok("GET", f"/dialplan/{cid}"))["dialplans"]
        if not plans:
            return order
        (plan,) = plans
        order.append(plan["phoneNum"])
        status, _ = await api.upload(cid, plan["extensionNum"], plan["phoneNum"], sipCode=404)
        assert status == 200


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        # the default: the second pusher's small task is not held behind the first's big
        # one; the first pusher's own tasks go oldest first
        ("pusher", ["a1", "b1", "a2", "b2", "a3", "a4", "a5", "a6", "c1", "c2"]),
        ("task", ["a1", "c1", "b1", "a2", "c2", "b2", "a3", "a4", "a5", "a6"]),
        # oldest first whoever pushed (before session 9, always)
        ("none", ["a1", "a2", "a3", "a4", "a5", "a6", "c1", "c2", "b1", "b2"]),
    ],
    indirect=["config"],
)
async def test_unfinished_tasks_take_turns_for_the_lines_as_leases_share_says(
    api: Api, expected: list[str]
) -> None:
    await _push(api, ["a1", "a2", "a3", "a4", "a5", "a6"], FIRST)
    await _push(api, ["c1", "c2"], FIRST.replace("/cb", "/other"))  # same origin
    await _push(api, ["b1", "b2"], SECOND)
    assert await _dial_all_on_one_line(api) == expected


async def test_one_hand_out_to_several_lines_interleaves_the_pushers_without_a_phone_twice(
    api: Api,
) -> None:
    big = await _push(api, [f"9{n:03d}" for n in range(40)] + ["5555"], FIRST)
    small = await _push(api, ["5555", "7001", "7002"], SECOND)
    cid = await api.notify()
    await api.ok("GET", f"/accounts/{cid}?threadsNum=3")
    plans = (await api.ok("GET", f"/dialplan/{cid}"))["dialplans"]
    assert [p["phoneNum"] for p in plans] == ["9000", "5555", "9001"]
    ids = {p["dialplanId"] for p in plans}
    small_task = await api.ok("GET", f"/api/tasks/{small}")
    assert {p["id"] for p in small_task["dialplans"] if p["phone"] == "5555"} <= ids
    # the big task's 5555 waits while the small task's is out: never one phone twice
    for plan in plans:
        await api.upload(cid, plan["extensionNum"], plan["phoneNum"], sipCode=404)
    plans = (await api.ok("GET", f"/dialplan/{cid}"))["dialplans"]
    assert [p["phoneNum"] for p in plans] == ["7001", "9002", "7002"]
    big_task = await api.ok("GET", f"/api/tasks/{big}")
    assert big_task["status"] == "running"


async def test_a_pusher_with_fewer_numbers_than_its_share_leaves_the_rest_to_the_others(
    api: Api,
) -> None:
    accounts = [{"host": "127.0.0.1:5060", "name": str(2000 + n), "pwd": "x"} for n in range(10)]
    await api.ok("POST", "/api/account", json={"account": accounts})
    await _push(api, [f"8{n:03d}" for n in range(30)], FIRST)
    await _push(api, ["7001"], SECOND)
    cid = await api.notify()
    await api.ok("GET", f"/accounts/{cid}?threadsNum=10")
    plans = (await api.ok("GET", f"/dialplan/{cid}"))["dialplans"]
    # every free line gets a number: one from the second pusher, nine from the first
    assert [p["phoneNum"] for p in plans] == ["8000", "7001", *(f"8{n:03d}" for n in range(1, 9))]


async def _one_number_tasks_on_many_lines(
    api: Api, lines: int, tasks: int
) -> tuple[str, list[dict[str, Any]]]:
    """`lines` extensions, `tasks` tasks of one number each ("6NNNN") from FIRST, a
    client leasing every extension; its clientId and its first hand-out."""
    accounts = [{"host": "127.0.0.1:5060", "name": str(3000 + n), "pwd": "x"} for n in range(lines)]
    await api.ok("POST", "/api/account", json={"account": accounts})
    for n in range(tasks):
        await api.ok("POST", "/api/dialplan", json={"phone": [f"6{n:04d}"], "return_url": FIRST})
    cid = await api.notify()
    await api.ok("GET", f"/accounts/{cid}?threadsNum={lines}")
    plans: list[dict[str, Any]] = (await api.ok("GET", f"/dialplan/{cid}"))["dialplans"]
    return cid, plans


@pytest.mark.parametrize("config", ["pusher", "task", "none"], indirect=True)
async def test_more_lines_than_a_hand_out_once_read_tasks_all_get_a_number(api: Api) -> None:
    # One number a task (as `sipclient demo` pushes), more lines than the 256
    # oldest unfinished tasks a hand-out read until session 10: the lines past
    # them stood idle while those tasks' numbers were all out.
    lines = 270
    _cid, plans = await _one_number_tasks_on_many_lines(api, lines, tasks=300)
    assert len(plans) == lines
    assert [p["phoneNum"] for p in plans] == [f"6{n:04d}" for n in range(lines)]


async def test_a_pusher_of_many_one_number_tasks_does_not_hold_back_a_later_pusher(
    api: Api,
) -> None:
    # 300 tasks of one number from the first pusher, then one from the second: the
    # second's turn comes at the next hand-out, not after the first's backlog
    # (until session 10 a hand-out grouped only the 256 oldest unfinished tasks).
    for n in range(300):
        await _push(api, [f"6{n:04d}"], FIRST)
    await _push(api, ["7001", "7002"], SECOND)
    order = await _dial_all_on_one_line(api)
    assert order[:5] == ["60000", "7001", "60001", "7002", "60002"]
    assert sorted(order) == sorted([f"6{n:04d}" for n in range(300)] + ["7001", "7002"])


@pytest.mark.parametrize("config", ["task"], indirect=True)
async def test_a_number_free_again_behind_many_tasks_out_on_lines_is_found_at_once(
    api: Api, clock: FakeClock
) -> None:
    # Each task its turn: after the cycle wraps, the tasks ahead are all out on
    # lines but one, whose transient outcome (503) is due again. A hand-out looked
    # past 64 such tasks at most, so the line waited a poll per 64 of them.
    lines = 100
    cid, plans = await _one_number_tasks_on_many_lines(api, lines, tasks=lines)
    assert len(plans) == lines
    (late,) = [p for p in plans if p["phoneNum"] == "60080"]
    status, body = await api.upload(cid, late["extensionNum"], "60080", sipCode=503)
    assert status == 200 and body["data"]["status"] == "free"
    await api.ok("GET", f"/status/{cid}?status=idle&extensionNum={late['extensionNum']}")
    clock.advance(60.0)  # retries.spacing: due again
    plans = (await api.ok("GET", f"/dialplan/{cid}"))["dialplans"]
    assert [p["phoneNum"] for p in plans] == ["60080"]
