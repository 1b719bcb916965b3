"""G.711 tables and encoders against the standard library's reference (audioop)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from sipclient.media import g711

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # the CPython reference implementation of G.711, removed in 3.13

ALL_CODES = bytes(range(256))
ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)


def test_ulaw_table_matches_reference() -> None:
    ref = np.frombuffer(audioop.ulaw2lin(ALL_CODES, 2), dtype=np.int16)
    assert np.array_equal(g711.ULAW_TABLE, ref)


def test_alaw_table_matches_reference() -> None:
    ref = np.frombuffer(audioop.alaw2lin(ALL_CODES, 2), dtype=np.int16)
    assert np.array_equal(g711.ALAW_TABLE, ref)


def test_ulaw_encode_is_bit_exact_for_every_sample() -> None:
    assert g711.ulaw_encode(ALL_SAMPLES) == audioop.lin2ulaw(ALL_SAMPLES.tobytes(), 2)


def test_alaw_encode_is_bit_exact_for_every_sample() -> None:
    assert g711.alaw_encode(ALL_SAMPLES) == audioop.lin2alaw(ALL_SAMPLES.tobytes(), 2)


@pytest.mark.parametrize(
    ("encode", "decode"),
    [(g711.ulaw_encode, g711.ulaw_decode), (g711.alaw_encode, g711.alaw_decode)],
)
def test_decoded_values_survive_a_round_trip(encode, decode) -> None:  # type: ignore[no-untyped-def]
    values = decode(ALL_CODES)
    assert np.array_equal(decode(encode(values)), values)


def test_silence_bytes_decode_to_near_zero() -> None:
    assert g711.ulaw_decode(bytes([g711.ULAW_SILENCE]))[0] == 0
    assert abs(int(g711.alaw_decode(bytes([g711.ALAW_SILENCE]))[0])) <= 8
