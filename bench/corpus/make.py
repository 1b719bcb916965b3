"""Generate the classifier's labelled corpus (docs/corpus.md says what and why).

    python bench/corpus/make.py --out bench/corpus/out [--seed N] [--per-class K]

Writes, 8 kHz mono 16-bit:

- OUT/templates/*.wav: the carriers' "recordings": one clean announcement per
  (category, phrasing, voice), rendered with espeak-ng (Mandarin, often
  followed by the English version) and band-limited with sox;
- OUT/test/*.wav: "captures": what our recorder would hear on a call:
  ringback, then one of those recordings looped from any point, or a tone
  of either plan, colour ring-back (music, spoken ads), or silence, each
  through level, noise, G.711, packet loss and jitter. No test file is a
  template file; every announcement capture comes from a template's source
  recording (fingerprints recognise recordings; they are not ASR);
- OUT/labels.csv: one row per file (columns in `COLUMNS`);
- OUT/g711/*.ulaw: headerless µ-law (160 bytes a packet) copies of a few
  captures, for sipp's rtp_stream, listed in OUT/g711/index.csv.

Deterministic for a seed: every random draw comes from a generator seeded by
(seed, file name). Work is spread over a process pool (`--workers`, 2).
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import itertools
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
import degrade  # a sibling module of this script (bench/ is not a package)
from degrade import FRAME, RATE, Pcm

COLUMNS = (
    "file",  # path relative to OUT, e.g. test/ann_kong_0003.wav
    "split",  # templates | test
    "verdict",  # the expected Verdict value
    "label",  # 空号 ..., a tone (cn_busy ...), crbt_music / crbt_ad, silence_404_c1 ...
    "kind",  # announcement | tone | crbt | silence
    "evidence_start_ms",  # where the announcement / tone / music starts in the file
    "distinct_ms",  # announcements: where it first differs from every other verdict's recordings
    "duration_ms",
    "transient",  # 1 when the verdict is worth dialling again (网络忙, congestion)
    "source",  # templates: the recording id; test: the recording it was captured from
    "degradations",  # key=value;... (empty for templates)
    "signalling",  # what SIP said while the audio played: ringing=1;early_media=1
    "final",  # the final response the call ended with: sip_code=487;cancelled_by_us=1
)

TARGET_DBFS = -18.0  # active-speech RMS of every clean source before the level change


# --- what carriers say ----------------------------------------------------------------


@dataclass(frozen=True)
class Category:
    """One announcement class: its label, the verdict it means, what carriers say."""

    key: str  # ASCII, for file names
    label: str
    verdict: str
    zh: tuple[str, ...]
    en: str
    transient: bool = False


CATEGORIES: tuple[Category, ...] = (
    Category(
        "kong",
        "空号",
        "empty",
        ("您拨打的号码是空号，请查证后再拨。", "对不起，您所拨打的号码不存在，请核对后再拨。"),
        "Sorry, the number you dialed does not exist, please check it and dial later.",
    ),
    Category(
        "guanji",
        "关机",
        "powered_off",
        ("对不起，您拨打的电话已关机。", "您好，您拨打的用户已关机，请稍后再拨。"),
        "Sorry, the subscriber you dialed is powered off.",
    ),
    Category(
        "tingji",
        "停机",
        "suspended",
        ("对不起，您拨打的号码已停机。", "您拨打的电话已停机，请核对后再拨。"),
        "Sorry, the number you dialed has been suspended.",
    ),
    Category(
        "qianfei",
        "欠费",
        "suspended",
        ("您拨打的用户已欠费停机。", "对不起，您拨打的电话因欠费已暂停服务。"),
        "Sorry, the number you dialed is out of service due to arrears.",
    ),
    Category(
        "wufa",
        "暂时无法接通",
        "unreachable",
        ("您拨打的电话暂时无法接通，请稍后再拨。", "对不起，您拨打的用户暂时无法接通。"),
        "Sorry, the number you dialed cannot be connected for the moment, please redial later.",
    ),
    Category(
        "fuwuqu",
        "不在服务区",
        "unreachable",
        ("对不起，您拨打的用户不在服务区，请稍后再拨。", "您拨打的电话不在服务区。"),
        "Sorry, the subscriber you dialed is out of the service area.",
    ),
    Category(
        "tonghua",
        "正在通话中",
        "busy",
        ("您拨打的电话正在通话中，请稍后再拨。", "对不起，您拨打的用户正忙，请稍后再拨。"),
        "Sorry, the subscriber you dialed is busy now, please redial later.",
    ),
    Category(
        "shouxian",
        "呼叫受限",
        "restricted",
        ("对不起，您拨打的号码呼叫受限。", "您的呼叫受到限制，请咨询当地营业厅。"),
        "Sorry, the call to this number is restricted.",
    ),
    Category(
        "gaihao",
        "改号",
        "changed",
        ("您拨打的号码已改号，请查询新号码后再拨。", "对不起，该用户已改号，新号码请查询一一四。"),
        "The number you dialed has been changed, please check the new number.",
    ),
    Category(
        "wangluo",
        "网络忙",
        "failed",
        ("对不起，网络忙，请稍后再拨。", "现在网络繁忙，请您稍后再拨。"),
        "Sorry, the network is busy, please try again later.",
        transient=True,
    ),
    Category(
        "bohao",
        "拨号方式不正确",
        "empty",
        ("您拨打的号码拨号方式不正确，请查证后再拨。", "对不起，您的拨号方式不正确，请加拨区号。"),
        "The number you dialed is not in a valid format, please check and dial again.",
    ),
    Category(
        "laidian",
        "来电提醒",
        "powered_off",
        (
            "您拨打的电话已关机，来电提醒服务将以短信通知机主您曾来电。",
            "您好，您拨打的用户暂时无法接听，来电提醒已为您通知对方。",
        ),
        "The subscriber is not available, we will notify the subscriber of your call by SMS.",
    ),
    Category(
        "zhuanyi",
        "呼叫转移失败",
        "unreachable",
        ("对不起，您拨打的电话呼叫转移失败。", "呼叫转移失败，请稍后再拨。"),
        "Sorry, the call forwarding failed, please redial later.",
    ),
)


@dataclass(frozen=True)
class Voice:
    """An espeak-ng rendering: Mandarin voice and its English counterpart."""

    key: str
    zh: str
    en: str
    speed: int  # words per minute (espeak -s)
    pitch: int  # 0..99 (espeak -p)


VOICES: tuple[Voice, ...] = (
    Voice("m1", "cmn", "en-us", 215, 45),
    Voice("f2", "cmn+f2", "en-us+f2", 235, 62),
    Voice("m3", "cmn+m3", "en-gb+m3", 200, 35),
)

ADS_ZH: tuple[str, ...] = (
    "欢迎致电，中国移动彩铃为您服务，电话正在接通，请稍候。",
    "中国移动彩铃，听见好声音，让等待更精彩。",
    "您好，欢迎致电本公司，我们致力于为您提供优质的产品和服务。",
    "感谢您的来电，祝您生活愉快，工作顺利。",
)

ADS_VOICES: tuple[tuple[str, int, int], ...] = (
    ("cmn+f4", 190, 65),
    ("cmn+m1", 180, 50),
)

# --- signalling each kind of capture comes with (bench/classify.py replays it) -------

SIG_RING = "ringing=1;early_media=1"  # 180 then ringback/crbt as early media
SIG_EARLY = "early_media=1"  # 183 with SDP: the network plays something
FINAL_CANCEL_RING = "sip_code=487;cancelled_by_us=1;ringing=1"
FINAL_CANCEL = "sip_code=487;cancelled_by_us=1"

# silence then a final response: the verdict is the signalling table's
# (sipclient/classify/signalling.py): (name, final, verdict, transient)
SILENCES: tuple[tuple[str, str, str, bool], ...] = (
    ("404_c1", "sip_code=404;q850_cause=1", "empty", False),
    ("486_c17", "sip_code=486;q850_cause=17", "busy", False),
    ("480_c20", "sip_code=480;q850_cause=20", "powered_off", False),
    ("503_c34", "sip_code=503;q850_cause=34", "failed", True),
    ("410_c22", "sip_code=410;q850_cause=22", "changed", False),
    ("480", "sip_code=480", "unreachable", False),
    ("603", "sip_code=603", "rejected", False),
    ("403", "sip_code=403", "restricted", False),
)


# --- tones of both plans ----------------------------------------------------------------


@dataclass(frozen=True)
class Tone:
    """A cadenced tone: a cycle of (frequencies Hz, on seconds, off seconds) segments."""

    name: str
    verdict: str
    cycle: tuple[tuple[tuple[float, ...], float, float], ...]
    seconds: tuple[float, float]  # capture length range after the tone starts
    transient: bool = False


_CN = (450.0,)
_NA_RB = (440.0, 480.0)
_NA_BUSY = (480.0, 620.0)

TONES: tuple[Tone, ...] = (
    Tone("cn_ringback", "ringing", ((_CN, 1.0, 4.0),), (11.0, 15.0)),
    Tone("cn_busy", "busy", ((_CN, 0.35, 0.35),), (4.0, 6.0)),
    Tone("cn_congestion", "failed", ((_CN, 0.7, 0.7),), (5.0, 7.0), transient=True),
    Tone(
        "cn_empty",
        "empty",
        ((_CN, 0.1, 0.1), (_CN, 0.1, 0.1), (_CN, 0.1, 0.1), (_CN, 0.4, 0.4)),
        (5.0, 7.0),
    ),
    Tone("na_ringback", "ringing", ((_NA_RB, 2.0, 4.0),), (13.0, 17.0)),
    Tone("na_busy", "busy", ((_NA_BUSY, 0.5, 0.5),), (4.0, 6.0)),
    Tone("na_reorder", "failed", ((_NA_BUSY, 0.25, 0.25),), (4.0, 6.0), transient=True),
    # SIT (low-low-low: intercept / vacant code) then the pause before its announcement
    Tone(
        "sit",
        "empty",
        (((913.8,), 0.274, 0.0), ((1370.6,), 0.274, 0.0), ((1776.7,), 0.38, 1.2)),
        (5.0, 7.0),
    ),
)


def tone_pcm(
    tone: Tone, seconds: float, rng: np.random.Generator, phase_s: float = 0.0
) -> tuple[Pcm, int]:
    """`seconds` of `tone` starting `phase_s` into its cycle; also where the first 'on' starts.

    Frequencies drift up to ±0.5 % and timings ±3 % per capture (exchanges are
    not exact); a 5 ms ramp at each edge, as tone generators do.
    """
    drift = 1.0 + rng.uniform(-0.005, 0.005)
    stretch = 1.0 + rng.uniform(-0.03, 0.03)
    segs = [(f, on * stretch, off * stretch) for f, on, off in tone.cycle]
    period = sum(on + off for _, on, off in segs)
    n = int(seconds * RATE)
    t_abs = phase_s % period
    out = np.zeros(n)
    first_on: int | None = None
    i = 0
    # walk the cycle from the phase, writing 'on' parts
    pos = 0.0
    seg_i = 0
    # find the segment the phase falls in
    while True:
        f, on, off = segs[seg_i]
        if t_abs < pos + on + off:
            break
        pos += on + off
        seg_i = (seg_i + 1) % len(segs)
    into = t_abs - pos
    while i < n:
        f, on, off = segs[seg_i]
        if into < on:
            length = round((on - into) * RATE)
            j = min(n, i + length)
            if j > i:
                tt = (np.arange(j - i) + into * RATE) / RATE
                s = sum(np.sin(2 * np.pi * fr * drift * tt) for fr in f) / len(f)
                env = np.ones(j - i)
                ramp = int(0.005 * RATE)
                if into == 0.0:
                    env[: min(ramp, len(env))] = np.linspace(0, 1, min(ramp, len(env)))
                if j - i == length:
                    env[-min(ramp, len(env)) :] = np.linspace(1, 0, min(ramp, len(env)))
                out[i:j] = s * env
                if first_on is None:
                    first_on = i
            i = j
            into = on
        else:
            i += round((on + off - into) * RATE)
            seg_i = (seg_i + 1) % len(segs)
            into = 0.0
    return out, (first_on if first_on is not None else 0)


# --- colour ring-back stand-ins -------------------------------------------------------

_PENTATONIC = (0, 2, 4, 7, 9)


def _note(freq: float, seconds: float, rng: np.random.Generator, bright: float) -> Pcm:
    """One instrument note: a few harmonics, attack/decay envelope, light vibrato."""
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    vib = 1 + 0.004 * np.sin(2 * np.pi * rng.uniform(4, 6) * t)
    x = np.zeros(n)
    for h in range(1, 6):
        if freq * h > 3600:
            break
        x += (bright**h) * np.sin(2 * np.pi * freq * h * vib * t + rng.uniform(0, 6.28))
    att = min(n, int(0.02 * RATE))
    env = np.exp(-t * rng.uniform(1.5, 4.0))
    env[:att] *= np.linspace(0, 1, att)
    return x * env


def music_pcm(seconds: float, rng: np.random.Generator) -> Pcm:
    """A synthesized song: chord pads under a pentatonic melody, plus a soft beat."""
    n = int(seconds * RATE)
    out = np.zeros(n + RATE)
    root = 110.0 * 2 ** (rng.integers(0, 12) / 12)
    beat = rng.uniform(0.25, 0.5)
    # chords: I-V-vi-IV style progression, one chord every 4 beats
    prog = [(0, 4, 7), (7, 11, 14), (9, 12, 16), (5, 9, 12)]
    t0 = 0.0
    k = 0
    while t0 < seconds:
        for semi in prog[k % 4]:
            f = root * 2 ** (semi / 12)
            x = _note(f, beat * 4, rng, 0.5) * 0.25
            i = int(t0 * RATE)
            out[i : i + len(x)] += x[: len(out) - i]
        t0 += beat * 4
        k += 1
    # melody, an octave or two above the root
    t0 = 0.0
    while t0 < seconds:
        deg = _PENTATONIC[rng.integers(0, 5)] + 12 * int(rng.integers(1, 3))
        dur = beat * float(rng.choice([0.5, 1.0, 1.0, 2.0]))
        x = _note(root * 2 ** (deg / 12), dur * 1.3, rng, 0.35)
        i = int(t0 * RATE)
        out[i : i + len(x)] += x[: len(out) - i]
        t0 += dur
    # beat: short noise bursts (hi-hat-like)
    t0 = 0.0
    while t0 < seconds:
        i = int(t0 * RATE)
        m = min(int(0.04 * RATE), len(out) - i)
        out[i : i + m] += 0.15 * rng.standard_normal(m) * np.exp(-np.arange(m) / (0.008 * RATE))
        t0 += beat
    return out[:n]


# --- speech -----------------------------------------------------------------------------


def speak(text: str, voice: str, speed: int, pitch: int, workdir: Path) -> Pcm:
    """espeak-ng -> sox (telephone band 300-3400 Hz, 8 kHz) -> float PCM, edges trimmed."""
    tag = hashlib.sha1(f"{voice}{speed}{pitch}{text}".encode()).hexdigest()[:12]
    raw = workdir / f"{tag}.raw.wav"
    out = workdir / f"{tag}.8k.wav"
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(raw), text],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            "sox",
            "-D",  # no dither: dither is random, and the corpus must repeat exactly
            str(raw),
            "-b",
            "16",
            "-c",
            "1",
            str(out),
            "highpass",
            "300",
            "lowpass",
            "3400",
            "rate",
            "-h",
            str(RATE),
        ],
        check=True,
        capture_output=True,
    )
    x, rate = sf.read(str(out), dtype="float64")
    assert rate == RATE
    raw.unlink()
    out.unlink()
    return trim(x)


def trim(x: Pcm, floor_db: float = -45.0, keep_s: float = 0.05) -> Pcm:
    """Cut leading and trailing silence (frames below `floor_db` of the peak frame)."""
    n = len(x) // FRAME
    if n == 0:
        return x
    p = np.mean(x[: n * FRAME].reshape(n, FRAME) ** 2, axis=1)
    live = np.nonzero(p > p.max() * 10 ** (floor_db / 10))[0]
    if len(live) == 0:
        return x[:0]
    keep = int(keep_s * RATE)
    a = max(0, live[0] * FRAME - keep)
    b = min(len(x), (live[-1] + 1) * FRAME + keep)
    return x[a:b]


def normalise(x: Pcm, dbfs: float = TARGET_DBFS) -> Pcm:
    """Scale so the active-frame RMS is `dbfs` (all sources start equally loud)."""
    p = degrade.active_power(x)
    if p <= 0.0:
        return x
    return x * float(10 ** (dbfs / 20) / np.sqrt(p))


# --- recordings (templates) ---------------------------------------------------------


@dataclass(frozen=True)
class Recording:
    """One carrier recording: a category's phrasing in a voice, maybe with English after."""

    rid: str  # file stem, e.g. kong_p1_f2
    cat: Category
    phrasing: int
    voice: Voice
    english: bool


