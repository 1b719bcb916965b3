"""SDP: our offer, and answers with every shape a PBX or gateway sends."""

from __future__ import annotations

import pytest

from sipclient.sip.sdp import (
    G722,
    PCMA,
    PCMU,
    Codec,
    SdpError,
    make_offer,
    parse_answer,
)


def test_offer_exact_bytes() -> None:
    assert make_offer("192.0.2.10", 40000, 1234) == (
        b"v=0\r\n"
        b"o=- 1234 1234 IN IP4 192.0.2.10\r\n"
        b"s=-\r\n"
        b"c=IN IP4 192.0.2.10\r\n"
        b"t=0 0\r\n"
        b"m=audio 40000 RTP/AVP 0 8 9 101\r\n"
        b"a=rtpmap:0 PCMU/8000\r\n"
        b"a=rtpmap:8 PCMA/8000\r\n"
        b"a=rtpmap:9 G722/8000\r\n"
        b"a=rtpmap:101 telephone-event/8000\r\n"
        b"a=fmtp:101 0-16\r\n"
        b"a=ptime:20\r\n"
        b"a=sendrecv\r\n"
    )


def test_offer_ipv6_and_options() -> None:
    sdp = make_offer("::1", 5004, 7, codecs=(PCMA,), ptime=30, version=9, direction="recvonly")
    assert b"o=- 7 9 IN IP6 ::1\r\n" in sdp and b"c=IN IP6 ::1\r\n" in sdp
    assert b"m=audio 5004 RTP/AVP 8\r\n" in sdp and b"a=recvonly\r\n" in sdp
    with pytest.raises(ValueError):
        make_offer("127.0.0.1", 0, 1)
    with pytest.raises(ValueError):
        make_offer("127.0.0.1", 5004, 1, direction="sideways")


def test_our_offer_parses_as_an_answer() -> None:
    ans = parse_answer(make_offer("127.0.0.1", 40002, 1))
    assert (ans.address, ans.port, ans.codec, ans.dtmf_payload_type) == (
        "127.0.0.1",
        40002,
        PCMU,
        101,
    )
    assert ans.usable and ans.problem is None and ans.ptime == 20


def _answer(media: str, session: str = "c=IN IP4 203.0.113.5\r\n") -> bytes:
    return (
        "v=0\r\no=gw 1 1 IN IP4 203.0.113.5\r\ns=call\r\n" + session + "t=0 0\r\n" + media
    ).encode()


# (media section, expected (address, port, codec, dtmf PT, direction))
ANSWERS = [
    (
        "m=audio 30000 RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\n",
        ("203.0.113.5", 30000, PCMA, 101, "sendrecv"),
    ),
    # static PT without rtpmap; the first offered one in the answer's order wins
    (
        "m=audio 30002 RTP/AVP 18 9 0\r\na=sendonly\r\n",
        ("203.0.113.5", 30002, G722, None, "sendonly"),
    ),
    # dynamic PT matched by name and rate; media-level c= overrides session level
    (
        "m=audio 30004 RTP/AVP 96 97\r\nc=IN IP4 198.51.100.7\r\na=rtpmap:96 pcma/8000\r\n"
        "a=rtpmap:97 telephone-event/8000\r\na=inactive\r\n",
        ("198.51.100.7", 30004, Codec("PCMA", 8000, 96), 97, "inactive"),
    ),
    # a video stream first, then audio with a port count
    (
        "m=video 30010 RTP/AVP 99\r\nc=IN IP4 198.51.100.9\r\nm=audio 30006/2 RTP/AVP 0\r\n",
        ("203.0.113.5", 30006, PCMU, None, "sendrecv"),
    ),
]


@pytest.mark.parametrize(("media", "expected"), ANSWERS)
def test_answers(media: str, expected: tuple[object, ...]) -> None:
    a = parse_answer(_answer(media))
    assert (a.address, a.port, a.codec, a.dtmf_payload_type, a.direction) == expected
    assert a.usable


def test_session_level_direction_and_ipv6() -> None:
    a = parse_answer(
        _answer("m=audio 4000 RTP/AVP 0\r\n", "c=IN IP6 2001:db8::1\r\na=recvonly\r\n")
    )
    assert a.address == "2001:db8::1" and a.direction == "recvonly"


def test_no_common_codec_is_an_outcome() -> None:
    a = parse_answer(_answer("m=audio 4000 RTP/AVP 18 96\r\na=rtpmap:96 opus/48000/2\r\n"))
    assert a.codec is None and not a.usable and a.problem == "no common codec"
    assert a.payload_types == (18, 96)
    # G722 at 16000 in rtpmap is not the G722/8000 we offered
    b = parse_answer(_answer("m=audio 4000 RTP/AVP 9\r\na=rtpmap:9 G722/16000\r\n"))
    assert b.codec is None


def test_rejected_stream() -> None:
    a = parse_answer(_answer("m=audio 0 RTP/AVP 0\r\n", session=""))
    assert a.rejected and not a.usable and a.address == ""
    assert a.problem == "audio stream rejected (port 0)"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"hello",
        b"v=0\r\nm=video 5 RTP/AVP 31\r\nc=IN IP4 1.2.3.4\r\n",
        _answer("m=audio 70000 RTP/AVP 0\r\n"),
        _answer("m=audio x RTP/AVP 0\r\n"),
        _answer("m=audio 4000 RTP/AVP zero\r\n"),
        _answer("m=audio 4000\r\n"),
        _answer("m=audio 4000 RTP/AVP 0\r\n", session=""),
        _answer("m=audio 4000 RTP/AVP 0\r\n", session="c=IN IP4\r\n"),
        _answer("m=audio 4000 RTP/AVP 0\r\n", session="c=XX IP4 1.2.3.4\r\n"),
        b"v=0\r\nm=audio 4000 RTP/AVP 0\r\nc=IN IP4 1.2.3.4\r\nnonsense\r\n",
    ],
)
def test_malformed_sdp_raises_sdp_error(body: bytes) -> None:
    with pytest.raises(SdpError):
        parse_answer(body)


def test_odd_bytes_never_crash() -> None:
    a = parse_answer(_answer("m=audio 4000 RTP/AVP 0\r\na=ptime:\xb2\r\na=rtpmap:\xb2 x/y\r\n"))
    assert a.codec == PCMU and a.ptime is None
    a2 = parse_answer(b"v=0\nc=IN IP4 1.2.3.4\nm=audio 4000 RTP/AVP 8\n\xff\xfe=\n"[:-4])
    assert a2.codec == PCMA
