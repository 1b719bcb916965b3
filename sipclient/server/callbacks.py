"""return_url delivery: POST the finished task until a 2xx, with capped exponential back-off.

The delivery state lives in the task row (pending / delivered / failed, tries,
last status and error, next try), so a restart resumes the pending ones. The
body is exactly what GET /api/tasks/{id} answers. Delivery is at least once:
a server killed between a receiver's 2xx and the write of "delivered" posts
again after the restart. A stop (SIGTERM) first lets the posts under way
finish and record their outcome (`finish_in_flight`, a few seconds at most):
until session 17 it cancelled them, and a receiver that had taken a task
got it again after the restart (seen in the e2e tests under load).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import aiohttp

from sipclient.config import CallbackSettings
from sipclient.logs import get_logger
from sipclient.server.errors import task_json
from sipclient.server.store import CallbackDue, Store

log = get_logger(__name__)

_MAX_IDLE = 5.0  # seconds between two looks at the table when nothing wakes us
_PARALLEL = 16


def backoff(tries_done: int, settings: CallbackSettings) -> float:
    """Seconds to wait after the `tries_done`-th failed try: initial, 2x, 4x ... capped."""
    exponent = max(tries_done - 1, 0)
    return float(min(settings.backoff_initial * (2 ** min(exponent, 60)), settings.backoff_max))


class CallbackWorker:
    """Background deliverer; `wake()` when a task has just finished."""

    def __init__(
        self, store: Store, settings: CallbackSettings, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self._wake = asyncio.Event()
        self._inflight: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(_PARALLEL)
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    async def finish_in_flight(self, grace: float) -> None:
        """At a stop: start no post, and give those under way `grace` seconds to
        finish and record their outcome (then `run` is cancelled and cancels the
        rest, which are posted again after the restart)."""
        self._stopping = True
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)

    async def run(self) -> None:
        """Deliver what is due, forever (until cancelled)."""
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout)
        )
        try:
            while True:
                self._wake.clear()
                try:
                    await self._round()
                    pause = await self._pause()
                except Exception:
                    log.exception("callback round failed")
                    pause = _MAX_IDLE
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                # cancel that lands as the event is set, and shutdown would hang.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await self._wake.wait()
        finally:
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._session.close()

    async def _round(self) -> None:
        if self._stopping:
            return
        due = await self.store.due_callbacks(self.clock(), _PARALLEL * 4)
        for item in due:
            if item.task_id in self._inflight:
                continue
            self._inflight.add(item.task_id)
            task = asyncio.create_task(self._deliver(item))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pause(self) -> float:
        nxt = await self.store.next_callback_at()
        if nxt is None:
            return _MAX_IDLE
        return min(max(nxt - self.clock(), 0.01), _MAX_IDLE)

    async def _deliver(self, item: CallbackDue) -> None:
        try:
            async with self._slots:
                await self._try_once(item)
        finally:
            self._inflight.discard(item.task_id)
            self.wake()  # the next try may be due before the current pause ends

    async def _try_once(self, item: CallbackDue) -> None:
        assert self._session is not None
        if self._stopping:
            return  # (waited for a slot past the stop: posted after the restart)
        task = await self.store.get_task(item.task_id)
        if task is None:
            return
        callback = task.get("callback") or {}
        if callback.get("state") != "pending" or callback.get("tries") != item.tries:
            # `item` came from a due list read before another delivery of this task
            # was recorded (the round's query and that delivery overlap): it went
            # already. Seen in the e2e tests as a return_url posted twice.
            return
        body = await asyncio.to_thread(task_json, task)  # 70 MB for 100,000 numbers
        status: int | None = None
        error: str | None = None
        headers = {"Content-Type": "application/json"}
        try:
            async with self._session.post(item.return_url, data=body, headers=headers) as resp:
                status = resp.status
                await resp.read()
        except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        delivered = status is not None and 200 <= status < 300
        if not delivered and error is None:
            error = f"HTTP {status}"
        tries = item.tries + 1
        next_at: float | None = None
        if not delivered and tries < self.settings.tries:
            next_at = self.clock() + backoff(tries, self.settings)
        await self.store.record_callback(
            item.task_id,
            delivered=delivered,
            http_status=status,
            error=error,
            next_at=next_at,
            now=self.clock(),
        )
        log.info(
            "callback",
            task_id=item.task_id,
            url=item.return_url,
            status=status,
            error=error,
            tries=tries,
            outcome="delivered" if delivered else ("retry" if next_at else "gave up"),
        )
