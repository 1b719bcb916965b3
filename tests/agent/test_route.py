"""The route guard (sipclient.agent.route) with explicit times."""

from __future__ import annotations

import pytest

from sipclient.agent.route import Canary, RouteWatch

NO_ROUTE = (404, None)


def test_identical_bare_rejections_are_held_and_a_call_that_rings_releases_them() -> None:
    w: RouteWatch[str] = RouteWatch(3, 30.0)
    a, b = w.bare(NO_ROUTE, "a", 0.0), w.bare(NO_ROUTE, "b", 0.1)
    assert a.held and b.held and a.release == b.release == []
    assert w.held == 2 and not w.suspect
    step = w.proven()
    assert step.release == ["a", "b"] and not step.recovered
    assert w.held == 0


def test_another_answer_releases_the_run_and_starts_its_own() -> None:
    w: RouteWatch[str] = RouteWatch(3, 30.0)
    w.bare(NO_ROUTE, "a", 0.0)
    w.bare(NO_ROUTE, "b", 0.1)
    step = w.bare((486, 17), "c", 0.2)  # busy: not one answer to everything
    assert step.release == ["a", "b"] and step.held
    assert w.key == (486, 17) and w.held == 1
    # the same code with another cause is another answer too
    assert w.bare((486, None), "d", 0.3).release == ["c"]


def test_same_after_in_a_row_make_the_route_suspect_and_send_them_back() -> None:
    w: RouteWatch[str] = RouteWatch(3, 30.0)
    w.bare(NO_ROUTE, "a", 0.0)
    w.bare(NO_ROUTE, "b", 0.1)
    step = w.bare(NO_ROUTE, "c", 0.2)
    assert step.tripped and not step.held and step.release == []
    assert step.redial == ["a", "b", "c"]
    assert w.suspect and w.tripped == 1 and w.held == 0
    # while suspect every bare rejection goes back, whatever it says
    again = w.bare((403, None), "d", 0.3)
    assert again.redial == ["d"] and not again.held and not again.tripped
    step = w.proven()
    assert step.recovered and step.release == [] and not w.suspect
    assert w.bare(NO_ROUTE, "e", 0.4).held  # a new run from nothing


def test_held_ones_are_due_after_hold_s_oldest_first() -> None:
    w: RouteWatch[str] = RouteWatch(5, 10.0)
    assert w.next_due() is None
    w.bare(NO_ROUTE, "a", 0.0)
    w.bare(NO_ROUTE, "b", 4.0)
    assert w.next_due() == pytest.approx(10.0)
    assert w.due(9.9).release == []
    assert w.due(10.0).release == ["a"] and w.held == 1
    assert w.next_due() == pytest.approx(14.0)
    assert w.release_all() == ["b"] and w.next_due() is None


def test_same_after_zero_is_off() -> None:
    w: RouteWatch[str] = RouteWatch(0, 10.0)
    for i in range(50):
        step = w.bare(NO_ROUTE, str(i), float(i))
        assert not step.held and not step.redial and not step.tripped
    assert not w.suspect and w.held == 0


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        RouteWatch(-1, 1.0)
    with pytest.raises(ValueError):
        RouteWatch(3, 0.0)


def test_with_a_canary_a_full_run_waits_for_it_and_a_ring_releases_the_run() -> None:
    w: RouteWatch[str] = RouteWatch(3, 30.0, verify=True)
    w.bare(NO_ROUTE, "a", 0.0)
    w.bare(NO_ROUTE, "b", 0.1)
    step = w.bare(NO_ROUTE, "c", 0.2)
    assert step.verify and step.held and not step.tripped and step.redial == []
    assert w.verifying and w.verified == 1 and not w.suspect
    # meanwhile: held whatever they say, and nothing is due or asked twice
    assert w.bare((486, None), "d", 0.3).held
    assert not w.due(99.0).verify and not w.at_rest().verify
    step = w.canary(Canary.RANG)  # the network's answer after all
    assert step.release == ["a", "b", "c", "d"] and not w.verifying and not w.suspect
    assert w.tripped == 0


def test_with_a_canary_rejected_too_the_route_is_suspect() -> None:
    w: RouteWatch[str] = RouteWatch(2, 30.0, verify=True)
    w.bare(NO_ROUTE, "a", 0.0)
    assert w.bare(NO_ROUTE, "b", 0.1).verify
    step = w.canary(Canary.REJECTED)
    assert step.tripped and step.redial == ["a", "b"] and w.suspect
    assert w.canary(Canary.REJECTED).redial == []  # not asked: nothing to do
    assert w.bare(NO_ROUTE, "c", 0.2).redial == ["c"]
    assert w.canary(Canary.RANG).recovered and not w.suspect


def test_with_a_canary_no_word_from_it_falls_back_to_the_run() -> None:
    full: RouteWatch[str] = RouteWatch(2, 30.0, verify=True)
    full.bare(NO_ROUTE, "a", 0.0)
    full.bare(NO_ROUTE, "b", 0.1)
    assert full.canary(Canary.UNKNOWN).redial == ["a", "b"] and full.suspect
    short: RouteWatch[str] = RouteWatch(5, 30.0, verify=True)
    short.bare(NO_ROUTE, "a", 0.0)
    assert short.at_rest().verify  # the list's tail: asked, not released
    assert short.canary(Canary.UNKNOWN).release == ["a"] and not short.suspect


def test_with_a_canary_the_tail_and_the_hold_limit_ask_it_and_a_call_settles_it() -> None:
    w: RouteWatch[str] = RouteWatch(5, 10.0, verify=True)
    w.bare(NO_ROUTE, "a", 0.0)
    assert not w.due(9.0).verify
    step = w.due(10.0)
    assert step.verify and step.release == [] and w.held == 1
    assert w.next_due() is None  # no timer while the canary is out (it spun the loop)
    # a list call rang before the canary came back: released; the canary's word is moot
    assert w.proven().release == ["a"]
    assert w.canary(Canary.REJECTED) == w.canary(Canary.UNKNOWN)
    assert not w.suspect and w.held == 0
