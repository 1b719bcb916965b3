"""The server's authoritative verdict for one uploaded call (a /dial_wav).

`judge_recording` is called off the event loop for every upload: it reads
the WAV (any rate, width or channel count), runs the same streaming
classifier the daemon runs (decide.py) over the whole file and combines it
with the upload's signalling. Bad audio never raises: it comes back as the
signalling verdict, or `unknown`, with the reason in `evidence["audio_error"]`.
"""

from __future__ import annotations

from pathlib import Path

from sipclient.classify.audio import AudioError, load_pcm
from sipclient.classify.signalling import from_signalling
from sipclient.classify.unknowns import UnknownStore
from sipclient.classify.verdicts import Decision, Signalling


def judge_recording(
    wav_path: Path | None,
    signalling: Signalling,
    library: object | None = None,
    *,
    unknown_store: UnknownStore | None = None,
) -> Decision:
    """The final Decision for a call from its recording and its signalling.

    `library` is a `TemplateLibrary` (None: the default one shipped with the
    package, loaded once). `wav_path` None means no recording came:
    signalling decides. `unknown_store` keeps announcements no template
    matched. Only programming errors raise.
    """
    from sipclient.classify.decide import classify_pcm
    from sipclient.classify.templates import TemplateLibrary

    if wav_path is None:
        return _with_note(from_signalling(signalling), "audio", "no recording")
    try:
        pcm = load_pcm(wav_path)
    except AudioError as exc:
        return _with_note(from_signalling(signalling), "audio_error", str(exc))
    lib = library if isinstance(library, TemplateLibrary) else None
    return classify_pcm(pcm, 8000, signalling, lib, unknown_store=unknown_store)


def _with_note(d: Decision, key: str, value: str) -> Decision:
    evidence = dict(d.evidence)
    evidence[key] = value
    return Decision(d.verdict, d.confidence, evidence, d.decided_ms, d.label, d.transient)
