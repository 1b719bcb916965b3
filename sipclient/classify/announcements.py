"""Recognising carrier announcements by their fingerprints, streaming.

Every landmark hash of the call is looked up in the template library
(templates.py); each posting votes for (template, offset between the
template's time and the call's time). A recording of a template, heard from
any point, piles its votes on one offset; chance postings scatter.

Offsets are counted in buckets of BUCKET fine hops (20 ms, one RTP frame),
and a bucket's score is its votes plus both neighbours': a jitter buffer that
repeats or drops a frame moves the offset by exactly one frame, so a recording
keeps its votes in three adjacent buckets while chance votes, which spread
over the whole template, rarely pile up in 60 ms. (Measured on the corpus, a
recording's votes sit within 5 ms of one offset between slips; 60 ms buckets,
the first version, let the chance votes of long, dense templates reach the
scores of a quiet recording's real ones.)

A template wins when its best offset scores at least MIN_VOTES and MARGIN
more than the best template of any other verdict (many announcements begin
with the same words, 您拨打的..., and share fingerprints when a carrier reuses
a voice: the decision waits until the words that differ; a margin, not a
ratio, because the shared part can be long), with its votes in one run
(no gap over RUN_GAP_FRAMES) spread over MIN_SPAN_FRAMES: a word two
recordings share gives a short burst, a recording heard goes on matching.
Only votes from the last WINDOW_FRAMES count towards the score: the
standing is what the last 1.2 s say, so a long call cannot
pile up chance votes, and a stretch shared with another template stops
counting soon after the words diverge. (templates.py also leaves out of the
index the stretches that templates of different verdicts share.)

A winner that passes those thresholds must still be plausible
(`AnnouncementMatcher.implausible`): its votes must come from frames with
sound, not from line noise, and its template must not miss votes it
expected just before the run (a piece of another recording that says the
same words in the same voice matches only for as long as the piece lasts).

Counting is vectorised: the votes of the last HISTORY_FRAMES live in numpy
arrays and the standings are computed once per 100 ms block (`advance` with
the block's last frame), from the votes whose hashes were known by the end
of that frame: no verdict needs audio from the future, and the answer does
not depend on how the audio was chunked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sipclient.classify.audio import FRAME
from sipclient.classify.fingerprint import HOP, Landmarks
from sipclient.classify.templates import TemplateLibrary
from sipclient.classify.verdicts import Verdict

MIN_VOTES = 12
"""Votes (its offset bucket's own and both neighbours') a winner needs."""
MARGIN = 8
"""The winner must beat the best template of any other verdict by this many votes."""
MIN_SPAN_FRAMES = 35
"""...with its run of votes spread over at least 700 ms of the call: a word two
recordings share gives a burst of votes, a recording heard goes on matching.
An unheard announcement must come out unknown, not as the verdict of a template
that says the same words in the same voice: with the shipped library (a third
of the corpus recordings) such shared pieces last up to ~1.1 s and score as high
as a real match. `implausible` rejects about a third of them; the span does
the rest, and is the trade-off between decision time and those wrong verdicts
(docs/classifier.md, "Figures"): a span that shrinks as the lead grows was tried
and is not safe, the shared pieces lead by as much as real matches."""
WINDOW_FRAMES = 60
"""1.2 s: votes older than this (by the call's time) do not count towards the score."""
HISTORY_FRAMES = 250
"""5 s of votes are kept: a run's span beyond the scoring window, and the votes
before it (BEFORE_FRAMES) that `implausible` looks for."""
RUN_GAP_FRAMES = 25
"""Votes of one offset more than 500 ms apart start a new run."""

SOUND_SHARE = 0.5
"""Share of a winner's run of votes that must lie in frames with sound (`implausible`)."""
BEFORE_FRAMES = 80
"""The 1.6 s of the call before a winner's run where its template is checked for
missing votes (`AnnouncementMatcher.implausible`)."""
MISSING_MIN = 6.0
"""Votes expected there (at the run's own recall) from which their absence counts..."""
MISSING_SHARE = 0.25
"""...when fewer than this share of them came: the run is a piece of another recording."""

BUCKET = 4
"""Offset bucket in fine hops (fingerprint.HOP = 5 ms): 20 ms, one RTP frame."""

_OFF = 1 << 30
"""Added to fine offsets so that bucket numbers are positive (calls up to ~60 days)."""
_KEY = 1 << 32
"""key = template * _KEY + offset bucket: buckets stay below _KEY, keys fit int64."""


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
    """The call frame where the matched run of the template began (estimate)."""


@dataclass(frozen=True)
class Standing:
    """The best (template, offset) of one reading and what it is measured against."""

    template: int
    key: int
    score: int
    runner_up: int
    """Best score of a template of any other verdict."""
    span: int
    """Frames from the first to the last vote of the winner's current run."""
    run_start: int


class AnnouncementMatcher:
    """Streaming vote counter over one call's landmarks."""

    def __init__(self, library: TemplateLibrary) -> None:
        self.library = library
        codes = {v: i for i, v in enumerate(Verdict)}
        self._verdict_code = np.array(
            [codes[e.verdict] for e in library.entries()] or [0], dtype=np.int64
        )
        z = np.zeros(0, dtype=np.int64)
        self._hist_q, self._hist_key = z, z  # votes applied: anchor frame, key
        self._pend_q, self._pend_ready, self._pend_key = z, z, z  # votes not yet known
        self._horizon = 0
        self._quiet = True  # the last reading found no offset with MIN_VOTES
        self._sound = bytearray()  # per frame of the call: 1 = speech or music (decide.py)

    @property
    def contending(self) -> bool:
        """Whether the last reading had a candidate (an offset with MIN_VOTES) short of sure.

        Any candidate, whatever its span: the best offset can change from one
        reading to the next, to a run long enough at once (tried: only runs
        within 300-500 ms of MIN_SPAN_FRAMES, no CPU saved, decisions 10 ms later)."""
        return not self._quiet

    def push(self, lm: Landmarks) -> None:
        """Look up a chunk's landmarks; their votes count from the frame they became known."""
        if len(lm.hashes) == 0 or len(self.library) == 0:
            return
        qpos, tids, ttimes = self.library.lookup(lm.hashes)
        self.add_postings(lm.times[qpos], lm.ready[qpos], tids, ttimes)

    def note_sound(self, active: npt.NDArray[np.bool_]) -> None:
        """Mark the next frames of the call as sound (speech, music) or not (tone, noise)."""
        self._sound.extend(np.asarray(active, dtype=np.uint8).tobytes())

    def add_postings(
        self,
        qfine: npt.NDArray[np.int64],
        ready: npt.NDArray[np.int64],
        tids: npt.NDArray[np.int32],
        ttimes: npt.NDArray[np.int32],
    ) -> None:
        """Queue votes: the call's anchor (fine hops), when known (frame), template, its time."""
        if len(qfine) == 0:
            return
        qt = (qfine + 1) * HOP // FRAME  # the 20 ms frame of the anchor
        off = (ttimes.astype(np.int64) - qfine + _OFF) // BUCKET
        key = tids.astype(np.int64) * _KEY + off
        self._pend_q = np.concatenate([self._pend_q, qt])
        self._pend_ready = np.concatenate([self._pend_ready, ready.astype(np.int64)])
        self._pend_key = np.concatenate([self._pend_key, key])

    def advance(self, frame: int, extra: int = 0) -> AnnouncementHit | None:
        """Apply the votes known by the end of `frame`, read the standings; a hit once sure.

        Called once per block with its last frame (decide.py); any frame works,
        the answer only depends on the votes known by then.
        """
        known = self._pend_ready <= frame
        fresh = bool(known.any())
        if fresh:
            self._hist_q = np.concatenate([self._hist_q, self._pend_q[known]])
            self._hist_key = np.concatenate([self._hist_key, self._pend_key[known]])
            later = ~known
            self._pend_q = self._pend_q[later]
            self._pend_ready = self._pend_ready[later]
            self._pend_key = self._pend_key[later]
        if len(self._hist_q) == 0:
            return None
        self._horizon = frame - HISTORY_FRAMES  # votes before it are forgotten
        old = self._hist_q < self._horizon
        if old.any():
            self._hist_q, self._hist_key = self._hist_q[~old], self._hist_key[~old]
        if not fresh and self._quiet:
            return None  # no new vote, and no offset had MIN_VOTES: none has now
        st = self.standing(frame)
        self._quiet = st is None
        if st is None or not _sure(st, extra) or self.implausible(st):
            return None
        return self._hit(st, frame)

    def implausible(self, st: Standing) -> bool:
        """Whether a winner that passed the vote thresholds is still not to be believed.

        - Its run's votes must lie mostly (SOUND_SHARE) where the call had
          sound (speech, music: decide.py's activity, `note_sound`), not in
          line noise or the pauses of a ringback: noise makes peaks too, and a
          dense template gathers chance votes from them (seen on a corpus of
          another seed: 14 votes against 5 in the pauses of a noisy ringback).
        - Its template must not miss the votes it expected just before the
          run. A capture of recording X that says a piece of template Y (the
          same words in the same voice) matches Y as well as Y itself would, for
          as long as the piece lasts; but where Y came before with words of
          its own, X said something else and Y got no votes. Y's indexed
          postings over the BEFORE_FRAMES before the run, where the call had
          sound, scaled by the share of Y's postings the run itself got (the
          recall through this call's noise and loss), are the votes a copy of
          Y would have given there. (A copy of Y heard from its middle has no
          sound before, or ringback; an opening shared with other verdicts is
          not in the index: neither expects anything.)
        """
        sound = np.frombuffer(bytes(self._sound), dtype=np.uint8)
        if len(sound) == 0:
            return False
        near = np.abs(self._hist_key - st.key) <= 1
        q = self._hist_q[near]
        end = st.run_start + st.span
        in_run = (q >= st.run_start) & (q <= end)
        got_run = int(in_run.sum())
        if got_run == 0:
            return False
        if float(sound[np.minimum(q[in_run], len(sound) - 1)].mean()) < SOUND_SHARE:
            return True
        dens = self.library.density(st.template)
        shift = ((st.key % _KEY) * BUCKET - _OFF) * HOP // FRAME  # template frame - call frame
        expect_run = int(_take(dens, np.arange(st.run_start, end + 1) + shift).sum())
        if expect_run <= 0:
            return False
        recall = min(1.0, got_run / expect_run)
        lo = max(0, st.run_start - BEFORE_FRAMES, self._horizon)  # only what is remembered
        before = np.arange(lo, min(st.run_start, len(sound)))
        before = before[sound[before] == 1]
        expect = recall * float(_take(dens, before + shift).sum())
        if expect < MISSING_MIN:
            return False
        got = int(((q >= lo) & (q < st.run_start)).sum())
        return bool(got < MISSING_SHARE * expect)

    def standing(self, frame: int) -> Standing | None:
        """The best (template, offset) by the votes of the window ending at `frame`.

        None while no offset has MIN_VOTES (most blocks of most calls: the
        runner-up and the span are only worked out for a candidate).
        """
        in_window = self._hist_q >= frame - WINDOW_FRAMES
        keys = self._hist_key[in_window]
        if len(keys) < MIN_VOTES:
            return None
        uniq, counts = np.unique(keys, return_counts=True)
        # each bucket's score is its votes plus its neighbours' (sorted keys: adjacent)
        score = counts.copy()
        adjacent = np.diff(uniq) == 1
        score[1:] += np.where(adjacent, counts[:-1], 0)
        score[:-1] += np.where(adjacent, counts[1:], 0)
        best = int(np.argmax(score))
        if score[best] < MIN_VOTES:
            return None
        key = int(uniq[best])
        tids = uniq // _KEY
        verdicts = self._verdict_code[tids]
        other = verdicts != verdicts[best]
        runner = int(score[other].max()) if other.any() else 0
        # the winner's run: its votes (offset +-1 bucket) over the history, split at gaps
        near = np.abs(self._hist_key - key) <= 1
        qs = np.sort(self._hist_q[near])
        gaps = np.flatnonzero(np.diff(qs) > RUN_GAP_FRAMES)
        start = int(qs[gaps[-1] + 1]) if len(gaps) else int(qs[0])
        return Standing(
            int(tids[best]),
            key,
            int(score[best]),
            runner,
            int(qs[-1]) - start,
            start,
        )

    def _hit(self, st: Standing, frame: int) -> AnnouncementHit:
        entry = self.library.entry(st.template)
        lead = st.score - st.runner_up
        confidence = min(0.99, 0.6 + 0.01 * lead)
        return AnnouncementHit(
            entry.verdict,
            entry.label,
            entry.file,
            st.score,
            st.runner_up,
            round(confidence, 3),
            entry.transient,
            frame,
            max(0, st.run_start),
        )


def _sure(st: Standing, extra: int = 0) -> bool:
    lead = st.score - st.runner_up
    return st.score >= MIN_VOTES and lead >= MARGIN + extra and st.span >= MIN_SPAN_FRAMES


def _take(dens: npt.NDArray[np.int64], frames: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """dens[frames], 0 outside the template."""
    inside = (frames >= 0) & (frames < len(dens))
    out: npt.NDArray[np.int64] = dens[frames[inside]]
    return out
