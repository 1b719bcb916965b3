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

Cost. This runs on every call for its whole early media, pushed 100 ms at a
time (decide.py), and the daemon's budget is about 2 ms of CPU per second of
audio for the whole classifier; a push is dominated by the fixed cost of each
numpy call, so each push makes a small, fixed number of them. Every step
gives bit for bit the output of the plain definition (the template index is
keyed on VERSION and is not rebuilt; tests/classify/
test_fingerprint_equivalence.py keeps the plain version and compares):

- spectra: the windows are a strided view of the samples (no index array,
  no gather); |X|^2 is re^2 + im^2 on the spectrum viewed as float pairs;
  the log is taken in place into a buffer that already has the padding the
  peak test needs. A block of exact zeros skips the FFT (all -30 dB).
- peak picking: a peak is the maximum of the 13 x 9 (time x bin) window
  around it, clipped at the spectrogram's edges. The maximum is taken by
  doubling (2, 4, 8, 13 rows, then 2, 4, 8, 9 bins: eight np.maximum
  calls) on a buffer padded with -inf, only for the rows being decided,
  instead of scipy's maximum_filter over the whole buffer; a maximum is one
  of its inputs, so `logs == max` is exact. The row median is np.partition
  plus the mean of the two middle values, which is what np.median computes.
  `logs > -20` is implied by `logs > median + 6` (every bin is >= -30 dB, so
  the median is too, and an unmasked bin is above 31 dB) and is only used to
  skip the rest on digital silence.
