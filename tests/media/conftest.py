"""Helpers for the media tests: a plain-socket RTP peer, tones, frame collectors."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest

from sipclient.config import PortRange
from sipclient.media.frames import AudioFrame


def rtp_packet(
    seq: int,
    ts: int,
    payload: bytes,
    *,
    pt: int = 0,
    ssrc: int = 0x1234,
    marker: bool = False,
) -> bytes:
    """One RTP datagram, built by hand (the test is the far end)."""
    return (
        struct.pack(
            "!BBHLL",
            0x80,
            (0x80 if marker else 0) | pt,
            seq & 0xFFFF,
            ts & 0xFFFFFFFF,
            ssrc,
        )
        + payload
    )


def tone(freq: float, seconds: float, level: float = 8000.0, rate: int = 8000) -> np.ndarray:
    """A sine of `freq` Hz and peak `level`, int16."""
    t = np.arange(int(seconds * rate)) / rate
    return np.asarray(np.round(level * np.sin(2 * np.pi * freq * t)), dtype=np.int16)


def dominant_frequency(pcm: np.ndarray, rate: int = 8000) -> float:
    """The strongest frequency in `pcm`, Hz."""
    x = pcm.astype(np.float64) * np.hanning(len(pcm))
    spectrum = np.abs(np.fft.rfft(x))
    return float(np.argmax(spectrum) * rate / len(pcm))


def rms(pcm: np.ndarray) -> float:
    """Root mean square level."""
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))


@dataclass
class Collector:
    """A sink that keeps every frame."""

    frames: list[AudioFrame] = field(default_factory=list)

    def __call__(self, frame: AudioFrame) -> None:
        self.frames.append(frame)

    @property
    def pcm(self) -> np.ndarray:
        """All samples, checking the frames are contiguous in time."""
        position = 0
        for frame in self.frames:
            assert frame.start == position, f"frame at {frame.start}, expected {position}"
            position = frame.end
        if not self.frames:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate([f.pcm for f in self.frames])

    @property
    def samples(self) -> int:
        return sum(len(f.pcm) for f in self.frames)


class Peer:
    """The far end: a plain UDP socket on 127.0.0.1 that sends real RTP."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.addr: tuple[str, int] = self.sock.getsockname()

    def send(self, data: bytes, port: int) -> None:
        self.sock.sendto(data, ("127.0.0.1", port))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def peer() -> Iterator[Peer]:
    p = Peer()
    yield p
    p.close()


@pytest.fixture
def other_peer() -> Iterator[Peer]:
    p = Peer()
    yield p
    p.close()


def _free_range(size: int) -> PortRange:
    """A run of `size` ports on 127.0.0.1 that were all free a moment ago."""
    rng = np.random.default_rng()
    for _ in range(200):
        low = int(rng.integers(30000, 60000 - size)) & ~1
        socks = []
        try:
            for port in range(low, low + size):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return PortRange(low, low + size - 1)
    raise RuntimeError("no free port range on 127.0.0.1")


@pytest.fixture
def port_range() -> PortRange:
    """A free range of 20 ports (10 even ones) chosen at run time."""
    return _free_range(20)
