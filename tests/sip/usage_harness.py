"""A far end in memory for the usage tests: read what the endpoint sent, answer it."""

from __future__ import annotations

import random
from collections.abc import Iterable

from sipclient.sip.endpoint import Addr, Endpoint
from sipclient.sip.message import Request, Response, make_response, parse_message

LOCAL: Addr = ("10.0.0.1", 5062)
PBX: Addr = ("10.0.0.2", 5060)
T1 = 0.5


def endpoint(seed: int = 1, transport: str = "udp") -> Endpoint:
    return Endpoint(local=LOCAL, transport=transport, rng=random.Random(seed), t1=T1)


def sent(ep: Endpoint) -> list[tuple[Request | Response, Addr]]:
    """Everything the endpoint put on the wire since the last call, parsed."""
    return [(parse_message(data), addr) for data, addr in ep.datagrams_to_send()]


def requests(ep: Endpoint) -> list[Request]:
    return [m for m, _ in sent(ep) if isinstance(m, Request)]


def events(ep: Endpoint) -> list[object]:
    return [event for _, event in ep.events()]


def answer(
    ep: Endpoint,
    req: Request,
    status: int,
    now: float,
    *,
    tag: str | None = "far1",
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    source: Addr = PBX,
) -> Response:
    """Feed the endpoint a response to `req` (To tag added above 100)."""
    resp = make_response(req, status, to_tag=tag if status > 100 else None)
    for name, value in headers:
        resp.headers.add(name, value)
    if body:
        resp.headers.add("Content-Type", "application/sdp")
        resp.body = body
    ep.receive(resp.serialize(), source, now)
    return resp


SDP_ANSWER = (
    b"v=0\r\no=- 1 1 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\n"
    b"m=audio 30000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
)
