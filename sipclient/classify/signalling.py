"""Verdicts from SIP signalling alone: the final code, the Q.850 cause, 180/183.

The whole mapping is the two tables below (`CAUSES`, `CODES`) plus the few
rules of `from_signalling`, in this order:

1. a 2xx (or `answered`) -> `answered`;
2. a Q.850 cause from a Reason header that names an outcome -> its row in
   `CAUSES` (a cause is more precise than the code it rides on: carriers send
   480 with cause 20 for a phone switched off, 503 with cause 34 for a full
   trunk group);
3. 487 after our own CANCEL: `no_answer` when a 180 came and we cancelled
   because the ring limit ran out (`cancel_reason == "ring_timeout"`: it rang
   until the limit, nobody answered); `ringing` when a 180 came and we hung
   up for any other reason (on purpose, on a live number); else `unknown`
   (only the audio can tell);
4. user busy after ringing (486/600, or cause 17, after a 180) -> `rejected`:
   the phone rang and the callee pressed "decline" (PROTOCOL.md "Verdicts");
5. 480 / 408 depend on whether it rang: with a 180 -> `no_answer`, without
   -> `unreachable` (480) / `failed`, transient (408, no response: a hung
   trunk, or a proxy's timer behind which nothing answered, says nothing of
   the number; the server dials it again after `retries.spacing`);
6. the code's row in `CODES`, else the class default (other 4xx -> `failed`,
   5xx -> `failed`, 6xx -> `rejected`);
7. no final code: a 180 -> `ringing` (weak), else `unknown` with a low
   confidence ("nothing says anything"; the daemon reports its own
   no-response timeout as 408).

Q.850 causes (ITU-T Q.850; SIP codes as RFC 3398 section 8.2.6.1 maps them):

| cause | meaning | verdict | transient |
| --- | --- | --- | --- |
| 1 | unallocated number | empty | |
| 2, 3 | no route to network / destination | empty (0.7) | |
| 17 | user busy (after a 180: rejected) | busy | |
| 18 | no user responding | no_answer | |
| 19 | no answer, user alerted | no_answer | |
| 20 | subscriber absent | powered_off | |
| 21 | call rejected | rejected | |
| 22, 23 | number changed / redirected | changed | |
| 27 | destination out of order | unreachable | |
| 28 | invalid number format | empty | |
| 29 | facility rejected | restricted | |
| 34 | no circuit available | failed | yes |
| 38 | network out of order (PROTOCOL.md: `failed`, transient) | failed | yes |
| 41 | temporary failure | failed | yes |
| 42 | switching equipment congestion | failed | yes |
| 44 | requested channel not available | failed | yes |
| 47 | resource unavailable | failed | yes |
| 50, 55, 57, 87 | not subscribed / barred / not authorised | restricted | |
| 58, 63, 65, 70, 79, 88, 95, 111 | capability / protocol errors | failed | |
| 102 | recovery on timer expiry | failed | yes |

Causes 16 (normal clearing), 31 (normal, unspecified), 127 (interworking)
and any cause not listed say nothing: the code decides.

SIP final codes (RFC 3261; RFC 3398 section 7.2.4.1 for their ISUP causes):

| code | verdict | transient |
| --- | --- | --- |
| 2xx | answered | |
| 403 | restricted | |
| 404, 604, 484, 485 | empty | |
| 410 | changed | |
| 480 | no_answer after 180, else unreachable | |
| 408 | no_answer after 180, else failed | yes (without 180) |
| 486, 600 | busy; after a 180 rejected | |
| 487 | our CANCEL after 180: no_answer at the ring limit, else ringing; no 180: unknown | |
| 603 | rejected | |
| 401, 407 | failed (our credentials) | |
| 503 | failed | yes |
| other 4xx / 5xx | failed | |
| other 6xx | rejected | |

`conclusive(sig)` tells streaming use whether signalling alone is enough
already before any final response (a 183 without SDP carrying a Reason
cause, say), so the daemon can CANCEL at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sipclient.classify.verdicts import Decision, Signalling, Verdict


@dataclass(frozen=True)
class Rule:
    """One row of a table: the verdict, how sure, whether to dial again."""

    verdict: Verdict
    confidence: float
    transient: bool = False


V = Verdict

CAUSES: dict[int, Rule] = {
    1: Rule(V.EMPTY, 0.97),
    2: Rule(V.EMPTY, 0.7),
    3: Rule(V.EMPTY, 0.7),
    17: Rule(V.BUSY, 0.95),
    18: Rule(V.NO_ANSWER, 0.9),
    19: Rule(V.NO_ANSWER, 0.9),
    20: Rule(V.POWERED_OFF, 0.95),
    21: Rule(V.REJECTED, 0.9),
    22: Rule(V.CHANGED, 0.95),
    23: Rule(V.CHANGED, 0.85),
    27: Rule(V.UNREACHABLE, 0.9),
    28: Rule(V.EMPTY, 0.9),
    29: Rule(V.RESTRICTED, 0.8),
    34: Rule(V.FAILED, 0.9, transient=True),
    38: Rule(V.FAILED, 0.85, transient=True),  # the network, not the number
    41: Rule(V.FAILED, 0.9, transient=True),
    42: Rule(V.FAILED, 0.9, transient=True),
    44: Rule(V.FAILED, 0.9, transient=True),
    47: Rule(V.FAILED, 0.9, transient=True),
    50: Rule(V.RESTRICTED, 0.85),
    55: Rule(V.RESTRICTED, 0.85),
    57: Rule(V.RESTRICTED, 0.85),
    87: Rule(V.RESTRICTED, 0.85),
    58: Rule(V.FAILED, 0.8),
    63: Rule(V.FAILED, 0.8),
    65: Rule(V.FAILED, 0.8),
    70: Rule(V.FAILED, 0.8),
    79: Rule(V.FAILED, 0.8),
    88: Rule(V.FAILED, 0.8),
    95: Rule(V.FAILED, 0.8),
    102: Rule(V.FAILED, 0.8, transient=True),  # a timer ran out: nothing about the number
    111: Rule(V.FAILED, 0.8),
}
"""Q.850 cause -> outcome. Causes absent here (16, 31, 127, ...) say nothing."""

CODES: dict[int, Rule] = {
    403: Rule(V.RESTRICTED, 0.85),
    404: Rule(V.EMPTY, 0.95),
    484: Rule(V.EMPTY, 0.9),
    485: Rule(V.EMPTY, 0.8),
    604: Rule(V.EMPTY, 0.95),
    410: Rule(V.CHANGED, 0.9),
    486: Rule(V.BUSY, 0.95),
    600: Rule(V.BUSY, 0.95),
    603: Rule(V.REJECTED, 0.9),
    401: Rule(V.FAILED, 0.9),
    407: Rule(V.FAILED, 0.9),
    503: Rule(V.FAILED, 0.8, transient=True),
}
"""SIP final code -> outcome, for the codes that do not depend on 180 (see rules)."""

_CLASS_DEFAULT: dict[int, Rule] = {
    4: Rule(V.FAILED, 0.6),
    5: Rule(V.FAILED, 0.7),
    6: Rule(V.REJECTED, 0.7),
}

STRONG = 0.85
"""Signalling at least this sure outranks what the audio says (decide.py)."""


def _decision(rule: Rule, sig: Signalling, name: str) -> Decision:
    evidence: dict[str, Any] = {"kind": "signalling", "rule": name}
    if sig.sip_code is not None:
        evidence["sip_code"] = sig.sip_code
    if sig.q850_cause is not None:
        evidence["q850_cause"] = sig.q850_cause
    return Decision(rule.verdict, rule.confidence, evidence, None, None, rule.transient)


def from_signalling(sig: Signalling) -> Decision:
    """The verdict SIP alone gives for a call (module docstring: tables and rules).

    Always returns a Decision; `unknown` with a low confidence when nothing
    says anything. `decided_ms` is None: no audio was needed.
    """
    code = sig.sip_code
    if sig.answered or (code is not None and 200 <= code < 300):
        return _decision(Rule(V.ANSWERED, 0.99), sig, "answered")
    cause = sig.q850_cause
    if sig.ringing and (cause == 17 or (cause not in CAUSES and code in (486, 600))):
        # busy after it rang: the callee saw the call and declined it
        return _decision(Rule(V.REJECTED, 0.85), sig, "busy-after-180")
    if cause is not None and cause in CAUSES:
        return _decision(CAUSES[cause], sig, f"q850:{cause}")
    if code is None or code < 200:
        if sig.ringing:
            return _decision(Rule(V.RINGING, 0.6), sig, "180-no-final")
        return _decision(Rule(V.UNKNOWN, 0.1), sig, "nothing")
    if code == 487:
        if sig.cancelled_by_us and sig.ringing and sig.cancel_reason == "ring_timeout":
            return _decision(Rule(V.NO_ANSWER, 0.85), sig, "ring-timeout-after-180")
        if sig.cancelled_by_us and sig.ringing:
            return _decision(Rule(V.RINGING, 0.9), sig, "487-after-180")
        if sig.cancelled_by_us:
            return _decision(Rule(V.UNKNOWN, 0.2), sig, "487-no-180")
        return _decision(Rule(V.FAILED, 0.5), sig, "487-not-ours")
    if code == 480:
        if sig.ringing:
            return _decision(Rule(V.NO_ANSWER, 0.8), sig, "480-after-180")
        return _decision(Rule(V.UNREACHABLE, 0.75), sig, "480")
    if code == 408:
        if sig.ringing:
            return _decision(Rule(V.NO_ANSWER, 0.8), sig, "408-after-180")
        return _decision(Rule(V.FAILED, 0.7, transient=True), sig, "408")
    if code in CODES:
        return _decision(CODES[code], sig, f"sip:{code}")
    default = _CLASS_DEFAULT.get(code // 100)
    if default is not None:
        return _decision(default, sig, f"sip:{code // 100}xx")
    return _decision(Rule(V.UNKNOWN, 0.1), sig, f"sip:{code}-unexpected")


def conclusive(sig: Signalling) -> Decision | None:
    """The Decision when signalling alone settles the call now, else None.

    Settled: an answer, any final response except 487 after our own CANCEL
    (that one leaves the audio to speak), or a Q.850 cause that names an
    outcome even before any final response (a 183 without SDP with a Reason,
    as Chinese carriers send). A bare 180/183 is not conclusive.
    """
    if sig.answered:
        return from_signalling(sig)
    if sig.q850_cause is not None and sig.q850_cause in CAUSES:
        return from_signalling(sig)
    code = sig.sip_code
    if code is None or code < 200:
        return None
    if code == 487 and sig.cancelled_by_us:
        return None
    return from_signalling(sig)
