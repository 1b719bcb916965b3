"""The fast feature extraction gives, bit for bit, what the plain definitions give.

fingerprint.py, frames.py and tones.py are written for CPU (few numpy calls
per 100 ms push, a lean pairing loop); the template index is keyed on
fingerprint.VERSION and is not rebuilt, so their output must not move by one
hash or one ulp. The plain definitions live here, written the obvious way on
a whole signal (scipy's maximum_filter, np.median, a per-peak pairing loop
over a deque, np.mean), and every streaming result is compared with them for
several chunkings, on synthetic signals made here: tones, music, a
speech-like babble with digital silence in it, noise at the peak floor, a
chirp, and espeak-ng speech.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from functools import cache
from itertools import pairwise

import numpy as np
import numpy.typing as npt
import pytest
from scipy.ndimage import maximum_filter

from sipclient.classify import fingerprint as fp
from sipclient.classify.frames import BINS, WINDOW, FrameSource, push_rms_many
from sipclient.classify.tones import classify_frames
from tests.classify.conftest import Pcm, cadence, degrade, music, sit, to_int16

I16 = npt.NDArray[np.int16]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
RATE = 8000


# -- the plain definitions ------------------------------------------------------------


def ref_landmarks(pcm: I16, *, variants: bool) -> tuple[I64, I64, I64, I64, int]:
    """Hashes, anchor times, ready frames and the partner's time of every pair, and
    the number of peaks, of a whole signal (fine frames as the streaming code sees them)."""
    x = pcm.astype(np.float64)
    n = len(x) // fp.HOP
    full = np.concatenate([np.zeros(fp.WIN - fp.HOP), x[: n * fp.HOP]])
    idx = np.arange(n)[:, None] * fp.HOP + np.arange(fp.WIN)[None, :]
    hann = np.hanning(fp.WIN + 2)[1:-1]
    spec = np.fft.rfft(full[idx] * hann, axis=1)[:, fp.LO_BIN : fp.HI_BIN]
    power = spec.real**2 + spec.imag**2
    logs = 10.0 * np.log10(power + 1e-3)
    logs[power < fp.MIN_PEAK_POWER] = -30.0
    decided = max(0, n - fp.PEAK_DT)  # the last PEAK_DT frames wait for their future
    out: list[tuple[int, int, int, int]] = []
    peaks = 0
    if decided:
        size = (2 * fp.PEAK_DT + 1, 2 * fp.PEAK_DF + 1)
        mx = maximum_filter(logs, size=size, mode="nearest")[:decided]
        seg = logs[:decided]
        med = np.median(seg, axis=1, keepdims=True)
        top = np.max(seg, axis=1, keepdims=True)
        is_peak = (
            (seg == mx)
            & (seg > med + fp.MIN_PEAK_DB)
            & (seg >= top - fp.REL_PEAK_DB)
            & (seg > -20.0)
        )
        recent: deque[list[int]] = deque()
        for t, col in zip(*np.nonzero(is_peak), strict=True):
            t, f2 = int(t), int(col) + fp.LO_BIN
            peaks += 1
            known = fp.fine_to_frame(t + fp.PEAK_DT)
            while recent and recent[0][0] < t - fp.PAIR_DT:
                recent.popleft()
            for anchor in recent:
                t1, f1, k = anchor
                if k >= fp.FAN_OUT or t1 >= t or abs(f2 - f1) > fp.PAIR_DF or f1 == f2:
                    continue
                anchor[2] = k + 1
                dtq, rem = divmod(t - t1, fp.DT_QUANT)
                out.append((fp.make_hash(f1, f2 - f1, dtq), t1, known, t))
                if variants and rem == 0 and dtq > 0:
                    out.append((fp.make_hash(f1, f2 - f1, dtq - 1), t1, known, t))
                elif variants and rem == fp.DT_QUANT - 1:
                    out.append((fp.make_hash(f1, f2 - f1, dtq + 1), t1, known, t))
            recent.append([t, f2, 0])
    cols = np.asarray(out, dtype=np.int64).reshape(-1, 4).T
    return cols[0], cols[1], cols[2], cols[3], peaks


def ref_frames(pcm: I16) -> tuple[F64, F64]:
    """Power spectra and RMS of every complete 20 ms frame of a whole signal."""
    x = pcm.astype(np.float64)
    n = len(x) // 160
    full = np.concatenate([np.zeros(WINDOW - 160), x[: n * 160]])
    idx = np.arange(n)[:, None] * 160 + np.arange(WINDOW)[None, :]
    spec = np.fft.rfft(full[idx] * np.hanning(WINDOW + 2)[1:-1], axis=1)
    power = spec.real**2 + spec.imag**2
    rms = np.sqrt(np.mean(x[: n * 160].reshape(n, 160) ** 2, axis=1))
    return power, rms


def ref_classify(power: F64, rms: F64) -> tuple[npt.NDArray[np.int8], F64]:
    """tones.classify_frames written out plainly."""
    from sipclient.classify import tones as T

    cls = np.zeros(len(rms), dtype=np.int8)
    total = power[:, T._TOTAL].sum(axis=1) + 1e-9
    low = power[:, T._LOW].sum(axis=1) / total
    hi = power[:, T._HIGH620].sum(axis=1) / total
    loud = rms >= T.MIN_RMS
    cls[loud & (low >= T.TONE_RATIO) & (hi < 0.1)] = T.LOW
    cls[loud & (low >= 0.2) & (hi >= 0.2) & (low + hi >= T.TONE_RATIO + 0.05)] = T.DUAL
    for k, sl in enumerate(T._SIT):
        cls[loud & (power[:, sl].sum(axis=1) / total >= T.TONE_RATIO)] = T.SIT1 + k
    start = T._TOTAL.start or 0
    return cls, (np.argmax(power[:, T._TOTAL], axis=1) + start) * T.HZ_PER_BIN


# -- signals ------------------------------------------------------------------------


def babble(seconds: float, seed: int = 3) -> Pcm:
    """Speech-like syllables (a noise burst, then a vowel with a wandering pitch and
    moving formants) with digital silence between phrases: many peaks and pairs,
    and blocks of exact zeros."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * RATE))
    i = int(0.3 * RATE)  # starts with 300 ms of exact zeros
    while i < len(out):
        c = int(rng.uniform(0.02, 0.08) * RATE)
        burst = np.diff(rng.standard_normal(c + 1)) * np.hanning(c) * rng.uniform(0.01, 0.1)
        n = int(rng.uniform(0.08, 0.25) * RATE)
        t = np.arange(n) / RATE
        wander = np.cumsum(rng.standard_normal(n)) / np.sqrt(n) * 0.05
        f0 = rng.uniform(90, 260) * (1 + 0.03 * np.sin(2 * np.pi * 6 * t) + wander)
        phase = 2 * np.pi * np.cumsum(f0) / RATE
        formants = rng.uniform([300, 900, 2200], [900, 2200, 3400])
        drift = np.linspace(1.0, rng.uniform(0.7, 1.3), n)
        syl = np.zeros(n)
        for h in range(1, 30):
            fh = f0 * h
            gain = sum(np.exp(-(((fh - f * drift) / 150.0) ** 2)) for f in formants)
            syl += gain * np.sin(h * phase) * (fh < 3900)
        syl *= np.hanning(n) * rng.uniform(0.02, 0.3) / max(1e-9, float(np.abs(syl).max()))
        syl = np.concatenate([burst, syl])
        out[i : i + len(syl)] = syl[: len(out) - i]
        i += len(syl) + (int(rng.uniform(0.3, 0.9) * RATE) if rng.random() < 0.15 else 0)
    return out


