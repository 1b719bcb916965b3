"""The heap trim (sipclient.agent.heap) on this process's own glibc heap."""

from __future__ import annotations

import asyncio
import ctypes

import pytest

from sipclient.agent import heap


def test_trim_gives_back_the_free_pages_a_fragmented_heap_keeps() -> None:
    if heap._TRIM is None:
        pytest.fail("this box's libc has no malloc_trim: the daemon would not trim either")
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    heap.trim()
    # 96 MB in 4 kB chunks below glibc's mmap threshold, every 64th kept: the heap's
    # top stays in use, so glibc keeps the free pages below it (as in the daemon)
    chunks = [libc.malloc(4000) for _ in range(24_000)]
    for block in chunks:
        ctypes.memset(block, 1, 4000)  # touched: resident
    kept = chunks[::64]
    for i, block in enumerate(chunks):
        if i % 64:
            libc.free(block)
    before = heap.rss_kb()
    try:
        assert heap.trim() is True
        after = heap.rss_kb()
        assert before - after > 50_000, (before, after)  # of the ~94 MB freed
    finally:
        for block in kept:
            libc.free(block)


async def test_the_trim_loop_trims_and_logs_each_round(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(heap, "trim", lambda: calls.append(1) or True)
    task = asyncio.create_task(heap.run_heap_trim(every=0.01))
    try:
        async with asyncio.timeout(5):
            while len(calls) < 3:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert not task.done() or task.cancelled()  # it never ended by itself
