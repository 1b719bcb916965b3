"""return_url delivery against a real local aiohttp receiver that fails the first tries."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sipclient.config import CallbackSettings
from sipclient.server.app import CALLBACKS, create_app
from sipclient.server.callbacks import backoff
from sipclient.server.store import CallbackDue
from tests.server.conftest import ACCOUNTS, Api, LiveServer, UrlClient, make_config

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


class Receiver:
    """A return_url that answers 500 to the first `failures` POSTs, then 200."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.bodies: list[dict[str, Any]] = []
        self.got = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        if len(self.bodies) <= self.failures:
            return web.Response(status=500, text="not yet")
        self.got.set()
        return web.Response(text="ok")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/cb", self.handle)
        return app


async def _finish_task(api: Api, return_url: str, phones: list[str]) -> int:
    await api.ok("POST", "/api/account", json={"account": ACCOUNTS})
    task = await api.ok("POST", "/api/dialplan", json={"phone": phones, "return_url": return_url})
    cid = await api.notify()
    await api.ok("GET", f"/accounts/{cid}?threadsNum=3")
    for plan in (await api.ok("GET", f"/dialplan/{cid}"))["dialplans"]:
        status, _ = await api.upload(cid, plan["extensionNum"], plan["phoneNum"], sipCode=404)
        assert status == 200
    return int(task["task_id"])


async def _api_trying(tmp_path: Path, aiohttp_client: Any, tries: int) -> Api:
    """A server whose callbacks give up after `tries`, a few tens of ms apart."""
    settings = CallbackSettings(tries=tries, backoff_initial=0.02, backoff_max=0.05, timeout=1.0)
    return Api(await aiohttp_client(create_app(make_config(tmp_path, callbacks=settings))))


async def _wait_for(api: Api, task_id: int, state: str) -> dict[str, Any]:
    for _ in range(400):
        task: dict[str, Any] = await api.ok("GET", f"/api/tasks/{task_id}")
        if task["callback"]["state"] == state:
            return task
        await asyncio.sleep(0.01)
    raise AssertionError(f"callback never reached {state}: {task['callback']}")


async def test_callback_retried_until_2xx(api: Api, aiohttp_server: ServerFactory) -> None:
    receiver = Receiver(failures=2)
    server = await aiohttp_server(receiver.app())
    task_id = await _finish_task(api, str(server.make_url("/cb")), ["1", "2"])
    await asyncio.wait_for(receiver.got.wait(), 10)
    task = await _wait_for(api, task_id, "delivered")
    assert len(receiver.bodies) == 3
    cb = task["callback"]
    assert cb["tries"] == 3 and cb["last_status"] == 200 and cb["delivered_at"]
    # The body is what GET /api/tasks/{id} answers (callback state as of sending).
    body = receiver.bodies[-1]
    assert body["code"] == 200 and body["data"]["id"] == task_id
    assert body["data"]["status"] == "finish"
    assert body["data"]["dialplans"] == task["dialplans"]
    assert {p["result"] for p in body["data"]["dialplans"]} == {"empty"}
    assert body["data"]["callback"]["tries"] == 2
    await asyncio.sleep(0.3)
    assert len(receiver.bodies) == 3  # nothing after the 2xx


async def test_a_due_list_read_before_a_delivery_was_recorded_posts_nothing_again(
    api: Api, aiohttp_server: ServerFactory
) -> None:
    receiver = Receiver(failures=0)
    server = await aiohttp_server(receiver.app())
    url = str(server.make_url("/cb"))
    task_id = await _finish_task(api, url, ["1"])
    await _wait_for(api, task_id, "delivered")
    assert len(receiver.bodies) == 1
    # what a round whose query overlapped that delivery holds: the task, still due
    worker = api.client.app[CALLBACKS]
    await worker._try_once(CallbackDue(task_id, url, 0))
    await asyncio.sleep(0.1)
    assert len(receiver.bodies) == 1
    assert (await _wait_for(api, task_id, "delivered"))["callback"]["tries"] == 1


async def test_callback_gives_up_after_configured_tries(
    tmp_path: Path, aiohttp_client: Any, aiohttp_server: ServerFactory
) -> None:
    api = await _api_trying(tmp_path, aiohttp_client, 3)
    receiver = Receiver(failures=100)
    server = await aiohttp_server(receiver.app())
    task_id = await _finish_task(api, str(server.make_url("/cb")), ["1"])
    task = await _wait_for(api, task_id, "failed")
    assert task["callback"]["tries"] == 3 and task["callback"]["last_status"] == 500
    assert task["callback"]["last_error"] == "HTTP 500"
    await asyncio.sleep(0.2)
    assert len(receiver.bodies) == 3