def chirp(seconds: float) -> Pcm:
    t = np.arange(int(seconds * RATE)) / RATE
    return 0.3 * np.sin(2 * np.pi * (200 * t + 1600 * t**2 / seconds))


def floor_noise(seconds: float) -> Pcm:
    """White noise whose bins sit around MIN_PEAK_POWER (some above, some under)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal(int(seconds * RATE)) * 4.0 / 32767
    x[: RATE // 2] = 0.0
    return x


SIGNALS: dict[str, Callable[[], Pcm]] = {
    "babble": lambda: babble(8.0),
    "babble_all": lambda: degrade(babble(6.0, seed=4), "all"),
    "music_g711_noise": lambda: degrade(music(6.0), "all"),
    "busy_noise": lambda: degrade(cadence((450.0,), [(0.35, 0.35)], 3.0), "noise"),
    "sit": lambda: degrade(sit(), "g711"),
    "chirp": lambda: chirp(3.0),
    "floor_noise": lambda: floor_noise(3.0),
}


@cache
def signal(name: str) -> I16:
    pcm = to_int16(SIGNALS[name]())
    pcm.flags.writeable = False  # shared between tests
    return pcm


@cache
def reference(name: str, variants: bool) -> tuple[I64, I64, I64, I64, int]:
    return ref_landmarks(signal(name), variants=variants)


def chunks(n: int, how: str) -> list[int]:
    """Cut points [0, ..., n] of one chunking."""
    if how == "whole":
        return [0, n]
    if how == "random":
        rng = np.random.default_rng(n)
        cuts = np.cumsum(rng.integers(1, 2000, size=n // 500 + 2))
        return [0, *[int(c) for c in cuts if c < n], n]
    size = int(how)
    return [*range(0, n, size), n]


CHUNKINGS = ("whole", "160", "800", "333", "8000", "random")


def stream_landmarks(pcm: I16, cuts: list[int], *, variants: bool) -> list[fp.Landmarks]:
    f = fp.Fingerprinter(variants=variants)
    return [f.push(pcm[a:b]) for a, b in pairwise(cuts)]


def check_landmarks(
    pcm: I16, how: str, variants: bool, ref: tuple[I64, I64, I64, I64, int] | None = None
) -> None:
    hashes, times, ready, partner_t, peaks = ref or ref_landmarks(pcm, variants=variants)
    cuts = chunks(len(pcm), how)
    f = fp.Fingerprinter(variants=variants)
    got: list[fp.Landmarks] = []
    emitted = 0
    assert np.all(np.diff(partner_t) >= 0)  # pairs come in their partner's order
    for a, b in pairwise(cuts):
        lm = f.push(pcm[a:b])
        got.append(lm)
        # streaming: a pair comes out in the push that completes its partner's look-ahead
        known = b // fp.HOP - fp.PEAK_DT
        emitted += len(lm.hashes)
        assert emitted == int(np.searchsorted(partner_t, known)), f"push ending at {b}"
        assert lm.hashes.dtype == lm.times.dtype == lm.ready.dtype == np.int64
    for name, ref in (("hashes", hashes), ("times", times), ("ready", ready)):
        mine = np.concatenate([getattr(g, name) for g in got])
        assert np.array_equal(mine, ref), f"{name} differ ({how}, variants={variants})"
    assert f.peak_count == peaks


@pytest.mark.parametrize("how", CHUNKINGS)
@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_landmarks_match_plain_definition(name: str, how: str) -> None:
    check_landmarks(signal(name), how, variants=True, ref=reference(name, True))


@pytest.mark.parametrize("name", ["babble", "music_g711_noise", "floor_noise"])
def test_landmarks_without_variants_and_sample_by_sample(name: str) -> None:
    pcm = signal(name)
    check_landmarks(pcm, "800", variants=False, ref=reference(name, False))
    short = pcm[: int(1.2 * RATE)]
    check_landmarks(short, "1", variants=True)  # the tail carried over every push


def test_speech_landmarks_match_plain_definition(speech_dir: dict[str, Pcm]) -> None:
    pcm = to_int16(degrade(speech_dir["kong"], "all"))
    for how in ("160", "random"):
        check_landmarks(pcm, how, variants=True)
    # and the whole-recording entry point the template library uses
    lm = fp.fingerprint_pcm(pcm)
    hashes, times, ready, _, _ = ref_landmarks(pcm, variants=False)
    assert np.array_equal(lm.hashes, hashes) and np.array_equal(lm.times, times)
    assert np.array_equal(lm.ready, ready) and len(hashes) > 100


def test_signals_exercise_the_pairing() -> None:
    """The comparisons above are only worth something if there are many pairs,
    fan-outs that fill up, both variants, and pushes with nothing in them."""
    pcm = signal("babble")
    hashes, times, _, partner_t, peaks = reference("babble", True)
    assert peaks > 200 and len(hashes) > 1000
    dtq = hashes & 15
    assert (dtq == 0).any() and (dtq >= 9).any()
    counts = np.unique(times * 1024 + (hashes >> 10), return_counts=True)[1]
    assert counts.max() >= fp.FAN_OUT  # some anchor reached its fan-out
    assert (partner_t - times).max() == fp.PAIR_DT
    lms = stream_landmarks(pcm, chunks(len(pcm), "800"), variants=True)
    assert any(len(lm.hashes) == 0 for lm in lms[:3])  # the leading digital silence


@pytest.mark.parametrize("how", CHUNKINGS)
@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_frames_and_tone_classes_match_plain_definition(name: str, how: str) -> None:
    pcm = signal(name)
    power, rms = ref_frames(pcm)
    cuts = chunks(len(pcm), how)
    src = FrameSource()
    got_p, got_r, got_c, got_f = [], [], [], []
    for a, b in pairwise(cuts):
        p, r = src.push(pcm[a:b])
        assert p.shape == (b // 160 - a // 160, BINS) and r.shape == (p.shape[0],)
        c, f = classify_frames(p, r)
        rc, rf = ref_classify(p, r)
        assert np.array_equal(c, rc) and np.array_equal(f, rf)
        got_p.append(p)
        got_r.append(r)
        got_c.append(c)
        got_f.append(f)
    assert np.array_equal(np.concatenate(got_p), power)
    assert np.array_equal(np.concatenate(got_r), rms)
    cls, freq = ref_classify(power, rms)
    assert np.array_equal(np.concatenate(got_c), cls)
    assert np.array_equal(np.concatenate(got_f), freq)
    assert src.frames == len(rms)


@pytest.mark.parametrize("how", CHUNKINGS)
@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_fingerprinter_frame_power_is_the_frames_power(name: str, how: str) -> None:
    """decide.py takes the 20 ms frames' spectra from the fingerprinter's FFT and only
    the RMS from FrameSource: both must be the plain definition's, chunk by chunk."""
    pcm = signal(name)
    power, rms = ref_frames(pcm)
    f = fp.Fingerprinter(variants=True)
    src = FrameSource()
    got_p, got_r = [], []
    for a, b in pairwise(chunks(len(pcm), how)):
        f.push(pcm[a:b])
        r = src.push_rms(pcm[a:b])
        assert f.frame_power.shape == (len(r), BINS)
        got_p.append(f.frame_power)
        got_r.append(r)
    assert np.array_equal(np.concatenate(got_p), power)
    assert np.array_equal(np.concatenate(got_r), rms)
    assert src.frames == len(rms)


