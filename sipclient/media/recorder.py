"""The far end's audio of one call -> a WAV file, bounded in time and size.

8 kHz mono 16-bit PCM WAV written with soundfile, from the first RTP packet
(media time 0) to the end of the call. Frames arrive already gap-filled by
the RTP stream, so the WAV's length is the call's media time; a frame that
starts later than the recording's end is padded with silence anyway, and an
overlapping one trimmed, so the file's time stays right whatever the feeder.

Bounds: `max_seconds` and `max_bytes` (whole file, header included); past
either, samples are dropped and the result says `truncated` and which bound.
A call with no media still gets a WAV, with zero frames.

Atomic: samples go to a hidden temporary file beside the target
(``.NAME.part``), which `close()` flushes, fsyncs and renames onto the final
name; a crash leaves at most a ``.part`` file, never a half WAV under the
final name (the spool only ever sees complete files). Samples are buffered
in memory and written about once a second, so the event loop only touches
the disk rarely; `close()` does the fsync: run it in a thread
(`asyncio.to_thread(recorder.close)`) when many calls end at once.

`in_memory=True` builds the same WAV, byte for byte, in memory and
writes no file: `close()` returns the bytes in `RecordingResult.data` and is
then cheap enough for the event loop. The daemon uses it when
`recordings.keep` is off, where the WAV only exists to be copied into the
spool (which writes and fsyncs its own copy): a file of our own cost a
create, a write a second, an fsync, a rename, the spool's read and an
unlink a call (about 2 ms of CPU and 10 ms of disk wait at 100 lines). The
price is memory: up to `max_bytes` a call until it ends (2 MB by default;
a 5 s call holds 80 kB). That WAV is written with the standard library's
`wave`, not soundfile: soundfile reaches a file object through cffi callbacks,
which need memory both writable and executable, and the systemd unit's
MemoryDenyWriteExecute=yes refuses that (MemoryError at a call's first second
of audio: every call of a daemon run by systemd with `recordings.keep` off,
the default). The lab runs the daemon under the same rule
(`sipclient/lab/confine.py`).
"""

from __future__ import annotations

import io
import os
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from sipclient.config import RecordingSettings
from sipclient.media.frames import SAMPLE_RATE, AudioFrame, Pcm

WAV_HEADER_BYTES = 44
"""Size of the canonical PCM WAV header libsndfile writes for PCM_16."""


@dataclass(frozen=True)
class RecordingResult:
    """What `Recorder.close` wrote.

    `truncated` says samples were dropped at a bound, `bound` which one
    ("max_seconds" or "max_bytes"). `data` is the whole WAV file when the
    recorder was `in_memory` (then nothing was written at `path`).
    """

    path: Path
    frames: int
    truncated: bool = False
    bound: str | None = None
    data: bytes | None = None

    @property
    def seconds(self) -> float:
        """Duration of the WAV."""
        return self.frames / SAMPLE_RATE


def temp_path_for(path: Path) -> Path:
    """Where a recording bound for `path` is written until it is complete."""
    return path.with_name(f".{path.name}.part")


