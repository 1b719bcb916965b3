"""The cap on calls in flight from the event loop's lag (agent/admission.py)."""

from __future__ import annotations

from sipclient.agent.admission import HOLD_S, TICK_S, Admission


def _feed(adm: Admission, lag: float, ticks: int, in_call: int, lines: int, t0: float) -> float:
    t = t0
    for _ in range(ticks):
        t += TICK_S
        adm.observe(lag, in_call, lines, t)
    return t


def test_no_cap_while_the_loop_keeps_up() -> None:
    adm = Admission(0.05)
    _feed(adm, 0.004, 100, in_call=24, lines=24, t0=0.0)
    assert adm.cap is None and adm.may_start(10_000) and adm.cuts == 0


def test_lag_cuts_the_cap_to_a_share_of_the_calls_once_per_hold() -> None:
    adm = Admission(0.05)
    t = _feed(adm, 0.2, 10, in_call=100, lines=100, t0=0.0)  # 0.5 s of a swamped loop
    assert adm.cap == 80 and adm.cuts == 1  # one cut: the next waits HOLD_S
    assert adm.may_start(79) and not adm.may_start(80)
    t = _feed(adm, 0.2, round(HOLD_S / TICK_S), in_call=80, lines=100, t0=t)
    assert adm.cap == 64 and adm.cuts == 2


def test_the_cap_grows_back_one_a_tick_and_goes_once_above_the_lines() -> None:
    adm = Admission(0.05)
    t = _feed(adm, 0.2, 3, in_call=50, lines=60, t0=0.0)
    assert adm.cap == 40
    # smoothed lag must fall under half the limit first
    t = _feed(adm, 0.0, 10, in_call=40, lines=60, t0=t)
    assert adm.cap is not None and 40 < adm.cap <= 50
    grew = adm.observe(0.0, 40, 60, t + TICK_S)
    assert grew
    _feed(adm, 0.0, 60, in_call=40, lines=60, t0=t + TICK_S)
    assert adm.cap is None


def test_zero_turns_it_off() -> None:
    adm = Admission(0.0)
    _feed(adm, 5.0, 50, in_call=200, lines=200, t0=0.0)
    assert adm.cap is None and adm.may_start(200) and adm.lag > 1.0
