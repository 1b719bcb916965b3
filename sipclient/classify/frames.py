"""Cutting a PCM stream into 20 ms frames and their spectra, chunk by chunk.

Every detector works on the same per-frame short-time spectrum, computed
here once: frame `i` covers samples [160 i, 160 i + 160) and its spectrum is
taken over the WINDOW samples that end with that frame (a little of the past,
never the future), Hann-windowed. Feeding the stream in pieces of any size
gives the same frames as feeding it whole: only complete frames are emitted
and the tail is carried over. All the numpy work is batched per chunk.

Cost: the classifier pushes every 100 ms of every call, so a push is a few
numpy calls with the same arithmetic as the plain version (bit-identical:
tests/classify/test_fingerprint_equivalence.py): the windows are a strided
view of the samples (no index array, no gather copy), |X|^2 is re^2 + im^2
on the complex spectrum viewed as float pairs, and the RMS is the sum of
squares over 160 samples / 160, which is what np.mean computes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from sipclient.classify.audio import FRAME, RATE

Samples = npt.NDArray[np.int16] | npt.NDArray[np.float64]
"""8 kHz PCM: int16 as decoded, or already float64 (decide.analyse_many converts once)."""

WINDOW = 256
"""Spectrum window (32 ms): 31.25 Hz bins, narrow enough to tell 450 from 620 Hz."""

BINS = WINDOW // 2 + 1
HZ_PER_BIN = RATE / WINDOW

_HANN = np.hanning(WINDOW + 2)[1:-1]


def band(lo_hz: float, hi_hz: float) -> slice:
    """The spectrum bins whose centres lie in [lo_hz, hi_hz]."""
    return slice(int(np.ceil(lo_hz / HZ_PER_BIN)), int(np.floor(hi_hz / HZ_PER_BIN)) + 1)


class FrameSource:
    """Turns arbitrary-length int16 chunks into (power spectra, frame RMS) per 20 ms."""

    def __init__(self) -> None:
        # the samples not yet in a complete frame, plus WINDOW - FRAME of history
        self._hist = np.zeros(WINDOW - FRAME, dtype=np.float64)
        self._tail = np.zeros(0, dtype=np.float64)
        self.frames = 0
        """How many complete frames have been emitted so far."""

    def push(
        self, pcm: npt.NDArray[np.int16]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Append samples; return (power[n, BINS], rms[n]) of the n new complete frames.

        Power is of the windowed int16-scale signal; rms is the plain RMS of
        each frame's own 160 samples (int16 scale).
        """
        x = np.asarray(pcm, dtype=np.float64).ravel()
        if len(self._tail):
            x = np.concatenate([self._tail, x])
        n = len(x) // FRAME
        if n == 0:
            self._tail = x.copy()  # never a view of the caller's array
            return np.zeros((0, BINS)), np.zeros(0)
        m = n * FRAME
        body = x[:m]
        self._tail = x[m:].copy()
        full = np.concatenate([self._hist, body])
        self._hist = full[m:]
        # frame i's window is full[160 i : 160 i + WINDOW]: a strided view
        win = np.ndarray((n, WINDOW), np.float64, full, 0, (FRAME * 8, 8))
        spec = np.fft.rfft(win * _HANN, axis=1).view(np.float64)
        sq = spec * spec  # re^2, im^2 interleaved
        power = sq[:, 0::2] + sq[:, 1::2]
        self.frames += n
        return power, _rms(body, n)

    def push_rms(self, pcm: Samples) -> npt.NDArray[np.float64]:
        """Like `push`, but only the RMS: for a caller that has the spectra already
        (decide.py takes them from the fingerprinter, which FFTs the same windows)."""
        x = np.asarray(pcm, dtype=np.float64).ravel()
        if len(self._tail):
            x = np.concatenate([self._tail, x])
        n = len(x) // FRAME
        m = n * FRAME
        self._tail = x[m:].copy()
        self.frames += n
        return _rms(x[:m], n)


_NONE = np.zeros(0)


def push_rms_many(
    sources: Sequence[FrameSource], pcms: Sequence[Samples]
) -> list[npt.NDArray[np.float64]]:
    """`s.push_rms(pcm)` for each pair, the RMS of all their frames taken at once
    (decide.analyse_many). The batch takes the sources with nothing carried over and
    whole frames to push (the daemon's: blocks are whole frames); the rest push alone.
    Each frame's sum is its own row's, so the RMS is `push_rms`'s, bit for bit."""
    whole = [
        i
        for i, (s, x) in enumerate(zip(sources, pcms, strict=True))
        if not len(s._tail) and len(x) % FRAME == 0
    ]
    out: list[npt.NDArray[np.float64]] = [_NONE] * len(sources)  # each set below
    if whole:
        joined = np.concatenate([pcms[i] for i in whole]).astype(np.float64, copy=False)
        rms = _rms(joined, len(joined) // FRAME)
        at = 0
        for i in whole:
            n = len(pcms[i]) // FRAME
            out[i] = rms[at : at + n]
            sources[i].frames += n
            at += n
    taken = set(whole)
    for i, (s, x) in enumerate(zip(sources, pcms, strict=True)):
        if i not in taken:
            out[i] = s.push_rms(x)
    return out


def _rms(body: npt.NDArray[np.float64], n: int) -> npt.NDArray[np.float64]:
    sq = body * body
    out: npt.NDArray[np.float64] = np.sqrt(np.add.reduce(sq.reshape(n, FRAME), axis=1) / FRAME)
    return out
