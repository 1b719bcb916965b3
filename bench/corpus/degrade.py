"""What the network does to a carrier's recording before our recorder sees it.

Each function takes and returns float64 PCM at 8 kHz in [-1, 1) (int16 scale
/ 32768) and draws any randomness from the `numpy.random.Generator` it is
given, so a corpus is the same for the same seed. Order in a capture (see
`make.py`): level, line noise, G.711 round trip, packet loss, jitter buffer.

G.711 is written out here (the segment / mantissa algorithm of ITU-T G.711)
because `audioop` is gone from Python 3.13 and the corpus must not depend on
the classifier's own code.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

RATE = 8000
FRAME = 160  # 20 ms at 8 kHz: one RTP packet of G.711

Pcm = npt.NDArray[np.float64]

_ULAW_BIAS = 0x84


def to_int16(x: Pcm) -> npt.NDArray[np.int16]:
    """Float PCM -> int16 with saturation (what a WAV writer would store)."""
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


def ulaw_encode(pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.uint8]:
    """int16 PCM -> G.711 µ-law bytes (sign, 3-bit segment, 4-bit mantissa, inverted).

    Works on the 14-bit magnitude of G.711's reference coder (bias 33, clip 8159).
    """
    v = pcm.astype(np.int32) >> 2
    mask = np.where(v < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(v), 8159) + 33
    # segment = index of the top bit above bit 5 (mag is in [33, 8192])
    seg = np.floor(np.log2(mag)).astype(np.int32) - 5
    code = np.where(seg >= 8, 0x7F, (np.clip(seg, 0, 7) << 4) | ((mag >> (seg + 1)) & 0x0F))
    return ((code ^ mask) & 0xFF).astype(np.uint8)


def ulaw_decode(code: npt.NDArray[np.uint8]) -> npt.NDArray[np.int16]:
    """G.711 µ-law bytes -> int16 PCM."""
    u = (~code.astype(np.int32)) & 0xFF
    seg = (u >> 4) & 0x07
    mag = (((u & 0x0F) << 3) + _ULAW_BIAS) << seg
    val = mag - _ULAW_BIAS
    return np.where(u & 0x80, -val, val).astype(np.int16)


def alaw_encode(pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.uint8]:
    """int16 PCM -> G.711 A-law bytes (13-bit linear, even bits inverted)."""
    v = pcm.astype(np.int32) >> 3
    mask = np.where(v >= 0, 0xD5, 0x55)
    v = np.where(v >= 0, v, -v - 1)
    # segment ends of the 13-bit A-law curve: 0x1F, 0x3F, ... 0xFFF
    seg = np.searchsorted(np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF]), v)
    shift = np.where(seg < 2, 1, seg)
    aval = (np.minimum(seg, 7) << 4) | ((v >> shift) & 0x0F)
    aval = np.where(seg >= 8, 0x7F, aval)
    return ((aval ^ mask) & 0xFF).astype(np.uint8)


def alaw_decode(code: npt.NDArray[np.uint8]) -> npt.NDArray[np.int16]:
    """G.711 A-law bytes -> int16 PCM."""
    a = code.astype(np.int32) ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, t + 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    return np.where(a & 0x80, t, -t).astype(np.int16)


def g711_round_trip(x: Pcm, law: str) -> Pcm:
    """Encode to G.711 (`law` "ulaw" or "alaw") and decode back, as a PCMU/PCMA call does."""
    pcm = to_int16(x)
    if law == "ulaw":
        out = ulaw_decode(ulaw_encode(pcm))
    elif law == "alaw":
        out = alaw_decode(alaw_encode(pcm))
    else:
        raise ValueError(f"unknown G.711 law {law!r}")
    return out.astype(np.float64) / 32768.0


def active_power(x: Pcm) -> float:
    """Mean power over the 20 ms frames within 35 dB of the loudest one.

    Speech and cadenced tones are mostly pauses; an SNR over the whole file
    would flatter the noise, so SNR here is measured on the active frames.
    """
    n = len(x) // FRAME
    if n == 0:
        return float(np.mean(x**2)) if len(x) else 0.0
    p = np.mean(x[: n * FRAME].reshape(n, FRAME) ** 2, axis=1)
    top = float(p.max())
    if top <= 0.0:
        return 0.0
    return float(p[p >= top * 10 ** (-35 / 10)].mean())


def snr_db(clean: Pcm, noisy: Pcm) -> float:
    """SNR of `noisy` against `clean`, active-frame power over noise power, in dB."""
    noise = noisy - clean
    pn = float(np.mean(noise**2))
    ps = active_power(clean)
    if pn <= 0.0:
        return float("inf")
    return 10.0 * float(np.log10(ps / pn))


def add_noise(x: Pcm, snr: float, rng: np.random.Generator) -> Pcm:
    """Add line noise (white, then band-limited a little by a 2-tap average) at `snr` dB."""
    ps = active_power(x)
    if ps <= 0.0:
        return x.copy()
    w = rng.standard_normal(len(x) + 1)
    w = 0.5 * (w[1:] + w[:-1])  # mild low-pass: line noise is not flat to 4 kHz
    w *= np.sqrt(ps / 10 ** (snr / 10) / float(np.mean(w**2)))
    return x + w


def set_level(x: Pcm, gain_db: float) -> Pcm:
    """Scale by `gain_db` (the carrier's or the trunk's level, -30 to 0 dB in the corpus)."""
    return x * 10 ** (gain_db / 20)


def drop_frames(x: Pcm, loss: float, rng: np.random.Generator) -> tuple[Pcm, int]:
    """Zero whole 20 ms frames with probability `loss` (lost RTP packets, no concealment).

    Returns the new signal and how many frames were zeroed.
    """
    y = x.copy()
    n = len(y) // FRAME
    lost = np.nonzero(rng.random(n) < loss)[0]
    for i in lost:
        y[i * FRAME : (i + 1) * FRAME] = 0.0
    return y, len(lost)


def jitter_buffer(x: Pcm, jitter_ms: float, rng: np.random.Generator) -> tuple[Pcm, int, int]:
    """Replay `x` through an under-sized adaptive jitter buffer.

    Each packet gets a random network delay in [0, jitter_ms]; the buffer
    holds about half that. A packet later than the buffer depth makes the
    buffer play the previous frame again (an underrun: the audio after it
    is shifted 20 ms later) and grow; once the buffer is deeper than needed
    it drops a frame to catch up (shifted 20 ms earlier). The length is kept.
    Returns the signal, frames duplicated, frames dropped.
    """
    n = len(x) // FRAME
    frames = [x[i * FRAME : (i + 1) * FRAME] for i in range(n)]
    delays = rng.random(n) * jitter_ms
    depth = jitter_ms * 0.5
    extra = 0.0  # how much the buffer has grown, ms
    out: list[Pcm] = []
    dup = dropped = 0
    prev = np.zeros(FRAME)
    for i, f in enumerate(frames):
        if delays[i] > depth + extra:
            out.append(prev)  # underrun: the previous frame again
            dup += 1
            extra += FRAME * 1000 / RATE
        elif extra > 0 and delays[i] < depth * 0.2 and rng.random() < 0.25:
            extra -= FRAME * 1000 / RATE
            dropped += 1
            prev = f
            continue  # catch up: this frame is skipped
        out.append(f)
        prev = f
    y = np.concatenate(out) if out else np.zeros(0)
    y = np.concatenate([y, x[n * FRAME :]])
    if len(y) >= len(x):
        return y[: len(x)], dup, dropped
    return np.concatenate([y, np.zeros(len(x) - len(y))]), dup, dropped