def test_tone_signals_are_classified_as_tones() -> None:
    """The class comparison is not vacuous: tone frames and silent frames both occur."""
    power, rms = ref_frames(signal("busy_noise"))
    cls, _ = classify_frames(power, rms)
    assert (cls != 0).sum() > 50 and (cls == 0).sum() > 50
    power, rms = ref_frames(signal("sit"))
    cls, _ = classify_frames(power, rms)
    assert {3, 4, 5} <= set(cls.tolist())


def test_fingerprinters_pushed_together_each_give_their_own_output() -> None:
    """push_many (the daemon pushes every call that completed a block in one loop turn
    together, agent/analysis.py) gives each fingerprinter what its own pushes give, bit
    for bit, whichever others share the batch: loud, digitally silent, or with no fine
    frame completed."""
    names = sorted(SIGNALS)
    pcms = {name: signal(name) for name in names}
    hows = ("160", "800", "333", "random", "37")
    cuts = {name: chunks(len(pcms[name]), hows[i % len(hows)]) for i, name in enumerate(names)}
    fps = {name: fp.Fingerprinter(variants=True) for name in names}
    got: dict[str, list[fp.Landmarks]] = {name: [] for name in names}
    powers: dict[str, list[F64]] = {name: [] for name in names}
    at = dict.fromkeys(names, 0)
    rng = np.random.default_rng(7)
    sizes: list[int] = []
    mixed = 0  # batches with a silent or empty push beside a loud one
    while any(at[name] < len(cuts[name]) - 1 for name in names):
        batch = [n for n in names if at[n] < len(cuts[n]) - 1 and rng.random() < 0.7]
        if not batch:
            continue
        pieces = [pcms[n][cuts[n][at[n]] : cuts[n][at[n] + 1]] for n in batch]
        lms = fp.push_many([fps[n] for n in batch], pieces)
        loud = [len(p) >= fp.HOP and np.any(p) for p in pieces]
        mixed += any(loud) and not all(loud)
        sizes.append(len(batch))
        for n, lm in zip(batch, lms, strict=True):
            got[n].append(lm)
            powers[n].append(fps[n].frame_power)
            at[n] += 1
    assert max(sizes) == len(names) and mixed > 10
    for name in names:
        hashes, times, ready, _, peaks = reference(name, True)
        for field, ref in (("hashes", hashes), ("times", times), ("ready", ready)):
            mine = np.concatenate([getattr(g, field) for g in got[name]])
            assert np.array_equal(mine, ref), f"{name}: {field} differ"
        assert fps[name].peak_count == peaks
        assert np.array_equal(np.concatenate(powers[name]), ref_frames(pcms[name])[0]), name


