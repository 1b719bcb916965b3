"""Decoded audio frames and the sinks that consume them.

Everything downstream of RTP (the recorder, the streaming classifier) speaks
one type: an `AudioFrame` of 8 kHz mono int16 samples stamped with its media
time, counted from the first RTP packet of the call. A sink is any callable
taking a frame; `Tee` feeds several of them, so the daemon wires a call as::

    tee = Tee(recorder.feed, lambda f: on_decision(classifier.feed(f.pcm)))
    receiver = await RtpReceiver.open(lease, fmt, remote, sink=tee)

This module is deliberately free of aiortc and G.722 so that the recorder and
the classifier can import it cheaply.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 8000
"""Every frame handed to a sink is at this rate, whatever the codec."""

Pcm = npt.NDArray[np.int16]


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """A run of decoded 8 kHz int16 samples.

    `start` is the index of the first sample since the call's first RTP
    packet, so `start / 8000` is the frame's media time in seconds. `filled`
    marks silence we inserted for lost packets, a timestamp jump or comfort
    noise, so a consumer can tell heard silence from missing audio.
    """

    start: int
    pcm: Pcm
    filled: bool = False

    @property
    def media_ms(self) -> int:
        """Media time of the first sample, in milliseconds."""
        return self.start * 1000 // SAMPLE_RATE

    @property
    def end(self) -> int:
        """Index one past the last sample."""
        return self.start + len(self.pcm)


AudioSink = Callable[[AudioFrame], None]


class Tee:
    """A sink that hands every frame to each of its sinks in order.

    A sink that raises does not starve the others: the first exception is
    re-raised after all sinks have had the frame.
    """

    def __init__(self, *sinks: AudioSink) -> None:
        self.sinks: list[AudioSink] = list(sinks)

    def add(self, sink: AudioSink) -> None:
        """Append a sink (e.g. the classifier, once the call knows its number)."""
        self.sinks.append(sink)

    def __call__(self, frame: AudioFrame) -> None:
        error: BaseException | None = None
        for sink in self.sinks:
            try:
                sink(frame)
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error


def silence(samples: int) -> Pcm:
    """`samples` zero samples."""
    return np.zeros(samples, dtype=np.int16)
