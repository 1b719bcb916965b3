"""Wire tests for sipclient.sip.message: (bytes, expected) tables through parser and serializer."""

from __future__ import annotations

import random

import pytest

from sipclient.sip.message import (
    URI,
    Address,
    CSeq,
    Headers,
    ParseError,
    Request,
    Response,
    StreamParser,
    Via,
    is_keepalive,
    make_branch,
    make_call_id,
    make_response,
    make_tag,
    parse_message,
    reason_phrase,
)

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK74bf9;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Alice" <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n'
    b"To: <sip:bob@biloxi.example.com>\r\n"
    b"Call-ID: 3848276298220188511@atlanta.example.com\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:alice@192.0.2.1:5060>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)

RESPONSE_183 = (
    b"SIP/2.0 183 Session Progress\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK74bf9;rport=5060;received=192.0.2.1\r\n"
    b"Record-Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n"
    b"Record-Route: <sip:p3.example.com;lr>\r\n"
    b'From: "Alice" <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n'
    b"To: <sip:bob@biloxi.example.com>;tag=314159\r\n"
    b"Call-ID: 3848276298220188511@atlanta.example.com\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:bob@192.0.2.4>\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

# Canonical messages: parse(x) then serialize() gives x back byte for byte.
ROUND_TRIP = [INVITE, RESPONSE_183]


@pytest.mark.parametrize("wire", ROUND_TRIP)
def test_round_trip_is_exact(wire: bytes) -> None:
    assert parse_message(wire).serialize() == wire


def test_invite_fields() -> None:
    msg = parse_message(INVITE)
    assert isinstance(msg, Request)
    assert msg.method == "INVITE"
    assert msg.uri == URI("sip", "bob", None, "biloxi.example.com")
    assert msg.body == b"v=0\n"
    assert msg.cseq == CSeq(1, "INVITE")
    assert msg.from_.display == "Alice"
    assert msg.from_.tag == "9fxced76sl"
    assert msg.to.tag is None
    assert msg.call_id == "3848276298220188511@atlanta.example.com"
    via = msg.top_via
    assert (via.transport, via.host, via.port, via.branch) == (
        "UDP",
        "192.0.2.1",
        5060,
        "z9hG4bK74bf9",
    )
    assert via.has_rport and via.rport is None
    assert msg.content_type == "application/sdp"
    assert [str(c.uri) for c in msg.contacts] == ["sip:alice@192.0.2.1:5060"]


def test_response_fields_and_multi_values() -> None:
    msg = parse_message(RESPONSE_183)
    assert isinstance(msg, Response)
    assert (msg.status, msg.reason) == (183, "Session Progress")
    assert msg.is_provisional and not msg.is_final
    assert msg.top_via.rport == 5060
    assert msg.top_via.received == "192.0.2.1"
    assert [a.uri.host for a in msg.record_route] == [
        "p1.example.com",
        "p2.example.com",
        "p3.example.com",
    ]
    assert all(a.uri.lr for a in msg.record_route)
    assert msg.to.tag == "314159"


# (wire, expected canonical serialization)
NORMALIZE = [
    # compact forms expanded, missing Content-Length added, odd name case canonicalized
    (
        b"OPTIONS sip:x@h SIP/2.0\r\nv: SIP/2.0/TCP h;branch=z9hG4bK1\r\nf: <sip:a@h>;tag=1\r\n"
        b"t: sip:x@h\r\ni: c1\r\ncSeQ: 7 OPTIONS\r\nk: timer\r\n\r\n",
        b"OPTIONS sip:x@h SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n"
        b"From: <sip:a@h>;tag=1\r\nTo: sip:x@h\r\nCall-ID: c1\r\nCSeq: 7 OPTIONS\r\n"
        b"Supported: timer\r\n"
        b"Content-Length: 0\r\n\r\n",
    ),
    # folded header lines are unfolded into one space; bare LF line ends are tolerated
    (
        b"SIP/2.0 200 OK\nVia: SIP/2.0/UDP h\n ;branch=z9hG4bK2\nFrom: <sip:a@h>;tag=1\n"
        b"To: <sip:b@h>;tag=2\nCall-ID: c2\nCSeq: 1\n\tBYE\nX-Thing: a\n  b\n\n",
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h ;branch=z9hG4bK2\r\nFrom: <sip:a@h>;tag=1\r\n"
        b"To: <sip:b@h>;tag=2\r\nCall-ID: c2\r\nCSeq: 1 BYE\r\nX-Thing: a b\r\n"
        b"Content-Length: 0\r\n\r\n",
    ),
    # leading CRLFs skipped; a Content-Length shorter than the datagram truncates the body
    (
        b"\r\n\r\nSIP/2.0 100 \r\nVia: SIP/2.0/UDP h;branch=z9hG4bK3\r\nFrom: <sip:a@h>;tag=1\r\n"
        b"To: <sip:b@h>\r\nCall-ID: c3\r\nCSeq: 1 INVITE\r\nl: 2\r\n\r\nabcdef",
        b"SIP/2.0 100 \r\nVia: SIP/2.0/UDP h;branch=z9hG4bK3\r\nFrom: <sip:a@h>;tag=1\r\n"
        b"To: <sip:b@h>\r\nCall-ID: c3\r\nCSeq: 1 INVITE\r\nContent-Length: 2\r\n\r\nab",
    ),
]


@pytest.mark.parametrize(("wire", "canonical"), NORMALIZE)
def test_parse_then_serialize_normalizes(wire: bytes, canonical: bytes) -> None:
    msg = parse_message(wire)
    assert msg.serialize() == canonical
    assert parse_message(canonical).serialize() == canonical


def _mutate(old: bytes, new: bytes) -> bytes:
    assert old in INVITE
    return INVITE.replace(old, new, 1)


BAD = [
    (b"", 400),
    (b"\r\n\r\n", 400),
    (b"garbage\r\n\r\n", 400),
    (RESPONSE_183.replace(b"SIP/2.0 183", b"SIP/2.0 800"), 400),
    (RESPONSE_183.replace(b"SIP/2.0 183", b"SIP/2.0 099"), 400),
    (RESPONSE_183.replace(b"SIP/2.0 183", b"SIP/2.0 18x"), 400),
    (_mutate(b"SIP/2.0\r\nVia", b"SIP/3.0\r\nVia"), 505),
    (
        _mutate(
            b"INVITE sip:bob@biloxi.example.com SIP", b"INVITE  sip:bob@biloxi.example.com SIP"
        ),
        400,
    ),
    (_mutate(b"INVITE sip:bob@biloxi.example.com", b"INVITE <sip:bob@biloxi.example.com>"), 400),
    (_mutate(b"CSeq: 1 INVITE", b"CSeq: 1 OPTIONS"), 400),
    (_mutate(b"CSeq: 1 INVITE", b"CSeq: 4294967296 INVITE"), 400),
    (_mutate(b"CSeq: 1 INVITE", b"CSeq: one INVITE"), 400),
    (_mutate(b"Content-Length: 4", b"Content-Length: 40"), 400),
    (_mutate(b"Content-Length: 4", b"Content-Length: -4"), 400),
    (_mutate(b"Max-Forwards: 70", b"Max-Forwards: 256"), 400),
    (_mutate(b"Call-ID: ", b"X-Call-ID: "), 400),
    (_mutate(b"Call-ID: 38", b"Call-ID: 1\r\nCall-ID: 38"), 400),
    (_mutate(b'From: "Alice" <', b'From: "Alice <'), 400),
    (_mutate(b'From: "Alice" <', b"From: Alice, Bob <"), 400),
    (_mutate(b"To: <sip:bob@biloxi.example.com>", b"To: < sip:bob@biloxi.example.com>"), 400),
    (_mutate(b"Via: SIP/2.0/UDP 192.0.2.1:5060", b"Via: SIP/2.0/UDP 192.0.2.1:99999"), 400),
    (_mutate(b"Via: SIP/2.0/UDP", b"Via: SIP/2.0"), 400),
    (
        _mutate(
            b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch", b"Via: SIP/2.0/UDP 192.0.2.1;;,;,,branch"
        ),
        400,
    ),
    (_mutate(b"Contact: <sip:alice@192.0.2.1:5060>", b"Contact: sip:a@h?Route=x"), 400),
    (_mutate(b"Max-Forwards: 70\r\n", b" folded-first\r\nMax-Forwards: 70\r\n"), 400),
    (_mutate(b"Max-Forwards: 70\r\n", b"No colon here\r\n"), 400),
]


@pytest.mark.parametrize(("wire", "status"), BAD)
def test_bad_messages_raise_parse_error(wire: bytes, status: int) -> None:
    with pytest.raises(ParseError) as err:
        parse_message(wire)
    assert err.value.status == status
    assert str(err.value)


def test_invalid_utf8_survives_round_trip() -> None:
    wire = _mutate(b"Max-Forwards: 70", b"X-Junk: \xff\xfe ok")
    msg = parse_message(wire)
    assert msg.headers.get("x-junk") == "\udcff\udcfe ok"
    assert msg.serialize() == wire


URIS = [
    ("sip:alice@atlanta.com", URI("sip", "alice", None, "atlanta.com")),
    ("sips:alice:secretword@atlanta.com;transport=tcp", None),
    ("sip:+1-212-555-1212:1234@gateway.com;user=phone", None),
    ("sip:alice@192.0.2.4:5080", URI("sip", "alice", None, "192.0.2.4", 5080)),
    ("sip:[2001:db8::10]:5070;lr", URI("sip", None, None, "[2001:db8::10]", 5070, {"lr": None})),
    ("sip:atlanta.com;method=REGISTER?to=alice%40atlanta.com", None),
    (
        "sip:user;par=u%40example.net@example.com",
        URI("sip", "user;par=u%40example.net", None, "example.com"),
    ),
    ("tel:+358-555-1234567;phone-context=example.com", None),
    ("isbn:2983792873", URI("isbn", opaque="2983792873")),
]


@pytest.mark.parametrize(("text", "expected"), URIS)
def test_uri_round_trip(text: str, expected: URI | None) -> None:
    uri = URI.parse(text)
    assert str(uri) == text
    if expected is not None:
        assert uri == expected


def test_uri_details() -> None:
    uri = URI.parse("sips:alice:secretword@atlanta.com:5061;transport=TCP;lr")
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == (
        "sips",
        "alice",
        "secretword",
        "atlanta.com",
        5061,
    )
    assert uri.transport == "tcp" and uri.lr and uri.host_port == "atlanta.com:5061"
    tel = URI.parse("tel:+358-555-1234567;phone-context=example.com")
    assert tel.user == "+358-555-1234567"
    assert tel.params == {"phone-context": "example.com"}
    assert URI.parse("sip:a@h?subject=x&priority=urgent").headers == {
        "subject": "x",
        "priority": "urgent",
    }


@pytest.mark.parametrize(
    "text",
    [
        "sip",
        ":x",
        "sip:",
        "sip:a@",
        "sip:@h",
        "sip:h:port",
        "sip:h;",
        "sip:a b@h",
        "sip:[::1",
        "1sip:h",
    ],
)
def test_bad_uris(text: str) -> None:
    with pytest.raises(ParseError):
        URI.parse(text)


ADDRESSES = [
    ('"Bob \\"B\\"" <sip:bob@h>;tag=a1', 'Bob "B"', "sip:bob@h", {"tag": "a1"}),
    ("Bob Smith<sip:bob@h>", "Bob Smith", "sip:bob@h", {}),
    ("sip:bob@h ;  tag = 77 ; x", None, "sip:bob@h", {"tag": "77", "x": None}),
    ("<sip:p.example.com;lr>", None, "sip:p.example.com;lr", {}),
    # addr-spec whose quoted parameter holds a '<': not a name-addr
    ('sip:a@h;+sip.instance="<urn:x>"', None, "sip:a@h", {"+sip.instance": '"<urn:x>"'}),
    (
        '<sip:a@h>;+sip.instance="<urn:uuid:1;2>";expires=60',
        None,
        "sip:a@h",
        {"+sip.instance": '"<urn:uuid:1;2>"', "expires": "60"},
    ),
]


@pytest.mark.parametrize(("text", "display", "uri", "params"), ADDRESSES)
def test_addresses(text: str, display: str | None, uri: str, params: dict[str, str | None]) -> None:
    a = Address.parse(text)
    assert (a.display, str(a.uri), a.params) == (display, uri, params)
    assert Address.parse(str(a)) == a


def test_address_with_tag_copies() -> None:
    a = Address.parse("<sip:b@h>")
    b = a.with_tag("xyz")
    assert a.tag is None and b.tag == "xyz"
    assert str(b) == "<sip:b@h>;tag=xyz"


@pytest.mark.parametrize(
    "text",
    [
        "",
        '"unterminated <sip:a@h>',
        "<sip:a@h",
        "<sip:a@h> junk",
        '"x" sip:a@h',
        "sip:a@h;=1",
        "sip:a@h;t=",
    ],
)
def test_bad_addresses(text: str) -> None:
    with pytest.raises(ParseError):
        Address.parse(text)


def test_via_with_lws_everywhere() -> None:
    v = Via.parse("SIP  /   2.0  /  udp   host.example.com :  5062  ;  branch = z9hG4bKx ; rport")
    assert (v.protocol, v.transport, v.host, v.port) == ("SIP/2.0", "UDP", "host.example.com", 5062)
    assert v.branch == "z9hG4bKx" and v.has_rport
    assert str(v) == "SIP/2.0/UDP host.example.com:5062;branch=z9hG4bKx;rport"
    v6 = Via.parse("SIP/2.0/TCP [2001:db8::9:1]:5060;received=2001:db8::9:255")
    assert v6.host == "[2001:db8::9:1]" and v6.received == "2001:db8::9:255"


def test_headers_api() -> None:
    h = Headers([("v", "SIP/2.0/UDP a"), ("Route", "<sip:r1;lr>, <sip:r2;lr>"), ("X-A", "1")])
    assert "VIA" in h and "x-a" in h and "Contact" not in h
    assert h.get_all("route") == ["<sip:r1;lr>", "<sip:r2;lr>"]
    assert h.get("Route") == "<sip:r1;lr>"
    assert h.get("Nope") is None and h.get("Nope", "d") == "d"
    h.add("Via", "SIP/2.0/UDP b", first=True)
    assert h.get_all("Via") == ["SIP/2.0/UDP b", "SIP/2.0/UDP a"]
    h.add("x-a", "2")
    assert h.count("X-A") == 2
    h.set("X-A", "3")
    assert h.get_all("X-A") == ["3"]
    assert h.remove("via") == 2 and "Via" not in h
    # commas inside quotes and <> are not separators; From is never split
    h.set("Contact", '"a, b" <sip:x@h;p=1,2>, <sip:y@h>')
    assert h.get_all("Contact") == ['"a, b" <sip:x@h;p=1,2>', "<sip:y@h>"]
    h.set("From", '"a, b" <sip:x@h>')
    assert h.get_all("From") == ['"a, b" <sip:x@h>']
    # WWW-Authenticate contains commas that are not list separators
    h.add("WWW-Authenticate", 'Digest realm="r", nonce="n"')
    assert h.get_all("www-authenticate") == ['Digest realm="r", nonce="n"']
    c = h.copy()
    c.remove("From")
    assert "From" in h


def test_make_response_copies_and_tags() -> None:
    req = parse_message(INVITE)
    assert isinstance(req, Request)
    resp = make_response(req, 486, to_tag="t1")
    assert resp.reason == "Busy Here"
    assert resp.to.tag == "t1"
    assert resp.headers.get_all("Via") == req.headers.get_all("Via")
    assert (resp.call_id, resp.cseq, str(resp.from_)) == (req.call_id, req.cseq, str(req.from_))
    assert "Contact" not in resp.headers and resp.body == b""
    assert make_response(req, 100, to_tag="t1").to.tag is None
    parsed = parse_message(resp.serialize())
    assert isinstance(parsed, Response) and parsed.status == 486


def test_reason_phrases() -> None:
    assert reason_phrase(404) == "Not Found"
    assert reason_phrase(499) == "Bad Request"
    assert reason_phrase(299) == "OK"


def test_ids_come_from_the_random_source() -> None:
    a, b = random.Random(7), random.Random(7)
    assert make_branch(a) == make_branch(b)
    assert make_branch(random.Random(1)).startswith("z9hG4bK")
    assert len(make_tag(random.Random(1))) == 12
    assert make_call_id(random.Random(1), "h.example").endswith("@h.example")
    assert make_call_id(random.Random(1)) != make_call_id(random.Random(2))


def test_build_request_from_parts() -> None:
    h = Headers()
    h.add("Via", "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKq;rport")
    h.add("From", "<sip:100@pbx>;tag=f")
    h.add("To", "<sip:100@pbx>")
    h.add("Call-ID", "cid")
    h.add("CSeq", "1 REGISTER")
    req = Request("REGISTER", "sip:pbx", h)
    back = parse_message(bytes(req))
    assert isinstance(back, Request)
    assert back.method == "REGISTER" and back.uri.host == "pbx"
    assert back.headers.get("Content-Length") == "0"


class TestStreamParser:
    def test_split_at_every_byte(self) -> None:
        data = b"\r\n\r\n" + INVITE + RESPONSE_183 + b"\r\n\r\n" + INVITE
        for cut in range(0, len(data), 7):
            p = StreamParser()
            msgs = p.feed(data[:cut]) + p.feed(data[cut:])
            assert [type(m).__name__ for m in msgs] == ["Request", "Response", "Request"]
            assert msgs[0].body == b"v=0\n" and msgs[2].body == b"v=0\n"

    def test_one_byte_at_a_time(self) -> None:
        p = StreamParser()
        out = []
        for i in range(len(INVITE)):
            out += p.feed(INVITE[i : i + 1])
        assert len(out) == 1 and out[0].serialize() == INVITE

    def test_keepalives_counted(self) -> None:
        p = StreamParser()
        assert p.feed(b"\r\n\r\n") == []
        assert p.feed(b"\r\n") == []  # a pong
        assert p.keepalives == 2
        assert is_keepalive(b"\r\n\r\n") and is_keepalive(b"\r\n")
        assert not is_keepalive(b"") and not is_keepalive(INVITE)

    def test_missing_content_length_means_empty_body(self) -> None:
        wire = INVITE.replace(b"Content-Length: 4\r\n", b"")
        msgs = StreamParser().feed(wire)
        assert len(msgs) == 1 and msgs[0].body == b""

    def test_header_flood_is_refused(self) -> None:
        p = StreamParser(max_header_bytes=1000)
        with pytest.raises(ParseError) as err:
            p.feed(b"INVITE sip:a@b SIP/2.0\r\n" + b"X: y\r\n" * 500)
        assert err.value.status == 413

    def test_huge_content_length_is_refused(self) -> None:
        wire = INVITE.replace(b"Content-Length: 4", b"Content-Length: 9999999")
        with pytest.raises(ParseError):
            StreamParser().feed(wire)
