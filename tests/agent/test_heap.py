"""The daemon's garbage-collector policy (agent/heap.py), in this process's own collector."""

from __future__ import annotations

import gc

from sipclient.agent.heap import THRESHOLDS, HeapPolicy


def _cycles(n: int) -> None:
    for _ in range(n):
        a: list[object] = []
        a.append(a)  # garbage only the collector frees


def test_install_freezes_sets_the_thresholds_and_measures_until_removed() -> None:
    before = gc.get_threshold()
    assert before != THRESHOLDS
    heap = HeapPolicy()
    heap.install()
    try:
        assert gc.get_threshold() == THRESHOLDS
        assert gc.get_freeze_count() > 0  # what existed is out of every later scan
        heap.install()  # a second install changes nothing
        assert gc.callbacks.count(heap._measure) == 1
        _cycles(100)
        gc.collect(0)
        gc.collect(2)
        figures = heap.figures()
        assert figures["collections"][0] >= 1 and figures["collections"][2] >= 1
        assert all(ms >= 0 for ms in figures["ms"])
        assert figures["longest_ms"][2] <= figures["ms"][2]
    finally:
        heap.remove()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
    assert heap._measure not in gc.callbacks
    counted = heap.figures()["collections"]
    gc.collect(0)
    assert heap.figures()["collections"] == counted  # no longer measuring
    heap.remove()  # twice: nothing to undo
