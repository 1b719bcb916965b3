"""The asyncio receiver over real UDP on 127.0.0.1: a plain socket is the far end."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sipclient.config import PortRange
from sipclient.media.decoders import encode
from sipclient.media.frames import Tee
from sipclient.media.g711 import ULAW_SILENCE, ULAW_TABLE
from sipclient.media.ports import PortPool
from sipclient.media.recorder import Recorder
from sipclient.media.rtp import KeepAlive, RtpReceiver, StreamOptions
from sipclient.media.stream import MediaFormat
from tests.media.conftest import Collector, Peer, dominant_frequency, rms, rtp_packet, tone

NO_PAD = StreamOptions(pad_to_end=False)
PCMU_101 = MediaFormat("PCMU", 0, 101)
QUIET = KeepAlive(burst=0, interval=0)


async def until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    """Wait for the receiver to have taken what the peer sent (loopback is fast)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out waiting for RTP")
        await asyncio.sleep(0.005)


@pytest.fixture
async def pool(port_range: PortRange) -> AsyncIterator[PortPool]:
    p = PortPool(port_range, "127.0.0.1")
    yield p
    assert p.in_use == 0, "a test leaked a port lease"


async def open_rx(
    pool: PortPool,
    peer: Peer,
    sink: Callable[..., None],
    fmt: MediaFormat = PCMU_101,
    options: StreamOptions = NO_PAD,
    keepalive: KeepAlive = QUIET,
) -> RtpReceiver:
    return await RtpReceiver.open(
        pool.allocate(), fmt, peer.addr, sink, keepalive=keepalive, options=options
    )


@pytest.mark.parametrize(
    ("codec", "pt", "freq"),
    [("PCMU", 0, 1000.0), ("PCMA", 8, 425.0), ("G722", 9, 1400.0), ("PCMU", 0, 3200.0)],
)
async def test_sine_through_rtp_to_wav_keeps_frequency_and_level(
    pool: PortPool, peer: Peer, tmp_path: Path, codec: str, pt: int, freq: float
) -> None:
    sine = tone(freq, 1.0, level=12000)
    payload = encode(codec, sine)
    recorder = Recorder(tmp_path / "call.wav")
    collector = Collector()
    rx = await open_rx(pool, peer, Tee(recorder, collector), MediaFormat(codec, pt))
    for i in range(50):
        peer.send(
            rtp_packet(7000 + i, 160 * i, payload[160 * i : 160 * (i + 1)], pt=pt), rx.local_port
        )
    await until(lambda: rx.stats.packets == 50)
    stats = await rx.close()
    result = recorder.close()
    assert stats.lost == 0 and stats.garbage == 0
    assert rx.media_started.is_set()
    data, rate = sf.read(str(result.path), dtype="int16")
    assert rate == 8000 and len(data) == 8000 == result.frames
    steady = data[400:]
    assert dominant_frequency(steady) == pytest.approx(freq, abs=10)
    assert rms(steady) == pytest.approx(rms(sine), rel=0.1)


async def test_reorder_duplicates_and_wrap_over_udp(pool: PortPool, peer: Peer) -> None:
    out = Collector()
    rx = await open_rx(pool, peer, out)
    order = [0, 1, 2, 4, 3, 5, 5, 6, 8, 7, 9, 9, 10, 11]
    for i in order:
        peer.send(rtp_packet(65530 + i, 160 * i, bytes([i + 1]) * 160), rx.local_port)
    await until(lambda: rx.stats.packets == len(order))
    stats = await rx.close()
    assert stats.duplicates == 2 and stats.reordered == 2 and stats.lost == 0
    levels = [int(out.pcm[k]) for k in range(0, len(out.pcm), 160)]
    assert levels == [int(ULAW_TABLE[i + 1]) for i in range(12)]


async def test_ssrc_change_over_udp_continues_in_time(pool: PortPool, peer: Peer) -> None:
    out = Collector()
    rx = await open_rx(pool, peer, out)
    for i in range(5):
        peer.send(rtp_packet(10 + i, 160 * i, b"\x10" * 160, ssrc=1), rx.local_port)
    for i in range(5):
        peer.send(rtp_packet(50000 + i, 3_000_000 + 160 * i, b"\x20" * 160, ssrc=2), rx.local_port)
    await until(lambda: rx.stats.packets == 10)
    stats = await rx.close()
    assert stats.ssrc_changes == 1
    assert out.frames[0].start == 0
    assert out.samples >= 10 * 160  # never reset to zero: both streams, in order
    assert out.pcm[0] != 0 and out.pcm[-1] != 0 and out.pcm[0] != out.pcm[-1]


