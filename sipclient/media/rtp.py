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
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any

from sipclient.logs import get_logger
from sipclient.media.decoders import encode
from sipclient.media.frames import AudioFrame, AudioSink
from sipclient.media.ports import PortLease
from sipclient.media.stream import Addr, MediaFormat, RtpStats, RtpStream
from sipclient.udp import read_burst


def _log() -> Any:
    # Looked up per use: a logger bound at import time would keep the
    # logging config of import time, before logs.configure() ran.
    return get_logger(__name__)


_FRAME_SAMPLES = 160  # 20 ms at the 8 kHz RTP clock of all our codecs
MAX_BURST = 64
"""Datagrams read per wake-up at most (then the loop serves the others)."""
_MAX_DATAGRAM = 4096


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
        self.stream = RtpStream(
            fmt,
            remote,
            window=options.window,
            max_hold=options.max_hold,
            probation=options.probation,
            relatch_idle=options.relatch_idle,
            sdp_grace=options.sdp_grace,
            drop_fraction=options.drop_fraction,
            drop_seed=options.drop_seed,
            g722_native_8k=options.g722_native_8k,
        )
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
        self._silence = encode(fmt.codec, [0] * _FRAME_SAMPLES)

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
