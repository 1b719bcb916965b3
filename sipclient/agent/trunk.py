"""Pause dialling through a trunk whose calls all fail for the network's reasons.

A trunk behind the PBX that is down answers every call the same way: 503 or
a Q.850 cause such as 34 or 38, 408 from the PBX's own timer, a 网络忙
announcement, a congestion tone. Each such outcome is transient: it says
nothing of the number, and the server dials the number again later, up to
its `retries.max_tries`. But at one call every 0.2 s a line, a few minutes of
outage spend every try of every number the server hands out meanwhile, and
those numbers come back `failed` for good: a whole batch lost to a short
outage.

`TrunkGuard` is the breaker for one PBX (the daemon keeps one per PBX
address and transport). Sans-IO: time is passed in.

- Closed: calls start freely. `fault_after` transient outcomes in a row open
  it (any other outcome resets the count).
- Open: no call starts for the pause (`pause_min`, doubling after each probe
  that fails too, up to `pause_max`). Outcomes of calls already in flight
  still count: one that is not transient closes it (the network decided a
  number), a transient one changes nothing.
- After the pause one call may start: the probe. Until its outcome comes no
  other call starts. Not transient: closed, the pause back to `pause_min`.
  Transient: open again for twice the pause.

So an outage costs `fault_after` numbers, then one a pause; the numbers the
server hands out meanwhile wait on their lines (at most one a line) and are
dialled once the trunk is back. `fault_after` 0 turns it off.
"""

from __future__ import annotations

import enum


class TrunkState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    PROBING = "probing"  # the pause is over: one call may find out


class TrunkGuard:
    """The breaker of one trunk; see the module docstring."""

    def __init__(self, fault_after: int, pause_min: float, pause_max: float) -> None:
        if fault_after < 0 or pause_min <= 0 or pause_max < pause_min:
            raise ValueError("need fault_after >= 0 and 0 < pause_min <= pause_max")
        self.fault_after = fault_after
        self.pause_min = pause_min
        self.pause_max = pause_max
        self.state = TrunkState.CLOSED
        self.in_a_row = 0
        """Transient outcomes in a row (while closed)."""
        self.pause = pause_min
        """The pause the breaker opened for last."""
        self.until = 0.0
        """While open: the time from which the probe may start."""
        self.probe_in_flight = False
        self.opened = 0
        """How many times it opened (each opening and each failed probe)."""

    def _wake(self, now: float) -> None:
        if self.state is TrunkState.OPEN and now >= self.until:
            self.state = TrunkState.PROBING

    def allows(self, now: float) -> bool:
        """Whether a call may start now."""
        self._wake(now)
        if self.state is TrunkState.CLOSED:
            return True
        return self.state is TrunkState.PROBING and not self.probe_in_flight

    def started(self, now: float) -> bool:
        """A call starts (the caller asked `allows` first). True when it is the probe."""
        self._wake(now)
        if self.state is TrunkState.PROBING and not self.probe_in_flight:
            self.probe_in_flight = True
            return True
        return False

    def trip(self, now: float) -> None:
        """Open it from outside (a suspect route, `route.RouteWatch`): no call starts
        for `pause_min`, then the probe. Nothing changes if it is open already."""
        if self.state is TrunkState.CLOSED:
            self._open(now, self.pause_min)

    def abandon_probe(self) -> None:
        """The probe gave no outcome (never dialled, a PBX fault): the next call probes."""
        self.probe_in_flight = False

    def finished(self, transient: bool, now: float, *, probe: bool = False) -> bool:
        """A call's outcome (`probe`: what `started` said of it). True when the state
        changed: it opened (again) or closed."""
        if probe:
            self.probe_in_flight = False
        if not transient:
            was = self.state
            self.state = TrunkState.CLOSED
            self.in_a_row = 0
            self.pause = self.pause_min
            return was is not TrunkState.CLOSED
        if self.state is TrunkState.CLOSED:
            if self.fault_after == 0:
                return False
            self.in_a_row += 1
            if self.in_a_row < self.fault_after:
                return False
            self._open(now, self.pause_min)
            return True
        if probe:
            self._open(now, min(self.pause * 2, self.pause_max))
            return True
        return False  # a call started before it opened: the probe will tell

    def _open(self, now: float, pause: float) -> None:
        self.state = TrunkState.OPEN
        self.pause = pause
        self.until = now + pause
        self.in_a_row = 0
        self.opened += 1

    def seconds_left(self, now: float) -> float:
        """While open: how long the pause still runs (0 when closed or probing)."""
        return max(0.0, self.until - now) if self.state is TrunkState.OPEN else 0.0
