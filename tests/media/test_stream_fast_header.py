"""The `struct` fast path for plain RTP headers gives what aiortc's parser gives.

`stream._FAST_HEADER` reads a plain header (version 2, no padding, no CSRC, no
extension) with `struct`; everything else goes to aiortc's `RtpPacket.parse`.
These tests run the same datagrams through a stream with the fast path and one
with it turned off (aiortc for every packet) and want the same frames, bit for
bit, and the same counters; and they check the fast path was actually taken.
"""

from __future__ import annotations

import random
import struct
from typing import Any

import numpy as np
import pytest
from aiortc.rtp import RtpPacket

from sipclient.media import stream as stream_module
from sipclient.media.stream import MediaFormat, RtpStream
from tests.media.conftest import rtp_packet

SDP = ("127.0.0.1", 40000)
OTHER = ("127.0.0.3", 40010)
FMT = MediaFormat("PCMU", 0, telephone_event=101)


class CountingParse:
    """Stands in for `RtpPacket` in stream.py and counts the parses aiortc does."""

    calls = 0

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        cls.calls += 1
        return RtpPacket.parse(data)


def run(datagrams: list[tuple[bytes, Any, float]], fast: bool, fmt: MediaFormat = FMT) -> Any:
    """Frames (start, filled, pcm bytes), counters and aiortc parses for `datagrams`."""
    mp = pytest.MonkeyPatch()
    mp.setattr(stream_module, "_FAST_HEADER", fast)
    mp.setattr(stream_module, "RtpPacket", CountingParse)
    CountingParse.calls = 0
    try:
        s = RtpStream(fmt, SDP, probation=2, sdp_grace=0.2, relatch_idle=0.3)
        frames = []
        errors = []
        for data, addr, now in datagrams:
            try:
                got = s.receive(data, addr, now)
            except Exception as exc:  # a difference in what escapes counts too
                errors.append(type(exc).__name__)
                continue
            frames.extend(got)
            frames.extend(s.handle_timer(now))
        frames.extend(s.finish(datagrams[-1][2] + 0.5))
        out = [(f.start, f.filled, f.pcm.dtype.str, f.pcm.tobytes()) for f in frames]
        return out, s.stats.as_dict(), errors, CountingParse.calls
    finally:
        mp.undo()