- pairing: a plain loop, which beats numpy here (a push has ~8 peaks and
  ~16 live anchors: a partners x anchors matrix costs ~40 numpy calls, more
  than the loop's ~130 iterations). It keeps only anchors still in reach
  with partners left, stops at the first anchor of the partner's own frame,
  and emits each pair as one int, `t1 << 20 | hash`, with
  make_hash(f1, df, dtq) = f1 * 1008 + (f2 + PAIR_DF) * 16 + dtq (disjoint
  bit fields), split with numpy at the end; a pair's `ready` is its partner's.

- several calls at once (`push_many`, since session 21): the daemon pushes
  the blocks of every call that completed one in a turn of its event loop
  together (agent/analysis.py); their windows go through one rfft and one
  log, and the peaks of all the buffers of one shape are picked at once
  (the same calls on a stack of buffers: `_local_max` works on the last two
  axes). The pairing stays per call.

Figures: `.venv/bin/python bench/classify_cpu.py` (120 corpus captures,
800-sample pushes, the shared 2-core box under load from other work): this
module 0.0038-0.0041 -> 0.0025-0.0027 CPU s per audio s; per push, best of
repeats on 8 s of speech, 357 -> 211 us (spectra ~65 us of it, of which the
FFT ~15 and log10 ~17; peaks ~50; pairing ~45).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sipclient.classify.audio import FRAME, RATE
from sipclient.classify.frames import BINS, WINDOW, Samples

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
_FINE_PER_FRAME = FRAME // HOP
_NO_FRAMES = np.zeros((0, BINS))
_NB = HI_BIN - LO_BIN
_FLOOR_DB = -30.0
"""The level of a bin under MIN_PEAK_POWER (and of 10 log10(1e-3), an exact zero)."""
_MID = (_NB // 2 - 1, _NB // 2)
"""The two middle ranks of a row: its median is their mean (an even number of bins)."""
_W = _NB + 2 * PEAK_DF
"""Columns of the log-spectrum buffer: the band and -inf padding for the bin maximum."""
_EDGE = tuple(
    1 if dt % DT_QUANT == DT_QUANT - 1 else -1 if dt % DT_QUANT == 0 and dt >= DT_QUANT else 0
    for dt in range(PAIR_DT + 1)
)
"""The variant of a time gap on a quantisation edge: dtq + 1, dtq - 1 or none (0)."""

# _MID needs an even number of bins; the packed pairs in _pair need DT_QUANT = 4,
# hashes under 2**20 and PAIR_DF < 32
assert _NB % 2 == 0 and DT_QUANT == 4 and PAIR_DF < 32 and HI_BIN < 1024
assert WIN == WINDOW and FRAME % HOP == 0  # frame_power: frames.py's windows, shared
assert 8 < 2 * PEAK_DT + 1 <= 16 and 2 * PEAK_DF + 1 == 9  # the doubling in _local_max


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


def _local_max(q: npt.NDArray[np.float64], n: int) -> npt.NDArray[np.float64]:
    """Maximum of the (2 PEAK_DT + 1) x (2 PEAK_DF + 1) window around rows
    PEAK_DT..PEAK_DT + n of q, bins PEAK_DF..-PEAK_DF (q's edges are -inf padding);
    over q's last two axes (one buffer, or a stack of them: `push_many`).

    Separable, by doubling: time over 2, 4, 8, then 13 rows as two
    overlapping 8s, then bins over 2, 4, 8, 9 columns. Padding with -inf is
    what maximum_filter's "nearest" mode amounts to for a maximum (the window
    clipped at the spectrogram's edges): the first rows of a stream have
    nothing before them.
    """
    m2 = np.maximum(q[..., :-1, :], q[..., 1:, :])
    m4 = np.maximum(m2[..., :-2, :], m2[..., 2:, :])
    m8 = np.maximum(m4[..., :-4, :], m4[..., 4:, :])
    # rows i..i+7 and i+5..i+12 overlap, which a maximum does not mind
    mt = np.maximum(m8[..., :n, :], m8[..., 2 * PEAK_DT - 7 : 2 * PEAK_DT - 7 + n, :])
    c2 = np.maximum(mt[..., :-1], mt[..., 1:])
    c4 = np.maximum(c2[..., :-2], c2[..., 2:])
    c8 = np.maximum(c4[..., :-4], c4[..., 4:])
    return np.maximum(c8[..., :-1], mt[..., 2 * PEAK_DF :])


def _peak_cells(bufs: npt.NDArray[np.float64], lo: int, hi: int) -> list[list[int] | None]:
    """The peaks of rows lo..hi of each buffer of `bufs` (buffers x rows x _W), as flat
    indices into those rows x the band's bins (time, then bin order); None for a
    buffer whose rows are all under the floor (digital silence)."""
    k = len(bufs)
    seg = bufs[:, lo:hi, PEAK_DF:-PEAK_DF]
    top = seg.max(axis=2, keepdims=True)
    sound = top.max(axis=(1, 2)) > -20.0  # else every bin is under the floor
    if not sound.any():
        return [None] * k
    part = np.partition(seg, _MID, axis=2)
    med = (part[..., _MID[0] : _MID[0] + 1] + part[..., _MID[1] : _MID[1] + 1]) / 2
    # (implies the definition's `seg > -20`: the median is >= -30 dB, and a
    # bin over the floor is >= 31.9 dB)
    ok = seg > med + MIN_PEAK_DB
    ok &= seg >= top - REL_PEAK_DB
    ok &= seg == _local_max(bufs[:, lo - PEAK_DT : hi + PEAK_DT], hi - lo)
    if k == 1:
        return [ok.ravel().nonzero()[0].tolist()]
    which, flat = ok.reshape(k, -1).nonzero()
    cells = flat.tolist()
    bounds = np.searchsorted(which, np.arange(k + 1)).tolist()
    loud = sound.tolist()
    return [cells[bounds[j] : bounds[j + 1]] if loud[j] else None for j in range(k)]


class Fingerprinter:
    """Streaming landmark extraction from int16 PCM at 8 kHz."""

    def __init__(self, *, variants: bool = False) -> None:
        self.variants = variants
        self._hist = np.zeros(WIN - HOP)
        self._tail = np.zeros(0)
        self._fine = 0  # fine frames computed so far
        # log spectra of the last 2 PEAK_DT fine frames (or fewer, and -inf rows
        # for the time before the stream), between PEAK_DF columns of -inf
        self._logs = np.full((PEAK_DT, _W), -np.inf)
        self._first = -PEAK_DT  # fine frame index of self._logs[0]
        self._next = 0  # next fine frame whose peaks are to be decided
        # anchors [t, f, partners so far, t << 20 | f * 1008], oldest first (see _pair)
        self._recent: list[list[int]] = []
        self.peak_count = 0
        self.frame_power: npt.NDArray[np.float64] = _NO_FRAMES
        """Power spectra of the 20 ms frames the last push completed (see `push`)."""

    def push(self, pcm: Samples) -> Landmarks:
        """Add samples; return the hashes that became known.

        Also sets `frame_power`: the full power spectra (frames.FrameSource's
        definition, bit for bit) of the 20 ms frames this push completed. Frame
        i's window is fine frame 4 i + 3's window (both 256 samples ending at
        the frame's end, the same Hann), so the classifier takes the frames'
        spectra from here instead of a second FFT of the same samples.
        """
        taken = self._take(pcm)
        if taken is None:
            return _empty()
        full, n, first_row = taken
        buf, logs = self._grow(n)
        if full.any():
            whole = np.fft.rfft(_windows(full, n) * _HANN, axis=1)
            self.frame_power = _power(whole[first_row::_FINE_PER_FRAME], 0, BINS)
            _log_spectra(whole, out=logs)
        else:  # digital silence: every bin is under the floor
            logs[...] = _FLOOR_DB
            self.frame_power = _silent_frames(n, first_row)
        return self._peaks(buf)

    def _take(self, pcm: Samples) -> tuple[npt.NDArray[np.float64], int, int] | None:
        """Take the samples: (the n windows' samples, n, the first row that ends a
        20 ms frame), or None (and no frames) when no fine frame was completed."""
        x = np.asarray(pcm, dtype=np.float64).ravel()
        if len(self._tail):
            x = np.concatenate([self._tail, x])
        n = len(x) // HOP
        if n == 0:
            self._tail = x.copy()  # never a view of the caller's array
            self.frame_power = _NO_FRAMES
            return None
        m = n * HOP
        self._tail = x[m:].copy()
        full = np.concatenate([self._hist, x[:m]])
        self._hist = full[m:]
        # rows of this push that end a 20 ms frame: global fine frames 4 i + 3
        first_row = (_FINE_PER_FRAME - 1 - self._fine) % _FINE_PER_FRAME
        self._fine += n
        return full, n, first_row

    def _grow(self, n: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """The log-spectrum buffer with n new rows, and the view of their band."""
        old = self._logs
        buf = np.full((len(old) + n, _W), -np.inf)
        buf[: len(old)] = old
        return buf, buf[len(old) :, PEAK_DF:-PEAK_DF]

    def _peaks(self, buf: npt.NDArray[np.float64]) -> Landmarks:
        span = self._span(len(buf))
        cells = None if span is None else _peak_cells(buf[None], *span)[0]
        return self._advance(buf, cells)

    def _span(self, rows: int) -> tuple[int, int] | None:
        """The rows of a buffer of `rows` rows whose peaks can be decided now (their
        PEAK_DT frames of future are in), or None."""
        decide_to = self._first + rows - PEAK_DT
        if decide_to <= self._next:
            return None
        return self._next - self._first, decide_to - self._first

    def _advance(self, buf: npt.NDArray[np.float64], cells: list[int] | None) -> Landmarks:
        """Pair the peaks found in the decided rows (`_peak_cells`) and keep what the
        next push needs: the last 2 PEAK_DT rows."""
        first = self._first
        decide_to = first + len(buf) - PEAK_DT
        out = None
        if decide_to > self._next:
            if cells:
                out = self._pair(cells)
            self._next = decide_to
        keep = max(0, len(buf) - 2 * PEAK_DT)
        self._logs = buf[keep:]
        self._first = first + keep
        return _empty() if out is None else out

    def _pair(self, cells: list[int]) -> Landmarks | None:
        """Pair the new peaks (flat indices into the decided rows x bins, so in time,
        then bin order) with the anchors before them, as the one-peak-at-a-time
        definition does: each anchor takes its first FAN_OUT partners in that order.

        The loop only finds the pairs: each is one int, `t1 << 20 | hash`, with
        make_hash(f1, df, dtq) = f1 * 1008 + (f2 + PAIR_DF) * 16 + dtq (the three
        bit fields do not overlap), split with numpy at the end.
        """
        base = self._next
        self.peak_count += len(cells)
        # anchors out of reach of the first new peak, or with all their partners, are done
        lim = base + cells[0] // _NB - PAIR_DT
        recent = [a for a in self._recent if a[0] >= lim and a[2] < FAN_OUT]
        variants = self.variants
        fan, near, edge = FAN_OUT, PAIR_DF, _EDGE  # locals: this loop is the hot one
        out: list[int] = []
        emit = out.append
        counts: list[int] = []  # pairs of each peak: they share one `ready`
        known: list[int] = []
        start = done = 0
        for cell in cells:
            row, col = divmod(cell, _NB)
            t = base + row
            f2 = col + LO_BIN
            lim = t - PAIR_DT
            while start < len(recent) and recent[start][0] < lim:
                start += 1
            partner = (f2 + PAIR_DF) << 4
            for anchor in recent[start:]:
                t1, f1, k, code = anchor
                if t1 >= t:
                    break  # anchors are in time order: the rest are this frame's peaks
                df = f2 - f1
                if k >= fan or df > near or df < -near or df == 0:
                    continue  # (a pair on one bin is a steady tone: ringback, not a recording)
                anchor[2] = k + 1
                dt = t - t1
                h = code + partner + (dt >> 2)
                emit(h)
                if variants and edge[dt]:
                    # a gap on a quantisation edge may have been the next unit in the template;
                    # dtq is the hash's low 4 bits and stays in 0..11: +-1 changes only dtq
                    emit(h + edge[dt])
            recent.append([t, f2, 0, (t << 20) + f2 * 1008])
            counts.append(len(out) - done)
            done = len(out)
            known.append(fine_to_frame(t + PEAK_DT))
        self._recent = recent
        if not out:
            return None
        packed = np.array(out, dtype=np.int64)
        return Landmarks(
            packed & 0xFFFFF,
            packed >> 20,
            np.array(known, dtype=np.int64).repeat(counts),
        )


def _empty() -> Landmarks:
    z = np.zeros(0, dtype=np.int64)
    return Landmarks(z, z, z)


def _windows(full: npt.NDArray[np.float64], n: int) -> npt.NDArray[np.float64]:
    """The n windows of `full` as a strided view (no gather copy)."""
    return np.ndarray((n, WIN), np.float64, full, 0, (HOP * 8, 8))


def _power(spectra: npt.NDArray[np.complex128], lo: int, hi: int) -> npt.NDArray[np.float64]:
    """|X|^2 of bins lo..hi, as re^2 + im^2 on the spectra viewed as float pairs."""
    sq = spectra[:, lo:hi].view(np.float64)
    sq = sq * sq
    out: npt.NDArray[np.float64] = sq[:, 0::2] + sq[:, 1::2]
    return out


def _log_spectra(whole: npt.NDArray[np.complex128], *, out: npt.NDArray[np.float64]) -> None:
    """The peak picking's levels of the band: 10 log10(power + 1e-3), _FLOOR_DB under
    MIN_PEAK_POWER; written into `out` (in place: no temporary of that size)."""
    power = _power(whole, LO_BIN, HI_BIN)
    floor = power < MIN_PEAK_POWER
    np.add(power, 1e-3, out=power)
    np.log10(power, out=power)
    np.multiply(power, 10.0, out=out)
    out[floor] = _FLOOR_DB


def _silent_frames(n: int, first_row: int) -> npt.NDArray[np.float64]:
    return np.zeros((len(range(first_row, n, _FINE_PER_FRAME)), BINS))


def push_many(fingerprinters: Sequence[Fingerprinter], pcms: Sequence[Samples]) -> list[Landmarks]:
    """`f.push(pcm)` for each pair, with one FFT, one log and few peak pickings for all.

    What each push costs is mostly the fixed cost of its numpy calls (module
    docstring), so the daemon pushes every call that completed a block in one
    turn of its event loop together (agent/analysis.py): the windows of all
    go through one rfft, the band's levels and the 20 ms frames' spectra are
    taken once for all rows, and the peaks are picked once for all the
    buffers of one shape (each fingerprinter keeps the last rows of its own).
    Each row's arithmetic is the single push's, so the output is the same,
    bit for bit (tests/classify/test_fingerprint_equivalence.py). The pairing
    stays per fingerprinter: a Python loop over its own anchors.
    """
    if len(fingerprinters) == 1:
        return [fingerprinters[0].push(pcms[0])]
    # fingerprinter -> (its samples, its fine frames, its first row ending a 20 ms frame)
    taken: dict[int, tuple[npt.NDArray[np.float64], int, int]] = {}
    for i, (f, pcm) in enumerate(zip(fingerprinters, pcms, strict=True)):
        t = f._take(pcm)
        if t is not None:
            taken[i] = t
    logs: npt.NDArray[np.float64] = _NO_FRAMES
    power: npt.NDArray[np.float64] = _NO_FRAMES
    at: dict[int, tuple[int, int]] = {}  # fingerprinter -> its first row, its first frame
    windows: list[npt.NDArray[np.float64]] = []
    ends: list[npt.NDArray[np.intp]] = []
    row = frame = 0
    for i, (full, n, first_row) in taken.items():
        if full.any():  # else digital silence: every bin is under the floor
            windows.append(_windows(full, n))
            ends.append(np.arange(row + first_row, row + n, _FINE_PER_FRAME))
            at[i] = (row, frame)
            row += n
            frame += len(ends[-1])
    if windows:
        whole = np.fft.rfft(np.concatenate(windows) * _HANN, axis=1)
        power = _power(whole[np.concatenate(ends)], 0, BINS)
        logs = np.empty((row, _NB))
        _log_spectra(whole, out=logs)
    # the peak picking too, at once for the buffers of one shape (rows, decided rows):
    # in the daemon most pushes are 100 ms. (Padding the shorter buffers of a batch to
    # its longest was measured: at 200 lines the peak picking went from 9 to 19 % of
    # the daemon's profile, the stacks' arithmetic growing with them.)
    groups: dict[tuple[int, tuple[int, int] | None], list[int]] = {}
    for i, (_, n, _) in taken.items():
        rows = len(fingerprinters[i]._logs) + n
        groups.setdefault((rows, fingerprinters[i]._span(rows)), []).append(i)
    out: list[Landmarks] = [_empty()] * len(fingerprinters)
    for (rows, span), members in groups.items():
        bufs = np.full((len(members), rows, _W), -np.inf)
        for j, i in enumerate(members):
            f, (_, n, first_row) = fingerprinters[i], taken[i]
            old = f._logs
            bufs[j, : len(old)] = old
            mine = bufs[j, len(old) :, PEAK_DF:-PEAK_DF]
            if i in at:
                row, frame = at[i]
                mine[...] = logs[row : row + n]
                k = len(range(first_row, n, _FINE_PER_FRAME))
                f.frame_power = power[frame : frame + k]
            else:
                mine[...] = _FLOOR_DB
                f.frame_power = _silent_frames(n, first_row)
        cells = [None] * len(members) if span is None else _peak_cells(bufs, *span)
        for j, i in enumerate(members):
            f = fingerprinters[i]
            out[i] = f._advance(bufs[j], cells[j])
            # the rows it keeps, its own: a view would keep the whole stack alive until
            # every member's next push (+10 MB of RSS at 200 lines)
            f._logs = f._logs.copy()
    return out


def fingerprint_pcm(pcm: npt.NDArray[np.int16], *, variants: bool = False) -> Landmarks:
    """All landmarks of a whole recording (int16, 8 kHz mono)."""
    return Fingerprinter(variants=variants).push(pcm)


FINE_PER_SECOND = RATE // HOP
