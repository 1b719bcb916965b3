"""Generated signals for the classifier tests: tones, espeak-ng speech, music, degradations.

Everything is synthesised here (numpy; espeak-ng + sox for speech) so the
tests know the right answer; nothing is read from bench/ or the network.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import soundfile as sf

from sipclient.classify.frames import FrameSource
from sipclient.classify.templates import TemplateLibrary
from sipclient.classify.tones import ToneDetector, ToneHit, classify_frames

RATE = 8000
Pcm = npt.NDArray[np.float64]


def tone(freqs: tuple[float, ...], seconds: float, level_db: float = -10.0) -> Pcm:
    """A steady tone of the given frequencies at `level_db` dBFS (peak of the sum)."""
    t = np.arange(int(RATE * seconds)) / RATE
    amp = 10 ** (level_db / 20) / len(freqs)
    return np.asarray(sum(amp * np.sin(2 * np.pi * f * t) for f in freqs), dtype=np.float64)


def cadence(
    freqs: tuple[float, ...],
    cycle: list[tuple[float, float]],
    seconds: float,
    level_db: float = -10.0,
) -> Pcm:
    """A cadenced tone: repeat (on, off) pairs for `seconds`."""
    parts: list[Pcm] = []
    total = 0
    while total < seconds * RATE:
        for on, off in cycle:
            parts += [tone(freqs, on, level_db), np.zeros(int(RATE * off))]
            total += int(RATE * (on + off))
    return np.concatenate(parts)[: int(seconds * RATE)]


PLANS: dict[str, tuple[tuple[float, ...], list[tuple[float, float]], float, str]] = {
    # name: (frequencies, cadence, seconds, verdict)
    "cn_busy": ((450.0,), [(0.35, 0.35)], 4.0, "busy"),
    "cn_congestion": ((450.0,), [(0.7, 0.7)], 5.0, "failed"),
    "cn_empty": ((450.0,), [(0.1, 0.1)] * 3 + [(0.4, 0.4)], 5.0, "empty"),
    "na_busy": ((480.0, 620.0), [(0.5, 0.5)], 4.0, "busy"),
    "na_reorder": ((480.0, 620.0), [(0.25, 0.25)], 4.0, "failed"),
    "cn_ringback": ((450.0,), [(1.0, 4.0)], 12.0, "ringing"),
    "na_ringback": ((440.0, 480.0), [(2.0, 4.0)], 14.0, "ringing"),
}


def sit(level_db: float = -10.0) -> Pcm:
    """Special Information Tone (913.8, 1370.6, 1776.7 Hz) then a pause, twice."""
    once = np.concatenate(
        [
            tone((913.8,), 0.274, level_db),
            tone((1370.6,), 0.274, level_db),
            tone((1776.7,), 0.38, level_db),
            np.zeros(int(1.2 * RATE)),
        ]
    )
    return np.concatenate([once, once])


def music(seconds: float, seed: int = 0) -> Pcm:
    """A colour ring-back stand-in: chords with harmonics and decaying notes."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    out = np.zeros(n + RATE)
    root = 196.0
    t0 = 0.0
    chords = [(0, 4, 7), (5, 9, 12), (7, 11, 14), (0, 4, 7)]
    k = 0
    while t0 < seconds:
        for semi in chords[k % 4]:
            f = root * 2 ** (semi / 12)
            m = int(0.8 * RATE)
            t = np.arange(m) / RATE
            note = sum(
                (0.5**h) * np.sin(2 * np.pi * f * h * t + rng.uniform(0, 6)) for h in range(1, 5)
            )
            i = int(t0 * RATE)
            out[i : i + m] += 0.08 * note * np.exp(-t * 2.5)
        t0 += 0.8
        k += 1
    return out[:n]


def to_int16(x: Pcm) -> npt.NDArray[np.int16]:
    """Float [-1, 1) -> int16 with saturation."""
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


def detect(x: Pcm) -> tuple[ToneHit | None, ToneDetector]:
    """The cadence detector alone, fed frame by frame: its first hit (or None) and state."""
    power, rms = FrameSource().push(to_int16(x))
    cls, freq = classify_frames(power, rms)
    det = ToneDetector()
    for i in range(len(cls)):
        hit = det.update(int(cls[i]), float(rms[i]), float(freq[i]))
        if hit is not None:
            return hit, det
    return None, det


def ulaw_round_trip(x: Pcm) -> Pcm:
    """G.711 µ-law companding and 8-bit quantisation, back to linear (a PCMU call)."""
    mu = 255.0
    y = np.sign(x) * np.log1p(mu * np.minimum(np.abs(x), 1.0)) / np.log1p(mu)
    q = np.round(y * 127.0) / 127.0
    return np.asarray(np.sign(q) * np.expm1(np.abs(q) * np.log1p(mu)) / mu, dtype=np.float64)


