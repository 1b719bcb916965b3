"""RFC 4475 torture messages: the valid ones parse, the invalid ones raise ParseError."""

from __future__ import annotations

import pytest

from sipclient.sip.message import ParseError, Request, Response, parse_message
from tests.sip.torture import load, names

# Messages a UA must accept (RFC 4475 §3.1.1, and the §3.3 / §3.4 ones that are
# syntactically valid; their semantic problems are the application's business).
VALID = [
    "wsinv",  # §3.1.1.1 short tortuous INVITE: folding, LWS, compact forms
    "intmeth",  # §3.1.1.2 wide range of valid characters (NUL in a quoted-pair)
    "esc01",  # §3.1.1.3 valid % escaping
    "escnull",  # §3.1.1.4 escaped NULs in URIs
    "esc02",  # §3.1.1.5 % where it is not an escape
    "lwsdisp",  # §3.1.1.6 no LWS between display name and <
    "longreq",  # §3.1.1.7 long values, 34 Via values
    "dblreq",  # §3.1.1.8 extra octets after the message in one datagram
    "semiuri",  # §3.1.1.9 ; in the user part
    "transports",  # §3.1.1.10 varied and unknown transports
    "mpart01",  # §3.1.1.11 multipart body with NULs (body is a stand-in, see README)
    "unreason",  # §3.1.1.12 UTF-8 reason phrase
    "noreason",  # §3.1.1.13 empty reason phrase
    "baddate",  # §3.1.2.11 non-GMT Date: a UA that ignores Date may accept it
    "badbranch",  # §3.1.2.? z9hG4bK with nothing after: syntactically valid
    "unkscm",  # §3.3.1 unknown Request-URI scheme (a UA answers 416)
    "novelsc",  # §3.3.2 known but atypical scheme
    "unksm2",  # §3.3.3 unknown schemes in To/From/Contact
    "bext01",  # §3.3.4 unknown Require / Proxy-Require (a UA answers 420)
    "invut",  # §3.3.5 unknown Content-Type (a UA answers 415)
    "regaut01",  # §3.3.6 unknown Authorization scheme
    "bcast",  # §3.3.9 broadcast Via in a 200
    "zeromf",  # §3.3.10 Max-Forwards: 0
    "cparam01",  # §3.3.11 Contact header parameter (addr-spec form)
    "cparam02",  # §3.3.12 Contact URI parameter
    "regescrt",  # §3.3.13 escaped header in a Contact name-addr
    "sdp01",  # §3.3.14 unacceptable Accept offering
    "inv2543",  # §3.4.1 RFC 2543 syntax: no branch, no Max-Forwards, no Content-Length
]

# (name, status a UA would answer) -- ParseError expected
INVALID = [
    ("badinv01", 400),  # §3.1.2.1 ;;,;,, in Via, ;;;; in Contact
    ("clerr", 400),  # §3.1.2.2 Content-Length larger than the datagram
    ("ncl", 400),  # §3.1.2.3 negative Content-Length
    ("scalar02", 400),  # §3.1.2.4 CSeq > 2**32-1, Max-Forwards > 255
    ("scalarlg", 400),  # §3.1.2.5 overlarge CSeq in a response
    ("quotbal", 400),  # §3.1.2.6 unterminated quoted display name
    ("ltgtruri", 400),  # §3.1.2.7 <> around the Request-URI
    ("lwsruri", 400),  # §3.1.2.8 LWS inside the Request-URI
    ("lwsstart", 400),  # §3.1.2.9 several SP in the request line
    ("trws", 400),  # §3.1.2.10 SP after the SIP version
    ("escruri", 400),  # §3.1.2.11 escaped headers in the Request-URI
    ("regbadct", 400),  # §3.1.2.13 addr-spec with ? not enclosed in <>
    ("badaspec", 400),  # §3.1.2.14 spaces inside <addr-spec>
    ("baddn", 400),  # §3.1.2.15 non-token characters in an unquoted display name
    ("badvers", 505),  # §3.1.2.16 SIP/7.0
    ("mismatch01", 400),  # §3.1.2.17 request method != CSeq method
    ("mismatch02", 400),  # §3.1.2.18 unknown method != CSeq method
    ("bigcode", 400),  # §3.1.2.19 status code 4294967301
    ("insuf", 400),  # §3.3.? missing Call-ID, From, To
    ("multi01", 400),  # §3.3.7 several Call-ID / CSeq / From / To
    ("mcl01", 400),  # §3.3.8 several Content-Length values
]


