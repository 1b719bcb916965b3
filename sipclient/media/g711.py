"""G.711 µ-law (PCMU) and A-law (PCMA): decode by table, encode vectorised.

Decoding is one numpy fancy-index into a 256-entry int16 table per payload,
which is what makes 200 concurrent calls cheap. Encoding is only needed for
tests, the classifier corpus and the silence we send for NAT latching, so it
is written for clarity over speed (still vectorised).

The tables follow ITU-T G.711: µ-law with the 0x84 bias and inverted bits,
A-law with even bits inverted (XOR 0x55) and a sign bit that is *set* for
positive values.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Pcm = npt.NDArray[np.int16]

_MULAW_BIAS = 0x84
_MULAW_CLIP = 32635


def _mulaw_table() -> Pcm:
    codes = np.arange(256, dtype=np.int32)
    u = ~codes & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + _MULAW_BIAS) << exponent) - _MULAW_BIAS
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_table() -> Pcm:
    codes = np.arange(256, dtype=np.int32)
    a = codes ^ 0x55
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    magnitude = np.where(
        exponent == 0,
        (mantissa << 4) + 8,
        ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0),
    )
    return np.where(a & 0x80, magnitude, -magnitude).astype(np.int16)


ULAW_TABLE: Pcm = _mulaw_table()
"""ULAW_TABLE[code] is the linear 16-bit value of µ-law byte `code`."""
ALAW_TABLE: Pcm = _alaw_table()
"""ALAW_TABLE[code] is the linear 16-bit value of A-law byte `code`."""

ULAW_SILENCE = 0xFF
"""The µ-law byte for 0 (positive zero)."""
ALAW_SILENCE = 0xD5
"""The A-law byte for the smallest positive value."""


# Per packet (160 bytes) the cost is numpy's call overhead, not the lookup: `take`
# bound once, and `frombuffer` with a positional dtype, decode in ~0.7 µs against
# ~1.05 µs for `TABLE[np.frombuffer(payload, dtype=np.uint8)]` (same values).
_ulaw_take = ULAW_TABLE.take
_alaw_take = ALAW_TABLE.take
_frombuffer = np.frombuffer
_U8 = np.dtype(np.uint8)


def ulaw_decode(payload: bytes) -> Pcm:
    """µ-law bytes -> int16 samples (one per byte)."""
    return _ulaw_take(_frombuffer(payload, _U8))


def alaw_decode(payload: bytes) -> Pcm:
    """A-law bytes -> int16 samples (one per byte)."""
    return _alaw_take(_frombuffer(payload, _U8))


def _floor_log2(values: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
    # frexp is exact for integers, unlike floor(log2(x)) at powers of two.
    return (np.frexp(values.astype(np.float64))[1] - 1).astype(np.int32)


def ulaw_encode(pcm: npt.ArrayLike) -> bytes:
    """int16 samples -> µ-law bytes (one per sample)."""
    # G.711 µ-law works on 14-bit samples; the arithmetic shift floors, as
    # the ITU reference does, so negative values round away from zero.
    x = np.asarray(pcm, dtype=np.int32) >> 2
    negative = x < 0
    magnitude = np.minimum(np.abs(x), _MULAW_CLIP >> 2) + (_MULAW_BIAS >> 2)
    exponent = _floor_log2(magnitude) - 5
    mantissa = (magnitude >> (exponent + 1)) & 0x0F
    code = (negative.astype(np.int32) << 7) | (exponent << 4) | mantissa
    return bytes((~code & 0xFF).astype(np.uint8).tobytes())


def alaw_encode(pcm: npt.ArrayLike) -> bytes:
    """int16 samples -> A-law bytes (one per sample)."""
    x = np.asarray(pcm, dtype=np.int32)
    negative = x < 0
    # One's-complement magnitude for negatives keeps the A-law segments symmetric.
    magnitude = np.clip(np.where(negative, -x - 1, x), 0, 32767)
    exponent = np.where(magnitude < 256, 0, _floor_log2(np.maximum(magnitude, 1)) - 7)
    shift = np.where(exponent == 0, 4, exponent + 3)
    mantissa = (magnitude >> shift) & 0x0F
    code = (exponent << 4) | mantissa
    mask = np.where(negative, 0x55, 0xD5)
    return ((code ^ mask) & 0xFF).astype(np.uint8).tobytes()
