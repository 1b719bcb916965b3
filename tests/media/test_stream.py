"""The sans-IO RTP receive core, driven with explicit times (no sockets, no sleeps)."""

from __future__ import annotations

import numpy as np
import pytest

from sipclient.media.decoders import encode
from sipclient.media.frames import AudioFrame
from sipclient.media.g711 import ULAW_TABLE
from sipclient.media.stream import MediaFormat, RtpStream
from tests.media.conftest import Collector, rtp_packet

SDP = ("127.0.0.1", 40000)
ELSEWHERE = ("127.0.0.2", 40002)
FMT = MediaFormat("PCMU", 0, telephone_event=101)


def marked(code: int) -> bytes:
    """A 20 ms PCMU payload whose every sample is ULAW_TABLE[code]: identifies a packet."""
    return bytes([code]) * 160


def level_of(code: int) -> int:
    return int(ULAW_TABLE[code])


class Feeder:
    """Sends packets `i` of a 50 pps stream with the right times."""

    def __init__(self, stream: RtpStream, *, seq0: int = 1000, ts0: int = 5000) -> None:
        self.stream = stream
        self.out = Collector()
        self.seq0, self.ts0 = seq0, ts0

    def send(
        self,
        i: int,
        *,
        at: float | None = None,
        pt: int = 0,
        ssrc: int = 7,
        src: tuple[str, int] = SDP,
        payload: bytes | None = None,
        seq: int | None = None,
        ts: int | None = None,
    ) -> list[AudioFrame]:
        data = rtp_packet(
            self.seq0 + i if seq is None else seq,
            self.ts0 + 160 * i if ts is None else ts,
            marked(i % 100 + 1) if payload is None else payload,
            pt=pt,
            ssrc=ssrc,
        )
        frames = self.stream.receive(data, src, 0.02 * i if at is None else at)
        for f in frames:
            self.out(f)
        return frames

    def finish(self, now: float | None = None) -> None:
        for f in self.stream.finish(now):
            self.out(f)

    def packet_levels(self) -> list[int]:
        """The marker level of each 160-sample slot of the output (0 for filled)."""
        pcm = self.out.pcm
        return [int(pcm[k]) for k in range(0, len(pcm), 160)]


def test_in_order_stream_plays_immediately() -> None:
    f = Feeder(RtpStream(FMT, SDP))
    for i in range(10):
        assert len(f.send(i)) == 1
    assert f.packet_levels() == [level_of(i + 1) for i in range(10)]
    assert f.stream.stats.packets == 10 and f.stream.stats.lost == 0
    assert f.out.frames[0].media_ms == 0 and f.out.frames[-1].media_ms == 180


def test_reordered_packets_are_put_back_in_order() -> None:
    f = Feeder(RtpStream(FMT, SDP))
    for i in [0, 1, 3, 2, 4, 6, 5, 7]:
        f.send(i)
    f.finish()
    assert f.packet_levels() == [level_of(i + 1) for i in range(8)]
    assert f.stream.stats.reordered == 2
    assert f.stream.stats.lost == 0


def test_duplicates_are_dropped_and_counted() -> None:
    f = Feeder(RtpStream(FMT, SDP))
    for i in [0, 1, 1, 2, 0, 3, 3]:
        f.send(i)
    f.finish()
    assert f.packet_levels() == [level_of(i + 1) for i in range(4)]
    assert f.stream.stats.duplicates == 3


def test_sequence_wrap_is_seamless() -> None:
    f = Feeder(RtpStream(FMT, SDP), seq0=65530, ts0=2**32 - 800)  # both wrap
    for i in [0, 1, 2, 3, 4, 6, 5, 7, 8, 9, 10, 11]:
        f.send(i)
    f.finish()
    assert f.packet_levels() == [level_of(i + 1) for i in range(12)]
    assert f.stream.stats.lost == 0 and f.stream.stats.reordered == 1
    assert f.out.samples == 12 * 160


def test_lost_packets_become_silence_of_their_length() -> None:
    f = Feeder(RtpStream(FMT, SDP, window=3))
    for i in [0, 1, 4, 5, 6, 7, 8]:  # 2 and 3 never come
        f.send(i)
    f.finish()
    assert f.stream.stats.lost == 2
    levels = f.packet_levels()
    assert levels[2] == 0 and levels[3] == 0 and levels[4] == level_of(5)
    assert f.out.samples == 9 * 160
    assert f.stream.stats.filled_ms == 40


