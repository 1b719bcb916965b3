"""asyncio RTP endpoint of one call: receive, decode, hand frames to a sink.

`RtpReceiver.open(lease, fmt, remote, sink)` takes a bound port from the
`PortPool`, receives on it and feeds every decoded 8 kHz frame to `sink`
(typically a `frames.Tee` of the recorder and the streaming classifier).
All protocol logic is in the sans-IO `stream.RtpStream`; this module only
moves datagrams, keeps one timer armed and sends keep-alives.

Receiving drains the socket (`sipclient.udp.read_burst`): one wake-up of the
event loop reads every datagram waiting (up to MAX_BURST), not one. asyncio's datagram transport
reads a single datagram per loop iteration, so once an iteration took longer
than a packet's 20 ms (a daemon with ~100 calls on one core) each socket fell
further behind for as long as its call lasted: on the e2e bench at 100
lines the RTP sockets held seconds of audio, the classifier heard the
network late, and calls that should end in a second lasted several.

Symmetric RTP: we send from the receive port, first a short burst of
silence packets and then one every `KeepAlive.interval` seconds, towards the
latched source once there is one, else towards the SDP address. That opens
NAT pinholes on our side and lets SBCs that latch on our media ("comedia")
find us; the packets are real RTP in the negotiated codec, so a strict
media server accepts them.

Media before the answer (`listen`, the daemon's calls). RFC 3264 has the
offerer ready to receive once its offer is sent, and the far end's early
media may arrive before the 183 whose SDP names it: over UDP that 183 may
even be lost (a provisional is sent once), and its announcement was then
never heard. Every datagram that arrives before the SDP answer waits
(`EARLY_MAX` datagrams and `EARLY_MAX_BYTES` at most) and is replayed,
with its arrival time, into the stream when the answer comes (`answer`):
the stream's latching then applies as to any packet.

Without an answer, the waiting media is played as the call's own only when
all of these hold (`unanswered`): no 180 or 183 came at all (the far end's
own word would say how it signals), it comes from the PBX's own address
(`peer_ip`: a PBX that relays media; a carrier's media gateway elsewhere
needs the SDP to be believed), its source was first heard `STALE_S` or more
after `listen`, and `EARLY_WAIT` seconds have passed since the first
datagram waited, or the call ended. It then counts as if the SDP had named that source
(`RtpStats.unanswered`). The third rule is against the stream of an earlier
call on a reused port (the far end of a call a killed daemon never ended,
`stream.RtpStream`'s latching): such a stream is already flowing when the
port is taken, so its packets come within a packet time or two of `listen`,
while a far end's own media starts after our INVITE has crossed the PBX to
it and it has set up its player.

Wiring in a call (the daemon does this)::

    lease = pool.allocate()                      # PortsExhausted -> the number waits
    offer = sdp_offer(local_ip, lease.port)      # SIP side
    ...on early media (remote addr, codec, payload type)...
    rx = await RtpReceiver.open(lease, MediaFormat(codec, pt, te_pt), remote, tee)
    ...on a new SDP: rx.set_remote(addr)...
    ...on call end:
    stats = await rx.close()                     # drains, pads to now, releases port
    result = recorder.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sipclient.logs import get_logger
from sipclient.media.decoders import encode
from sipclient.media.frames import AudioFrame, AudioSink
from sipclient.media.ports import PortLease
from sipclient.media.stream import Addr, MediaFormat, RtpStats, RtpStream, norm_addr
from sipclient.udp import read_burst


def _log() -> Any:
    # Looked up per use: a logger bound at import time would keep the
    # logging config of import time, before logs.configure() ran.
    return get_logger(__name__)


_FRAME_SAMPLES = 160  # 20 ms at the 8 kHz RTP clock of all our codecs
EARLY_MAX = 1000
"""Datagrams kept while no SDP answer came (20 s of 20 ms packets); more are dropped."""
EARLY_MAX_BYTES = 256 * 1024
"""...and bytes: 1,000 G.711 packets are 172 kB, while 1,000 datagrams of junk at our
4 kB read size would be 4 MB a call (800 MB over 200 calls)."""
STALE_S = 0.06
"""A source first heard sooner than this after `listen` (three 20 ms packet times)
was already sending before our INVITE could reach anyone: never played unanswered."""
EARLY_WAIT = 1.0
"""Seconds of media without an answer before it may be played as the call's
(`unanswered`); the same wait `StreamOptions.sdp_grace` gives an SDP's source."""
MAX_BURST = 64
"""Datagrams read per wake-up at most (then the loop serves the others)."""
_MAX_DATAGRAM = 4096


