"""The trunk breaker (sipclient.agent.trunk) with explicit times."""

from __future__ import annotations

import pytest

from sipclient.agent.trunk import TrunkGuard, TrunkState


def test_opens_after_fault_after_transient_outcomes_in_a_row_only() -> None:
    g = TrunkGuard(3, 5.0, 60.0)
    assert not g.finished(True, 0.0) and not g.finished(True, 0.1)
    assert not g.finished(False, 0.2)  # a number decided: the count starts again
    assert not g.finished(True, 0.3) and not g.finished(True, 0.4)
    assert g.allows(0.4)
    assert g.finished(True, 0.5)  # the third in a row
    assert g.state is TrunkState.OPEN and g.opened == 1
    assert not g.allows(0.5) and not g.allows(5.49)
    assert g.seconds_left(1.5) == pytest.approx(4.0)


def test_after_the_pause_one_probe_then_closed_or_open_for_twice_as_long() -> None:
    g = TrunkGuard(1, 5.0, 12.0)
    assert g.finished(True, 0.0)
    assert g.allows(5.0)  # the pause is over: one call may start
    assert g.started(5.0) is True
    assert not g.allows(5.1) and g.started(5.1) is False  # only the probe
    assert g.finished(True, 6.0, probe=True)  # it failed too: 10 s now
    assert (g.state, g.pause, g.opened) == (TrunkState.OPEN, 10.0, 2)
    assert not g.allows(15.9) and g.allows(16.0)
    assert g.started(16.0)
    assert g.finished(True, 17.0, probe=True)
    assert g.pause == 12.0  # capped at pause_max
    assert g.allows(29.0) and g.started(29.0)
    assert g.finished(False, 30.0, probe=True)  # the trunk is back
    assert (g.state, g.pause) == (TrunkState.CLOSED, 5.0)
    assert g.allows(30.0) and g.started(30.0) is False and g.allows(30.0)


def test_calls_in_flight_when_it_opened_close_it_if_they_decide_a_number() -> None:
    g = TrunkGuard(2, 5.0, 60.0)
    g.finished(True, 0.0)
    assert g.finished(True, 0.1)
    assert not g.finished(True, 0.2)  # one more of the same: nothing changes
    assert g.state is TrunkState.OPEN and g.until == pytest.approx(5.1)
    assert g.finished(False, 0.3)  # a call started before the pause decided its number
    assert g.state is TrunkState.CLOSED and g.allows(0.3)


def test_a_probe_without_an_outcome_lets_the_next_call_probe() -> None:
    g = TrunkGuard(1, 1.0, 4.0)
    g.finished(True, 0.0)
    assert g.allows(1.0) and g.started(1.0)
    g.abandon_probe()  # no RTP port, a PBX fault: nothing learnt
    assert g.allows(1.1) and g.started(1.1)
    assert g.state is TrunkState.PROBING


def test_a_probe_outcome_arriving_after_it_closed_does_not_hold_the_next_one() -> None:
    g = TrunkGuard(1, 1.0, 4.0)
    g.finished(True, 0.0)
    assert g.started(1.0)
    g.finished(False, 1.5)  # an older call decided a number: closed
    g.finished(True, 2.0, probe=True)  # then the probe failed: counts as one in a row
    assert not g.probe_in_flight
    assert g.state is TrunkState.OPEN  # fault_after is 1


def test_zero_turns_it_off_and_bad_settings_are_refused() -> None:
    g = TrunkGuard(0, 5.0, 60.0)
    assert not any(g.finished(True, float(i)) for i in range(100))
    assert g.allows(100.0)
    with pytest.raises(ValueError):
        TrunkGuard(3, 0.0, 1.0)
    with pytest.raises(ValueError):
        TrunkGuard(3, 5.0, 1.0)


def test_tripped_from_outside_it_pauses_then_probes_and_a_failed_probe_doubles() -> None:
    g = TrunkGuard(0, 2.0, 8.0)  # its own count off: only the route guard opens it
    assert not g.finished(True, 0.0)
    g.trip(1.0)
    assert (g.state, g.opened) == (TrunkState.OPEN, 1)
    assert not g.allows(2.9) and g.allows(3.0) and g.started(3.0)
    g.trip(3.1)  # open already (probing): no change
    assert g.state is TrunkState.PROBING and g.probe_in_flight
    assert g.finished(True, 3.5, probe=True)
    assert (g.state, g.pause) == (TrunkState.OPEN, 4.0)
    assert g.finished(False, 4.0)
    assert g.state is TrunkState.CLOSED
