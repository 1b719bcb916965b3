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

With a canary (`verify`: a number the operator knows rings, `trunk.canary`)
a run settles it instead of guessing: at `same_after` in a row, and when held
entries would be released only because nothing else came (`at_rest`, `due`),
the entries stay held and the caller dials the canary (`Step.verify`). It
rings: the run was the network's answer, released as it is. Rejected: the
route is suspect, as above. No answer either way (a transient failure, no
line free for long): as without a canary.
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
    verify: bool = False
    """Dial the canary now and report what it did (`RouteWatch.canary`)."""


class Canary:
    """What a canary call did (`RouteWatch.canary`)."""

    RANG = "rang"
    REJECTED = "rejected"
    UNKNOWN = "unknown"


class RouteWatch(Generic[T]):
    """The guard of one PBX's route; see the module docstring."""

    def __init__(self, same_after: int, hold_s: float, *, verify: bool = False) -> None:
        if same_after < 0 or hold_s <= 0:
            raise ValueError("need same_after >= 0 and hold_s > 0")
        self.same_after = same_after
        self.hold_s = hold_s
        self.verify = verify
        """A canary is configured: a run is checked with it before anything."""
        self.suspect = False
        self.verifying = False
        """The canary was asked for; the held entries wait for what it does."""
        self.key: RejectionKey | None = None
        """The key of the held run, or of the run that made the route suspect."""
        self._held: list[tuple[float, T]] = []
        self.tripped = 0
        """How many times the route became suspect."""
        self.verified = 0
        """How many times the canary was asked for."""

    @property
    def held(self) -> int:
        return len(self._held)

    def bare(self, key: RejectionKey, entry: T, now: float) -> Step[T]:
        """A call through the PBX ended in a bare rejection saying `key`."""
        if self.same_after == 0:
            return Step()
        if self.suspect:
            return Step(redial=[entry])
        if self.verifying:  # whatever it says: the canary will tell
            self._held.append((now, entry))
            return Step(held=True)
        step: Step[T] = Step()
        if self._held and key != self.key:
            step.release = self._take()
        self.key = key
        self._held.append((now, entry))
        step.held = True
        if len(self._held) < self.same_after:
            return step
        if self.verify:
            step.verify = self._ask()
            return step
        step.held = False
        step.redial = self._trip()
        step.tripped = True
        return step

    def proven(self) -> Step[T]:
        """A call through the PBX said something of its number: the route works."""
        step: Step[T] = Step(release=self._take(), recovered=self.suspect)
        self.suspect = False
        self.verifying = False
        return step

    def canary(self, result: str) -> Step[T]:
        """What the canary call asked for did (`Canary`)."""
        if result == Canary.RANG:
            return self.proven()
        if not self.verifying:
            return Step()  # a call through the PBX settled it meanwhile
        self.verifying = False
        if result == Canary.REJECTED or len(self._held) >= self.same_after:
            # rejected, or no word from it on a full run: as without a canary
            return Step(redial=self._trip(), tripped=True)
        return Step(release=self._take())  # no word, and the run was short

    def due(self, now: float) -> Step[T]:
        """Entries held longer than `hold_s`: released, or the canary asked for."""
        if self.verifying or not any(now - at >= self.hold_s for at, _ in self._held):
            return Step()
        if self.verify:
            return Step(verify=self._ask())
        old = [entry for at, entry in self._held if now - at >= self.hold_s]
        self._held = [(at, entry) for at, entry in self._held if now - at < self.hold_s]
        return Step(release=old)

    def at_rest(self) -> Step[T]:
        """Nothing else will come through the PBX soon (the list is done): the held
        entries are released, or the canary asked for."""
        if not self._held or self.verifying:
            return Step()
        if self.verify:
            return Step(verify=self._ask())
        return Step(release=self._take())

    def next_due(self) -> float | None:
        """When the oldest held entry is due (None: nothing held, or the held wait
        for the canary, not for a time)."""
        if self.verifying or not self._held:
            return None
        return self._held[0][0] + self.hold_s

    def release_all(self) -> list[T]:
        """Everything held, released (the daemon stops)."""
        self.verifying = False
        return self._take()

    def _ask(self) -> bool:
        self.verifying = True
        self.verified += 1
        return True

    def _trip(self) -> list[T]:
        self.suspect = True
        self.tripped += 1
        return self._take()

    def _take(self) -> list[T]:
        out = [entry for _, entry in self._held]
        self._held = []
        return out
