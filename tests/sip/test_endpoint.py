"""The endpoint multiplexer: out-of-dialog requests, bad input, timers of many usages."""

from __future__ import annotations

import random

import pytest

from sipclient.sip.endpoint import Endpoint, uri_addr
from sipclient.sip.message import URI, Headers, Request
from sipclient.sip.reason import q850_cause, q850_text

from .usage_harness import LOCAL, PBX, endpoint, sent


def request(method: str, *, to_tag: str | None = None, rport: bool = True) -> Request:
    req = Request(method, URI.parse(f"sip:1001@{LOCAL[0]}:{LOCAL[1]}"))
    req.headers.add(
        "Via", f"SIP/2.0/UDP 10.0.0.2:5099;branch=z9hG4bK{method}" + (";rport" if rport else "")
    )
    req.headers.add("From", "<sip:pbx@10.0.0.2>;tag=p")
    req.headers.add("To", "<sip:1001@10.0.0.1>" + (f";tag={to_tag}" if to_tag else ""))
    req.headers.add("Call-ID", f"{method}@pbx")
    req.headers.add("CSeq", f"1 {method}")
    return req


@pytest.mark.parametrize(
    ("method", "to_tag", "status"),
    [("OPTIONS", None, 200), ("INVITE", None, 603), ("BYE", "x", 481), ("NOTIFY", "x", 481)],
)
def test_requests_for_no_usage(method: str, to_tag: str | None, status: int) -> None:
    ep = endpoint()
    ep.receive(request(method, to_tag=to_tag).serialize(), PBX, 0.0)
    ((resp, dest),) = sent(ep)
    assert getattr(resp, "status", None) == status
    assert dest == PBX  # rport: back to the source address


def test_without_rport_the_response_goes_to_the_via_port() -> None:
    ep = endpoint()
    ep.receive(request("OPTIONS", rport=False).serialize(), PBX, 0.0)
    ((_, dest),) = sent(ep)
    assert dest == ("10.0.0.2", 5099)


def test_a_refused_invite_is_resent_until_acked() -> None:
    ep = endpoint()
    invite = request("INVITE")
    ep.receive(invite.serialize(), PBX, 0.0)
    ((first, _),) = sent(ep)
    ep.handle_timer(ep.get_timer() or 0.0)  # Timer G
    ((again, _),) = sent(ep)
    assert again.serialize() == first.serialize()
    ack = request("ACK")
    ack.headers.set("Via", invite.headers.get("Via") or "")
    ack.headers.set("CSeq", "1 ACK")
    ep.receive(ack.serialize(), PBX, 0.6)
    assert sent(ep) == []


@pytest.mark.parametrize(
    "data",
    [b"", b"\r\n\r\n", b"garbage", b"SIP/2.0 200 OK\r\n\r\n", b"\xff" * 100, b"INVITE x\r\n\r\n"],
)
def test_bad_datagrams_are_dropped_and_counted(data: bytes) -> None:
    ep = endpoint()
    ep.receive(data, PBX, 0.0)
    assert sent(ep) == []
    assert ep.parse_errors == (0 if not data.strip(b"\r\n") else 1)


def test_a_response_for_nothing_is_ignored() -> None:
    ep = endpoint()
    resp = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bKnope\r\n"
    resp += b"From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 BYE\r\n\r\n"
    ep.receive(resp, PBX, 0.0)
    assert sent(ep) == [] and ep.parse_errors == 0


def test_uri_addr_uses_ip_literals_and_falls_back_for_names() -> None:
    assert uri_addr(URI.parse("sip:a@10.1.2.3:5070"), PBX) == ("10.1.2.3", 5070)
    assert uri_addr(URI.parse("sip:a@10.1.2.3"), PBX) == ("10.1.2.3", 5060)
    assert uri_addr(URI.parse("sip:a@pbx.example.com"), PBX) == PBX
    assert uri_addr(URI.parse("sip:a@[::1]:5080"), PBX) == ("::1", 5080)


def test_tcp_endpoint_writes_tcp_via_and_has_no_retransmissions() -> None:
    ep = Endpoint(local=LOCAL, transport="tcp", rng=random.Random(1))
    assert ep.via("z9hG4bKx").startswith("SIP/2.0/TCP 10.0.0.1:5062;")
    with pytest.raises(ValueError):
        Endpoint(local=LOCAL, transport="sctp", rng=random.Random(1))


@pytest.mark.parametrize(
    ("values", "cause", "text"),
    [
        (['Q.850;cause=1;text="Unallocated number"'], 1, "Unallocated number"),
        (['SIP;cause=487;text="x", Q.850;cause=16'], 16, None),
        (["q.850 ; cause=34"], 34, None),
        (["Q.850;cause=abc"], None, None),
        (["Q.850;cause=999"], None, None),
        (["SIP;cause=200"], None, None),
        ([], None, None),
    ],
)
def test_reason_header(values: list[str], cause: int | None, text: str | None) -> None:
    headers = Headers([("Reason", v) for v in values])
    assert q850_cause(headers) == cause
    assert q850_text(headers) == text