def test_a_late_packet_after_its_gap_was_filled_is_dropped() -> None:
    f = Feeder(RtpStream(FMT, SDP, window=2))
    for i in [0, 2, 3, 4]:
        f.send(i)
    f.send(1)
    f.finish()
    assert f.stream.stats.late == 1 and f.stream.stats.lost == 1
    assert f.out.samples == 5 * 160


def test_timer_releases_packets_held_behind_a_gap() -> None:
    stream = RtpStream(FMT, SDP, window=50, max_hold=0.1)
    f = Feeder(stream)
    f.send(0, at=0.0)
    assert f.send(2, at=0.04) == []  # 1 is missing: held
    deadline = stream.next_deadline()
    assert deadline == pytest.approx(0.14)
    assert stream.handle_timer(0.13) == []
    frames = stream.handle_timer(0.14)
    assert [len(fr.pcm) for fr in frames] == [160, 160] and frames[0].filled
    assert stream.next_deadline() is None


def test_ssrc_change_continues_in_time() -> None:
    f = Feeder(RtpStream(FMT, SDP))
    for i in range(5):
        f.send(i, ssrc=1)
    # A new SSRC with unrelated numbers, 100 ms after the old stream's last packet ended.
    for k in range(5):
        f.send(k, ssrc=2, seq=100 + k, ts=900_000 + 160 * k, at=0.10 + 0.1 + 0.02 * k)
    f.finish()
    stats = f.stream.stats
    assert stats.ssrc_changes == 1 and stats.lost == 0
    pcm = f.out.pcm
    assert len(pcm) == 5 * 160 + 800 + 5 * 160  # 100 ms of silence between
    assert (pcm[800:1600] == 0).all()
    # A straggler of the old SSRC does not flip the stream back.
    f.send(5, ssrc=1, at=0.5)
    assert f.stream.stats.late == 1


def test_back_to_back_ssrc_change_adds_no_silence() -> None:
    f = Feeder(RtpStream(FMT, SDP))
    for i in range(5):
        f.send(i, ssrc=1)
    for i in range(5, 10):
        f.send(i, ssrc=2, seq=7 + i, ts=123 + 160 * i)
    f.finish()
    assert f.out.samples == 10 * 160
    assert f.stream.stats.filled_samples == 0


def test_telephone_events_and_comfort_noise_are_skipped_but_keep_time() -> None:
    f = Feeder(RtpStream(FMT, SDP))
    f.send(0)
    f.send(1, pt=101, payload=b"\x05\x0a\x00\xa0", ts=5000 + 160)  # DTMF 5
    f.send(2, pt=101, payload=b"\x05\x8a\x01\x40", ts=5000 + 160)  # its end
    f.send(3, pt=13, payload=b"\x40", ts=5000 + 480)  # comfort noise
    f.send(4, ts=5000 + 160 * 4)
    f.finish()
    stats = f.stream.stats
    assert stats.events == 2 and stats.comfort_noise == 1 and stats.lost == 0
    assert stats.garbage == 0
    levels = f.packet_levels()
    assert levels == [level_of(1), 0, 0, 0, level_of(5)]


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"\x80",
        b"hello, this is not RTP at all",
        bytes([0x40, 0]) + b"\x00" * 170,  # version 1
        rtp_packet(1, 1, b"")[:11],  # truncated header
        rtp_packet(1, 1, b""),  # no payload
        bytes([0x8F, 0]) + b"\x00" * 20,  # 15 CSRCs announced, not there
        bytes([0x81, 200, 0, 6]) + b"\x00" * 24,  # RTCP sender report
        bytes([0x81, 201, 0, 1]) + b"\x00" * 4,  # RTCP receiver report
        rtp_packet(1, 1, b"\x00" * 160, pt=96),  # payload type not negotiated
        bytes([0xA0, 0]) + b"\x00" * 10 + b"\x00" * 10 + b"\xff",  # padding longer than packet
    ],
)
def test_garbage_is_counted_and_dropped(datagram: bytes) -> None:
    stream = RtpStream(FMT, SDP)
    assert stream.receive(datagram, SDP, 0.0) == []
    assert stream.stats.garbage == 1
    assert stream.stats.packets == 0


def test_random_bytes_never_crash() -> None:
    rng = np.random.default_rng(1)
    stream = RtpStream(MediaFormat("G722", 9, telephone_event=101), SDP)
    for _ in range(3000):
        size = int(rng.integers(0, 300))
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        stream.receive(data, SDP, 0.0)
    stream.finish(1.0)
    s = stream.stats
    assert s.garbage + s.packets == 3000