async def test_events_cn_and_garbage_are_skipped_over_udp(pool: PortPool, peer: Peer) -> None:
    out = Collector()
    rx = await open_rx(pool, peer, out)
    port = rx.local_port
    peer.send(rtp_packet(1, 0, b"\x55" * 160), port)
    peer.send(rtp_packet(2, 160, b"\x05\x0a\x00\xa0", pt=101), port)  # telephone-event
    peer.send(rtp_packet(3, 320, b"\x40", pt=13), port)  # comfort noise
    garbage = [
        b"\x00" * 3,  # truncated
        np.random.default_rng(5).integers(0, 256, 172, dtype=np.uint8).tobytes(),
        bytes([0x80, 200, 0, 6]) + b"\x00" * 24,  # RTCP SR
        bytes([0x40, 0]) + b"\x00" * 170,  # version 1
        rtp_packet(4, 480, b"\x00" * 160, pt=97),  # unknown payload type
    ]
    for g in garbage:
        peer.send(g, port)
    peer.send(rtp_packet(4, 480, b"\x55" * 160), port)
    await until(lambda: rx.stats.packets + rx.stats.garbage >= 4 + len(garbage))
    stats = await rx.close()
    assert stats.events == 1 and stats.comfort_noise == 1
    assert stats.garbage == len(garbage) and stats.rtcp == 1 and stats.unknown_pt == 1
    assert out.samples == 4 * 160  # the skipped 40 ms came back as silence
    assert (out.pcm[160:480] == 0).all()


async def test_other_sources_are_ignored_once_latched(
    pool: PortPool, peer: Peer, other_peer: Peer
) -> None:
    out = Collector()
    rx = await open_rx(pool, peer, out)
    for i in range(6):
        peer.send(rtp_packet(i, 160 * i, b"\x30" * 160), rx.local_port)
        other_peer.send(rtp_packet(i, 160 * i, b"\x90" * 160, ssrc=666), rx.local_port)
    await until(lambda: rx.stats.packets + rx.stats.foreign == 12)
    stats = await rx.close()
    assert stats.latched == peer.addr
    assert stats.foreign == 6 and stats.packets == 6
    assert set(out.pcm.tolist()) == {int(ULAW_TABLE[0x30])}


async def test_gaps_are_filled_so_wav_time_is_stream_time(
    pool: PortPool, peer: Peer, tmp_path: Path
) -> None:
    recorder = Recorder(tmp_path / "gaps.wav")
    rx = await open_rx(pool, peer, recorder)
    sent = [i for i in range(100) if i % 7 != 3]  # ~14 % loss, never the last
    for i in sent:
        peer.send(rtp_packet(i, 160 * i, b"\x40" * 160), rx.local_port)
    await until(lambda: rx.stats.packets == len(sent))
    stats = await rx.close()
    result = recorder.close()
    assert stats.lost == 100 - len(sent)
    assert result.frames == 100 * 160 == sf.info(str(result.path)).frames


async def test_max_seconds_truncates_the_recording(
    pool: PortPool, peer: Peer, tmp_path: Path
) -> None:
    recorder = Recorder(tmp_path / "cut.wav", max_seconds=0.5)
    rx = await open_rx(pool, peer, recorder)
    for i in range(60):  # 1.2 s
        peer.send(rtp_packet(i, 160 * i, b"\x40" * 160), rx.local_port)
    await until(lambda: rx.stats.packets == 60)
    await rx.close()
    result = recorder.close()
    assert result.truncated and result.bound == "max_seconds"
    assert result.frames == 4000 == sf.info(str(result.path)).frames


async def test_no_media_still_gives_a_zero_frame_wav(
    pool: PortPool, peer: Peer, tmp_path: Path
) -> None:
    recorder = Recorder(tmp_path / "silent.wav")
    rx = await open_rx(pool, peer, recorder, options=StreamOptions())
    await asyncio.sleep(0.05)
    stats = await rx.close()
    result = recorder.close()
    assert stats.packets == 0 and not rx.media_started.is_set()
    assert result.frames == 0 and sf.info(str(result.path)).frames == 0