def recordings() -> list[Recording]:
    """Every (category, phrasing, voice): the template set, in a fixed order."""
    out = []
    for cat in CATEGORIES:
        for p in range(len(cat.zh)):
            for vi, v in enumerate(VOICES):
                # two of three renderings carry the English version after the Chinese
                english = (p + vi) % 3 != 2
                out.append(Recording(f"{cat.key}_p{p}_{v.key}", cat, p, v, english))
    return out


@functools.cache
def _shipped_ids() -> frozenset[str]:
    ids = []
    groups: dict[tuple[str, int], list[Recording]] = {}
    for r in recordings():
        groups.setdefault((r.cat.key, r.phrasing), []).append(r)
    for i, members in enumerate(groups.values()):
        want = VOICES[i % len(VOICES)].key
        ids += [m.rid for m in members if m.voice.key == want]
    return frozenset(ids)


def shipped(rid: str) -> bool:
    """Whether recording `rid` goes into the shipped default library (build_library.py).

    One recording per (category, phrasing); the voice rotates from one
    (category, phrasing) to the next so every voice is represented.
    """
    return rid in _shipped_ids()


def render_recording(rec: Recording, workdir: Path) -> Pcm:
    """The clean recording: Mandarin, a pause, then (often) the English version."""
    zh = speak(rec.cat.zh[rec.phrasing], rec.voice.zh, rec.voice.speed, rec.voice.pitch, workdir)
    parts = [normalise(zh)]
    if rec.english:
        en = speak(rec.cat.en, rec.voice.en, rec.voice.speed - 40, rec.voice.pitch, workdir)
        parts += [np.zeros(int(0.4 * RATE)), normalise(en)]
    return np.concatenate(parts)