def test_latch_to_sdp_address_then_ignore_others() -> None:
    f = Feeder(RtpStream(FMT, SDP))
    f.send(0, src=SDP)
    f.send(1, src=ELSEWHERE, payload=marked(90), ssrc=99)
    f.send(1, src=SDP)
    f.send(2, src=ELSEWHERE, payload=marked(90), ssrc=7)  # even with the same SSRC
    f.send(2, src=SDP)
    f.finish()
    assert f.stream.latched == SDP
    assert f.stream.stats.foreign == 2
    assert f.packet_levels() == [level_of(1), level_of(2), level_of(3)]


def test_same_host_other_port_waits_like_any_source_the_sdp_does_not_name() -> None:
    # one carrier's media gateway sends every call from one IP: a stream on our port
    # from that IP and another port may be an earlier call's (a port reused after a
    # kill -9), so it gets the probation and the grace, not the latch at once
    f = Feeder(RtpStream(FMT, SDP, sdp_grace=0.5))
    gateway = ("127.0.0.1", 40010)
    for i in range(25):  # 0.48 s
        assert f.send(i, src=gateway) == []
    assert f.stream.latched is None
    assert len(f.send(25, src=gateway)) == 26  # grace over: every held packet is played
    assert f.stream.latched == gateway


def test_a_stale_stream_on_the_port_loses_to_the_sdp_source_and_is_never_heard() -> None:
    f = Feeder(RtpStream(FMT, SDP, sdp_grace=1.0))
    stale = ("127.0.0.1", 40010)
    for i in range(15):  # an earlier call's announcement, still arriving
        f.send(i, src=stale, payload=marked(90), ssrc=99)
    for i in range(15, 60):  # this call's media starts 0.3 s later; the stale one goes on
        f.send(i, src=stale, payload=marked(90), ssrc=99)
        f.send(i, src=SDP)
    f.finish()
    assert f.stream.latched == SDP
    assert level_of(90) not in f.packet_levels()
    assert f.stream.stats.foreign >= 45


def test_the_sdp_source_takes_over_from_a_source_latched_before_it_sent() -> None:
    f = Feeder(RtpStream(FMT, SDP, sdp_grace=0.0))
    f.send(0, src=ELSEWHERE, payload=marked(90), ssrc=99)
    f.send(1, src=ELSEWHERE, payload=marked(90), ssrc=99)
    assert f.stream.latched == ELSEWHERE
    f.send(2, src=SDP)
    f.send(3, src=ELSEWHERE, payload=marked(90), ssrc=99)
    f.send(3, src=SDP)
    f.finish()
    assert f.stream.latched == SDP and f.stream.stats.relatches == 1
    assert f.packet_levels()[-2:] == [level_of(3), level_of(4)]


def test_source_unlike_sdp_latches_after_probation_and_keeps_those_packets() -> None:
    f = Feeder(RtpStream(FMT, SDP, probation=3, sdp_grace=0.0))
    assert f.send(0, src=ELSEWHERE) == []
    assert f.send(1, src=ELSEWHERE) == []
    assert len(f.send(2, src=ELSEWHERE)) == 3
    assert f.stream.latched == ELSEWHERE
    f.finish()
    assert f.packet_levels() == [level_of(1), level_of(2), level_of(3)]


def test_probation_needs_consecutive_packets_from_one_source() -> None:
    f = Feeder(RtpStream(FMT, SDP, probation=2, sdp_grace=0.0))
    f.send(0, src=ELSEWHERE)
    f.send(2, src=ELSEWHERE)  # not consecutive: probation restarts
    assert f.stream.latched is None
    f.send(3, src=ELSEWHERE)
    assert f.stream.latched == ELSEWHERE
    f.finish()
    assert f.stream.stats.foreign == 1


def test_relatch_after_the_latched_source_went_silent() -> None:
    f = Feeder(RtpStream(FMT, SDP, relatch_idle=1.0))
    for i in range(3):
        f.send(i, src=SDP)
    f.send(3, src=ELSEWHERE, ssrc=8, at=0.5)  # too soon: foreign
    assert f.stream.stats.foreign == 1
    f.send(50, src=ELSEWHERE, ssrc=8, at=1.5)
    f.send(51, src=ELSEWHERE, ssrc=8, at=1.52)
    assert f.stream.latched == ELSEWHERE and f.stream.stats.relatches == 1
    f.finish()
    assert f.out.samples == round(1.52 * 8000) + 160


