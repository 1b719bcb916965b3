"""Fixtures and builders shared by the SIP core tests."""

from __future__ import annotations

import random

import pytest

from sipclient.sip.message import Headers, Request, Response, make_response


def build_request(
    method: str = "INVITE",
    branch: str = "z9hG4bKtest1",
    cseq: int = 1,
    uri: str = "sip:bob@pbx.example.com",
    routes: tuple[str, ...] = (),
) -> Request:
    """A minimal valid request from alice to bob."""
    h = Headers()
    h.add("Via", f"SIP/2.0/UDP 127.0.0.1:5070;branch={branch};rport")
    for r in routes:
        h.add("Route", r)
    h.add("Max-Forwards", "70")
    h.add("From", '"Alice" <sip:alice@pbx.example.com>;tag=ftag')
    h.add("To", "<sip:bob@pbx.example.com>")
    h.add("Call-ID", "call-1@127.0.0.1")
    h.add("CSeq", f"{cseq} {method}")
    h.add("Contact", "<sip:alice@127.0.0.1:5070>")
    return Request(method, uri, h)


def build_response(request: Request, status: int, to_tag: str | None = "ttag") -> Response:
    """A response to ``request`` as the far end would send it."""
    return make_response(request, status, to_tag=to_tag)


@pytest.fixture
def rng() -> random.Random:
    """A seeded random source: every test is deterministic."""
    return random.Random(4475)
