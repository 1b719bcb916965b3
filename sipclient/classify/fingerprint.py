"""Landmark fingerprints of audio: spectral peak pairs hashed with their time gap.

The same recording heard again, from any point in it, through G.711, line
noise and another level, keeps most of its strongest spectral peaks where
they were relative to each other; pairs of peaks `(f1, f2 - f1, t2 - t1)`
make hashes that identify a few tens of milliseconds of that recording, and
a match is many hashes agreeing on one time offset between the recording
and a template. Level does not matter (peaks are local maxima, thresholds
are relative), nor where the recording starts (the offset is whatever it is).

A recording never starts on the template's sample grid, so the peaks are
found on a fine grid (HOP = 5 ms, a 32 ms window) and the time gap in a
hash is counted in DT_QUANT hops; a query also looks up the neighbouring
gap when its own sits on a quantisation edge (`variants`).

Streaming: a peak at fine frame t is known once frame t + PEAK_DT has
arrived (30 ms of look-ahead, never more), and a pair is emitted when its
later peak is known; `ready` says in which 20 ms frame that happened.
Chunking does not change the output.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.ndimage import maximum_filter

from sipclient.classify.audio import FRAME, RATE

HOP = 40
"""Fine hop in samples (5 ms)."""
WIN = 256
"""Window in samples (32 ms): 31.25 Hz bins."""
PEAK_DT = 6
"""Fine frames either side a peak must dominate (30 ms: also the look-ahead)."""
PEAK_DF = 4
"""Bins either side a peak must dominate (4 x 31.25 Hz)."""
MIN_PEAK_DB = 6.0
"""A peak must stand this far above its frame's median level..."""
REL_PEAK_DB = 30.0
"""...and within this of the frame's strongest bin."""
MIN_PEAK_POWER = 4.0**2 * WIN * 0.375
"""Absolute floor (a frame RMS of about 4, windowed): digital silence has no peaks."""
PAIR_DT = 40
"""The latest partner of an anchor, in fine frames (200 ms)."""
PAIR_DF = 24
"""The farthest partner of an anchor, in bins."""
FAN_OUT = 8
"""Partners per anchor at most (nearest in time first)."""
DT_QUANT = 4
"""Time gaps are hashed in units of this many fine frames (20 ms)."""
VERSION = "5"
"""Changes whenever the hashes would: template indexes are rebuilt."""

LO_BIN = 8  # 250 Hz
HI_BIN = 112  # 3500 Hz
_HANN = np.hanning(WIN + 2)[1:-1]


@dataclass(frozen=True)
class Landmarks:
    """Hashes, their anchor time (fine frames) and when each became known."""

    hashes: npt.NDArray[np.int64]
    times: npt.NDArray[np.int64]
    ready: npt.NDArray[np.int64]
    """The 20 ms frame at whose end each hash became known (for streaming decisions)."""


def make_hash(f1: int, df: int, dtq: int) -> int:
    """The 17-bit hash of a peak pair (bin f1, bin gap df, quantised time gap)."""
    return (f1 << 10) | ((df + PAIR_DF) << 4) | dtq


def fine_to_frame(t: int) -> int:
    """The 20 ms frame that fine frame `t` (its window's end) falls in."""
    return ((t + 1) * HOP - 1) // FRAME


