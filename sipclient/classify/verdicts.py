"""The verdict vocabulary (PROTOCOL.md, "Verdicts") and the classifier's in/out types.

Shared by the daemon (streaming, to hang up early), the server (over the
whole WAV, authoritative) and the CLI, so all three speak the same words.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Verdict(StrEnum):
    """What a dialled number turned out to be; the `result` of a dialplan."""

    RINGING = "ringing"
    EMPTY = "empty"
    POWERED_OFF = "powered_off"
    SUSPENDED = "suspended"
    UNREACHABLE = "unreachable"
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    ANSWERED = "answered"
    REJECTED = "rejected"
    RESTRICTED = "restricted"
    CHANGED = "changed"
    FAILED = "failed"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Signalling:
    """What SIP told us about one call; the upload's extension fields carry it.

    `sip_code` is the final response code (None when there was none: we
    cancelled, or nothing answered), `q850_cause` the cause of a Reason header
    seen in any response, `ringing` whether a 180 came, `early_media` whether
    a 183 / SDP came, `answered` whether a 2xx came. `cancel_reason` says why
    we sent a CANCEL when `cancelled_by_us`: "verdict" (the classifier
    decided), "ring_timeout" (the ring limit ran out), "shutdown" (the daemon
    is stopping), or "" when not known.
    """

    sip_code: int | None = None
    sip_reason: str = ""
    q850_cause: int | None = None
    ringing: bool = False
    early_media: bool = False
    answered: bool = False
    cancelled_by_us: bool = False
    cancel_reason: str = ""


@dataclass(frozen=True)
class Decision:
    """A verdict with why and when.

    `confidence` is 0..1; `evidence` says what decided (at least `kind`:
    "signalling" | "tone" | "announcement" | "default", plus e.g. `rule`,
    `tone`, `template`, `score`); `decided_ms` is the moment into the audio at
    which the classifier was sure (None when signalling alone decided with no
    audio); `label` the finer announcement class (欠费, 网络忙 ...) when one
    was heard; `transient` marks outcomes worth dialling again (503, causes
    34/38/41/42/47, 网络忙).
    """

    verdict: Verdict
    confidence: float
    evidence: dict[str, Any] = field(default_factory=dict)
    decided_ms: int | None = None
    label: str | None = None
    transient: bool = False

    def as_json(self) -> dict[str, Any]:
        """The JSON-ready form used by the CLI, the upload and the server's `detail`."""
        return {
            "verdict": self.verdict.value,
            "confidence": round(self.confidence, 3),
            "evidence": self.evidence,
            "decided_ms": self.decided_ms,
            "label": self.label,
            "transient": self.transient,
        }
