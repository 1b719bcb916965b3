"""The receive side of one call's RTP, sans-IO: datagrams in, audio frames out.

`RtpStream.receive(data, addr, now)` takes one UDP datagram with its source
address and the current time and returns the `AudioFrame`s that became ready;
`next_deadline()` / `handle_timer(now)` release packets held behind a gap
once waiting longer is pointless; `finish(now)` drains everything at the end
of the call. No sockets, no clock: `rtp.RtpReceiver` is the asyncio adapter,
and tests drive this class with explicit times.

What it does to each datagram, in order:

1. the test hook drops a seeded-random fraction (`drop_fraction`);
2. RTCP, non-RTP, wrong version, truncated and empty-payload packets, and
   payload types not negotiated are counted as garbage and dropped
   (RTP parsed with aiortc's `RtpPacket.parse`, but for the plain header
   nearly every packet has, which `struct` reads: see `_FAST_HEADER`);
3. the source address must be the latched one (see *Latching*);
4. a new SSRC starts a new stream that continues in time where the old one
   stopped (by arrival time), never back at zero;
5. packets are put in sequence order (16-bit sequence numbers extended to
   64 bits across wrap) in a window of `window` packets: duplicates and
   packets older than what was already played are counted and dropped, a
   gap is declared lost when `window` packets wait behind it or the oldest
   waited `max_hold` seconds;
6. RFC 4733 telephone-event and comfort noise (PT 13) keep their sequence
   slot but produce no audio; the silence they stand for is filled from the
   next audio packet's timestamp;
7. audio is decoded to 8 kHz and placed by RTP timestamp; a gap in
   timestamps (loss, DTX, events) is filled with silence so media time is
   call time. A timestamp jump the arrival times do not support (an SBC
   restarting its timestamps, a bogus value) re-bases the stream on arrival
   time instead of inserting minutes of silence.

Latching (symmetric RTP). We latch to:

- a packet from the address and port in the SDP answer: at once, also away
  from another source latched before (the SDP names the call's media);
- a packet from any other address or port (carriers' media servers may send
  from an address the SDP does not name, NAT and SBCs rewrite ports): after
  `probation` packets from it in a row with consecutive sequence numbers and
  one SSRC (RFC 3550's MIN_SEQUENTIAL idea), and not before `sdp_grace`
  seconds after the first packet this call received, so that the SDP's own
  source, when it sends, wins. Those held packets are played once it latches,
  not lost: such media is only heard later.

Once latched, packets from other sources are counted as `foreign` and
dropped. What this keeps out is the stream of an earlier call still arriving
on a reused port: after a kill -9 the far ends of the calls the dead daemon
never ended go on sending (for as long as their announcement lasts) to ports
the restarted daemon hands out again. Until session 9 a packet from the SDP's
IP with another port latched at once, and on one carrier's media gateway (the
same IP for every call) such a stream was heard as this call's: a soak with a
kill -9 at 12 lines gave ten calls the verdict of another number's recording.
Two ways to move: `set_remote()` with a new SDP address (a new 183/200 SDP)
unlatches, and if the latched source has been silent for `relatch_idle`
seconds another source may win the probation (an announcement server handing
over to a ringback server without new SDP).
"""

from __future__ import annotations

import random
import struct
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Any

from aiortc.rtp import RtpPacket

from sipclient.media.decoders import STATIC_PAYLOAD_TYPES, Decoder, make_decoder
from sipclient.media.frames import SAMPLE_RATE, AudioFrame, silence

Addr = tuple[str, int]

COMFORT_NOISE_PT = 13
_SEQ_MOD = 1 << 16
_TS_MOD = 1 << 32
_PLAYED_RING = 64
"""How many played sequence numbers are remembered to tell duplicates from late packets."""
_PLAYED_MASK = _PLAYED_RING - 1
_RESTART_SEQ_JUMP = 1000
"""A sequence jump beyond this many packets is a sender restart, not loss."""

_HEADER = struct.Struct("!BBHLL")
_HEADER_SIZE = _HEADER.size
_PLAIN_V2 = 0x80
"""First header byte of version 2 with no padding, no extension and no CSRC."""
_FAST_HEADER = True
"""Read a plain header (first byte `_PLAIN_V2`, a payload after it) with `struct`.

aiortc's `RtpPacket.parse` builds an object, a CSRC list and a
`HeaderExtensions` per packet: ~1 µs of the ~8 µs our receive path costs a
packet (`bench/rtp.py --path-only`), for the 12-byte header nearly every
packet of a call has. Such a header has nothing left for aiortc to do, so
`struct` reads it; anything else (padding, CSRC, an extension, another
version, a bare header) still goes to aiortc, which stays the parser for
every non-trivial case. Tests turn this off to prove both give the same
frames and counters (tests/media/test_stream_fast_header.py).
"""