# --- where an announcement becomes recognisable ------------------------------------------

SHARED_RUN_FRAMES = 10  # 200 ms alike with another verdict's recording = a shared phrase
ALIKE = 0.2  # RMS difference of log10 band powers under which two frames sound the same


def _band_features(x: Pcm) -> tuple[Pcm, npt.NDArray[np.bool_]]:
    """Per 20 ms frame: 20 log band powers (200-3400 Hz), and whether the frame is sound."""
    n = len(x) // FRAME
    fr = x[: n * FRAME].reshape(n, FRAME) * np.hanning(FRAME)
    p = np.abs(np.fft.rfft(fr, n=256, axis=1)) ** 2
    edges = np.linspace(200 / RATE * 256, 3400 / RATE * 256, 21).astype(int)
    bands = np.stack([p[:, a:b].sum(axis=1) for a, b in itertools.pairwise(edges)], axis=1)
    total = p.sum(axis=1)
    active = total > total.max() * 10 ** (-40 / 10) if n else np.zeros(0, dtype=bool)
    return np.log10(bands + 1e-10), active


def _shared_runs(f: Pcm, g: Pcm) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Frames of f and of g on a run of SHARED_RUN_FRAMES alike frames in order in both."""
    d2 = (f**2).sum(1)[:, None] + (g**2).sum(1)[None, :] - 2 * f @ g.T
    alike = d2 < ALIKE**2 * f.shape[1]
    n, m = alike.shape
    # one odd frame (a click where espeak joins units) does not break a shared phrase
    bridged = alike.copy()
    bridged[1:-1, 1:-1] |= alike[:-2, :-2] & alike[2:, 2:]
    alike = bridged
    k = SHARED_RUN_FRAMES
    if n < k or m < k:
        return np.zeros(n, dtype=bool), np.zeros(m, dtype=bool)
    # starts[i, j]: frames i..i+k-1 of f are alike frames j..j+k-1 of g
    starts = np.ones((n - k + 1, m - k + 1), dtype=bool)
    for s in range(k):
        starts &= alike[s : n - k + 1 + s, s : m - k + 1 + s]
    rows, cols = starts.any(axis=1), starts.any(axis=0)
    in_f, in_g = np.zeros(n, dtype=bool), np.zeros(m, dtype=bool)
    for s in range(k):  # a run start covers the k frames after it
        in_f[s : n - k + 1 + s] |= rows
        in_g[s : m - k + 1 + s] |= cols
    return in_f, in_g


def distinct_frames(template_dir: Path, recs: list[Recording]) -> dict[str, npt.NDArray[np.bool_]]:
    """Per recording, which 20 ms frames are sound no recording of another verdict shares.

    Recordings in one espeak voice say the same words the same way ("对不起，您拨打的",
    "…请稍后再拨", "Sorry, the number you dialed"): a frame is shared when it lies on a
    run of SHARED_RUN_FRAMES or more frames that sound alike, in order, somewhere in a
    recording of another verdict and the same voice. Until a capture reaches a distinct
    frame no classifier can know which announcement it is hearing.
    """
    feats = {}
    for r in recs:
        x, _ = sf.read(str(template_dir / f"{r.rid}.wav"), dtype="float64")
        feats[r.rid] = _band_features(x)
    shared = {r.rid: np.zeros(len(feats[r.rid][0]), dtype=bool) for r in recs}
    for i, r in enumerate(recs):
        for o in recs[i + 1 :]:
            if o.voice.key != r.voice.key or o.cat.verdict == r.cat.verdict:
                continue
            a, b = _shared_runs(feats[r.rid][0], feats[o.rid][0])
            shared[r.rid] |= a
            shared[o.rid] |= b
    return {r.rid: feats[r.rid][1] & ~shared[r.rid] for r in recs}


def first_distinct_ms(mask: npt.NDArray[np.bool_], offset: int, loop_len: int, ev_ms: int) -> int:
    """When a capture playing the recording looped from sample `offset` reaches a distinct frame.

    `loop_len` is the recording plus its pause, in samples; `ev_ms` where the
    announcement starts in the capture. -1 if no frame of it is distinct.
    """
    if not mask.any():
        return -1
    loop_frames = max(1, loop_len // FRAME)
    start = offset // FRAME
    for k in range(2 * loop_frames):
        pos = (start + k) % loop_frames
        if pos < len(mask) and mask[pos]:
            return ev_ms + k * FRAME * 1000 // RATE
    return -1


# --- captures (test) --------------------------------------------------------------------


@dataclass
class Capture:
    """One test file to make: what it is, and the recipe's random generator seed."""

    name: str
    kind: str
    label: str
    verdict: str
    transient: bool
    source: str = ""
    signalling: str = SIG_EARLY
    final: str = FINAL_CANCEL
    extra: dict[str, Any] = field(default_factory=dict)