def test_frame_sources_pushed_together_each_give_their_own_rms() -> None:
    """push_rms_many (decide.analyse_many) gives each source what its own push_rms
    gives, bit for bit: whole frames in one batch, a source with samples carried over
    or a piece of a frame pushed alone; int16 or already float64."""
    names = sorted(SIGNALS)
    pcms = {name: signal(name) for name in names}
    hows = ("160", "800", "333", "random")
    cuts = {name: chunks(len(pcms[name]), hows[i % len(hows)]) for i, name in enumerate(names)}
    srcs = {name: FrameSource() for name in names}
    got: dict[str, list[F64]] = {name: [] for name in names}
    at = dict.fromkeys(names, 0)
    rng = np.random.default_rng(11)
    batched = alone = 0
    while any(at[name] < len(cuts[name]) - 1 for name in names):
        batch = [n for n in names if at[n] < len(cuts[n]) - 1 and rng.random() < 0.7]
        pieces = [pcms[n][cuts[n][at[n]] : cuts[n][at[n] + 1]] for n in batch]
        if rng.random() < 0.5:
            pieces = [p.astype(np.float64) for p in pieces]
        whole = [
            not len(srcs[n]._tail) and len(p) % 160 == 0 for n, p in zip(batch, pieces, strict=True)
        ]
        batched += sum(whole)
        alone += len(whole) - sum(whole)
        for n, r in zip(batch, push_rms_many([srcs[n] for n in batch], pieces), strict=True):
            got[n].append(r)
            at[n] += 1
    assert batched > 100 and alone > 100
    for name in names:
        assert np.array_equal(np.concatenate(got[name]), ref_frames(pcms[name])[1]), name
        assert srcs[name].frames == len(ref_frames(pcms[name])[1])