@functools.cache
def _silence(codec: str) -> bytes:
    """One packet of silence in `codec` (each call sends a few: encoded once a codec)."""
    return encode(codec, np.zeros(_FRAME_SAMPLES, dtype=np.int16))


@dataclass(frozen=True)
class KeepAlive:
    """Silence we send for symmetric RTP: `burst` packets `burst_interval` apart,
    then one every `interval` seconds (0 turns the periodic ones off)."""

    burst: int = 3
    burst_interval: float = 0.02
    interval: float = 2.0


@dataclass(frozen=True)
class StreamOptions:
    """Tuning of the receive path; see `stream.RtpStream` for each knob.

    `drop_fraction` / `drop_seed` are the test hook that drops a
    deterministic fraction of received packets (the 5 % loss test).
    `g722_native_8k` takes libg722's 8 kHz output instead of decoding at
    16 kHz and filtering (about 30 µs less per G.722 packet; see
    docs/media.md).
    """

    window: int = 5
    max_hold: float = 0.1
    probation: int = 2
    relatch_idle: float = 1.0
    sdp_grace: float = 1.0
    pad_to_end: bool = True
    drop_fraction: float = 0.0
    drop_seed: int = 0
    g722_native_8k: bool = False


class RtpReceiver:
    """Receives one call's RTP on a leased port; create with `open`."""

    def __init__(
        self,
        lease: PortLease,
        fmt: MediaFormat,
        remote: Addr | None,
        sink: AudioSink,
        keepalive: KeepAlive,
        options: StreamOptions,
    ) -> None:
        self.lease = lease
        self.fmt = fmt
        self.sink = sink
        self.keepalive = keepalive
        self.options = options
        self.stream = self._new_stream(fmt, remote)
        self.media_started = asyncio.Event()
        """Set when the first audio frame has been produced (media time 0)."""
        self.sink_errors = 0
        self.send_errors = 0
        self.sent = 0
        self._sock: socket.socket | None = None
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._keepalive_task: asyncio.Task[None] | None = None
        self._closed = False
        self._result: RtpStats | None = None
        # Our outgoing stream: random SSRC and starting numbers (RFC 3550 §5.1).
        rnd = os.urandom(10)
        self._ssrc = int.from_bytes(rnd[:4], "big")
        self._seq = int.from_bytes(rnd[4:6], "big")
        self._ts0 = int.from_bytes(rnd[6:10], "big")
        self._t0 = self._loop.time()
        self._silence = _silence(fmt.codec)
        self._early: list[tuple[bytes, Any, float]] | None = None
        """Datagrams waiting for the SDP answer (`listen`); None once the stream runs."""
        self._first_heard: dict[Addr, float] = {}
        """When each source was first heard before the answer (`STALE_S`)."""
        self._listen_at = 0.0
        self._early_bytes = 0
        self._peer_ip: str | None = None
        self._may_play_unanswered: Callable[[], bool] = lambda: False
        self._early_timer: asyncio.TimerHandle | None = None

    @classmethod
    async def open(
        cls,
        lease: PortLease,
        fmt: MediaFormat,
        remote: Addr | None,
        sink: AudioSink,
        *,
        keepalive: KeepAlive | None = None,
        options: StreamOptions | None = None,
    ) -> RtpReceiver:
        """Start receiving on `lease`'s socket; `remote` is the SDP answer's address."""
        self = cls(lease, fmt, remote, sink, keepalive or KeepAlive(), options or StreamOptions())
        sock = lease.take_socket()
        sock.setblocking(False)
        self._sock = sock
        self._loop.add_reader(sock.fileno(), self._on_readable)
        self._keepalive_task = self._loop.create_task(self._send_keepalives())
        return self

    @classmethod
    async def listen(
        cls,
        lease: PortLease,
        sink: AudioSink,
        *,
        peer_ip: str | None,
        unanswered_ok: Callable[[], bool],
        keepalive: KeepAlive | None = None,
        options: StreamOptions | None = None,
    ) -> RtpReceiver:
        """Start receiving on `lease`'s socket before the INVITE leaves: the media
        waits for `answer` (module docstring, "Media before the answer").
        `unanswered_ok` says whether the call's signalling still allows playing
        media no SDP named (no 180/183 so far); `peer_ip` is the PBX's address."""
        self = cls(
            lease, MediaFormat(), None, sink, keepalive or KeepAlive(), options or StreamOptions()
        )
        self._early = []
        self._peer_ip = peer_ip
        self._may_play_unanswered = unanswered_ok
        self._listen_at = self._loop.time()
        sock = lease.take_socket()
        sock.setblocking(False)
        self._sock = sock
        self._loop.add_reader(sock.fileno(), self._on_readable)
        return self

    def answer(self, fmt: MediaFormat, remote: Addr | None) -> None:
        """The SDP answer (`listen`'s receivers): the media that waited is played from
        now on, as `open` would have; after an unanswered start, a new source only."""
        if self._early is None:
            self.set_remote(remote)
            return
        if fmt != self.fmt:
            stats = self.stream.stats
            self.fmt = fmt
            self._silence = _silence(fmt.codec)
            self.stream = self._new_stream(fmt, remote)
            self.stream.stats = stats
        else:
            self.stream.set_remote(remote)
        self._run_early()

    def _new_stream(self, fmt: MediaFormat, remote: Addr | None) -> RtpStream:
        o = self.options
        return RtpStream(
            fmt,
            remote,
            window=o.window,
            max_hold=o.max_hold,
            probation=o.probation,
            relatch_idle=o.relatch_idle,
            sdp_grace=o.sdp_grace,
            drop_fraction=o.drop_fraction,
            drop_seed=o.drop_seed,
            g722_native_8k=o.g722_native_8k,
        )

    def _run_early(self) -> None:
        """Replay what waited into the stream (its arrival times kept) and run it."""
        early, self._early = self._early or [], None
        if self._early_timer is not None:
            self._early_timer.cancel()
            self._early_timer = None
        self.stream.stats.before_answer = len(early)
        for data, addr, at in early:
            self.datagram_received(data, addr, at)
        self._rearm()
        if not self._closed:
            self._keepalive_task = self._loop.create_task(self._send_keepalives())

    def _unanswered_source(self) -> Addr | None:
        """The source to play without an answer (module docstring), if one may be."""
        if self._early is None or self._peer_ip is None or not self._may_play_unanswered():
            return None
        for _data, addr, _at in self._early:
            source = norm_addr(addr)
            fresh = self._first_heard[source] - self._listen_at >= STALE_S
            if source[0] == self._peer_ip and fresh:
                return source
        return None

    def _play_unanswered(self) -> bool:
        source = self._unanswered_source()
        if source is None:
            return False
        _log().info("rtp_without_answer", port=self.lease.port, source=f"{source[0]}:{source[1]}")
        self.stream.set_remote(source)
        self.stream.stats.unanswered = True
        self._run_early()
        return True

    def _on_early_due(self) -> None:
        self._early_timer = None
        if not self._closed and self._early is not None and not self._play_unanswered():
            # not now (a 180/183 came, or not from the PBX): the answer may still come;
            # looked at again, for media that starts later from the PBX
            self._early_timer = self._loop.call_later(EARLY_WAIT, self._on_early_due)

    def _wait_early(self, data: bytes, addr: Any, now: float) -> None:
        self._first_heard.setdefault(norm_addr(addr), now)
        early = self._early
        assert early is not None
        if len(early) >= EARLY_MAX or self._early_bytes + len(data) > EARLY_MAX_BYTES:
            self.stream.stats.early_dropped += 1
            return
        early.append((data, addr, now))
        self._early_bytes += len(data)
        if self._early_timer is None:
            self._early_timer = self._loop.call_at(now + EARLY_WAIT, self._on_early_due)

    # ------------------------------------------------------------ public

    @property
    def local_port(self) -> int:
        """The UDP port we receive (and send) on."""
        return self.lease.port

    @property
    def stats(self) -> RtpStats:
        """Counters so far."""
        return self.stream.stats

    def set_remote(self, remote: Addr | None) -> None:
        """A new SDP address for the far end (a later 183 or the 200): relatch, re-burst."""
        if remote != self.stream.remote:
            self.stream.set_remote(remote)
            if self._keepalive_task is not None and not self._closed:
                self._keepalive_task.cancel()
                self._keepalive_task = self._loop.create_task(self._send_keepalives())

    async def close(self) -> RtpStats:
        """End of call: play what is held (padding to now), stop, release the port.

        Idempotent; returns the final counters.
        """
        if self._result is not None:
            return self._result
        self._closed = True
        if self._early_timer is not None:
            self._early_timer.cancel()
            self._early_timer = None
        if self._early is not None and self._sock is not None:
            # the call ended before an answer: what waited is the call's only if
            # it may be played unanswered (module docstring), else it is dropped
            self._drain()
            if not self._play_unanswered() and self._early is not None:
                self.stream.stats.foreign += len(self._early)
                self._early = None
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive_task
        if self._timer is not None:
            self._timer.cancel()
        if self._sock is not None:
            # what arrived before the end still counts; then stop listening
            self._drain()
            self._loop.remove_reader(self._sock.fileno())
        now = self._loop.time() if self.options.pad_to_end else None
        self._deliver(self.stream.finish(now))
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self.lease.release()
        self._result = self.stream.stats
        # debug: the daemon's `call_classified` carries these counters as `rtp`
        _log().debug("rtp_closed", port=self.lease.port, **self._result.as_dict())
        return self._result

    # ------------------------------------------------------------ receiving

    def _on_readable(self) -> None:
        if not self._closed:
            self._drain()
            self._rearm()

    def _drain(self) -> None:
        """Read what the socket holds (MAX_BURST at most) into the stream, in order."""
        if self._sock is None:
            return
        burst, errors = read_burst(self._sock, MAX_BURST, _MAX_DATAGRAM)
        # ICMP port unreachable for our keep-alives and the like: counted, ignored
        self.send_errors += errors
        now = self._loop.time()
        for data, addr in burst:
            self.datagram_received(data, addr, now)

    def datagram_received(self, data: bytes, addr: Any, now: float | None = None) -> None:
        """One datagram from `addr` (at loop time `now`) into the stream and the sink."""
        if self._early is not None:
            self._wait_early(data, addr, self._loop.time() if now is None else now)
            return
        try:
            frames = self.stream.receive(data, addr, self._loop.time() if now is None else now)
        except Exception:
            # A bug of ours on odd input must not stop the call's media.
            self.stream.stats.garbage += 1
            _log().exception("rtp_receive_failed", port=self.lease.port, size=len(data))
            return
        self._deliver(frames)

    # ------------------------------------------------------------ internals

    def _deliver(self, frames: list[AudioFrame]) -> None:
        for frame in frames:
            if not self.media_started.is_set() and not frame.filled:
                self.media_started.set()
            try:
                self.sink(frame)
            except Exception:
                self.sink_errors += 1
                if self.sink_errors == 1:
                    _log().exception("rtp_sink_failed", port=self.lease.port)

    def _rearm(self) -> None:
        deadline = self.stream.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self._closed:
            return
        self._deliver(self.stream.handle_timer(self._loop.time()))
        self._rearm()

    def _send_silence(self) -> None:
        target = self.stream.latched or self.stream.remote
        if target is None or self._sock is None:
            return
        elapsed = int((self._loop.time() - self._t0) * 8000)
        header = struct.pack(
            "!BBHLL",
            0x80,
            (0x80 if self.sent == 0 else 0) | self.fmt.payload_type,
            self._seq & 0xFFFF,
            (self._ts0 + elapsed) & 0xFFFFFFFF,
            self._ssrc,
        )
        self._seq += 1
        self.sent += 1
        try:
            self._sock.sendto(header + self._silence, target)
        except OSError:  # a full buffer or an ICMP error: a keep-alive less
            self.send_errors += 1

    async def _send_keepalives(self) -> None:
        for i in range(self.keepalive.burst):
            if i:
                await asyncio.sleep(self.keepalive.burst_interval)
            self._send_silence()
        if self.keepalive.interval <= 0:
            return
        while True:
            await asyncio.sleep(self.keepalive.interval)
            self._send_silence()