def test_new_sdp_address_unlatches() -> None:
    stream = RtpStream(FMT, SDP)
    stream.receive(rtp_packet(1, 1, marked(1)), SDP, 0.0)
    stream.set_remote(ELSEWHERE)
    assert stream.latched is None
    assert stream.receive(rtp_packet(2, 161, marked(1)), ELSEWHERE, 0.02)
    assert stream.latched == ELSEWHERE


def test_timestamp_jump_unsupported_by_arrival_is_rebased() -> None:
    f = Feeder(RtpStream(FMT, SDP))
    for i in range(3):
        f.send(i)
    f.send(3, ts=5000 + 160 * 3 + 8000 * 600)  # +10 minutes, 20 ms later
    f.finish()
    assert f.stream.stats.rebased == 1
    assert f.out.samples == 4 * 160


def test_timestamp_gap_supported_by_arrival_is_filled() -> None:
    f = Feeder(RtpStream(FMT, SDP))
    f.send(0)
    f.send(1, ts=5000 + 160 + 16000, at=2.02)  # DTX: 2 s without packets
    f.finish()
    assert f.stream.stats.rebased == 0
    assert f.out.samples == 160 + 16000 + 160


def test_finish_pads_to_the_end_of_the_call() -> None:
    f = Feeder(RtpStream(FMT, SDP))
    for i in range(5):
        f.send(i)
    f.finish(now=3.1)  # the far end stopped sending at 0.1 s, the call ended at 3.1 s
    assert f.out.samples == round(3.1 * 8000)
    assert f.out.frames[-1].filled


def test_drop_hook_is_deterministic() -> None:
    def run() -> tuple[int, int]:
        f = Feeder(RtpStream(FMT, SDP, drop_fraction=0.05, drop_seed=42))
        for i in range(1000):
            f.send(i)
        f.finish()
        assert f.out.samples == 1000 * 160  # every loss filled: time kept
        return f.stream.stats.test_dropped, f.stream.stats.lost

    first = run()
    assert first == run()
    assert 25 <= first[0] <= 75 and first[1] == first[0]


def test_codec_switch_to_another_static_type_is_decoded() -> None:
    stream = RtpStream(FMT, SDP)
    out = stream.receive(rtp_packet(1, 0, encode("PCMA", np.full(160, 1000))), SDP, 0.0)
    out += stream.receive(rtp_packet(1, 0, b"\x00" * 160, pt=8), SDP, 0.0)  # duplicate seq
    assert stream.stats.duplicates == 1
    assert len(out) == 1


def test_g722_stream_decodes_to_8k() -> None:
    sine = np.round(8000 * np.sin(2 * np.pi * 1000 * np.arange(1600) / 8000)).astype(np.int16)
    payload = encode("G722", sine)
    f = Feeder(RtpStream(MediaFormat("G722", 9), SDP))
    for i in range(10):
        f.send(i, pt=9, payload=payload[160 * i : 160 * (i + 1)])
    f.finish()
    assert f.out.samples == 1600


def test_a_duplicate_within_the_played_ring_is_a_duplicate_beyond_it_late() -> None:
    # The played ring remembers the last 64 sequence numbers: a copy of a packet
    # played 10 packets ago is a duplicate, one of a packet played 100 ago is late.
    f = Feeder(RtpStream(FMT, SDP))
    for i in range(110):
        f.send(i)
    f.send(100, at=0.02 * 110)
    f.send(5, at=0.02 * 110)
    assert f.stream.stats.duplicates == 1 and f.stream.stats.late == 1
    assert f.out.samples == 110 * 160


def test_in_order_fast_path_and_held_path_give_the_same_audio() -> None:
    # Packets in order skip the hold buffer; after a reordering the buffer is used
    # until it empties again. The output must be the same continuous signal.
    order = list(range(40))
    order[10], order[11] = order[11], order[10]
    order[20], order[23] = order[23], order[20]
    shuffled = Feeder(RtpStream(FMT, SDP))
    for i in order:
        shuffled.send(i, at=0.02 * max(i, order.index(i)))
    shuffled.finish()
    straight = Feeder(RtpStream(FMT, SDP))
    for i in range(40):
        straight.send(i)
    straight.finish()
    assert np.array_equal(shuffled.out.pcm, straight.out.pcm)
    assert shuffled.packet_levels() == [level_of(i + 1) for i in range(40)]
    # 10 after 11; 21, 22 and 20 after 23
    assert shuffled.stream.stats.reordered == 4 and shuffled.stream.stats.lost == 0