def _rng(seed: int, name: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def degrade_capture(
    x: Pcm, rng: np.random.Generator, *, silent: bool = False
) -> tuple[Pcm, list[str]]:
    """The network's path: level, line noise, G.711, packet loss, jitter. Returns the log."""
    log: list[str] = []
    gain = float(rng.uniform(-30.0, 0.0))
    y = degrade.set_level(x, gain)
    log.append(f"level_db={gain:.1f}")
    if not silent:
        snr = float(rng.uniform(10.0, 30.0))
        y = degrade.add_noise(y, snr, rng)
        log.append(f"snr_db={snr:.1f}")
    else:
        # a silent line still has a little comfort noise on many trunks
        y = y + 10 ** (-70 / 20) * rng.standard_normal(len(y)) * float(rng.integers(0, 2))
    law = str(rng.choice(["ulaw", "alaw"]))
    y = degrade.g711_round_trip(y, law)
    log.append(f"codec={law}")
    loss = float(rng.uniform(0.01, 0.05))
    y, lost = degrade.drop_frames(y, loss, rng)
    log.append(f"loss={loss:.3f};lost_frames={lost}")
    jit = float(rng.uniform(20.0, 60.0))
    y, dup, dropped = degrade.jitter_buffer(y, jit, rng)
    log.append(f"jitter_ms={jit:.0f};dup_frames={dup};drop_frames={dropped}")
    return y, log


def make_capture(
    cap: Capture, seed: int, template_dir: Path, workdir: Path
) -> tuple[Pcm, dict[str, Any]]:
    """Render one capture; returns its PCM and the labels.csv fields it decides."""
    rng = _rng(seed, cap.name)
    deg: list[str] = []
    if cap.kind == "announcement":
        rec, rate = sf.read(str(template_dir / f"{cap.source}.wav"), dtype="float64")
        assert rate == RATE
        ringback_s = 0.0 if rng.random() < 0.25 else float(rng.uniform(0.5, 10.0))
        offset_s = 0.0 if rng.random() < 0.4 else float(rng.uniform(0.0, 0.7) * len(rec) / RATE)
        gap = np.zeros(int(rng.uniform(0.8, 1.6) * RATE))
        loop = np.concatenate([rec, gap])
        played = np.concatenate([loop[int(offset_s * RATE) :], loop, loop])
        after_s = float(rng.uniform(6.0, 10.0))
        body = played[: int(after_s * RATE)]
        rb, _ = tone_pcm(TONES[0], ringback_s, rng) if ringback_s > 0 else (np.zeros(0), 0)
        rb = normalise(rb) if len(rb) else rb
        x = np.concatenate([rb, body])
        ev = int(ringback_s * 1000)
        deg.append(f"ringback_s={ringback_s:.2f};offset_s={offset_s:.2f}")
        loop_geometry = (int(offset_s * RATE), len(rec), len(loop))
    elif cap.kind == "tone":
        tone = next(t for t in TONES if t.name == cap.label)
        lead = float(rng.uniform(0.0, 1.0)) if rng.random() < 0.5 else 0.0
        period = sum(on + off for _, on, off in tone.cycle)
        phase = 0.0 if rng.random() < 0.5 else float(rng.uniform(0, period))
        secs = float(rng.uniform(*tone.seconds))
        t, first_on = tone_pcm(tone, secs, rng, phase)
        x = np.concatenate([np.zeros(int(lead * RATE)), normalise(t)])
        ev = int(lead * 1000 + first_on * 1000 / RATE)
        deg.append(f"lead_s={lead:.2f};phase_s={phase:.2f}")
    elif cap.kind == "crbt":
        secs = float(rng.uniform(8.0, 14.0))
        lead = float(rng.uniform(0.0, 0.6))
        music = normalise(music_pcm(secs, rng))
        if cap.label == "crbt_ad":
            text, (voice, speed, pitch) = cap.extra["text"], cap.extra["voice"]
            speech = normalise(speak(text, voice, speed, pitch, workdir))
            bed = float(rng.uniform(-20.0, -8.0))  # music bed under the voice, dB
            n = max(len(music), len(speech) + RATE)
            mix = np.zeros(n)
            mix[: len(music)] += music * 10 ** (bed / 20)
            mix[int(0.5 * RATE) : int(0.5 * RATE) + len(speech)] += speech
            music = normalise(mix[: int(max(secs, len(speech) / RATE + 1.0) * RATE)])
            deg.append(f"music_bed_db={bed:.1f}")
        x = np.concatenate([np.zeros(int(lead * RATE)), music])
        ev = int(lead * 1000)
    else:  # silence: signalling decides
        x = np.zeros(int(rng.uniform(2.0, 6.0) * RATE))
        ev = -1
    y, log = degrade_capture(x, rng, silent=cap.kind == "silence")
    deg += log
    fields: dict[str, Any] = {
        "evidence_start_ms": "" if ev < 0 else str(ev),
        "degradations": ";".join(deg),
    }
    if cap.kind == "announcement":
        fields["_loop"] = loop_geometry  # for distinct_ms, resolved in generate()
    return y, fields


def plan_captures(per_class: int) -> list[Capture]:
    """The test part: `per_class` captures of each announcement label, tone, crbt kind, silence."""
    caps: list[Capture] = []
    recs = recordings()
    for cat in CATEGORIES:
        mine = [r for r in recs if r.cat is cat]
        for i in range(per_class):
            r = mine[i % len(mine)]  # round-robin: every recording gets captures
            caps.append(
                Capture(
                    f"ann_{cat.key}_{i:03d}",
                    "announcement",
                    cat.label,
                    cat.verdict,
                    cat.transient,
                    source=r.rid,
                )
            )
    for tone in TONES:
        ring = tone.verdict == "ringing"
        for i in range(per_class):
            caps.append(
                Capture(
                    f"tone_{tone.name}_{i:03d}",
                    "tone",
                    tone.name,
                    tone.verdict,
                    tone.transient,
                    signalling=SIG_RING if ring else SIG_EARLY,
                    final=FINAL_CANCEL_RING if ring else FINAL_CANCEL,
                )
            )
    for i in range(per_class):
        caps.append(
            Capture(
                f"crbt_music_{i:03d}",
                "crbt",
                "crbt_music",
                "ringing",
                False,
                signalling=SIG_RING,
                final=FINAL_CANCEL_RING,
            )
        )
        caps.append(
            Capture(
                f"crbt_ad_{i:03d}",
                "crbt",
                "crbt_ad",
                "ringing",
                False,
                signalling=SIG_RING,
                final=FINAL_CANCEL_RING,
                extra={"text": ADS_ZH[i % len(ADS_ZH)], "voice": ADS_VOICES[i % len(ADS_VOICES)]},
            )
        )
    for i in range(per_class):
        name, final, verdict, transient = SILENCES[i % len(SILENCES)]
        caps.append(
            Capture(
                f"silence_{name}_{i:03d}",
                "silence",
                f"silence_{name}",
                verdict,
                transient,
                signalling=SIG_EARLY,
                final=final,
            )
        )
    return caps


# --- the pool jobs -------------------------------------------------------------------------


def _write(path: Path, x: Pcm) -> None:
    sf.write(str(path), degrade.to_int16(x), RATE, subtype="PCM_16")


def job_recording(rec: Recording, out: Path) -> dict[str, str]:
    """Render and write one template; its labels.csv row."""
    with tempfile.TemporaryDirectory(prefix="corpus-") as tmp:
        x = render_recording(rec, Path(tmp))
    _write(out / "templates" / f"{rec.rid}.wav", x)
    return {
        "file": f"templates/{rec.rid}.wav",
        "split": "templates",
        "verdict": rec.cat.verdict,
        "label": rec.cat.label,
        "kind": "announcement",
        "evidence_start_ms": "0",
        "duration_ms": str(len(x) * 1000 // RATE),
        "transient": str(int(rec.cat.transient)),
        "source": rec.rid,
        "degradations": "",
        "signalling": SIG_EARLY,
        "final": FINAL_CANCEL,
    }


def job_capture(cap: Capture, seed: int, out: Path) -> dict[str, str]:
    """Render and write one test capture; its labels.csv row."""
    with tempfile.TemporaryDirectory(prefix="corpus-") as tmp:
        y, fields = make_capture(cap, seed, out / "templates", Path(tmp))
    _write(out / "test" / f"{cap.name}.wav", y)
    return {
        "file": f"test/{cap.name}.wav",
        "split": "test",
        "verdict": cap.verdict,
        "label": cap.label,
        "kind": cap.kind,
        "duration_ms": str(len(y) * 1000 // RATE),
        "transient": str(int(cap.transient)),
        "source": cap.source,
        "signalling": cap.signalling,
        "final": cap.final,
        **fields,
    }


def _run(
    pool: ProcessPoolExecutor | None,
    fn: Callable[..., dict[str, str]],
    args: Sequence[tuple[Any, ...]],
) -> list[dict[str, str]]:
    if pool is None:
        return [fn(*a) for a in args]
    futs = [pool.submit(fn, *a) for a in args]
    return [f.result() for f in futs]


G711_ANNOUNCEMENTS = ("kong", "guanji", "tonghua")  # 空号, 关机, 正在通话中
G711_OTHERS = ("tone_cn_ringback_000", "tone_cn_busy_000", "crbt_music_000", "crbt_ad_000")


def write_g711(out: Path, rows: list[dict[str, str]]) -> int:
    """Headerless µ-law copies of a few captures, for sipp rtp_stream; returns how many.

    The announcements are captures of recordings the shipped library holds
    (`shipped`), so a daemon test with the default library can recognise them.
    """
    gdir = out / "g711"
    gdir.mkdir(parents=True, exist_ok=True)
    tests = [r for r in rows if r["split"] == "test"]
    picks: list[dict[str, str]] = []
    for key in G711_ANNOUNCEMENTS:
        held = [
            r
            for r in tests
            if Path(r["file"]).stem.startswith(f"ann_{key}_") and shipped(r["source"])
        ]
        picks += held[:1]
    picks += [r for r in tests if Path(r["file"]).stem in G711_OTHERS]
    lines = [("file", "from", "verdict", "label", "evidence_start_ms", "source")]
    for row in picks:
        name = Path(row["file"]).stem
        x, _ = sf.read(str(out / row["file"]), dtype="int16")
        n = (len(x) // FRAME) * FRAME  # whole 160-byte packets only
        (gdir / f"{name}.ulaw").write_bytes(degrade.ulaw_encode(x[:n]).tobytes())
        lines.append(
            (
                f"g711/{name}.ulaw",
                row["file"],
                row["verdict"],
                row["label"],
                row["evidence_start_ms"],
                row["source"],
            )
        )
    with (gdir / "index.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(lines)
    return len(lines) - 1


def generate(
    out: Path, seed: int = 1, per_class: int = 12, workers: int = 2
) -> list[dict[str, str]]:
    """Make the whole corpus under `out` (its templates/, test/, g711/ are replaced)."""
    for sub in ("templates", "test", "g711"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir(parents=True)
    recs = recordings()
    caps = plan_captures(per_class)
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        rows = _run(pool, job_recording, [(r, out) for r in recs])
        distinct = distinct_frames(out / "templates", recs)
        rows += _run(pool, job_capture, [(c, seed, out) for c in caps])
    finally:
        if pool is not None:
            pool.shutdown()
    for row in rows:
        row["distinct_ms"] = ""
        if row["kind"] != "announcement":
            continue
        mask = distinct[row["source"]]
        if row["split"] == "templates":
            row["distinct_ms"] = str(first_distinct_ms(mask, 0, len(mask) * FRAME, 0))
        else:
            offset, _, loop_len = cast(tuple[int, int, int], row.pop("_loop"))
            ev = int(row["evidence_start_ms"])
            row["distinct_ms"] = str(first_distinct_ms(mask, offset, loop_len, ev))
    with (out / "labels.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    write_g711(out, rows)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; prints a one-line summary."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--out", type=Path, default=Path("bench/corpus/out"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--per-class",
        type=int,
        default=12,
        help="test captures per announcement label / tone / crbt kind / silence",
    )
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args(argv)
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            print(f"make.py: {tool} is not installed (make deps installs it)", file=sys.stderr)
            return 2
    if a.per_class < 1:
        print("make.py: --per-class must be at least 1", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    rows = generate(a.out, a.seed, a.per_class, a.workers)
    n_t = sum(r["split"] == "templates" for r in rows)
    audio = sum(int(r["duration_ms"]) for r in rows) / 1000
    print(
        f"corpus: {n_t} templates, {len(rows) - n_t} test captures, {audio:.0f} s of audio "
        f"in {a.out} ({time.monotonic() - t0:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
