"""Media before the SDP answer (`RtpReceiver.listen`, media/rtp.py): real UDP on
127.0.0.1, a plain socket as the far end. What arrives before the answer waits and
is played from its first packet once the answer comes; a stream already waiting
at `listen` is an earlier call's; without an answer only the PBX's own media,
with no 180/183 said, is played (a 183 lost over UDP)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest

from sipclient.config import PortRange
from sipclient.media import rtp
from sipclient.media.decoders import encode
from sipclient.media.ports import PortPool
from sipclient.media.rtp import KeepAlive, RtpReceiver, StreamOptions
from sipclient.media.stream import MediaFormat
from tests.media.conftest import Collector, Peer, dominant_frequency, rtp_packet, tone

NO_PAD = StreamOptions(pad_to_end=False)
QUIET = KeepAlive(burst=0, interval=0)
PCMU = MediaFormat("PCMU", 0)


@pytest.fixture
async def pool(port_range: PortRange) -> AsyncIterator[PortPool]:
    p = PortPool(port_range, "127.0.0.1")
    yield p
    assert p.in_use == 0, "a test leaked a port lease"


@pytest.fixture(autouse=True)
def short_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rtp, "EARLY_WAIT", 0.2)


def _send(peer: Peer, port: int, freq: float, packets: int, first: int = 0, ssrc: int = 1) -> None:
    audio = encode("PCMU", tone(freq, packets * 0.02 + 0.02, level=10000))
    for i in range(first, first + packets):
        j = i - first
        peer.send(rtp_packet(i, 160 * i, audio[160 * j : 160 * (j + 1)], ssrc=ssrc), port)


async def _listen(
    pool: PortPool, sink: Callable[..., None], ok: Callable[[], bool], peer_ip: str = "127.0.0.1"
) -> RtpReceiver:
    return await RtpReceiver.listen(
        pool.allocate(), sink, peer_ip=peer_ip, unanswered_ok=ok, keepalive=QUIET, options=NO_PAD
    )


async def _settle() -> None:
    await asyncio.sleep(0.05)  # loopback: what was sent has been read


async def test_media_before_the_answer_waits_and_is_played_from_its_first_packet(
    pool: PortPool, peer: Peer
) -> None:
    got = Collector()
    rx = await _listen(pool, got, lambda: False)  # a 183 is on its way: not unanswered
    _send(peer, rx.local_port, 700.0, 10)
    await _settle()
    assert got.frames == []  # waiting for the answer
    rx.answer(PCMU, peer.addr)
    assert len(got.frames) == 10 and rx.stats.before_answer == 10
    _send(peer, rx.local_port, 700.0, 5, first=10)
    await _settle()
    stats = await rx.close()
    assert stats.packets == 15 and stats.lost == 0 and not stats.unanswered
    assert abs(dominant_frequency(got.pcm) - 700) < 20


async def test_the_answer_sets_the_codec_of_what_waited(pool: PortPool, peer: Peer) -> None:
    got = Collector()
    rx = await _listen(pool, got, lambda: False)
    audio = encode("PCMA", tone(425.0, 0.3, level=10000))
    for i in range(10):
        peer.send(rtp_packet(i, 160 * i, audio[160 * i : 160 * (i + 1)], pt=8), rx.local_port)
    await _settle()
    rx.answer(MediaFormat("PCMA", 8), peer.addr)
    stats = await rx.close()
    assert rx.fmt == MediaFormat("PCMA", 8) and stats.packets == 10 and stats.garbage == 0
    assert abs(dominant_frequency(got.pcm) - 425) < 20


async def test_without_an_answer_the_pbxs_media_is_played_after_the_wait(
    pool: PortPool, peer: Peer
) -> None:
    # the 183 lost: nothing names the media, but it comes from the PBX and no
    # 180/183 said otherwise
    got = Collector()
    rx = await _listen(pool, got, lambda: True)
    await asyncio.sleep(rtp.STALE_S)  # the far end sets up its player
    _send(peer, rx.local_port, 900.0, 5)
    await _settle()
    assert got.frames == []
    await asyncio.sleep(rtp.EARLY_WAIT + 0.05)
    assert len(got.frames) == 5  # played as the call's
    _send(peer, rx.local_port, 900.0, 5, first=5)
    await _settle()
    stats = await rx.close()
    assert stats.unanswered and stats.packets == 10 and stats.latched == peer.addr
    assert abs(dominant_frequency(got.pcm) - 900) < 20


@pytest.mark.parametrize(
    ("progress", "peer_ip"),
    [(True, "127.0.0.1"), (False, "127.0.0.2")],
    ids=["a 180 came", "not the PBX's address"],
)
async def test_without_an_answer_other_media_is_never_played(
    pool: PortPool, peer: Peer, progress: bool, peer_ip: str
) -> None:
    got = Collector()
    rx = await _listen(pool, got, lambda: not progress, peer_ip=peer_ip)
    await asyncio.sleep(rtp.STALE_S)
    _send(peer, rx.local_port, 900.0, 5)
    await asyncio.sleep(rtp.EARLY_WAIT * 2 + 0.05)
    stats = await rx.close()
    assert got.frames == [] and stats.packets == 0 and not stats.unanswered
    assert stats.foreign == 5  # counted, not heard


async def test_a_call_ending_before_the_wait_still_keeps_the_pbxs_media(
    pool: PortPool, peer: Peer
) -> None:
    # a 480 right after its announcement started, the 183 lost: heard at the end
    got = Collector()
    rx = await _listen(pool, got, lambda: True)
    await asyncio.sleep(rtp.STALE_S)
    _send(peer, rx.local_port, 900.0, 8)
    await _settle()
    stats = await rx.close()
    assert len(got.frames) == 8 and stats.unanswered and stats.before_answer == 8


async def test_a_stream_waiting_at_listen_is_an_earlier_calls_and_kept_out(
    pool: PortPool, peer: Peer, other_peer: Peer
) -> None:
    # a reused port: a dead daemon's call still streams to it when the new call listens
    lease = pool.allocate()
    _send(peer, lease.port, 1000.0, 3, ssrc=0x5A5A)
    await _settle()
    got = Collector()
    rx = await RtpReceiver.listen(
        lease,
        got,
        peer_ip="127.0.0.1",
        unanswered_ok=lambda: True,
        keepalive=QUIET,
        options=NO_PAD,
    )
    _send(peer, rx.local_port, 1000.0, 10, first=3, ssrc=0x5A5A)  # it goes on
    await _settle()
    await asyncio.sleep(rtp.EARLY_WAIT + 0.05)
    assert got.frames == []  # the only media from the PBX is the stale one: not played
    _send(other_peer, rx.local_port, 500.0, 10)  # this call's, the 183 lost
    await _settle()
    await asyncio.sleep(rtp.EARLY_WAIT + 0.05)
    stats = await rx.close()
    assert stats.unanswered and stats.latched == other_peer.addr
    assert abs(dominant_frequency(got.pcm) - 500) < 20
    assert stats.foreign >= 13


async def test_waiting_media_is_bounded(
    pool: PortPool, peer: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rtp, "EARLY_MAX", 20)
    got = Collector()
    rx = await _listen(pool, got, lambda: False)
    _send(peer, rx.local_port, 700.0, 30)
    await _settle()
    rx.answer(PCMU, peer.addr)
    stats = await rx.close()
    assert stats.before_answer == 20 and stats.early_dropped == 10 and stats.packets == 20
    assert np.count_nonzero(got.pcm) > 0


async def test_a_source_heard_at_once_after_listen_is_an_earlier_calls(
    pool: PortPool, peer: Peer, other_peer: Peer
) -> None:
    # the port was free until this call took it, and a dead daemon's call streams to
    # it: its first packet comes within a packet time, before our INVITE reached anyone
    got = Collector()
    rx = await _listen(pool, got, lambda: True)
    _send(peer, rx.local_port, 1000.0, 2, ssrc=0x5A5A)
    await _settle()
    _send(peer, rx.local_port, 1000.0, 10, first=2, ssrc=0x5A5A)
    await asyncio.sleep(rtp.EARLY_WAIT + 0.05)
    assert got.frames == []  # never the call's without an answer
    # ...but an answer naming it is believed (as for any stream: its latching rules)
    rx.answer(PCMU, peer.addr)
    stats = await rx.close()
    assert stats.packets == 12 and not stats.unanswered


async def test_waiting_media_is_bounded_in_bytes_too(
    pool: PortPool, peer: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # junk the size of our read buffer: 1,000 of them would be 4 MB a call
    monkeypatch.setattr(rtp, "EARLY_MAX_BYTES", 10 * 4000)
    got = Collector()
    rx = await _listen(pool, got, lambda: False)
    for i in range(30):
        peer.send(rtp_packet(i, 160 * i, bytes(3988)), rx.local_port)
        await asyncio.sleep(0.002)  # read as it comes: the kernel's buffer drops none
    await _settle()
    rx.answer(PCMU, peer.addr)
    stats = await rx.close()
    assert stats.before_answer == 10 and stats.early_dropped == 20