async def test_keepalives_come_from_our_receive_port(pool: PortPool, peer: Peer) -> None:
    rx = await open_rx(
        pool, peer, Collector(), keepalive=KeepAlive(burst=3, burst_interval=0.01, interval=0)
    )
    got: list[tuple[bytes, int]] = []
    peer.sock.setblocking(False)
    loop = asyncio.get_running_loop()
    for _ in range(3):
        data, addr = await asyncio.wait_for(loop.sock_recvfrom(peer.sock, 2048), 2.0)
        got.append((data, addr[1]))
    await rx.close()
    assert all(port == rx.local_port for _, port in got)  # symmetric RTP
    seqs = [int.from_bytes(d[2:4], "big") for d, _ in got]
    assert seqs == [(seqs[0] + k) & 0xFFFF for k in range(3)]
    assert all(
        d[0] == 0x80 and d[1] & 0x7F == 0 and d[12:] == bytes([ULAW_SILENCE]) * 160 for d, _ in got
    )


async def test_keepalives_follow_the_latched_source(
    pool: PortPool, peer: Peer, other_peer: Peer
) -> None:
    # The SDP names `peer`, but the media comes from `other_peer` (a carrier's media server).
    rx = await open_rx(
        pool,
        peer,
        Collector(),
        options=StreamOptions(pad_to_end=False, sdp_grace=0.1),
        keepalive=KeepAlive(burst=1, interval=0.05),
    )
    for i in range(8):
        other_peer.send(rtp_packet(i, 160 * i, b"\x40" * 160), rx.local_port)
        await asyncio.sleep(0.02)
    await until(lambda: rx.stats.latched == other_peer.addr)
    other_peer.sock.setblocking(False)
    data, addr = await asyncio.wait_for(
        asyncio.get_running_loop().sock_recvfrom(other_peer.sock, 2048), 2.0
    )
    await rx.close()
    assert addr[1] == rx.local_port and len(data) == 172


async def test_sink_errors_do_not_stop_the_media(pool: PortPool, peer: Peer) -> None:
    out = Collector()

    def broken(_frame: object) -> None:
        raise ValueError("classifier bug")

    tee = Tee(broken, out)
    rx = await open_rx(pool, peer, tee)
    for i in range(5):
        peer.send(rtp_packet(i, 160 * i, b"\x40" * 160), rx.local_port)
    await until(lambda: rx.stats.packets == 5)
    await rx.close()
    assert rx.sink_errors == 5 and out.samples == 5 * 160


async def test_loss_hook_drops_a_seeded_fraction(pool: PortPool, peer: Peer) -> None:
    out = Collector()
    rx = await open_rx(
        pool, peer, out, options=StreamOptions(pad_to_end=False, drop_fraction=0.05, drop_seed=7)
    )
    for i in range(400):
        peer.send(rtp_packet(i, 160 * i, b"\x40" * 160), rx.local_port)
        if i % 20 == 19:  # stay well inside the socket's receive buffer
            await until(lambda n=i + 1: rx.stats.packets + rx.stats.test_dropped == n)
    stats = await rx.close()
    draws = random.Random(7)
    dropped = [i for i in range(400) if draws.random() < 0.05]
    assert stats.test_dropped == len(dropped) and 5 <= len(dropped) <= 40
    kept_last = max(set(range(400)) - set(dropped))
    assert out.samples == (kept_last + 1) * 160  # every loss inside filled: time kept
    assert stats.lost == len([i for i in dropped if i < kept_last])


async def test_close_releases_the_port_and_is_idempotent(pool: PortPool, peer: Peer) -> None:
    rx = await open_rx(pool, peer, Collector())
    assert pool.in_use == 1
    first = await rx.close()
    assert pool.in_use == 0
    assert await rx.close() is first


async def test_timer_releases_audio_held_behind_a_gap(pool: PortPool, peer: Peer) -> None:
    out = Collector()
    rx = await open_rx(pool, peer, out, options=StreamOptions(pad_to_end=False, window=50))
    peer.send(rtp_packet(1, 0, b"\x40" * 160), rx.local_port)
    peer.send(rtp_packet(3, 320, b"\x41" * 160), rx.local_port)  # 2 never comes
    await until(lambda: out.samples == 3 * 160)  # no more packets: only the timer can do it
    stats = await rx.close()
    assert stats.lost == 1 and out.frames[1].filled


async def test_a_backlog_is_read_in_one_wake_up_not_one_packet_per_loop_turn(
    pool: PortPool, peer: Peer
) -> None:
    """With a busy loop, one datagram per loop iteration left each socket further
    behind for the whole call (rtp.py's docstring): what waits is read at once."""
    out = Collector()
    rx = await open_rx(pool, peer, out)
    for i in range(40):  # all of it queued in the socket before the loop turns again
        peer.send(rtp_packet(100 + i, 160 * i, b"\x30" * 160), rx.local_port)
    for _ in range(3):  # three turns of the loop: the reader runs once or twice
        await asyncio.sleep(0)
    received = rx.stats.packets
    await rx.close()
    assert received == 40