class Fingerprinter:
    """Streaming landmark extraction from int16 PCM at 8 kHz."""

    def __init__(self, *, variants: bool = False) -> None:
        self.variants = variants
        self._hist = np.zeros(WIN - HOP)
        self._tail = np.zeros(0)
        self._fine = 0  # fine frames computed so far
        self._logs = np.zeros((0, HI_BIN - LO_BIN))
        self._first = 0  # fine frame index of self._logs[0]
        self._next = 0  # next fine frame whose peaks are to be decided
        self._recent: deque[list[int]] = deque()  # [t, f, partners]
        self.peak_count = 0

    def push(self, pcm: npt.NDArray[np.int16]) -> Landmarks:
        """Add samples; return the hashes that became known."""
        x = np.concatenate([self._tail, np.asarray(pcm, dtype=np.float64).ravel()])
        n = len(x) // HOP
        if n == 0:
            self._tail = x
            return _empty()
        body = x[: n * HOP]
        self._tail = x[n * HOP :]
        full = np.concatenate([self._hist, body])
        self._hist = full[len(full) - (WIN - HOP) :]
        idx = np.arange(n)[:, None] * HOP + np.arange(WIN)[None, :]
        spec = np.fft.rfft(full[idx] * _HANN, axis=1)[:, LO_BIN:HI_BIN]
        power = spec.real**2 + spec.imag**2
        logs = 10.0 * np.log10(power + 1e-3)
        logs[power < MIN_PEAK_POWER] = -30.0
        self._fine += n
        return self._peaks(logs)

    def _peaks(self, logs: npt.NDArray[np.float64]) -> Landmarks:
        buf = np.concatenate([self._logs, logs])
        first = self._first
        end = first + len(buf)
        decide_to = end - PEAK_DT
        hashes: list[int] = []
        times: list[int] = []
        ready: list[int] = []
        if decide_to > self._next:
            # full-context frames only: padding ("nearest") never decides a peak
            mx = maximum_filter(buf, size=(2 * PEAK_DT + 1, 2 * PEAK_DF + 1), mode="nearest")
            lo = self._next - first
            hi = decide_to - first
            seg = buf[lo:hi]
            med = np.median(seg, axis=1, keepdims=True)
            top = np.max(seg, axis=1, keepdims=True)
            is_peak = (
                (seg == mx[lo:hi])
                & (seg > med + MIN_PEAK_DB)
                & (seg >= top - REL_PEAK_DB)
                & (seg > -20.0)
            )
            rows, cols = np.nonzero(is_peak)
            for r, f in zip(rows.tolist(), cols.tolist(), strict=True):
                t = self._next + r
                self._pair(t, f + LO_BIN, fine_to_frame(t + PEAK_DT), hashes, times, ready)
            self._next = decide_to
        keep = max(0, len(buf) - 2 * PEAK_DT)
        self._logs = buf[keep:]
        self._first = first + keep
        if not hashes:
            return _empty()
        return Landmarks(
            np.asarray(hashes, dtype=np.int64),
            np.asarray(times, dtype=np.int64),
            np.asarray(ready, dtype=np.int64),
        )

    def _pair(
        self, t: int, f2: int, known_at: int, hashes: list[int], times: list[int], ready: list[int]
    ) -> None:
        recent = self._recent
        while recent and recent[0][0] < t - PAIR_DT:
            recent.popleft()
        for anchor in recent:
            t1, f1, k = anchor
            if k >= FAN_OUT or t1 >= t or abs(f2 - f1) > PAIR_DF or f1 == f2:
                continue  # (a pair on one bin is a steady tone: ringback, not a recording)
            anchor[2] = k + 1
            dt = t - t1
            dtq, rem = divmod(dt, DT_QUANT)
            hashes.append(make_hash(f1, f2 - f1, dtq))
            times.append(t1)
            ready.append(known_at)
            if self.variants:
                # a gap on a quantisation edge may have been the next unit in the template
                if rem == 0 and dtq > 0:
                    hashes.append(make_hash(f1, f2 - f1, dtq - 1))
                    times.append(t1)
                    ready.append(known_at)
                elif rem == DT_QUANT - 1:
                    hashes.append(make_hash(f1, f2 - f1, dtq + 1))
                    times.append(t1)
                    ready.append(known_at)
        recent.append([t, f2, 0])
        self.peak_count += 1


def _empty() -> Landmarks:
    z = np.zeros(0, dtype=np.int64)
    return Landmarks(z, z, z)


def fingerprint_pcm(pcm: npt.NDArray[np.int16], *, variants: bool = False) -> Landmarks:
    """All landmarks of a whole recording (int16, 8 kHz mono)."""
    return Fingerprinter(variants=variants).push(pcm)


FINE_PER_SECOND = RATE // HOP
