"""Payload decoders: PCMU, PCMA and G.722, all to 8 kHz int16.

G.722 is decoded at its native 16 kHz by the `g722` package (module
`G722`, C code from libg722) and brought down to 8 kHz by a streaming
low-pass FIR + decimation that keeps its state across packets, so packet
edges leave no clicks. Note that G.722's RTP clock is 8000 Hz (RFC 3551
section 4.5.2) like G.711's, so an RTP timestamp is a sample index at 8 kHz
for all three codecs.

A decoder is stateful (G.722 is ADPCM) and belongs to one RTP stream: make a
new one when the SSRC changes.
"""

from __future__ import annotations

from typing import Protocol

import G722
import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import as_strided

from sipclient.media import g711

Pcm = npt.NDArray[np.int16]

PCMU = "PCMU"
PCMA = "PCMA"
G722_NAME = "G722"
CODECS = (PCMU, PCMA, G722_NAME)

STATIC_PAYLOAD_TYPES = {0: PCMU, 8: PCMA, 9: G722_NAME}
"""RFC 3551 static payload types of the codecs we decode."""


class UnknownCodec(ValueError):
    """A codec name we cannot decode."""


class Decoder(Protocol):
    """Turns one RTP payload into 8 kHz int16 samples."""

    codec: str

    def decode(self, payload: bytes) -> Pcm:
        """Decode one payload."""
        ...

    def samples(self, payload: bytes) -> int:
        """How many 8 kHz samples `payload` decodes to, without decoding it."""
        ...


class PcmuDecoder:
    """µ-law: one byte, one sample."""

    codec = PCMU

    def decode(self, payload: bytes) -> Pcm:
        return g711.ulaw_decode(payload)

    def samples(self, payload: bytes) -> int:
        return len(payload)


class PcmaDecoder:
    """A-law: one byte, one sample."""

    codec = PCMA

    def decode(self, payload: bytes) -> Pcm:
        return g711.alaw_decode(payload)

    def samples(self, payload: bytes) -> int:
        return len(payload)


def _halfband_lowpass(taps: int = 63, cutoff: float = 0.92) -> npt.NDArray[np.float64]:
    """Windowed-sinc low-pass for 16 <-> 8 kHz; `cutoff` is a fraction of 4 kHz.

    0.92 puts the -6 dB point at 3.7 kHz; with 63 Hamming-windowed taps the
    telephone band (to 3.4 kHz) passes within about 1 dB and what would alias
    (above 4.4 kHz) is attenuated by about 50 dB.
    """
    n = np.arange(taps) - (taps - 1) / 2
    h = np.sinc(cutoff * n / 2) * np.hamming(taps)
    return np.asarray(h / h.sum(), dtype=np.float64)


_LOWPASS = _halfband_lowpass()


class Downsampler:
    """Streaming 2:1 decimator: low-pass FIR, keep every second sample.

    Keeps the last `taps - 1` input samples between calls so consecutive
    chunks filter exactly as one long signal would (delay: 31 samples at
    16 kHz, about 2 ms). Only the kept outputs are computed: one
    matrix-vector product over a strided view of the input (cheaper than a
    full convolution and its slice). Chunks must have an even length, which
    G.722 payloads always give (two 16 kHz samples per byte).
    """

    def __init__(self, taps: npt.NDArray[np.float64] = _LOWPASS) -> None:
        self._reversed = np.ascontiguousarray(taps[::-1])
        self._keep = len(taps) - 1
        self._buf = np.zeros(self._keep, dtype=np.float64)
        self._view: npt.NDArray[np.float64] | None = None

    def process(self, pcm16k: npt.NDArray[np.int16]) -> Pcm:
        """Filter and decimate one chunk of 16 kHz samples."""
        n = len(pcm16k)
        if len(self._buf) != self._keep + n or self._view is None:
            history = self._buf[len(self._buf) - self._keep :].copy()
            self._buf = np.zeros(self._keep + n, dtype=np.float64)
            self._buf[: self._keep] = history
            step = self._buf.strides[0]
            self._view = as_strided(
                self._buf, shape=(n // 2, self._keep + 1), strides=(2 * step, step), writeable=False
            )
        else:
            self._buf[: self._keep] = self._buf[n:]
        self._buf[self._keep :] = pcm16k
        y = self._view @ self._reversed
        np.clip(y, -32768, 32767, out=y)
        return y.astype(np.int16)


class G722Decoder:
    """G.722 at 64 kbit/s: 160 bytes -> 320 samples at 16 kHz -> 160 at 8 kHz.

    `native_8k=True` asks libg722 for its 8 kHz output instead (it decodes
    the lower sub-band only, skipping the upper band and our FIR): about a
    third of the CPU, slightly more aliasing near 4 kHz. Off by default.
    """

    codec = G722_NAME

    def __init__(self, *, native_8k: bool = False) -> None:
        self._codec = G722.G722(8000 if native_8k else 16000, 64000)
        self._down = None if native_8k else Downsampler()

    def decode(self, payload: bytes) -> Pcm:
        out = np.frombuffer(self._codec.decode(payload), dtype=np.int16)
        return out if self._down is None else self._down.process(out)

    def samples(self, payload: bytes) -> int:
        return len(payload)


def make_decoder(codec: str, *, g722_native_8k: bool = False) -> Decoder:
    """A fresh decoder for `codec` ("PCMU", "PCMA" or "G722", any case)."""
    name = codec.upper()
    if name == PCMU:
        return PcmuDecoder()
    if name == PCMA:
        return PcmaDecoder()
    if name == G722_NAME:
        return G722Decoder(native_8k=g722_native_8k)
    raise UnknownCodec(f"cannot decode codec {codec!r} (known: {', '.join(CODECS)})")


def encode(codec: str, pcm: npt.ArrayLike) -> bytes:
    """Encode 8 kHz int16 samples as `codec` (tests, corpus, our outgoing silence).

    G.722 input is up-sampled to 16 kHz (zero insertion and the same
    low-pass as the decoder's). A new encoder is used per call, so this suits
    whole signals, not a stream of packets.
    """
    name = codec.upper()
    samples = np.asarray(pcm, dtype=np.int16)
    if name == PCMU:
        return g711.ulaw_encode(samples)
    if name == PCMA:
        return g711.alaw_encode(samples)
    if name == G722_NAME:
        stuffed = np.zeros(2 * len(samples), dtype=np.float64)
        stuffed[::2] = samples
        wide = np.convolve(stuffed, 2 * _LOWPASS, mode="same")
        wide16 = np.clip(np.rint(wide), -32768, 32767).astype(np.int16)
        return bytes(G722.G722(16000, 64000).encode(wide16))
    raise UnknownCodec(f"cannot encode codec {codec!r} (known: {', '.join(CODECS)})")
