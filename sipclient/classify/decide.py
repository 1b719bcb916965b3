"""One call's classifier: signalling events and PCM in, a verdict out as early as it is sure.

`CallClassifier` is fed, as they happen, the cumulative signalling
(`on_signalling`), the audio (`feed`, int16 8 kHz, any chunk size: it works
in 20 ms frames counted by samples) and clock ticks (`tick`). Each answers
None ("not yet") or the Decision, and keeps answering that same Decision
once made. `finish` (end of call) always gives a verdict. Nothing looks at
audio past the frame at which it decides, so the daemon may CANCEL at once,
and `classify_pcm` (the server, the CLI) runs the very same path over a
whole file: streaming and whole-file verdicts agree.

What decides, first come first served:

1. signalling that is conclusive on its own (signalling.conclusive): a final
   response, a Q.850 cause even in a 183;
2. a tone cadence (tones.py); a stable ringback only counts as `ringing`
   after a 180, or after `ringback_commit_ms` of ringback and nothing else
   (an announcement may follow a short in-band ringback);
3. a template match (announcements.py);
4. colour ring-back: `crbt_ms` of sound that is neither tone nor a known
   announcement, after a 180 or a ringback cycle -> `ringing`;
5. a 180 or 183 and then no RTP for `no_rtp_wait_ms` (`tick`): signalling.

An answer (2xx) is conclusive at once, except with `answer_listen_ms` when no
180 came before it: some carriers answer an unringing number to play their
announcement (假应答, a "fake answer"), and a call hung up on its 2xx would
be `answered`. Then the audio keeps its say for that long after the answer
(an announcement or tone decides as without the answer: `finish` keeps it
and marks the evidence `fake_answer`); at the end of the window `tick` says
`answered`. A callee who picks up after a 180 is answered at once.

`finish` then reconciles the streaming decision with the final response
(rules in its docstring).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from sipclient.classify.announcements import AnnouncementHit, AnnouncementMatcher
from sipclient.classify.audio import FRAME, RATE, to_8k_mono
from sipclient.classify.fingerprint import HOP, Fingerprinter, Landmarks, push_many
from sipclient.classify.frames import FrameSource, band, push_rms_many
from sipclient.classify.signalling import conclusive, from_signalling
from sipclient.classify.templates import TemplateLibrary
from sipclient.classify.tones import LOW, OFF, ToneDetector, ToneHit, classify_frames
from sipclient.classify.unknowns import UnknownStore
from sipclient.classify.verdicts import Decision, Signalling, Verdict

FRAME_MS = 1000 * FRAME // RATE
BLOCK_FRAMES = 5
"""Frames analysed together (100 ms) while nothing is close to a decision."""
NEAR_FRAMES = 2
"""...and while something is near (`feed`): 40 ms. 20 ms was measured too: the
median decision 10 ms sooner for about three times the extra CPU (+44 % against
+10-20 % over 100 ms blocks throughout; docs/classifier.md, "Figures")."""
ACTIVE_RMS = 15.0
"""Non-tone frames louder than this (int16 RMS, about -67 dBFS) may be sound."""
ACTIVE_FLATNESS = 0.3
"""...and less spectrally flat than this (line noise is flat, speech and music are not)."""
EARLY_RINGBACK_MS = 800
"""After a 180, a 400-500 Hz tone this long is ringback (no other tone is on that long)."""
UNKNOWN_MIN_ACTIVE_MS = 1000
"""At least this much unexplained sound before a call is kept as an unknown announcement."""
CLIP_SECONDS = 30
"""How much audio is kept for the unknown store."""

_FLAT = band(250, 3500)
LIVE = frozenset({Verdict.RINGING, Verdict.NO_ANSWER, Verdict.REJECTED, Verdict.ANSWERED})


@functools.lru_cache(maxsize=1)
def _default_library() -> TemplateLibrary:
    return TemplateLibrary.default()


class CallClassifier:
    """The streaming classifier of one call (module docstring)."""

    def __init__(
        self,
        library: TemplateLibrary | None = None,
        *,
        no_rtp_wait_ms: int = 3000,
        unknown_store: UnknownStore | None = None,
        ringback_commit_ms: int = 12000,
        crbt_ms: int = 3000,
        answer_listen_ms: int = 0,
    ) -> None:
        self.library = library if library is not None else _default_library()
        self.no_rtp_wait_ms = no_rtp_wait_ms
        self.answer_listen_ms = answer_listen_ms
        self.answer_at: int | None = None
        """When a 2xx without a 180 came (ms since the INVITE), while `answer_listen_ms`
        keeps the audio listened to (module docstring); None otherwise."""
        self.unknown_store = unknown_store
        self.ringback_commit_ms = ringback_commit_ms
        self.crbt_ms = crbt_ms
        self._sig = Signalling()
        self._media_at: int | None = None
        self._samples = 0
        self._frames = FrameSource()
        self._fp = Fingerprinter(variants=True)
        self._tones = ToneDetector()
        self._ann = AnnouncementMatcher(self.library)
        self._decision: Decision | None = None
        self._finished: Decision | None = None
        self._active = 0  # non-tone, non-noise frames
        self._first_active: int | None = None
        self._ringback_start: int | None = None
        self._active_at_ringback = 0
        self._tone_frames: list[npt.NDArray[np.bool_]] = []
        self._hashes: list[npt.NDArray[np.int64]] = []
        self._htimes: list[npt.NDArray[np.int64]] = []
        self._clip: list[npt.NDArray[np.int16]] = []
        self._buf: list[npt.NDArray[np.int16]] = []
        self._cls_hist = bytearray()  # every frame's tone label so far
        self._buffered = 0
        self._clip_len = 0
        self._check = BLOCK_FRAMES - 1  # the frame at whose end the next block ends
        self._pending: Decision | None = None  # reached inside a block, said at its end

    # -- inputs -------------------------------------------------------------------------

    @property
    def decision(self) -> Decision | None:
        """The streaming decision so far (None: not yet)."""
        return self._decision

    @property
    def ready(self) -> bool:
        """A complete block waits for `analyse_many` (`take`), undecided and unfinished."""
        return self._decision is None and self._finished is None and self._block_complete()

    @property
    def audio_ms(self) -> int:
        """Audio received so far, in ms (counted in samples, not wall time)."""
        return self._samples * 1000 // RATE

    def on_signalling(self, sig: Signalling, at_ms: int) -> Decision | None:
        """Take the call's cumulative signalling at `at_ms` (ms since the INVITE)."""
        self._sig = sig
        if self._media_at is None and (sig.ringing or sig.early_media):
            self._media_at = at_ms
        if self._decision is not None:
            return self._decision
        c = conclusive(sig)
        if c is not None and sig.answered and self.answer_listen_ms > 0 and not sig.ringing:
            if self.answer_at is None:
                self.answer_at = at_ms
            return self.tick(at_ms)
        if c is not None:
            ev = dict(c.evidence)
            if self._samples:
                ev["audio_ms"] = self.audio_ms
            self._decision = _replace(
                c, evidence=ev, decided_ms=self.audio_ms if self._samples else None
            )
            return self._decision
        return self.tick(at_ms)

    def tick(self, at_ms: int) -> Decision | None:
        """The clock: after a 180/183 and no RTP for `no_rtp_wait_ms`, signalling decides;
        `answer_listen_ms` after a 2xx without a 180, `answered` does."""
        if self._decision is not None:
            return self._decision
        if self.answer_at is not None:
            if at_ms - self.answer_at < self.answer_listen_ms:
                return None
            c = conclusive(self._sig)
            if c is None:  # (cannot be: the signalling holds the 2xx)
                return None
            ev = dict(c.evidence)
            ev["listened_ms"] = at_ms - self.answer_at
            if self._samples:
                ev["audio_ms"] = self.audio_ms
            self._decision = _replace(
                c, evidence=ev, decided_ms=self.audio_ms if self._samples else None
            )
            return self._decision
        if (
            self._media_at is not None
            and self._samples == 0
            and at_ms - self._media_at >= self.no_rtp_wait_ms
        ):
            d = from_signalling(self._sig)
            ev = dict(d.evidence)
            ev["no_rtp_ms"] = at_ms - self._media_at
            self._decision = _replace(d, evidence=ev)
            return self._decision
        return None

    def feed(self, pcm: npt.NDArray[np.int16]) -> Decision | None:
        """Take the next audio (int16, 8 kHz mono, any length); the Decision once sure.

        Audio is analysed in blocks: BLOCK_FRAMES frames (100 ms) while
        nothing is near a decision, so the per-call numpy overhead is paid ten
        times a second, not fifty; NEAR_FRAMES while something is (a cadence
        that could be decided in its next frames, `ToneDetector.near`, or an
        announcement candidate short of sure, `AnnouncementMatcher.contending`),
        so a decision is not held up to 80 ms by the block. The grid's block
        ends stay block ends. A decision is announced at the end of the block
        in which it was reached (`decided_ms`); where blocks end depends only
        on the audio, never on the sizes of the pieces fed, so a whole file
        gives the same answer.
        """
        if self._decision is not None:
            return self._decision
        if not self.take(pcm):
            return None  # the current block is not complete yet
        return self._analyse(self._cut())

    def take(self, pcm: npt.NDArray[np.int16]) -> bool:
        """`feed` without the analysis: buffer the audio, and say whether a block is
        complete. The daemon then analyses the blocks of every call that completed one
        in a turn of its event loop together (`analyse_many`); the decisions are
        `feed`'s (block ends depend only on the audio, `feed`)."""
        if self._decision is not None:
            return False
        pcm = np.asarray(pcm).astype(np.int16, copy=False).ravel()
        if len(pcm) == 0:
            return False
        self._samples += len(pcm)
        if self._clip_len < CLIP_SECONDS * RATE:
            part = pcm[: CLIP_SECONDS * RATE - self._clip_len].copy()
            self._clip.append(part)
            self._clip_len += len(part)
        self._buf.append(pcm)
        self._buffered += len(pcm)
        return self._block_complete()

    def _block_complete(self) -> bool:
        return self._buffered >= (self._check + 1 - self._frames.frames) * FRAME

    def _cut(self) -> npt.NDArray[np.int16]:
        """Every whole frame buffered (blocks are cut inside _analyse)."""
        x = np.concatenate(self._buf)
        cut = len(x) // FRAME * FRAME
        self._buf = [x[cut:]]
        self._buffered = len(x) - cut
        return x[:cut]

    def _without_tones(self, lm: Landmarks) -> Landmarks:
        """Drop landmarks anchored in tone frames: a ringback with lost packets splatters
        peaks that could vote for a template by chance."""
        if len(lm.hashes) == 0:
            return lm
        labels = np.frombuffer(bytes(self._cls_hist), dtype=np.uint8)
        frames = np.minimum((lm.times + 1) * HOP // FRAME, len(labels) - 1)
        keep = labels[frames] == OFF
        if keep.all():
            return lm
        return Landmarks(lm.hashes[keep], lm.times[keep], lm.ready[keep])

    def _flush(self) -> None:
        """Analyse what is left in the buffer (end of call).

        A decision reached in a block the call ended before completing is
        said at the end of the audio analysed.
        """
        if self._decision is None and self._buffered:
            x = np.concatenate(self._buf)
            self._buf, self._buffered = [], 0
            self._analyse(x, last=True)
        if self._decision is None and self._pending is not None:
            self._decision = _replace(self._pending, decided_ms=self._frames.frames * FRAME_MS)

    def _analyse(self, x: npt.NDArray[np.int16], *, last: bool = False) -> Decision | None:
        """Analyse whole blocks (`last`: the call's final, possibly partial, block too).

        Tones and the context rules are read every frame; the announcement
        standings once per block, at its last frame (announcements.py: the
        vote counting is vectorised per block, and every hash known by the
        end of the block counts).
        """
        landmarks = self._fp.push(x)
        rms = self._frames.push_rms(x)
        if len(rms) == 0:
            return None
        power = self._fp.frame_power  # the frames' spectra: the fingerprint's FFT, shared
        cls, freq = classify_frames(power, rms)
        active = _active(power, rms) & (cls == OFF)
        return self._frames_in(landmarks, rms, cls, freq, active, last=last)

    def _frames_in(
        self,
        landmarks: Landmarks,
        rms: npt.NDArray[np.float64],
        cls: npt.NDArray[np.int8],
        freq: npt.NDArray[np.float64],
        active: npt.NDArray[np.bool_],
        *,
        last: bool,
    ) -> Decision | None:
        """The rest of `_analyse`, once the frames' features are known (the part
        `analyse_many` cannot do for several calls at once: each call's own state)."""
        n = len(rms)
        base = self._frames.frames - n
        self._tone_frames.append(cls != OFF)
        self._cls_hist.extend(cls.astype(np.uint8).tobytes())
        lm = self._without_tones(landmarks)
        if len(lm.hashes):
            self._hashes.append(lm.hashes)
            self._htimes.append(lm.times)
        self._ann.push(lm)
        self._ann.note_sound(active)
        tones, ann = self._tones, self._ann
        cls_l, rms_l, freq_l, act_l = cls.tolist(), rms.tolist(), freq.tolist(), active.tolist()
        for i in range(n):
            frame = base + i
            hit = tones.update(cls_l[i], rms_l[i], freq_l[i])
            if act_l[i]:
                self._active += 1
                if self._first_active is None:
                    self._first_active = frame
            end = frame == self._check or (last and i == n - 1)  # of a block
            if self._pending is None:
                d = self._tone_decision(hit, frame) if hit is not None else None
                if d is None and end:
                    # between the grid's block ends, one more vote of lead: more
                    # looks must not let more wandering standings through
                    grid = frame % BLOCK_FRAMES == BLOCK_FRAMES - 1 or (last and i == n - 1)
                    ahit = ann.advance(frame, 0 if grid else 1)
                    if ahit is not None:
                        d = _announcement_decision(ahit)
                if d is None:
                    d = self._context_decision(frame)
                self._pending = d
            if not end:
                continue
            # the end of a block: what was reached in it is said now
            d = self._pending
            if d is not None:
                self._decision = _replace(d, decided_ms=(frame + 1) * FRAME_MS)
                return self._decision
            near = ann.contending or tones.near(self._sig.ringing)
            nxt = (frame // BLOCK_FRAMES + 1) * BLOCK_FRAMES + BLOCK_FRAMES - 1
            # the 100 ms grid's block ends stay block ends: a decision can only come sooner
            self._check = min(frame + NEAR_FRAMES, nxt) if near else nxt
        return None

    # -- the streaming rules -----------------------------------------------------------------

    def _tone_decision(self, hit: ToneHit, frame: int) -> Decision | None:
        if hit.verdict == Verdict.RINGING and not self._sig.ringing:
            return None  # in-band ringback without a 180: wait (see ringback_commit_ms)
        return Decision(
            hit.verdict,
            hit.confidence,
            {"kind": "tone", "tone": hit.tone, "tone_start_ms": hit.started_frame * FRAME_MS},
            (frame + 1) * FRAME_MS,
            None,
            hit.transient,
        )

    def _context_decision(self, frame: int) -> Decision | None:
        tones = self._tones
        end_ms = (frame + 1) * FRAME_MS
        if self._ringback_start is None and tones.ringback_seen:
            self._ringback_start = tones.ringback_frame or 0
            self._active_at_ringback = self._active
        if (
            self._sig.ringing
            and tones.current_cls == LOW
            and tones.current_steady
            and tones.current_ms >= EARLY_RINGBACK_MS
        ):
            return Decision(
                Verdict.RINGING,
                0.9,
                {"kind": "tone", "tone": "ringback_after_180", "ms": tones.current_ms},
                end_ms,
            )
        if (
            self._ringback_start is not None
            and not self._sig.ringing
            and (frame - self._ringback_start) * FRAME_MS >= self.ringback_commit_ms
            and self._active - self._active_at_ringback < 25
        ):
            return Decision(
                Verdict.RINGING,
                0.75,
                {"kind": "tone", "tone": "stable_ringback", "ms": self.ringback_commit_ms},
                end_ms,
            )
        if self._active * FRAME_MS >= self.crbt_ms and self._sig.ringing:
            return Decision(
                Verdict.RINGING,
                0.8,
                {
                    "kind": "colour_ringback",
                    "rule": "sound matching no announcement after 180",
                    "active_ms": self._active * FRAME_MS,
                },
                end_ms,
            )
        return None

    # -- the end ------------------------------------------------------------------------------

    def finish(self, sig: Signalling) -> Decision:
        """The call is over (final signalling `sig`): always a verdict.

        - an answer (2xx): `answered`, unless an error announcement or tone was
          heard first (some carriers answer to play them);
        - a streaming decision stands, except `ringing` followed by a final
          response meaning a live outcome after ringing (480 -> no_answer,
          603/486 -> rejected), which is more precise;
        - otherwise the final signalling, if it says anything;
        - otherwise ringback or colour ring-back heard -> `ringing`;
        - otherwise `unknown`; unexplained sound is kept in the unknown store.
        """
        if self._finished is not None:
            return self._finished
        self._flush()
        self._sig = sig
        fs = from_signalling(sig)
        d = self._decision
        audio = d is not None and d.evidence.get("kind") in ("tone", "announcement")
        final: Decision
        if sig.answered or fs.verdict == Verdict.ANSWERED:
            if d is not None and audio and d.verdict not in LIVE:
                # the carrier answered to play this: the number is what it said
                final = _replace(d, evidence={**d.evidence, "fake_answer": True})
            else:
                final = fs
        elif d is not None:
            if d.verdict == Verdict.RINGING and fs.verdict in (
                Verdict.NO_ANSWER,
                Verdict.REJECTED,
            ):
                final = _replace(fs, decided_ms=d.decided_ms)
            else:
                final = d
        elif fs.verdict != Verdict.UNKNOWN and not (
            fs.verdict == Verdict.RINGING and fs.confidence < 0.7
        ):
            final = fs
        elif sig.ringing or (
            self._tones.ringback_seen
            and self._active - self._active_at_ringback < UNKNOWN_MIN_ACTIVE_MS // FRAME_MS
        ):
            final = Decision(
                Verdict.RINGING,
                0.6,
                {"kind": "default", "rule": "180" if sig.ringing else "ringback, nothing after"},
                self.audio_ms if self._samples else None,
            )
        else:
            final = fs
            ev = dict(fs.evidence)
            if self._active * FRAME_MS >= UNKNOWN_MIN_ACTIVE_MS:
                ev["audio"] = "sound matching no template"
                ev["active_ms"] = self._active * FRAME_MS
                stored = self._store_unknown(sig)
                if stored is not None:
                    ev["unknown_id"] = stored
            elif self._samples:
                ev["audio"] = "silence or noise"
            final = _replace(fs, evidence=ev)
        ev2 = dict(final.evidence)
        ev2.setdefault("final_sip_code", sig.sip_code)
        if sig.q850_cause is not None:
            ev2.setdefault("final_q850_cause", sig.q850_cause)
        self._finished = _replace(final, evidence=ev2)
        return self._finished

    def _store_unknown(self, sig: Signalling) -> str | None:
        if self.unknown_store is None or not self._hashes:
            return None
        hashes = np.concatenate(self._hashes)
        times = np.concatenate(self._htimes)
        tone = np.concatenate(self._tone_frames) if self._tone_frames else np.zeros(0, bool)
        frames = times * HOP // FRAME
        keep = ~tone[np.clip(frames, 0, max(len(tone) - 1, 0))] if len(tone) else None
        if keep is not None:
            hashes, times = hashes[keep], times[keep]
        clip = np.concatenate(self._clip) if self._clip else np.zeros(0, np.int16)
        meta: dict[str, Any] = {
            "sip_code": sig.sip_code,
            "q850_cause": sig.q850_cause,
            "ringing": sig.ringing,
            "active_ms": self._active * FRAME_MS,
        }
        return self.unknown_store.add(hashes, times, clip, meta)


def analyse_many(
    classifiers: Sequence[CallClassifier], errors: list[Exception] | None = None
) -> list[Decision | None]:
    """Analyse the complete blocks (`CallClassifier.take`) of several calls at once;
    each one's decision, in order (None: not yet, or it had no block to analyse).

    The daemon's budget is CPU per call, and a block's analysis is mostly the
    fixed cost of its numpy calls (fingerprint.py): the fingerprints' FFT and
    levels (`fingerprint.push_many`), the frames' tone labels and the sound
    test run once for every row of every call; what keeps per-call state
    (peaks and pairs, the tone cadences, the announcement votes) runs per
    call. Each row's arithmetic is what `feed` does, so the decisions and
    their `decided_ms` are `feed`'s (tests/classify/test_decide.py). A
    classifier with no complete block, decided or finished is left alone.

    `errors`: an exception raised in one call's own part is appended there and
    the other calls go on (without it, it is raised); that call's block goes
    unanalysed. One in the shared part (a bug) is raised: every block is lost.
    """
    todo = [c for c in classifiers if c.ready]
    if len(todo) == 1:  # a quiet daemon's turns: `feed`'s path, without the batch's
        try:
            todo[0]._analyse(todo[0]._cut())
        except Exception as e:
            if errors is None:
                raise
            errors.append(e)
        return [c.decision if c is todo[0] else None for c in classifiers]
    cuts = [c._cut() for c in todo]
    # one conversion to float for all (both consumers take float64 as it is)
    joined = np.concatenate(cuts).astype(np.float64)
    ends = np.cumsum([len(x) for x in cuts]).tolist()
    xs = [joined[a:b] for a, b in zip([0, *ends], ends, strict=False)]
    landmarks = push_many([c._fp for c in todo], xs)
    rmss = push_rms_many([c._frames for c in todo], xs)
    live = [i for i, r in enumerate(rmss) if len(r)]
    if live:
        power = np.concatenate([todo[i]._fp.frame_power for i in live])
        rms = np.concatenate([rmss[i] for i in live])
        cls, freq = classify_frames(power, rms)
        active = _active(power, rms) & (cls == OFF)
        at = 0
        for i in live:
            k = at + len(rmss[i])
            try:
                todo[i]._frames_in(
                    landmarks[i], rmss[i], cls[at:k], freq[at:k], active[at:k], last=False
                )
            except Exception as e:
                if errors is None:
                    raise
                errors.append(e)
            at = k
    analysed = {id(c) for c in todo}
    return [c.decision if id(c) in analysed else None for c in classifiers]


def _active(power: npt.NDArray[np.float64], rms: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    p = power[:, _FLAT] + 1e-6
    flat = np.exp(np.mean(np.log(p), axis=1)) / np.mean(p, axis=1)
    out: npt.NDArray[np.bool_] = (rms >= ACTIVE_RMS) & (flat < ACTIVE_FLATNESS)
    return out


def _announcement_decision(hit: AnnouncementHit) -> Decision:
    return Decision(
        hit.verdict,
        hit.confidence,
        {
            "kind": "announcement",
            "template": hit.template,
            "score": hit.score,
            "runner_up": hit.runner_up,
            "match_start_ms": hit.started_frame * FRAME_MS,
        },
        (hit.frame + 1) * FRAME_MS,
        hit.label,
        hit.transient,
    )


def _replace(d: Decision, **kw: Any) -> Decision:
    fields: dict[str, Any] = {
        "verdict": d.verdict,
        "confidence": d.confidence,
        "evidence": d.evidence,
        "decided_ms": d.decided_ms,
        "label": d.label,
        "transient": d.transient,
    }
    fields.update(kw)
    return Decision(**fields)


def classify_pcm(
    pcm: npt.NDArray[Any],
    rate: int,
    sig: Signalling,
    library: TemplateLibrary | None = None,
    *,
    unknown_store: UnknownStore | None = None,
) -> Decision:
    """A whole recording through the streaming path: the provisional signalling
    (180 / 183) first, the audio in 1 s chunks until a decision, then `finish(sig)`.

    `pcm` is int16 (or float in [-1, 1]) mono at `rate`; it is resampled to 8 kHz.
    """
    x = np.asarray(pcm)
    if rate != RATE or x.dtype != np.int16:
        f = x.astype(np.float64) / 32768.0 if x.dtype == np.int16 else x.astype(np.float64)
        x = to_8k_mono(f, rate)
    c = CallClassifier(library, unknown_store=unknown_store)
    c.on_signalling(Signalling(ringing=sig.ringing, early_media=sig.early_media or len(x) > 0), 0)
    step = RATE
    for i in range(0, len(x), step):
        if c.feed(x[i : i + step]) is not None:
            break
    return c.finish(sig)