def test_every_data_file_is_classified() -> None:
    listed = set(VALID) | {n for n, _ in INVALID}
    assert set(names()) == listed


@pytest.mark.parametrize("name", VALID)
def test_valid_torture_message_parses_and_round_trips(name: str) -> None:
    msg = parse_message(load(name))
    assert isinstance(msg, Request | Response)
    cl = msg.headers.get("Content-Length")
    if cl is not None:
        assert len(msg.body) == int(cl)
    again = parse_message(msg.serialize())
    assert again.serialize() == msg.serialize()
    assert again.body == msg.body

    def lines(m: Request | Response) -> list[tuple[str, str]]:
        return [(n, v) for n, v in m.headers if n != "Content-Length"]

    assert lines(again) == lines(msg)


@pytest.mark.parametrize(("name", "status"), INVALID)
def test_invalid_torture_message_raises_parse_error(name: str, status: int) -> None:
    with pytest.raises(ParseError) as err:
        parse_message(load(name))
    assert err.value.status == status


def test_wsinv_details() -> None:
    msg = parse_message(load("wsinv"))
    assert isinstance(msg, Request)
    assert msg.uri.params == {"unknownparam": None}
    assert msg.to.tag == "1918181833n" and str(msg.to.uri) == "sip:vivekg@chair-dnrc.example.com"
    assert msg.from_.display == 'J Rosenberg \\"' and msg.from_.tag == "98asjd8"
    assert msg.headers.get("Max-Forwards") == "0068"
    assert (msg.cseq.seq, msg.cseq.method) == (9, "INVITE")
    vias = msg.vias
    assert [(v.transport, v.host, v.branch) for v in vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert msg.headers.get("Subject") == ""
    assert msg.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert msg.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    [contact] = msg.contacts
    assert contact.display == 'Quoted string ""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert msg.route[0].uri.params["unknown-no-value"] is None
    assert len(msg.body) == 150


def test_intmeth_details() -> None:
    msg = parse_message(load("intmeth"))
    assert isinstance(msg, Request)
    assert msg.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert msg.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert msg.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert msg.to.display == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert msg.from_.display == "token1~` token2'+_ token3*%!.-"
    assert msg.from_.params["fromparam''~+*_!.-%"] == '"работающий"'
    assert msg.from_.tag == "_token~1'+`*%!-."
    assert msg.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert msg.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"


def test_escapes_and_odd_schemes_are_kept_verbatim() -> None:
    esc = parse_message(load("esc01"))
    assert isinstance(esc, Request) and esc.uri.user == "sips%3Auser%40example.com"
    assert esc.contacts[0].uri.params == {"%6c%72": None, "n%61me": "v%61lue%25%34%31"}
    esc2 = parse_message(load("esc02"))
    assert isinstance(esc2, Request) and esc2.method == "RE%47IST%45R"
    assert [c.uri.user for c in esc2.contacts] == ["alias1", "alias3"]
    assert esc2.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"
    unk = parse_message(load("unksm2"))
    assert str(unk.to.uri) == "isbn:2983792873" and unk.from_.uri.scheme == "http"
    novel = parse_message(load("novelsc"))
    assert isinstance(novel, Request) and novel.uri.scheme == "soap.beep"


def test_datagram_framing_cases() -> None:
    dbl = parse_message(load("dblreq"))
    assert isinstance(dbl, Request) and dbl.method == "REGISTER" and dbl.body == b""
    old = parse_message(load("inv2543"))
    assert old.body.startswith(b"v=0\r\n") and old.body.endswith(b"RTP/AVP 0\r\n")
    assert old.top_via.branch is None
    mp = parse_message(load("mpart01"))
    assert b"\x00\x00\x00" in mp.body and mp.body.endswith(b"--7a9cbec02ceef655--\r\n")


def test_reason_phrases() -> None:
    un = parse_message(load("unreason"))
    assert isinstance(un, Response) and un.reason.startswith("= 2**3 * 5**2 но сто")
    no = parse_message(load("noreason"))
    assert isinstance(no, Response) and (no.status, no.reason) == (100, "")


def test_longreq_counts() -> None:
    msg = parse_message(load("longreq"))
    assert len(msg.vias) == 34
    assert msg.vias[-1].received == "192.0.2.5"
    assert msg.to.uri.port == 6000 and len(msg.to.uri.params) == 3
