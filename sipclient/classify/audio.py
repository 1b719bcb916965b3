"""Reading recordings into the classifier's one format: int16 mono PCM at 8 kHz.

Whatever the server receives (8/16/44.1/48 kHz, 8/16/24/32-bit, float,
µ-law/A-law WAV, stereo) is mixed down and resampled here; anything that is
not readable audio raises `AudioError` with a sentence saying why, which the
callers turn into an `unknown` verdict (never a crash).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import numpy.typing as npt

RATE = 8000
"""The classifier's sample rate (narrowband telephony)."""

FRAME = 160
"""Samples per 20 ms frame at RATE."""

MAX_SECONDS = 3600.0
"""Longer recordings are refused: no call we make lasts an hour before an answer."""


class AudioError(Exception):
    """The file is not audio the classifier can use; the message says why."""


def to_8k_mono(data: npt.NDArray[np.floating], rate: int) -> npt.NDArray[np.int16]:
    """Float samples in [-1, 1] (frames x channels, or 1-D) -> int16 mono at 8 kHz."""
    if data.ndim == 2:
        data = data.mean(axis=1) if data.shape[1] > 0 else np.zeros(data.shape[0])
    data = np.asarray(data, dtype=np.float64)
    if rate != RATE and data.size:
        from scipy.signal import resample_poly  # only for the odd non-8 kHz file

        g = math.gcd(int(rate), RATE)
        data = resample_poly(data, RATE // g, int(rate) // g)
    data = np.nan_to_num(data, nan=0.0, posinf=1.0, neginf=-1.0)
    out = np.clip(np.round(data * 32768.0), -32768, 32767)
    return out.astype(np.int16)


def load_pcm(path: Path) -> npt.NDArray[np.int16]:
    """The recording at `path` as int16 mono PCM at 8 kHz; `AudioError` if unusable.

    Zero frames is fine (an empty array): the caller decides from signalling.
    """
    import soundfile as sf

    if not path.is_file():
        raise AudioError(f"no such file: {path}")
    try:
        with sf.SoundFile(str(path)) as f:
            rate = int(f.samplerate)
            if rate < 4000 or rate > 384000:
                raise AudioError(f"unsupported sample rate {rate} Hz")
            if f.channels < 1:
                raise AudioError("no audio channels")
            if f.frames > MAX_SECONDS * rate:
                raise AudioError(f"recording too long ({f.frames / rate:.0f} s)")
            data = f.read(dtype="float64", always_2d=True)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as exc:
        raise AudioError(f"not a readable audio file: {exc}") from exc
    return to_8k_mono(data, rate)
