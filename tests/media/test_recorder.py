"""The WAV recorder: format, bounds, zero-frame files, atomic writes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf

from sipclient.config import RecordingSettings
from sipclient.media.frames import AudioFrame
from sipclient.media.recorder import Recorder, temp_path_for
from tests.media.conftest import tone


def test_writes_8k_mono_16bit(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    rec = Recorder(path)
    pcm = tone(440, 0.5)
    rec.feed(AudioFrame(0, pcm[:2000]))
    rec(AudioFrame(2000, pcm[2000:]))
    result = rec.close()
    assert result.frames == 4000 and result.seconds == 0.5 and not result.truncated
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (8000, 1, "PCM_16", 4000)
    data, _ = sf.read(str(path), dtype="int16")
    assert np.array_equal(data, pcm)


def test_no_media_gives_a_zero_frame_wav(tmp_path: Path) -> None:
    result = Recorder(tmp_path / "sub" / "empty.wav").close()
    assert result.frames == 0
    info = sf.info(str(result.path))
    assert info.frames == 0 and info.samplerate == 8000


def test_max_seconds_truncates_and_says_so(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "long.wav", max_seconds=1.0)
    for i in range(15):  # 3 s in 200 ms frames
        rec.feed(AudioFrame(i * 1600, tone(300, 0.2)))
    assert rec.full
    result = rec.close()
    assert result.truncated and result.bound == "max_seconds"
    assert result.frames == 8000
    assert sf.info(str(result.path)).frames == 8000


def test_max_bytes_bounds_the_whole_file(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "big.wav", max_seconds=60, max_bytes=10_044)
    rec.feed(AudioFrame(0, tone(300, 2.0)))
    result = rec.close()
    assert result.truncated and result.bound == "max_bytes"
    assert result.path.stat().st_size <= 10_044
    assert result.frames == 5000


def test_settings_bounds_apply(tmp_path: Path) -> None:
    rec = Recorder.from_settings(RecordingSettings(max_seconds=0.25), tmp_path / "s.wav")
    rec.feed(AudioFrame(0, tone(300, 1.0)))
    assert rec.close().frames == 2000


def test_frames_are_placed_at_their_media_time(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "gap.wav")
    rec.feed(AudioFrame(0, np.full(160, 100, dtype=np.int16)))
    rec.feed(AudioFrame(480, np.full(160, 200, dtype=np.int16)))  # 320 missing samples
    rec.feed(AudioFrame(600, np.full(160, 300, dtype=np.int16)))  # overlaps 40
    result = rec.close()
    data, _ = sf.read(str(result.path), dtype="int16")
    assert len(data) == 760
    assert (data[160:480] == 0).all()
    assert (data[480:640] == 200).all() and (data[640:] == 300).all()


def test_write_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "atomic.wav"
    rec = Recorder(path, buffer_seconds=0.1)
    rec.feed(AudioFrame(0, tone(300, 1.0)))  # past the buffer: on disk already
    assert not path.exists()
    assert temp_path_for(path).exists()
    rec.close()
    assert path.exists() and not temp_path_for(path).exists()


def test_abort_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "dropped.wav"
    rec = Recorder(path, buffer_seconds=0.1)
    rec.feed(AudioFrame(0, tone(300, 1.0)))
    rec.abort()
    assert list(tmp_path.iterdir()) == []


def test_in_memory_gives_the_same_wav_and_writes_no_file(tmp_path: Path) -> None:
    pcm = tone(440, 2.5)  # more than one buffered second: several flushes
    on_disk = Recorder(tmp_path / "disk.wav")
    in_memory = Recorder(tmp_path / "mem.wav", in_memory=True)
    for rec in (on_disk, in_memory):
        rec.feed(AudioFrame(0, pcm[:8000]))
        rec.feed(AudioFrame(8800, pcm[8800:]))  # a gap, padded with silence
    disk, mem = on_disk.close(), in_memory.close()
    assert disk.data is None and mem.data is not None
    assert mem.data == (tmp_path / "disk.wav").read_bytes()
    assert mem.frames == disk.frames == len(pcm)
    assert not (tmp_path / "mem.wav").exists()
    assert not temp_path_for(tmp_path / "mem.wav").exists()


def test_in_memory_without_media_is_a_zero_frame_wav(tmp_path: Path) -> None:
    result = Recorder(tmp_path / "none.wav", in_memory=True).close()
    assert result.data is not None and result.frames == 0
    info = sf.info(io.BytesIO(result.data))
    assert info.frames == 0 and info.samplerate == 8000 and info.subtype == "PCM_16"


def test_in_memory_matches_the_file_byte_for_byte_empty_and_at_a_bound(tmp_path: Path) -> None:
    # two writers (soundfile on disk, `wave` in memory): one WAV, whatever the length
    pcm = tone(300, 1.5)
    for name, frames, bound in (("empty", [], {}), ("full", [pcm], {"max_seconds": 0.7})):
        on_disk = Recorder(tmp_path / f"{name}.wav", **bound)  # type: ignore[arg-type]
        in_memory = Recorder(tmp_path / f"{name}-mem.wav", in_memory=True, **bound)  # type: ignore[arg-type]
        for rec in (on_disk, in_memory):
            for f in frames:
                rec.feed(AudioFrame(0, f))
        disk, mem = on_disk.close(), in_memory.close()
        assert mem.data == (tmp_path / f"{name}.wav").read_bytes()
        assert (mem.frames, mem.truncated, mem.bound) == (disk.frames, disk.truncated, disk.bound)
    assert len(Recorder(tmp_path / "x.wav", in_memory=True).close().data or b"") == 44
