"""(ext) POST /api/tasks/{id}/cancel: a task stopped mid-run, over a real socket and SQLite."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from sipclient.server.app import DISPATCH
from sipclient.server.dispatch import FakeClock
from tests.server.conftest import ACCOUNTS, Api

URL = "http://127.0.0.1:9/cb"


async def _push(api: Api, phones: list[str]) -> int:
    await api.ok("POST", "/api/account", json={"account": ACCOUNTS})
    task = await api.ok("POST", "/api/dialplan", json={"phone": phones, "return_url": URL})
    return int(task["task_id"])


def _by_phone(task: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["phone"]: p for p in task["dialplans"]}


async def test_a_cancelled_task_dials_nothing_more_and_finishes_with_its_calls_in_flight(
    api: Api,
) -> None:
    task_id = await _push(api, ["111", "222", "333", "444", "555"])
    cid = await api.notify()
    await api.ok("GET", f"/accounts/{cid}?threadsNum=2")
    plans = (await api.ok("GET", f"/dialplan/{cid}"))["dialplans"]
    assert [p["phoneNum"] for p in plans] == ["111", "222"]
    # 222 met a failing trunk: transient, it waits for another try
    status, body = await api.upload(cid, "1002", "222", sipCode=503, q850Cause=34)
    assert status == 200 and body["data"]["status"] == "free"

    out = await api.ok("POST", f"/api/tasks/{task_id}/cancel")
    assert out == {"task_id": task_id, "cancelled": 4, "in_flight": 1}
    task = await api.ok("GET", f"/api/tasks/{task_id}")
    assert task["cancelled_at"] and task["status"] == "running"
    plans_now = _by_phone(task)
    for phone in ("222", "333", "444", "555"):
        plan = plans_now[phone]
        assert (plan["status"], plan["result"]) == ("finish", "unknown")
        assert plan["detail"]["evidence"]["kind"] == "cancelled"
    assert plans_now["222"]["detail"]["before"]["sip_code"] == 503  # its try stays readable
    assert plans_now["111"]["status"] == "busy"
    # nothing more is handed out, the free extension included
    await api.ok("GET", f"/status/{cid}?status=idle&extensionNum=1002")
    assert (await api.ok("GET", f"/dialplan/{cid}"))["dialplans"] == []

    # the call in flight ends transient: no retry for a cancelled task, it is final
    status, body = await api.upload(cid, "1001", "111", sipCode=503, q850Cause=34)
    assert status == 200 and body["data"]["status"] == "finish"
    task = await api.ok("GET", f"/api/tasks/{task_id}")
    assert task["status"] == "finish" and task["callback"]["state"] in ("pending", "failed")
    assert _by_phone(task)["111"]["result"] == "failed"
    # cancelling again changes nothing
    again = await api.ok("POST", f"/api/tasks/{task_id}/cancel")
    assert again == {"task_id": task_id, "cancelled": 0, "in_flight": 0}


async def test_a_number_reclaimed_after_the_cancel_is_finished_not_dialled_again(
    api: Api, app: web.Application, clock: FakeClock
) -> None:
    task_id = await _push(api, ["600", "700"])
    other = await _push(api, ["800"])
    cid = await api.notify()
    await api.ok("GET", f"/accounts/{cid}?threadsNum=3")
    assert len((await api.ok("GET", f"/dialplan/{cid}"))["dialplans"]) == 3
    assert await api.ok("POST", f"/api/tasks/{task_id}/cancel") == {
        "task_id": task_id,
        "cancelled": 0,
        "in_flight": 2,
    }
    # the daemon goes silent: its numbers come back free at the sweep
    clock.advance(61)
    out = await app[DISPATCH].sweep()
    assert out.freed_by_client == 3
    task = await api.ok("GET", f"/api/tasks/{task_id}")
    assert task["status"] == "finish"
    assert {p["result"] for p in task["dialplans"]} == {"unknown"}
    # the other task is not touched: its number is free for the next daemon
    assert _by_phone(await api.ok("GET", f"/api/tasks/{other}"))["800"]["status"] == "free"


async def test_cancel_answers_404_for_no_such_task_and_400_for_a_bad_id(api: Api) -> None:
    status, body = await api.call("POST", "/api/tasks/999/cancel")
    assert status == 404 and body["msg"].startswith("task_id:")
    status, body = await api.call("POST", "/api/tasks/abc/cancel")
    assert status == 400 and body["msg"].startswith("task_id:")