@dataclass(frozen=True)
class MediaFormat:
    """What the SDP answer negotiated for the far end's media.

    `codec` is "PCMU", "PCMA" or "G722" on `payload_type`; `telephone_event`
    the RFC 4733 payload type if one was negotiated. The static payload types
    0, 8 and 9 are decoded as PCMU, PCMA and G722 even if not negotiated
    (a carrier that switches codec mid-call still gets recorded).
    """

    codec: str = "PCMU"
    payload_type: int = 0
    telephone_event: int | None = None

    def kind_of(self, payload_type: int) -> str | None:
        """Codec name, "event", "cn", or None for a payload type we do not take."""
        if payload_type == self.payload_type:
            return self.codec.upper()
        if self.telephone_event is not None and payload_type == self.telephone_event:
            return "event"
        if payload_type == COMFORT_NOISE_PT:
            return "cn"
        return STATIC_PAYLOAD_TYPES.get(payload_type)


@dataclass
class RtpStats:
    """Counters of one call's receive side.

    `packets` and `bytes` count RTP packets accepted from the media source
    (header included); everything else refused is in `garbage` (of which
    `rtcp` and `unknown_pt`), `foreign` (wrong source once latched) or
    `test_dropped`. `lost` counts sequence slots never received, `late`
    packets that came after their slot was played or declared lost,
    `filled_ms` the silence inserted for gaps.
    """

    packets: int = 0
    bytes: int = 0
    audio_packets: int = 0
    lost: int = 0
    duplicates: int = 0
    reordered: int = 0
    late: int = 0
    garbage: int = 0
    rtcp: int = 0
    unknown_pt: int = 0
    foreign: int = 0
    events: int = 0
    comfort_noise: int = 0
    ssrc_changes: int = 0
    rebased: int = 0
    relatches: int = 0
    test_dropped: int = 0
    filled_samples: int = 0
    samples: int = 0
    latched: Addr | None = None
    before_answer: int = 0
    """Datagrams that came before the SDP answer and waited for it (`rtp.RtpReceiver.listen`)."""
    early_dropped: int = 0
    """...and those past `rtp.EARLY_MAX`, dropped."""
    unanswered: bool = False
    """The media was played without an SDP answer naming it (a 183 lost: rtp.py)."""

    @property
    def filled_ms(self) -> int:
        """Silence inserted for gaps, milliseconds."""
        return self.filled_samples * 1000 // SAMPLE_RATE

    @property
    def media_ms(self) -> int:
        """Length of the audio produced so far (heard + filled), milliseconds."""
        return self.samples * 1000 // SAMPLE_RATE

    def as_dict(self) -> dict[str, Any]:
        """A flat dict for logs and the upload."""
        # (not dataclasses.asdict: it deep-copies field by field, ~10 times the
        # cost, twice a call; every field is an int, a bool or the address tuple)
        out = {name: getattr(self, name) for name in _STATS_FIELDS}
        out["latched"] = f"{self.latched[0]}:{self.latched[1]}" if self.latched else None
        out["filled_ms"] = self.filled_ms
        out["media_ms"] = self.media_ms
        return out


_STATS_FIELDS = tuple(f.name for f in fields(RtpStats))


@dataclass(slots=True)
class _Packet:
    seq: int  # extended (unwrapped) sequence number
    timestamp: int
    kind: str
    payload: bytes
    arrival: float


_Held = tuple[int, int, int, str, bytes, int, float]
"""A packet on probation: ssrc, 16-bit sequence number, timestamp, kind, payload,
datagram size, arrival (the arguments of `RtpStream._accept`)."""


@dataclass
class _Candidate:
    """A source we have not latched to yet, on probation."""

    addr: Addr
    ssrc: int
    last_seq: int
    packets: list[_Held] = field(default_factory=list)


def norm_addr(addr: Any) -> Addr:
    """A datagram's source as (host, port): asyncio and recvfrom give IPv6 sources
    as 4-tuples, and only host and port matter here."""
    return (str(addr[0]), int(addr[1]))


def _is_rtcp(data: bytes) -> bool:
    # RFC 5761 section 4: RTCP packet types 192..223 sit where RTP would have
    # marker=1 and payload type 64..95, which RTP never uses for audio.
    return len(data) >= 2 and 192 <= data[1] <= 223


