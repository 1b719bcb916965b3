"""Recognising carrier announcements by their fingerprints, streaming.

Every landmark hash of the call is looked up in the template library
(templates.py); each posting votes for (template, offset between the
template's time and the call's time). A recording of a template, heard from
any point, piles its votes on one offset; chance postings scatter. Votes
count for the offset and its two neighbours, so a jitter buffer slipping a
frame does not split them.

A template wins when its best offset has at least MIN_VOTES votes and
MARGIN more than the best template of another verdict (many announcements
begin with the same words, 您拨打的..., and share fingerprints when a
carrier reuses a voice: the decision waits until the words that differ; a
margin, not a ratio, because the shared part can be long), with its votes
spread over MIN_SPAN_FRAMES. Only votes from the last WINDOW_FRAMES count:
the standing is what the last second says, so a long call cannot pile up
chance votes, and a stretch shared with another template stops counting
soon after the words diverge. (templates.py also leaves out of the index
the stretches that templates of different verdicts share.)
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sipclient.classify.audio import FRAME
from sipclient.classify.fingerprint import HOP, Landmarks
from sipclient.classify.templates import TemplateLibrary
from sipclient.classify.verdicts import Verdict

MIN_VOTES = 15
"""Votes (each counted for its offset bucket and both neighbours) a winner needs."""
MARGIN = 12
"""The winner must beat the best template of any other verdict by this many votes."""
MIN_SPAN_FRAMES = 40
"""...with votes spread over at least 800 ms of the call: a word two recordings
share gives a burst of votes, a recording heard goes on matching. Shorter (240 ms)
gives 284/288 on the corpus with the full library but twice the wrong verdicts
on recordings the library lacks (a shared prompt of the same voice): an unheard
announcement must come out unknown, not as its neighbour's verdict."""
WINDOW_FRAMES = 50
"""1 s: votes older than this (by the call's time) are forgotten."""

BUCKET_FINE = 12
"""Offsets are counted in buckets of 60 ms, each vote also for the buckets either side:
a jitter buffer repeats and skips frames, so the offset walks by a frame now and then."""
CHECK_EVERY = 5
"""Frames between two readings of the standings (100 ms)."""
RUN_GAP_FRAMES = 25
"""Votes of one offset more than 500 ms apart start a new run (for MIN_SPAN_FRAMES)."""

_OFF = 1 << 20


@dataclass(frozen=True)
class AnnouncementHit:
    """A recognised template: which, how sure, and when."""

    verdict: Verdict
    label: str
    template: str
    score: int
    runner_up: int
    confidence: float
    transient: bool
    frame: int
    started_frame: int
    """The call frame where the matched part of the template began (estimate)."""


class AnnouncementMatcher:
    """Streaming vote counter over one call's landmarks."""

    def __init__(self, library: TemplateLibrary) -> None:
        self.library = library
        self._votes: dict[int, int] = {}
        self._first_t: dict[int, int] = {}
        self._last_t: dict[int, int] = {}
        self._history: deque[tuple[int, int]] = deque()  # (query frame, key) per raw vote
        self._pending_q: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._pending_ready: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._pending_key: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._pos = 0
        self.queries = 0
        """Hashes looked up so far (for the unknown store's "was there speech")."""
        self.matched_postings = 0
        self._dirty = False

    def push(self, lm: Landmarks) -> None:
        """Look up a chunk's landmarks; their votes are applied frame by frame by `advance`."""
        if len(lm.hashes) == 0 or len(self.library) == 0:
            self.queries += len(lm.hashes)
            return
        self.queries += len(lm.hashes)
        qpos, tids, ttimes = self.library.lookup(lm.hashes)
        qfine = lm.times[qpos]
        qt = (qfine + 1) * HOP // FRAME  # the 20 ms frame of the anchor
        off = (ttimes.astype(np.int64) - qfine + _OFF) // BUCKET_FINE
        key = tids.astype(np.int64) * (2 * _OFF) + off
        rest = slice(self._pos, None)
        self._pending_q = np.concatenate([self._pending_q[rest], qt])
        self._pending_ready = np.concatenate([self._pending_ready[rest], lm.ready[qpos]])
        self._pending_key = np.concatenate([self._pending_key[rest], key])
        self._pos = 0

    def advance(self, frame: int) -> AnnouncementHit | None:
        """Apply the votes known by the end of `frame`; a hit once a template is certain.

        The standings are re-read every CHECK_EVERY frames (by frame number, so
        the answer does not depend on how the audio was chunked).
        """
        ready = self._pending_ready
        i = self._pos
        if i < len(ready) and ready[i] <= frame:
            j = int(np.searchsorted(ready, frame, side="right"))
            votes = self._votes
            hist = self._history
            first, last = self._first_t, self._last_t
            qs = self._pending_q[i:j].tolist()
            ks = self._pending_key[i:j].tolist()
            for q, k in zip(qs, ks, strict=True):
                for kk in (k - 1, k, k + 1):
                    votes[kk] = votes.get(kk, 0) + 1
                    hist.append((q, kk))
                    if q - last.get(kk, -RUN_GAP_FRAMES - 1) > RUN_GAP_FRAMES:
                        first[kk] = q  # a new run of agreeing votes begins
                    last[kk] = q
            self.matched_postings += j - i
            self._pos = j
            self._dirty = True
        if self._expire(frame):
            self._dirty = True
        if self._dirty and frame % CHECK_EVERY == 0:
            self._dirty = False
            return self._check(frame)
        return None

    def _expire(self, frame: int) -> bool:
        hist = self._history
        expired = False
        limit = frame - WINDOW_FRAMES
        votes = self._votes
        while hist and hist[0][0] < limit:
            expired = True
            _, k = hist.popleft()
            c = votes[k] - 1
            if c:
                votes[k] = c
            else:
                del votes[k]
                self._first_t.pop(k, None)
                self._last_t.pop(k, None)
        return expired

    def _check(self, frame: int) -> AnnouncementHit | None:
        votes = self._votes
        if not votes:
            return None
        lib = self.library
        # best offset per template, then best template per verdict
        best_by_verdict: dict[Verdict, tuple[int, int]] = {}
        for k, c in votes.items():
            if c < MIN_VOTES // 2:
                continue
            entry = lib.entry(k // (2 * _OFF))
            cur = best_by_verdict.get(entry.verdict)
            if cur is None or c > cur[0]:
                best_by_verdict[entry.verdict] = (c, k)
        if not best_by_verdict:
            return None
        ranked = sorted(best_by_verdict.values(), reverse=True)
        score, key = ranked[0]
        runner = ranked[1][0] if len(ranked) > 1 else 0
        if score < MIN_VOTES or score - runner < MARGIN:
            return None
        if self._last_t.get(key, 0) - self._first_t.get(key, 0) < MIN_SPAN_FRAMES:
            return None
        entry = lib.entry(key // (2 * _OFF))
        confidence = min(0.99, 0.6 + 0.01 * (score - runner))
        offset = key % (2 * _OFF) * BUCKET_FINE - _OFF
        return AnnouncementHit(
            entry.verdict,
            entry.label,
            entry.file,
            score,
            runner,
            round(confidence, 3),
            entry.transient,
            frame,
            max(0, self._first_t.get(key, frame)) if offset is not None else frame,
        )