async def test_a_failed_callback_is_sent_again_on_request_with_all_its_tries(
    tmp_path: Path, aiohttp_client: Any, aiohttp_server: ServerFactory
) -> None:
    # (ext) POST /api/tasks/{id}/callback: the receiver was down past every try;
    # fixed, it gets the task without a new push (before, only GET could fetch it)
    api = await _api_trying(tmp_path, aiohttp_client, 2)
    receiver = Receiver(failures=2)
    server = await aiohttp_server(receiver.app())
    url = str(server.make_url("/cb"))
    task_id = await _finish_task(api, url, ["1"])
    assert (await _wait_for(api, task_id, "failed"))["callback"]["tries"] == 2
    running = await api.ok("POST", "/api/dialplan", json={"phone": ["9"], "return_url": url})
    status, body = await api.call("POST", f"/api/tasks/{running['task_id']}/callback")
    assert status == 409 and body["msg"].startswith("task_id:")  # not finished: nothing to send
    out = await api.ok("POST", f"/api/tasks/{task_id}/callback")
    assert out == {"task_id": task_id, "callback": "pending"}
    task = await _wait_for(api, task_id, "delivered")
    assert task["callback"]["tries"] == 1  # counted afresh
    assert len(receiver.bodies) == 3 and receiver.bodies[-1]["data"]["id"] == task_id
    status, _ = await api.call("POST", "/api/tasks/424242/callback")
    assert status == 404


async def test_dead_return_url_is_recorded_and_retried(api: Api) -> None:
    task_id = await _finish_task(api, "http://127.0.0.1:9/cb", ["1"])  # port 9: nobody
    for _ in range(400):
        task = await api.ok("GET", f"/api/tasks/{task_id}")
        if task["callback"]["tries"] >= 2:
            break
        await asyncio.sleep(0.01)
    assert task["callback"]["state"] in ("pending", "failed")
    assert task["callback"]["tries"] >= 2
    assert "Connect" in task["callback"]["last_error"]


async def _restartable(
    tmp_path: Path,
    aiohttp_server: ServerFactory,
    receiver: Receiver,
    *,
    backoff: float,
    timeout: float,
) -> tuple[str, LiveServer]:
    """`receiver`'s URL, and a started server the test stops and starts again (its
    own runner), posting callbacks `backoff` s apart, `timeout` s each."""
    settings = CallbackSettings(
        tries=50, backoff_initial=backoff, backoff_max=backoff, timeout=timeout
    )
    server = await aiohttp_server(receiver.app())
    live = LiveServer(make_config(tmp_path, callbacks=settings))
    await live.start()
    return str(server.make_url("/cb")), live


async def test_pending_delivery_resumes_after_restart(
    tmp_path: Path, aiohttp_server: ServerFactory
) -> None:
    receiver = Receiver(failures=1_000_000)  # down for now
    url, live = await _restartable(tmp_path, aiohttp_server, receiver, backoff=0.2, timeout=1.0)
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(UrlClient(session, live))
            task_id = await _finish_task(api, url, ["1"])
            await _wait_for(api, task_id, "pending")
            while not receiver.bodies:
                await asyncio.sleep(0.01)
            await live.stop()
            tries_before = len(receiver.bodies)
            receiver.failures = 0  # the receiver is back
            await live.start()
            task = await _wait_for(api, task_id, "delivered")
            assert len(receiver.bodies) > tries_before
            assert task["callback"]["tries"] == len(receiver.bodies)
    finally:
        await live.stop()


class SlowReceiver(Receiver):
    """A return_url that takes every POST at once and answers 200 `delay` s later."""

    def __init__(self, delay: float) -> None:
        super().__init__(failures=0)
        self.delay = delay
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        self.arrived.set()
        await asyncio.sleep(self.delay)
        return web.Response(text="ok")


async def test_a_stop_lets_a_callback_under_way_finish_and_records_it(
    tmp_path: Path, aiohttp_server: ServerFactory
) -> None:
    # the stop cancelled the post after the receiver took it, and the restart
    # posted the task again: the e2e tests' receiver got one task twice
    receiver = SlowReceiver(delay=0.5)
    url, live = await _restartable(tmp_path, aiohttp_server, receiver, backoff=0.1, timeout=5.0)
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(UrlClient(session, live))
            task_id = await _finish_task(api, url, ["1"])
            await asyncio.wait_for(receiver.arrived.wait(), 10)
            await live.stop()  # the receiver has the task; its 200 comes 0.5 s later
            await live.start()
            task = await _wait_for(api, task_id, "delivered")
            await asyncio.sleep(0.5)  # a post again would have come by now
            assert len(receiver.bodies) == 1
            assert task["callback"]["tries"] == 1
    finally:
        await live.stop()


@pytest.mark.parametrize(
    ("tries", "expected"), [(1, 2.0), (2, 4.0), (3, 8.0), (8, 256.0), (9, 300.0), (500, 300.0)]
)
def test_backoff_doubles_and_caps(tries: int, expected: float) -> None:
    settings = CallbackSettings(tries=10, backoff_initial=2.0, backoff_max=300.0, timeout=1.0)
    assert backoff(tries, settings) == expected
