"""Codec decoders: a known sine keeps its frequency and level; G.722 is down-sampled cleanly."""

from __future__ import annotations

import G722
import numpy as np
import pytest

from sipclient.media.decoders import (
    Downsampler,
    G722Decoder,
    UnknownCodec,
    encode,
    make_decoder,
)
from tests.media.conftest import dominant_frequency, rms, tone


@pytest.mark.parametrize("codec", ["PCMU", "PCMA", "G722", "pcmu"])
@pytest.mark.parametrize("freq", [440.0, 1000.0, 3000.0])
def test_sine_survives_encode_and_packetised_decode(codec: str, freq: float) -> None:
    sine = tone(freq, 1.0, level=10000)
    payload = encode(codec, sine)
    decoder = make_decoder(codec)
    out = np.concatenate(
        [decoder.decode(payload[i : i + 160]) for i in range(0, len(payload), 160)]
    )
    assert len(out) == len(sine)
    steady = out[400:]  # past G.722's start-up
    assert dominant_frequency(steady) == pytest.approx(freq, abs=10)
    assert rms(steady) == pytest.approx(rms(sine), rel=0.1)


def test_downsampler_rejects_what_would_alias() -> None:
    t = np.arange(16000) / 16000
    high = np.round(10000 * np.sin(2 * np.pi * 6000 * t)).astype(np.int16)  # aliases to 2 kHz
    out = np.concatenate([Downsampler().process(high[i : i + 320]) for i in range(0, 16000, 320)])
    assert len(out) == 8000
    assert rms(out[100:]) < rms(high) * 0.02


def test_downsampler_is_seamless_across_chunks() -> None:
    t = np.arange(3200) / 16000
    low = np.round(10000 * np.sin(2 * np.pi * 500 * t)).astype(np.int16)
    whole = Downsampler().process(low)
    chunked_dec = Downsampler()
    chunked = np.concatenate([chunked_dec.process(low[i : i + 320]) for i in range(0, 3200, 320)])
    assert np.array_equal(whole, chunked)


def test_g722_decoder_matches_library_at_16k_then_halves() -> None:
    wide = np.round(8000 * np.sin(2 * np.pi * 700 * np.arange(3200) / 16000)).astype(np.int16)
    payload = bytes(G722.G722(16000, 64000).encode(wide))
    out = make_decoder("G722").decode(payload)
    assert len(out) == len(wide) // 2
    assert dominant_frequency(out[50:]) == pytest.approx(700, abs=15)


def test_unknown_codec_is_a_clear_error() -> None:
    with pytest.raises(UnknownCodec, match="OPUS"):
        make_decoder("OPUS")
    with pytest.raises(UnknownCodec):
        encode("GSM", [0])


def test_g722_native_8k_mode_also_keeps_the_tone() -> None:
    sine = tone(1000, 0.5, level=10000)
    payload = encode("G722", sine)
    decoder = G722Decoder(native_8k=True)
    chunks = [payload[i : i + 160] for i in range(0, len(payload), 160)]
    out = np.concatenate([decoder.decode(chunk) for chunk in chunks])
    assert len(out) == len(sine)
    assert dominant_frequency(out[400:]) == pytest.approx(1000, abs=10)
    assert rms(out[400:]) == pytest.approx(rms(sine), rel=0.15)