def add_noise(x: Pcm, snr_db: float, seed: int = 1) -> Pcm:
    """White noise at `snr_db` below the signal's loud-frame power."""
    rng = np.random.default_rng(seed)
    n = len(x) // 160
    p = np.mean(x[: n * 160].reshape(n, 160) ** 2, axis=1)
    ps = float(p[p >= p.max() * 10 ** (-3.5)].mean())
    return x + rng.standard_normal(len(x)) * np.sqrt(ps / 10 ** (snr_db / 10))


def drop_frames(x: Pcm, loss: float, seed: int = 2) -> Pcm:
    """Zero whole 20 ms frames with probability `loss` (lost RTP, no concealment)."""
    rng = np.random.default_rng(seed)
    y = x.copy()
    for i in np.nonzero(rng.random(len(x) // 160) < loss)[0]:
        y[i * 160 : (i + 1) * 160] = 0.0
    return y


def degrade(x: Pcm, how: str) -> Pcm:
    """One named degradation (or "all" of them) as the tests parametrise them."""
    y = x.copy()
    if how in ("level", "all"):
        y = y * 10 ** (-30 / 20)  # -10 dBFS tones end near -40 dBm0
    if how in ("noise", "all"):
        y = add_noise(y, 15.0)
    if how in ("g711", "all"):
        y = ulaw_round_trip(y)
    if how in ("loss", "all"):
        y = drop_frames(y, 0.05)
    return y


def write_wav(
    path: Path, x: Pcm | npt.NDArray[np.int16], rate: int = RATE, subtype: str = "PCM_16"
) -> Path:
    """Write float or int16 audio as a WAV file."""
    sf.write(str(path), x, rate, subtype=subtype)
    return path


def speak(text: str, voice: str, path: Path) -> Pcm:
    """espeak-ng -> sox (telephone band, 8 kHz mono 16-bit) -> float PCM; also kept at `path`."""
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-s", "190", "-w", str(raw), text], check=True)
    subprocess.run(
        [
            "sox",
            "-D",
            str(raw),
            "-b",
            "16",
            "-c",
            "1",
            str(path),
            "highpass",
            "300",
            "lowpass",
            "3400",
            "rate",
            "-h",
            str(RATE),
        ],
        check=True,
    )
    raw.unlink()
    x, rate = sf.read(str(path), dtype="float64")
    assert rate == RATE
    # trim leading/trailing silence and bring to about -18 dBFS RMS
    loud = np.nonzero(np.abs(x) > 0.01)[0]
    x = x[loud[0] : loud[-1] + 1]
    x = x * (10 ** (-18 / 20) / max(float(np.sqrt(np.mean(x**2))), 1e-9))
    sf.write(str(path), x, RATE, subtype="PCM_16")
    return np.asarray(x, dtype=np.float64)


ANNOUNCEMENTS: dict[str, tuple[str, str, str]] = {
    # file stem: (text, verdict, label) — the first two share their opening words
    "kong": ("您拨打的号码是空号，请查证后再拨。", "empty", "空号"),
    "guanji": ("您拨打的号码已关机，请稍后再拨。", "powered_off", "关机"),
    "busy_en": ("The subscriber you dialed is busy now, please redial later.", "busy", "busy"),
}
UNKNOWN_TEXT = "本机已开通语音信箱服务，请在提示音后留言。"


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pcm]:
    """Clean announcements (and one unknown one) rendered once per session."""
    assert shutil.which("espeak-ng") and shutil.which("sox"), "espeak-ng and sox are required"
    d = tmp_path_factory.mktemp("speech")
    out: dict[str, Pcm] = {}
    for stem, (text, _, _) in ANNOUNCEMENTS.items():
        voice = "en-us" if stem.endswith("_en") else "cmn"
        out[stem] = speak(text, voice, d / f"{stem}.wav")
    out["unknown"] = speak(UNKNOWN_TEXT, "cmn", d / "unknown.wav")
    out["ad"] = speak("欢迎致电，彩铃为您服务，电话正在接通，请稍候。", "cmn+f4", d / "ad.wav")
    return out


@pytest.fixture(scope="session")
def library(
    tmp_path_factory: pytest.TempPathFactory, speech_dir: dict[str, Pcm]
) -> TemplateLibrary:
    """A template library of the ANNOUNCEMENTS, built with TemplateLibrary.add."""
    folder = tmp_path_factory.mktemp("library")
    src = tmp_path_factory.mktemp("src")
    lib = TemplateLibrary.load(folder, create=True)
    for stem, (_, verdict, label) in ANNOUNCEMENTS.items():
        lib.add(write_wav(src / f"{stem}.wav", speech_dir[stem]), verdict, label)
    return lib


@pytest.fixture
def wav(tmp_path: Path) -> Callable[..., Path]:
    """Write audio to a fresh WAV in tmp_path: wav(x, name=..., rate=..., subtype=...)."""

    def make(
        x: Pcm | npt.NDArray[np.int16],
        name: str = "x.wav",
        rate: int = RATE,
        subtype: str = "PCM_16",
    ) -> Path:
        return write_wav(tmp_path / name, x, rate, subtype)

    return make