class Recorder:
    """Writes one call's frames to `path`; use as a sink (`feed` or call it)."""

    def __init__(
        self,
        path: Path | str,
        *,
        max_seconds: float = 60.0,
        max_bytes: int = 2_000_000,
        buffer_seconds: float = 1.0,
        in_memory: bool = False,
    ) -> None:
        self.path = Path(path)
        self.temp_path = temp_path_for(self.path)
        by_time = int(max_seconds * SAMPLE_RATE)
        by_size = max(0, (max_bytes - WAV_HEADER_BYTES) // 2)
        self.max_frames = min(by_time, by_size)
        self._bound = "max_seconds" if by_time <= by_size else "max_bytes"
        self._buffer_frames = max(1, int(buffer_seconds * SAMPLE_RATE))
        self._memory = io.BytesIO() if in_memory else None
        self._pending: list[Pcm] = []
        self._pending_frames = 0
        self._written = 0  # frames accepted (written or pending)
        self._truncated: str | None = None
        self._file: sf.SoundFile | _MemoryWav | None = None
        self._result: RecordingResult | None = None

    @classmethod
    def from_settings(
        cls, settings: RecordingSettings, path: Path | str, *, in_memory: bool = False
    ) -> Recorder:
        """A recorder bounded by config `recordings.max_seconds` / `max_bytes`."""
        return cls(
            path,
            max_seconds=settings.max_seconds,
            max_bytes=settings.max_bytes,
            in_memory=in_memory,
        )

    @property
    def frames(self) -> int:
        """Frames accepted so far."""
        return self._written

    @property
    def full(self) -> bool:
        """Whether a bound was reached (further samples are dropped)."""
        return self._truncated is not None

    def __call__(self, frame: AudioFrame) -> None:
        self.feed(frame)

    def feed(self, frame: AudioFrame) -> None:
        """Append one frame, placed at its media time."""
        if self._result is not None:
            raise RuntimeError(f"recording {self.path} is already closed")
        pcm = frame.pcm
        if frame.start > self._written:
            self._append(np.zeros(frame.start - self._written, dtype=np.int16))
        elif frame.start < self._written:
            pcm = pcm[self._written - frame.start :]
        if len(pcm):
            self._append(pcm)

    def close(self) -> RecordingResult:
        """Write the rest, fsync, rename onto `path`; idempotent."""
        if self._result is not None:
            return self._result
        self._flush()
        if self._file is None:
            self._file = self._open()  # no media: a zero-frame WAV
        self._file.close()
        data: bytes | None = None
        if self._memory is not None:
            data = self._memory.getvalue()
            self._memory = None
        else:
            fd = os.open(self.temp_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self.temp_path, self.path)
        self._result = RecordingResult(
            self.path, self._written, self._truncated is not None, self._truncated, data
        )
        return self._result

    def abort(self) -> None:
        """Drop the recording: close and delete the temporary file."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._memory = None
        self.temp_path.unlink(missing_ok=True)
        self._result = RecordingResult(self.path, 0, self._truncated is not None, self._truncated)

    # ------------------------------------------------------------ internals

    def _append(self, pcm: Pcm) -> None:
        room = self.max_frames - self._written
        if len(pcm) > room:
            pcm = pcm[: max(room, 0)]
            self._truncated = self._truncated or self._bound
        if not len(pcm):
            return
        self._pending.append(pcm)
        self._pending_frames += len(pcm)
        self._written += len(pcm)
        if self._pending_frames >= self._buffer_frames:
            self._flush()

    def _open(self) -> sf.SoundFile | _MemoryWav:
        if self._memory is not None:
            return _MemoryWav(self._memory)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return sf.SoundFile(
            self.temp_path,
            mode="w",
            samplerate=SAMPLE_RATE,
            channels=1,
            subtype="PCM_16",
            format="WAV",
        )

    def _flush(self) -> None:
        if not self._pending:
            return
        if self._file is None:
            self._file = self._open()
        self._file.write(np.concatenate(self._pending))
        self._pending.clear()
        self._pending_frames = 0


class _MemoryWav:
    """The in-memory recording's writer: 8 kHz mono PCM_16 WAV with `wave` (no
    cffi callback, see the module's docstring); the same bytes libsndfile
    writes (a 44-byte header, then the samples little-endian)."""

    def __init__(self, out: io.BytesIO) -> None:
        self._wav = wave.open(out, "wb")  # noqa: SIM115 (closed by close(), as SoundFile)
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(SAMPLE_RATE)

    def write(self, pcm: Pcm) -> None:
        self._wav.writeframes(np.asarray(pcm, dtype="<i2").tobytes())

    def close(self) -> None:
        self._wav.close()  # patches the sizes; leaves `out` open (not opened by wave)
