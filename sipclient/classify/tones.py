"""Call-progress tones: the Chinese and North American plans and SIT, streaming.

Each 20 ms frame (frames.py) is labelled by where its energy sits: `LOW`
(400-500 Hz: the Chinese 450 Hz tone and the North American 440+480 Hz
ringback, told apart by cadence only), `DUAL` (480+620 Hz: North American
busy and reorder), `SIT1..3` (the three Special Information Tone segments),
or `OFF`. A frame is a tone when at least TONE_RATIO of its energy is in the
band, which makes the test independent of level (-40..0 dBm0) and survives
G.711 and line noise. Runs of equal labels become on/off segments; an off
run of at most two frames between two equal tones is a lost packet and is
bridged. A cadence is recognised from two consecutive on segments and the
off between them, as soon as the second has lasted long enough to rule out
every other pattern (`PATTERNS`: the table is the only place durations live).
Where one burst's length already rules out every other pattern of its band
(`Pattern.alone_on_ms`: North American busy, 480+620 Hz for 400 ms or more),
that burst decides ALONE_PAUSE_MS into the pause after it. Chinese congestion
does not: a ringback cut after 0.7 s by an announcement is one 0.7 s burst too.

| pattern | band | on (ms) | off (ms) | verdict |
| --- | --- | --- | --- | --- |
| cn_empty (空号音, 0.1/0.1 x3 then 0.4/0.4) | LOW | 40-180 | 40-180 | empty |
| cn_busy 0.35/0.35 | LOW | 270-450 | 270-450 | busy |
| cn_congestion 0.7/0.7 | LOW | 560-860 | 560-860 | failed (transient) |
| cn_ringback 1/4 | LOW | 800-1300 | 3200-4800 | ringing |
| na_ringback 2/4 | LOW | 1700-2400 | 3200-4800 | ringing |
| na_busy 0.5/0.5 (one burst decides) | DUAL | 400-620 | 400-620 | busy |
| na_reorder 0.25/0.25 | DUAL | 180-330 | 180-330 | failed (transient) |
| SIT 913.8/985.2, 1370.6, 1776.7 | SIT1-3 | 200-450 each | - | empty |
| SIT with 1428.5 second segment | SIT1-3 | 200-450 each | - | failed (transient) |

Ringback needs two cycles (a "stable" ringback) before it says `ringing`:
an announcement may follow a short ringback. One ringback cycle sets
`ringback_seen`, which decide.py uses for colour ring-back.

`classify_frames` runs on every 100 ms block of every call, so it is written
for few numpy calls with the plain definition's arithmetic (bit-identical
classes and frequencies: tests/classify/test_fingerprint_equivalence.py):
band sums with np.add.reduce (what ndarray.sum calls), the loudness mask
applied once at the end, and no band sums at all when no frame is loud.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sipclient.classify.frames import HZ_PER_BIN, band
from sipclient.classify.verdicts import Verdict

OFF, LOW, DUAL, SIT1, SIT2, SIT3 = 0, 1, 2, 3, 4, 5
CLASS_NAMES = ("off", "low", "dual", "sit1", "sit2", "sit3")

FRAME_MS = 20
TONE_RATIO = 0.85
"""Share of a frame's energy that must sit in a tone's band."""
MIN_RMS = 12.0
"""Frames quieter than this (int16 RMS, about -62 dBm0) are silence."""
MAX_GAP_FRAMES = 2
"""Off runs this short between two equal tones are lost packets, bridged."""
QUIET_OFF = 0.6
"""An off segment's RMS must be below this share of the tone's: a real pause."""

_TOTAL = band(150, 3800)
_LOW = band(375, 545)
_HIGH620 = band(560, 690)
_SIT = (band(850, 1050), band(1310, 1490), band(1700, 1850))


@dataclass(frozen=True)
class Pattern:
    """One cadence: two on segments of `cls` and the off between them."""

    name: str
    cls: int
    on_ms: tuple[int, int]
    off_ms: tuple[int, int]
    second_ms: int | None
    """Decide once the second on has lasted this long; None: when it ends, in on_ms."""
    verdict: Verdict
    transient: bool = False
    confidence: float = 0.9
    alone_on_ms: tuple[int, int] | None = None
    """One burst in this range decides, before the second (ALONE_PAUSE_MS of quiet
    after it closes the burst). Only for a range no other pattern of the band
    reaches and above every shorter pattern's on, so that a burst cut by the start
    of the audio or by a switch to other audio (it only comes out shorter) cannot
    be mistaken for it."""


PATTERNS: tuple[Pattern, ...] = (
    Pattern("cn_empty", LOW, (40, 180), (40, 180), None, Verdict.EMPTY, confidence=0.9),
    # a second on of 200 ms is no cn_empty burst (<= 180 ms); nothing else shares busy's first on
    Pattern("cn_busy", LOW, (270, 450), (270, 450), 200, Verdict.BUSY),
    Pattern("cn_congestion", LOW, (560, 860), (560, 860), 540, Verdict.FAILED, True),
    Pattern("cn_ringback", LOW, (800, 1300), (3200, 4800), 600, Verdict.RINGING),
    Pattern("na_ringback", LOW, (1700, 2400), (3200, 4800), 600, Verdict.RINGING),
    # 480+620 Hz on for 400 ms or more is busy: reorder's bursts end by 330, so even a
    # burst cut by the start of the audio is busy once it is that long
    Pattern(
        "na_busy",
        DUAL,
        (400, 620),
        (400, 620),
        380,
        Verdict.BUSY,
        alone_on_ms=(400, 620),
    ),
    Pattern("na_reorder", DUAL, (180, 330), (180, 330), 180, Verdict.FAILED, True),
)

ALONE_PAUSE_MS = 200
"""Quiet after a burst before it decides alone (`Pattern.alone_on_ms`): a lost
packet or two is bridged, and a note of music rarely stops for this long."""
NEAR_PAUSE_MS = ALONE_PAUSE_MS + 60
"""How long after a burst `near` stays true (the pause rules decide by then)."""
RINGBACK_ON_MS = ((800, 1300), (1700, 2400))
RINGBACK_SEEN_OFF_MS = 2500
SIT_SEG_MS = (200, 450)
SIT_GAP_FRAMES = 3


@dataclass(frozen=True)
class ToneHit:
    """A recognised cadence: the verdict it implies and when it was sure."""

    verdict: Verdict
    tone: str
    confidence: float
    transient: bool
    frame: int
    """Index of the frame at whose end the cadence was sure."""
    started_frame: int
    """Index of the first frame of the tone (for decision-time figures)."""


def classify_frames(
    power: npt.NDArray[np.float64], rms: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float64]]:
    """Label each frame (OFF, LOW, DUAL, SIT1-3) and give its peak frequency in Hz."""
    n = power.shape[0]
    cls = np.zeros(n, dtype=np.int8)
    if n == 0:
        return cls, np.zeros(0)
    total_band = power[:, _TOTAL]
    peak = (total_band.argmax(axis=1) + (_TOTAL.start or 0)) * HZ_PER_BIN
    loud = rms >= MIN_RMS
    if not loud.any():
        return cls, peak  # silence: no frame can be a tone (and no band sums to take)
    # np.add.reduce is what ndarray.sum calls (the same sums, bit for bit), minus a wrapper
    total = np.add.reduce(total_band, axis=1) + 1e-9
    low = np.add.reduce(power[:, _LOW], axis=1) / total
    hi = np.add.reduce(power[:, _HIGH620], axis=1) / total
    cls[(low >= TONE_RATIO) & (hi < 0.1)] = LOW
    cls[(low >= 0.2) & (hi >= 0.2) & (low + hi >= TONE_RATIO + 0.05)] = DUAL
    for k, sl in enumerate(_SIT):
        cls[np.add.reduce(power[:, sl], axis=1) / total >= TONE_RATIO] = SIT1 + k
    cls *= loud  # quiet frames are OFF whatever their bands say (one mask, not five)
    return cls, peak


def _within(ms: int, lim: tuple[int, int]) -> bool:
    return lim[0] <= ms <= lim[1]


class _Seg:
    """A run of equal frame labels (a tone burst or a pause)."""

    __slots__ = ("cls", "f_max", "f_min", "f_sum", "n", "rms_sum", "start")

    def __init__(self, cls: int, start: int) -> None:
        self.cls, self.start, self.n = cls, start, 0
        self.rms_sum = self.f_sum = 0.0
        self.f_min, self.f_max = 1e9, -1e9

    def add(self, rms: float, freq: float) -> None:
        self.n += 1
        self.rms_sum += rms
        self.f_sum += freq
        if freq < self.f_min:
            self.f_min = freq
        if freq > self.f_max:
            self.f_max = freq

    def absorb(self, other: _Seg) -> None:
        """Append a bridged gap; its (silent) frequencies do not count."""
        self.n += other.n
        self.rms_sum += other.rms_sum

    @property
    def ms(self) -> int:
        return self.n * FRAME_MS

    @property
    def rms(self) -> float:
        return self.rms_sum / self.n if self.n else 0.0

    @property
    def freq(self) -> float:
        return self.f_sum / self.n if self.n else 0.0

    @property
    def steady(self) -> bool:
        """A generator's tone keeps one pitch; speech harmonics wander.

        Dual tones (480+620) beat between their two peaks: not tested.
        """
        return self.cls == DUAL or self.f_max - self.f_min <= STEADY_HZ


STEADY_HZ = 70.0
"""Peak frequency spread allowed within one tone segment (two 31 Hz bins: 440+480 beats)."""
SAME_HZ = 35.0
"""Mean peak frequencies of the on segments of one cadence must agree this closely."""


def _same_tone(a: _Seg, b: _Seg) -> bool:
    if a.cls == DUAL:
        return True
    return a.steady and b.steady and abs(a.freq - b.freq) <= SAME_HZ


class ToneDetector:
    """Streaming cadence matcher; feed it frame labels one by one with `update`."""

    def __init__(self) -> None:
        self._cur = _Seg(OFF, 0)
        self._segs: list[_Seg] = []  # closed segments, oldest first
        self._checked_close = -1
        self.frame = -1
        self.ringback_seen = False
        """One ringback cycle heard (on, then a long quiet off)."""
        self.tone_frames = 0
        """Frames labelled as any tone so far."""
        self.first_tone_frame: int | None = None
        self.ringback_frame: int | None = None
        """Where the first ringback cycle began."""

    @property
    def current_cls(self) -> int:
        """The label of the run the latest frame belongs to."""
        return self._cur.cls

    @property
    def current_ms(self) -> int:
        """How long that run has lasted so far (lost packets bridged)."""
        return self._cur.ms

    @property
    def current_steady(self) -> bool:
        """Whether the current run kept one pitch."""
        return self._cur.steady

    def near(self, ringing: bool) -> bool:
        """Whether a cadence could be decided within the next few frames.

        During a burst that could be a pattern's second (its first burst and
        pause fit), during a 400-500 Hz burst after a 180 (`ringing`: decide.py's
        early ringback), during SIT, and for NEAR_PAUSE_MS after a burst ends
        (ALONE_PAUSE_MS, the frames that close a 空号音 burst). Not during a
        first burst nor late in a pause: nothing can be decided there.
        `ringing`: whether ringback cadences count (decide.py needs a 180).
        """
        cur, segs = self._cur, self._segs
        if cur.cls == OFF:
            return bool(segs) and segs[-1].cls != OFF and cur.ms <= NEAR_PAUSE_MS
        if cur.cls >= SIT1 or (ringing and cur.cls == LOW):
            return True
        if len(segs) < 2 or segs[-2].cls != cur.cls or segs[-1].cls != OFF:
            return False
        a, gap = segs[-2], segs[-1]
        return any(
            p.cls == cur.cls
            and p.second_ms is not None
            and (ringing or p.verdict != Verdict.RINGING)
            and _within(a.ms, p.on_ms)
            and _within(gap.ms, p.off_ms)
            for p in PATTERNS
        )

    def update(self, cls: int, rms: float, freq: float) -> ToneHit | None:
        """Take the next frame's label; a ToneHit once a cadence is certain."""
        self.frame += 1
        if cls != OFF:
            self.tone_frames += 1
            if self.first_tone_frame is None:
                self.first_tone_frame = self.frame
        cur = self._cur
        if cls == cur.cls:
            cur.add(rms, freq)
        else:
            segs = self._segs
            if (
                cur.cls == OFF
                and cls != OFF
                and cur.n <= MAX_GAP_FRAMES
                and segs
                and segs[-1].cls == cls
            ):
                # a lost packet or two inside a tone: reopen the tone segment
                prev = segs.pop()
                prev.absorb(cur)
                prev.add(rms, freq)
                self._cur = prev
                return self._check()
            if cur.n:
                segs.append(cur)
                if len(segs) > 10:
                    del segs[0]
            self._cur = _Seg(cls, self.frame)
            self._cur.add(rms, freq)
        return self._check()

    # -- cadences ---------------------------------------------------------------------

    def _check(self) -> ToneHit | None:
        segs = self._segs
        cur = self._cur
        if cur.cls != OFF:
            # the current tone is the second on of a pattern, running
            if len(segs) >= 2:
                a, gap = segs[-2], segs[-1]
                if a.cls == cur.cls and gap.cls == OFF and self._quiet(gap, a):
                    for p in PATTERNS:
                        if (
                            p.cls == cur.cls
                            and p.second_ms is not None
                            and cur.ms >= p.second_ms
                            and _within(a.ms, p.on_ms)
                            and _within(gap.ms, p.off_ms)
                            and _same_tone(a, cur)
                        ):
                            return self._hit(p.verdict, p.name, p.confidence, p.transient, a.start)
            if cur.cls == SIT3 and cur.ms >= SIT_SEG_MS[0]:
                return self._sit()
            return None
        # in an off run: a tone that ended more than MAX_GAP_FRAMES ago is final
        if cur.ms == ALONE_PAUSE_MS and segs:
            hit = self._check_alone(segs, cur)
            if hit is not None:
                return hit
        if cur.n == MAX_GAP_FRAMES + 1 and len(segs) >= 5:
            b = segs[-1]
            if self._checked_close != b.start:
                self._checked_close = b.start
                hit = self._check_bursts(segs[-5:])
                if hit is not None:
                    return hit
        if cur.ms == RINGBACK_SEEN_OFF_MS and segs and not self.ringback_seen:
            b = segs[-1]
            if (
                b.cls == LOW
                and b.steady
                and any(_within(b.ms, lim) for lim in RINGBACK_ON_MS)
                and cur.rms < QUIET_OFF * b.rms
            ):
                self.ringback_seen = True
                self.ringback_frame = b.start
        return None

    def _check_bursts(self, last5: list[_Seg]) -> ToneHit | None:
        """Patterns decided when a burst ends: three bursts and two pauses (空号音)."""
        a, g1, b, g2, c = last5
        for p in PATTERNS:
            if p.second_ms is not None:
                continue
            if not (a.cls == b.cls == c.cls == p.cls and g1.cls == g2.cls == OFF):
                continue
            if not all(_within(s.ms, p.on_ms) for s in (a, b, c)):
                continue
            if not all(_within(g.ms, p.off_ms) and self._quiet(g, a) for g in (g1, g2)):
                continue
            if _same_tone(a, b) and _same_tone(b, c):
                return self._hit(p.verdict, p.name, p.confidence, p.transient, a.start)
        return None

    def _check_alone(self, segs: list[_Seg], pause: _Seg) -> ToneHit | None:
        """Patterns one burst decides (`Pattern.alone_on_ms`), once `pause` is long enough."""
        b = segs[-1]
        if b.cls == OFF or not b.steady or not self._quiet(pause, b):
            return None
        for p in PATTERNS:
            if p.alone_on_ms is not None and p.cls == b.cls and _within(b.ms, p.alone_on_ms):
                return self._hit(p.verdict, p.name, p.confidence, p.transient, b.start)
        return None

    @staticmethod
    def _quiet(gap: _Seg, on: _Seg) -> bool:
        return gap.rms < QUIET_OFF * on.rms

    def _sit(self) -> ToneHit | None:
        # segments before the running SIT3: [SIT1, (gap), SIT2, (gap)]
        seq = [s for s in self._segs[-4:] if not (s.cls == OFF and s.n <= SIT_GAP_FRAMES)]
        if len(seq) < 2 or seq[-2].cls != SIT1 or seq[-1].cls != SIT2:
            return None
        s1, s2 = seq[-2], seq[-1]
        if not (_within(s1.ms, SIT_SEG_MS) and _within(s2.ms, SIT_SEG_MS)):
            return None
        if not (s1.steady and s2.steady and self._cur.steady):
            return None
        if s2.freq >= 1400.0:  # 1428.5 Hz: reorder / no circuit
            return self._hit(Verdict.FAILED, "sit_reorder", 0.8, True, s1.start)
        return self._hit(Verdict.EMPTY, "sit_intercept", 0.8, False, s1.start)

    def _hit(
        self, verdict: Verdict, tone: str, confidence: float, transient: bool, started: int
    ) -> ToneHit:
        return ToneHit(verdict, tone, confidence, transient, self.frame, started)
