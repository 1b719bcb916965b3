"""judge_recording (the server's entry point) and reading odd recordings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sipclient.classify.audio import AudioError, load_pcm
from sipclient.classify.judge import judge_recording
from sipclient.classify.templates import TemplateLibrary
from sipclient.classify.verdicts import Signalling, Verdict
from tests.classify.conftest import Pcm, cadence

EARLY = Signalling(early_media=True, sip_code=487, cancelled_by_us=True)
BUSY = cadence((450.0,), [(0.35, 0.35)], 4.0)


def test_no_recording_uses_signalling() -> None:
    d = judge_recording(None, Signalling(sip_code=486))
    assert d.verdict == Verdict.BUSY
    assert d.evidence["audio"] == "no recording"


def test_not_a_wav_is_a_clear_reason(tmp_path: Path) -> None:
    p = tmp_path / "x.wav"
    p.write_bytes(b"RIFF nonsense")
    d = judge_recording(p, Signalling(sip_code=404))
    assert d.verdict == Verdict.EMPTY
    assert "not a readable audio file" in d.evidence["audio_error"]
    d = judge_recording(p, Signalling())
    assert d.verdict == Verdict.UNKNOWN
    assert "audio_error" in d.evidence


def test_missing_file(tmp_path: Path) -> None:
    d = judge_recording(tmp_path / "gone.wav", Signalling())
    assert d.verdict == Verdict.UNKNOWN
    assert "no such file" in d.evidence["audio_error"]


def test_zero_frames(wav: Callable[..., Path]) -> None:
    p = wav(np.zeros(0, dtype=np.int16), "empty.wav")
    d = judge_recording(p, Signalling(sip_code=480, q850_cause=20), TemplateLibrary.empty())
    assert d.verdict == Verdict.POWERED_OFF
    d = judge_recording(p, Signalling(), TemplateLibrary.empty())
    assert d.verdict == Verdict.UNKNOWN


@pytest.mark.parametrize(
    ("rate", "channels", "subtype"),
    [
        (8000, 1, "PCM_16"),
        (16000, 1, "PCM_16"),
        (44100, 2, "PCM_24"),
        (8000, 2, "ULAW"),
        (48000, 1, "FLOAT"),
        (8000, 1, "ALAW"),
        (8000, 1, "PCM_U8"),
    ],
)
def test_any_rate_width_and_channels(
    wav: Callable[..., Path], rate: int, channels: int, subtype: str
) -> None:
    from scipy.signal import resample_poly

    x: Pcm = resample_poly(BUSY, rate, 8000) if rate != 8000 else BUSY
    if channels == 2:
        x = np.stack([x, x * 0.5], axis=1)
    p = wav(x, f"busy_{rate}_{channels}_{subtype}.wav", rate, subtype)
    d = judge_recording(p, EARLY, TemplateLibrary.empty())
    assert d.verdict == Verdict.BUSY, d.evidence
    assert d.evidence["tone"] == "cn_busy"


def test_clipped_audio(wav: Callable[..., Path]) -> None:
    p = wav(np.clip(BUSY * 40, -1, 0.999), "clipped.wav")
    d = judge_recording(p, EARLY, TemplateLibrary.empty())
    # hard clipping puts harmonics everywhere: still a cadence, or an honest unknown
    assert d.verdict in (Verdict.BUSY, Verdict.UNKNOWN)
    p = wav(np.full(16000, 0.999), "dc.wav")
    d = judge_recording(p, EARLY, TemplateLibrary.empty())
    assert d.verdict == Verdict.UNKNOWN


def test_load_pcm_errors(tmp_path: Path, wav: Callable[..., Path]) -> None:
    with pytest.raises(AudioError, match="no such file"):
        load_pcm(tmp_path / "none.wav")
    (tmp_path / "d.wav").mkdir()
    with pytest.raises(AudioError):
        load_pcm(tmp_path / "d.wav")
    p = wav(BUSY, "ok.wav")
    pcm = load_pcm(p)
    assert pcm.dtype == np.int16 and len(pcm) == len(BUSY)
    truncated = tmp_path / "t.wav"
    truncated.write_bytes(p.read_bytes()[:30])
    with pytest.raises(AudioError):
        load_pcm(truncated)


def test_judge_uses_the_given_library(
    wav: Callable[..., Path], library: TemplateLibrary, speech_dir: dict[str, Pcm]
) -> None:
    p = wav(speech_dir["guanji"], "guanji.wav")
    d = judge_recording(p, EARLY, library)
    assert d.verdict == Verdict.POWERED_OFF and d.label == "关机"
    sf.info(str(p))  # the recording is left where it was
