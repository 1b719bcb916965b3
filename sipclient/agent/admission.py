"""How many calls the daemon may have in flight, from its event loop's lag.

One daemon is one asyncio loop on one core. Past what that core can carry,
starting more calls does not finish more numbers: every packet, timer and
classifier block waits its turn, calls last longer (at 200 lines on the test
box the mean call grew from 1.2 to 6 s and the numbers finished per second
fell by a quarter against 100 lines), and a decision that comes late keeps a
live number ringing towards an answer we would be billed for. So the daemon
measures the loop's lag (how late a 50 ms sleep wakes up) and caps the calls
in flight, additive increase and multiplicative decrease (as TCP does):

- lag (smoothed) above `max_lag`: the cap drops to DECREASE x the calls in
  flight, at most once every HOLD_S (the effect of a cut shows only as calls
  end);
- lag under half of `max_lag`: the cap grows by one a tick, and goes away
  once it exceeds the lines there are.

A number the cap holds back stays on its line (leased to us) and starts as
soon as the cap allows. `max_lag` 0 turns this off. Pure and clock-driven:
`Daemon` feeds it, the tests drive it with made-up lags.
"""

from __future__ import annotations

TICK_S = 0.05
"""How often the loop's lag is measured (a sleep of this long)."""
SMOOTH = 0.3
"""Weight of the newest reading in the smoothed lag."""
DECREASE = 0.8
"""The cap after an overload, as a share of the calls in flight."""
HOLD_S = 0.5
"""At least this long between two cuts."""


class Admission:
    """The cap on calls in flight (None: no cap), fed the loop's lag every tick."""

    def __init__(self, max_lag: float) -> None:
        self.max_lag = max_lag
        self.cap: int | None = None
        self.lag = 0.0
        """The smoothed lag, seconds."""
        self._last_cut = float("-inf")
        self.cuts = 0

    def observe(self, lag: float, in_call: int, lines: int, now: float) -> bool:
        """Take one lag reading; True when the cap grew or went (start held numbers)."""
        self.lag = (1 - SMOOTH) * self.lag + SMOOTH * max(0.0, lag)
        if self.max_lag <= 0:
            return False
        if self.lag > self.max_lag:
            if now - self._last_cut >= HOLD_S:
                self._last_cut = now
                self.cap = max(1, int(in_call * DECREASE))
                self.cuts += 1
            return False
        if self.cap is not None and self.lag < self.max_lag / 2:
            self.cap += 1
            if self.cap > lines:
                self.cap = None
            return True
        return False

    def may_start(self, in_call: int) -> bool:
        """Whether one more call may start now."""
        return self.cap is None or in_call < self.cap
