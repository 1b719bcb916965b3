"""The Reason header (RFC 3326): the Q.850 cause a network puts in any response.

    Reason: Q.850;cause=1;text="Unallocated number"
    Reason: SIP;cause=487, Q.850;cause=16

`q850_cause(headers)` returns the first Q.850 cause of every Reason value of a
message (None when there is none or it does not parse); the text is kept by
`q850_text`. Bad values are ignored, never raised: a PBX that writes nonsense
here loses only the cause.
"""

from __future__ import annotations

from sipclient.sip.message import Headers, unquote


def _q850_params(headers: Headers) -> dict[str, str | None] | None:
    for value in headers.get_all("Reason"):
        protocol, _, rest = value.partition(";")
        if protocol.strip().upper() != "Q.850":
            continue
        params: dict[str, str | None] = {}
        for part in rest.split(";"):
            name, sep, val = part.partition("=")
            params[name.strip().lower()] = val.strip() if sep else None
        return params
    return None


def q850_cause(headers: Headers) -> int | None:
    """The Q.850 cause (0..127) of the message's Reason header, if one is there."""
    params = _q850_params(headers)
    if params is None:
        return None
    cause = params.get("cause")
    if cause is None or not cause.isdigit():
        return None
    number = int(cause)
    return number if 0 <= number <= 127 else None


def q850_text(headers: Headers) -> str | None:
    """The `text` parameter of the Q.850 Reason value, unquoted."""
    params = _q850_params(headers)
    text = params.get("text") if params else None
    return unquote(text) if text else None