def variant(rng: random.Random, seq: int, ts: int, pt: int, ssrc: int, payload: bytes) -> bytes:
    """One datagram for (seq, ts, pt, ssrc, payload), in a random header form."""
    marker = rng.random() < 0.1
    form = rng.choices(
        ["plain", "padding", "csrc", "extension", "bad"], weights=[60, 10, 10, 10, 10]
    )[0]
    second = (0x80 if marker else 0) | pt
    rest = struct.pack("!HLL", seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
    if form == "plain":
        return bytes([0x80, second]) + rest + payload
    if form == "padding":
        pad = rng.randint(1, 8)
        return bytes([0xA0, second]) + rest + payload + bytes(pad - 1) + bytes([pad])
    if form == "csrc":
        cc = rng.randint(1, 15)
        csrcs = b"".join(struct.pack("!L", rng.getrandbits(32)) for _ in range(cc))
        return bytes([0x80 | cc, second]) + rest + csrcs + payload
    if form == "extension":
        words = rng.randint(0, 3)
        profile = rng.choice([0xBEDE, 0x1000, 0x1234])
        value = bytes(rng.getrandbits(8) for _ in range(4 * words))
        return bytes([0x90, second]) + rest + struct.pack("!HH", profile, words) + value + payload
    # the broken forms: no payload, truncated, bad padding, another version, RTCP,
    # CSRCs or an extension announced and not there
    return rng.choice(
        [
            bytes([0x80, second]) + rest,
            (bytes([0x80, second]) + rest)[: rng.randint(0, 11)],
            bytes([0xA0, second]) + rest + payload[:4] + bytes([200]),
            bytes([0x40 | rng.randint(0, 15), second]) + rest + payload,
            bytes([0xC0 | rng.randint(0, 15), second]) + rest + payload,
            bytes([0x80, rng.randint(192, 223)]) + rest + payload,
            bytes([0x8F, second]) + rest[:8],
            bytes([0x90, second]) + rest + struct.pack("!HH", 0xBEDE, 40),
        ]
    )


def random_call(seed: int) -> list[tuple[bytes, Any, float]]:
    """A call's datagrams: in order mostly, with loss, reordering, duplicates, odd
    payload types, SSRC changes, a foreign source and the header forms above."""
    rng = random.Random(seed)
    pts = [0] * 12 + [8, 9, 101, 13, 96, 127, 0, 0]
    out: list[tuple[bytes, Any, float]] = []
    seq, ts, ssrc = rng.getrandbits(16), rng.getrandbits(32), rng.getrandbits(32)
    pending: list[tuple[bytes, Any, float]] = []
    now = 0.0
    for i in range(600):
        now += 0.02
        if rng.random() < 0.01:
            ssrc = rng.getrandbits(32)
            seq, ts = rng.getrandbits(16), rng.getrandbits(32)
        pt = rng.choice(pts)
        size = rng.choice([160, 160, 160, 80, 1, 320])
        payload = bytes(rng.getrandbits(8) for _ in range(size))
        addr: Any = SDP
        if 200 <= i < 260 or rng.random() < 0.02:
            addr = OTHER  # another source: probation, foreign
        elif rng.random() < 0.05:
            addr = (SDP[0], SDP[1], 0, 0)  # an IPv6-style 4-tuple of the same source
        data = variant(rng, seq, ts, pt, ssrc, payload)
        seq, ts = seq + 1, ts + 160
        if rng.random() < 0.03:
            continue  # lost
        if rng.random() < 0.05:
            pending.append((data, addr, now))  # arrives a few packets late
            continue
        out.append((data, addr, now))
        if rng.random() < 0.03:
            out.append((data, addr, now))  # duplicate
        if pending and rng.random() < 0.4:
            late = pending.pop(0)
            out.append((late[0], late[1], now))
    return out


@pytest.mark.parametrize("seed", range(8))
def test_random_calls_give_the_same_frames_and_counters_both_ways(seed: int) -> None:
    datagrams = random_call(seed)
    fast_frames, fast_stats, fast_errors, fast_parses = run(datagrams, fast=True)
    slow_frames, slow_stats, slow_errors, slow_parses = run(datagrams, fast=False)
    assert fast_frames == slow_frames
    assert fast_stats == slow_stats
    assert fast_errors == slow_errors
    # the comparison means something: audio came out, both paths were taken
    assert fast_stats["audio_packets"] > 200 and fast_stats["garbage"] > 10
    assert slow_parses == sum(not stream_module._is_rtcp(d) for d, _, _ in datagrams)
    assert 0 < fast_parses < slow_parses * 0.6


@pytest.mark.parametrize(
    ("fmt", "pts"),
    [
        (MediaFormat("PCMA", 8), [8, 0, 9]),
        (MediaFormat("G722", 9, telephone_event=96), [9, 96, 13, 0]),
        (MediaFormat("PCMU", 97, telephone_event=127), [97, 127, 0, 8, 96]),
    ],
)
def test_codecs_and_dynamic_payload_types_are_the_same_both_ways(
    fmt: MediaFormat, pts: list[int]
) -> None:
    rng = random.Random(7)
    datagrams = []
    for i in range(300):
        payload = bytes(rng.getrandbits(8) for _ in range(160))
        datagrams.append((variant(rng, 100 + i, 160 * i, rng.choice(pts), 5, payload), SDP, i / 50))
    assert run(datagrams, True, fmt)[:3] == run(datagrams, False, fmt)[:3]


PAYLOAD = bytes(range(1, 161))
HEADER = struct.pack("!HLL", 10, 1600, 0xABCD)


@pytest.mark.parametrize(
    ("datagram", "parses"),
    [
        (bytes([0x80, 0]) + HEADER + PAYLOAD, 0),  # plain: struct
        (bytes([0x80, 0x80]) + HEADER + PAYLOAD, 0),  # marker set: still plain
        (bytes([0xA0, 0]) + HEADER + PAYLOAD + bytes([0, 0, 3]), 1),  # 3 bytes of padding
        (bytes([0x82, 0]) + HEADER + bytes(8) + PAYLOAD, 1),  # two CSRCs
        (bytes([0x90, 0]) + HEADER + struct.pack("!HH", 0xBEDE, 1) + bytes(4) + PAYLOAD, 1),
        (bytes([0xB3, 0x80]) + HEADER + bytes(12) + b"\x12\x34\x00\x00" + PAYLOAD + b"\x01", 1),
    ],
)
def test_each_header_form_gives_the_payload_alone(datagram: bytes, parses: int) -> None:
    """Padding, CSRCs and extensions are not audio; a marker bit is not a payload type."""
    frames, stats, errors, aiortc_parses = run([(datagram, SDP, 0.0)], fast=True)
    assert errors == [] and aiortc_parses == parses
    assert stats["audio_packets"] == 1 and stats["bytes"] == len(datagram)
    heard = [f for f in frames if not f[1]]
    assert len(heard) == 1
    expected = stream_module.make_decoder("PCMU").decode(PAYLOAD)
    assert heard[0][3] == expected.tobytes()


def test_a_bare_plain_header_is_garbage_not_an_empty_frame() -> None:
    _, stats, _, aiortc_parses = run([(rtp_packet(1, 1, b""), SDP, 0.0)], fast=True)
    assert stats["garbage"] == 1 and stats["packets"] == 0
    assert aiortc_parses == 1  # 12 bytes are not the fast path's: aiortc says "no payload"


def test_rtcp_with_a_plain_first_byte_is_rtcp() -> None:
    datagram = bytes([0x80, 200]) + HEADER + PAYLOAD
    _, stats, _, aiortc_parses = run([(datagram, SDP, 0.0)], fast=True)
    assert stats["rtcp"] == 1 and stats["garbage"] == 1 and stats["packets"] == 0
    assert aiortc_parses == 0


def test_decoded_frames_are_int16_arrays_of_the_table_values() -> None:
    """The decode by `take` gives what indexing the table gives (values and type)."""
    from sipclient.media import g711

    codes = bytes(range(256))
    for table, decode in ((g711.ULAW_TABLE, g711.ulaw_decode), (g711.ALAW_TABLE, g711.alaw_decode)):
        got = decode(codes)
        want = table[np.frombuffer(codes, dtype=np.uint8)]
        assert got.dtype == want.dtype == np.int16 and got.flags.writeable
        assert np.array_equal(got, want)


@pytest.mark.parametrize("source", [SDP, OTHER])
def test_a_source_given_as_a_4_tuple_is_the_same_source(source: tuple[str, int]) -> None:
    """The latched source skips `_norm`; its IPv6-style 4-tuple form must still match."""
    s = RtpStream(FMT, SDP, probation=2, sdp_grace=0.0)
    as_4_tuple = (source[0], source[1], 0, 0)
    for i in range(8):
        s.receive(rtp_packet(i, 160 * i, PAYLOAD), source if i % 2 else as_4_tuple, i * 0.02)
    assert s.latched == source
    assert s.stats.packets == 8 and s.stats.audio_packets == 8
    assert s.stats.foreign == 0 and s.stats.relatches == 0