class RtpStream:
    """One call's RTP receive state; see the module docstring."""

    def __init__(
        self,
        fmt: MediaFormat,
        remote: Addr | None = None,
        *,
        window: int = 5,
        max_hold: float = 0.1,
        probation: int = 2,
        relatch_idle: float = 1.0,
        sdp_grace: float = 1.0,
        jitter_tolerance: float = 0.04,
        drop_fraction: float = 0.0,
        drop_seed: int = 0,
        g722_native_8k: bool = False,
    ) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self._fmt = fmt
        # fmt.kind_of for every payload type, looked up once a packet (it upper-cases
        # the codec name on each call); MediaFormat is frozen and `fmt` read-only.
        self._kinds: dict[int, str] = {
            pt: kind for pt in range(128) if (kind := fmt.kind_of(pt)) is not None
        }
        self.remote = norm_addr(remote) if remote else None
        self.window = window
        self.max_hold = max_hold
        self.probation = max(1, probation)
        self.relatch_idle = relatch_idle
        self.sdp_grace = sdp_grace
        self._tolerance = int(jitter_tolerance * SAMPLE_RATE)
        self.drop_fraction = drop_fraction
        self._rng = random.Random(drop_seed)
        self._g722_native_8k = g722_native_8k
        self.stats = RtpStats()

        self._latched: Addr | None = None
        self._latched_at_seen = 0.0
        self._candidate: _Candidate | None = None
        self._first_arrival: float | None = None  # of any RTP packet: `sdp_grace` runs from it

        # Current stream (one SSRC).
        self._ssrc: int | None = None
        self._old_ssrcs: deque[int] = deque(maxlen=8)
        self._decoders: dict[str, Decoder] = {}
        self._next: int = 0  # next extended sequence number to play
        self._highest: int = 0
        self._buf: dict[int, _Packet] = {}
        # played[seq % 64] == seq: `seq` was played (a duplicate, not a late packet);
        # one list store a packet instead of a deque and a set kept in step
        self._played: list[int] = [-1] * _PLAYED_RING
        self._ts_last: int = 0  # extended timestamp of the last packet seen
        self._ts_base: int = 0
        self._offset: int = 0  # output sample index of the stream's ts_base

        # Output position (all streams).
        self._end = 0
        self._last_audio_arrival: float | None = None
        self._last_audio_len = 0
        self._started = False

    # ------------------------------------------------------------ public API

    @property
    def fmt(self) -> MediaFormat:
        """What the SDP negotiated (fixed for the stream's life)."""
        return self._fmt

    @property
    def latched(self) -> Addr | None:
        """The source address packets are accepted from, once latched."""
        return self._latched

    @property
    def started(self) -> bool:
        """Whether any audio has been produced (media time 0 is the first packet)."""
        return self._started

    def set_remote(self, remote: Addr | None) -> None:
        """A new SDP address for the far end; a different one unlatches."""
        new = norm_addr(remote) if remote else None
        if new != self.remote:
            self.remote = new
            self._latched = None
            self.stats.latched = None
            self._candidate = None

    def receive(self, data: bytes, addr: Any, now: float) -> list[AudioFrame]:
        """Take one datagram from `addr` at time `now`; return frames now ready."""
        if self.drop_fraction and self._rng.random() < self.drop_fraction:
            self.stats.test_dropped += 1
            return []
        stats = self.stats
        size = len(data)
        if size > _HEADER_SIZE and data[0] == _PLAIN_V2 and _FAST_HEADER:
            # The plain header (see _FAST_HEADER): what aiortc would return, read by struct.
            _, m_pt, seq16, ts, ssrc = _HEADER.unpack_from(data)
            if 192 <= m_pt <= 223:  # _is_rtcp
                stats.rtcp += 1
                stats.garbage += 1
                return []
            pt = m_pt & 0x7F
            payload = data[_HEADER_SIZE:]
        else:
            if _is_rtcp(data):
                stats.rtcp += 1
                stats.garbage += 1
                return []
            try:
                packet = RtpPacket.parse(data)
            except ValueError:
                stats.garbage += 1
                return []
            if not packet.payload:
                stats.garbage += 1
                return []
            pt, seq16, ts = packet.payload_type, packet.sequence_number, packet.timestamp
            ssrc, payload = packet.ssrc, packet.payload
        kind = self._kinds.get(pt)
        if kind is None:
            stats.unknown_pt += 1
            stats.garbage += 1
            return []
        out: list[AudioFrame] = []
        if self._first_arrival is None:
            self._first_arrival = now
        latched = self._latched
        # the usual case: the latched source, whose address needs no normalising
        source = latched if latched is not None and addr == latched else norm_addr(addr)
        if latched is not None and source == latched:
            self._latched_at_seen = now
            self._accept(ssrc, seq16, ts, kind, payload, size, now, out)
            return out
        if source == self.remote:
            self._latch(source, now)  # the SDP's own source, also away from another
            self._accept(ssrc, seq16, ts, kind, payload, size, now, out)
            return out
        if latched is not None and now - self._latched_at_seen < self.relatch_idle:
            stats.foreign += 1
            return out
        self._probe(source, (ssrc, seq16, ts, kind, payload, size, now), out)
        return out

    def next_deadline(self) -> float | None:
        """When `handle_timer` should run next (absolute time), or None."""
        if not self._buf:
            return None
        return min(p.arrival for p in self._buf.values()) + self.max_hold

    def handle_timer(self, now: float) -> list[AudioFrame]:
        """Give up waiting for packets missing ahead of ones held too long."""
        out: list[AudioFrame] = []
        while self._buf and min(p.arrival for p in self._buf.values()) + self.max_hold <= now:
            self._skip_gap(out)
            self._drain(out)
        return out

    def finish(self, now: float | None = None) -> list[AudioFrame]:
        """End of call: play everything held; with `now`, pad silence to the call's end.

        The padding makes the recording last from the first packet to the
        end of the call when the far end stopped sending before it hung up.
        """
        out: list[AudioFrame] = []
        if self._candidate is not None:
            self.stats.foreign += len(self._candidate.packets)
            self._candidate = None
        while self._buf:
            self._skip_gap(out)
            self._drain(out)
        if now is not None and self._last_audio_arrival is not None:
            gap = self._arrival_gap(now)
            if gap > 0:
                self._fill(gap, out)
            self._last_audio_arrival, self._last_audio_len = now, 0  # pad only once
        return out

    # ------------------------------------------------------------ latching

    def _latch(self, source: Addr, now: float) -> None:
        if self.stats.latched is not None or self.stats.packets:
            self.stats.relatches += 1
        if self._candidate is not None and self._candidate.addr != source:
            self.stats.foreign += len(self._candidate.packets)
        self._latched = source
        self._latched_at_seen = now
        self.stats.latched = source
        self._candidate = None

    def _probe(self, source: Addr, held: _Held, out: list[AudioFrame]) -> None:
        ssrc, seq16, now = held[0], held[1], held[6]
        cand = self._candidate
        if (
            cand is not None
            and cand.addr == source
            and cand.ssrc == ssrc
            and seq16 == (cand.last_seq + 1) % _SEQ_MOD
        ):
            cand.packets.append(held)
            cand.last_seq = seq16
        else:
            if cand is not None:
                self.stats.foreign += len(cand.packets)
            cand = _Candidate(source, ssrc, seq16, [held])
            self._candidate = cand
        if len(cand.packets) >= self.probation and self._grace_over(now):
            self._latch(source, now)
            for packet in cand.packets:
                self._accept(*packet, out)

    def _grace_over(self, now: float) -> bool:
        """May a source the SDP does not name latch now? (`sdp_grace`)"""
        if self.remote is None or self._first_arrival is None:
            return True  # no SDP source to wait for
        return now - self._first_arrival >= self.sdp_grace

    # ------------------------------------------------------------ ordering

    def _accept(
        self,
        ssrc: int,
        seq16: int,
        ts: int,
        kind: str,
        payload: bytes,
        size: int,
        now: float,
        out: list[AudioFrame],
    ) -> None:
        stats = self.stats
        if ssrc != self._ssrc:
            if ssrc in self._old_ssrcs:
                stats.late += 1
                return
            self._new_stream(ssrc, seq16, ts, now, out)
        stats.packets += 1
        stats.bytes += size
        seq = self._extend_seq(seq16)
        if abs(seq - self._next) > _RESTART_SEQ_JUMP:
            # The sender restarted its numbering without a new SSRC.
            while self._buf:
                self._skip_gap(out)
                self._drain(out)
            self._next = self._highest = seq
            self._played = [-1] * _PLAYED_RING
        if seq == self._next and not self._buf:
            # The usual case: the next packet in order and nothing held. Play it
            # without the hold buffer's dict round trip.
            if seq > self._highest:
                self._highest = seq
            self._play(ts, kind, payload, now, out)
            self._played[seq & _PLAYED_MASK] = seq
            self._next = seq + 1
            return
        if seq < self._next:
            if self._played[seq & _PLAYED_MASK] == seq:
                stats.duplicates += 1
            else:
                stats.late += 1
            return
        if seq in self._buf:
            stats.duplicates += 1
            return
        if seq < self._highest:
            stats.reordered += 1
        self._highest = max(self._highest, seq)
        self._buf[seq] = _Packet(seq, ts, kind, payload, now)
        self._drain(out)
        while len(self._buf) > self.window:
            self._skip_gap(out)
            self._drain(out)

    def _new_stream(
        self, ssrc: int, seq16: int, ts: int, now: float, out: list[AudioFrame]
    ) -> None:
        if self._ssrc is not None:
            self.stats.ssrc_changes += 1
            while self._buf:
                self._skip_gap(out)
                self._drain(out)
            self._old_ssrcs.append(self._ssrc)
        self._ssrc = ssrc
        self._decoders = {}
        self._next = self._highest = seq16
        self._played = [-1] * _PLAYED_RING
        self._ts_last = self._ts_base = ts
        # Continue in time: where the last stream ended plus the silence
        # that arrival times show between the two.
        self._offset = self._end + (self._arrival_gap(now) if self._started else 0)

    def _extend_seq(self, seq16: int) -> int:
        delta = (seq16 - self._highest) % _SEQ_MOD
        if delta >= _SEQ_MOD // 2:
            delta -= _SEQ_MOD
        return self._highest + delta

    def _extend_ts(self, ts32: int) -> int:
        delta = (ts32 - self._ts_last) % _TS_MOD
        if delta >= _TS_MOD // 2:
            delta -= _TS_MOD
        return self._ts_last + delta

    def _drain(self, out: list[AudioFrame]) -> None:
        while self._next in self._buf:
            packet = self._buf.pop(self._next)
            self._play(packet.timestamp, packet.kind, packet.payload, packet.arrival, out)
            self._played[self._next & _PLAYED_MASK] = self._next
            self._next += 1

    def _skip_gap(self, out: list[AudioFrame]) -> None:
        """Declare the sequence numbers before the oldest held packet lost."""
        if not self._buf:
            return
        first = min(self._buf)
        self.stats.lost += first - self._next
        self._next = first

    # ------------------------------------------------------------ timing + decode

    def _arrival_gap(self, now: float) -> int:
        """Samples of silence the arrival clock shows since the last audio ended."""
        if self._last_audio_arrival is None:
            return 0
        gap = round((now - self._last_audio_arrival) * SAMPLE_RATE) - self._last_audio_len
        return gap if gap > self._tolerance else 0

    def _play(
        self, ts32: int, kind: str, payload: bytes, arrival: float, out: list[AudioFrame]
    ) -> None:
        ts = self._extend_ts(ts32)
        self._ts_last = ts
        if kind == "event":
            self.stats.events += 1
            return
        if kind == "cn":
            self.stats.comfort_noise += 1
            return
        decoder = self._decoders.get(kind)
        if decoder is None:
            decoder = self._decoders[kind] = make_decoder(kind, g722_native_8k=self._g722_native_8k)
        try:
            pcm = decoder.decode(payload)
        except Exception:
            # A codec library refusing a payload is the peer's garbage, not our crash.
            self.stats.garbage += 1
            return
        position = self._offset + (ts - self._ts_base)
        gap = position - self._end
        # plausible = arrival gap + 1 s of slack; the arrival gap is never negative, so
        # it only needs computing for a gap over 1 s (rare: not once a packet)
        if self._started and (
            gap < -SAMPLE_RATE
            or (gap > SAMPLE_RATE and gap > self._arrival_gap(arrival) + SAMPLE_RATE)
        ):
            # Timestamps the arrival clock does not support: re-base on arrival.
            self.stats.rebased += 1
            self._offset += self._end + self._arrival_gap(arrival) - position
            position = self._offset + (ts - self._ts_base)
            gap = position - self._end
        if gap < 0:
            if -gap >= len(pcm):
                self.stats.late += 1
                return
            pcm = pcm[-gap:]
            gap = 0
        if gap > 0:
            self._fill(gap, out)
        self._started = True
        self.stats.audio_packets += 1
        out.append(AudioFrame(self._end, pcm))
        self._end += len(pcm)
        self.stats.samples += len(pcm)
        self._last_audio_arrival = arrival
        self._last_audio_len = len(pcm)

    def _fill(self, samples: int, out: list[AudioFrame]) -> None:
        out.append(AudioFrame(self._end, silence(samples), filled=True))
        self._end += samples
        self.stats.samples += samples
        self.stats.filled_samples += samples
