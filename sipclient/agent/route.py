"""Hold a PBX's identical bare rejections until a call shows its route carries calls.

A PBX with no outbound route for our extensions (a dial plan edited, a
FreeSWITCH `NO_ROUTE_DESTINATION`, an Asterisk context without the pattern),
or that bars them from calling out, answers every number at once with the
same final response: 404, 484, 403, 480, no 180/183, no audio. The signalling
rules read those as verdicts of the number (`empty`, `restricted`,
`unreachable`), final: a whole list misjudged in minutes, and its pusher told
so. A carrier that answers unallocated numbers with a bare 404 looks the same
for one call; what tells them apart is a run: a real list mixes numbers that
ring, play announcements, are busy.

`RouteWatch` is the guard of one PBX (the daemon keeps one per PBX address and
transport, next to its `TrunkGuard`). Sans-IO: time is passed in; an entry is
whatever the caller keeps of a call (the daemon: line, number, record).

- A *bare rejection* (the caller decides: a final >= 300 with no 180/183, no
  audio, not answered, not ours, not transient) is held, keyed by what the
  PBX said (code and Q.850 cause), instead of being uploaded.
- Any other outcome of a call through that PBX that says something of a
  number (it rang, played audio, was answered) proves the route: the held
  entries are released, to be uploaded as they are. So is a bare rejection
  with another key (they were not one answer to everything), and so are
  entries held longer than `hold_s` (the list ended: nothing else will come).
- `same_after` identical ones in a row: the route is suspect. The held
  entries come back to be dialled again (they are not uploaded: the PBX may
  have answered them without asking the network), and every bare rejection
  from then on too, until a call proves the route. The daemon pauses the
  PBX's calls meanwhile (its `TrunkGuard`: a probe call a pause).

What it costs a healthy list: a bare rejection's upload waits for the next
call through the PBX that rings or plays audio (a fraction of a second with
several lines), and a run of `same_after` real bare rejections in a row (a
list of unallocated numbers on a carrier that answers them with a bare 404)
costs a pause and those numbers dialled twice. `same_after` 0 turns it off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

RejectionKey = tuple[int, int | None]
"""What the PBX said: the SIP final code and the Q.850 cause (None: none came)."""


@dataclass
class Step(Generic[T]):
    """What to do after a call's outcome (`RouteWatch.bare` / `proven`)."""

    release: list[T] = field(default_factory=list)
    """Held entries to upload now, oldest first (before the call's own record)."""
    redial: list[T] = field(default_factory=list)
    """Entries (the call's own included) to dial again once the route is proven."""
    held: bool = False
    """The call's own entry is held: neither upload nor dial it now."""
    tripped: bool = False
    """This outcome made the route suspect."""
    recovered: bool = False
    """This outcome proved a suspect route."""


class RouteWatch(Generic[T]):
    """The guard of one PBX's route; see the module docstring."""

    def __init__(self, same_after: int, hold_s: float) -> None:
        if same_after < 0 or hold_s <= 0:
            raise ValueError("need same_after >= 0 and hold_s > 0")
        self.same_after = same_after
        self.hold_s = hold_s
        self.suspect = False
        self.key: RejectionKey | None = None
        """The key of the held run, or of the run that made the route suspect."""
        self._held: list[tuple[float, T]] = []
        self.tripped = 0
        """How many times the route became suspect."""

    @property
    def held(self) -> int:
        return len(self._held)

    def bare(self, key: RejectionKey, entry: T, now: float) -> Step[T]:
        """A call through the PBX ended in a bare rejection saying `key`."""
        if self.same_after == 0:
            return Step()
        if self.suspect:
            return Step(redial=[entry])
        step: Step[T] = Step()
        if self._held and key != self.key:
            step.release = self._take()
        self.key = key
        self._held.append((now, entry))
        if len(self._held) < self.same_after:
            step.held = True
            return step
        self.suspect = True
        self.tripped += 1
        step.redial = self._take()
        step.tripped = True
        return step

    def proven(self) -> Step[T]:
        """A call through the PBX said something of its number: the route works."""
        step: Step[T] = Step(release=self._take(), recovered=self.suspect)
        self.suspect = False
        return step

    def due(self, now: float) -> list[T]:
        """Held entries older than `hold_s`, released (the rest stay held)."""
        old = [entry for at, entry in self._held if now - at >= self.hold_s]
        self._held = [(at, entry) for at, entry in self._held if now - at < self.hold_s]
        return old

    def next_due(self) -> float | None:
        """When the oldest held entry is due (None: nothing held)."""
        return self._held[0][0] + self.hold_s if self._held else None

    def release_all(self) -> list[T]:
        """Everything held, released (the daemon stops)."""
        return self._take()

    def _take(self) -> list[T]:
        out = [entry for _, entry in self._held]
        self._held = []
        return out
