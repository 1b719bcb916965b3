"""Shared fuzzing helpers: mutate valid SIP messages and check that only ParseError escapes."""

from __future__ import annotations

import contextlib
import random

from sipclient.sip.auth import parse_challenges
from sipclient.sip.message import ParseError, Response, StreamParser, parse_message
from sipclient.sip.sdp import SdpError, parse_answer
from sipclient.sip.transaction import transaction_key
from tests.sip.torture import load

SEED_NAMES = (  # noqa: SIM905
    "wsinv intmeth esc01 escnull esc02 lwsdisp longreq dblreq semiuri transports mpart01 "
    "unreason noreason bcast inv2543 unksm2 regescrt badinv01 quotbal baddn scalar02"
).split()

# tokens that matter to the grammar: splicing them in reaches deep parser branches
_TOKENS = [
    b"\r\n",
    b"\r\n ",
    b"\n",
    b":",
    b";",
    b",",
    b"<",
    b">",
    b'"',
    b"\\",
    b"=",
    b"@",
    b"[",
    b"]",
    b"?",
    b"/",
    b" ",
    b"\t",
    b"\x00",
    b"\xff",
    b"\xc3",
    b"%",
    b"sip:",
    b"tel:",
    b"SIP/2.0",
    b"Via: ",
    b"v: SIP/2.0/UDP ",
    b"Content-Length: ",
    b"l: 99999999999",
    b"CSeq: 1 INVITE",
    b"To: ",
    b"From: ",
    b";tag=",
    b";branch=z9hG4bK",
    b"Contact: *",
    b"9" * 30,
    b"-1",
]


def seeds() -> list[bytes]:
    """Valid and invalid torture messages used as mutation seeds."""
    return [load(n) for n in SEED_NAMES]


def mutate(rng: random.Random, data: bytes) -> bytes:
    """Apply 1-4 random edits (flip, insert, delete, splice a grammar token, truncate)."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op == 1:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 2 and buf:
            del buf[pos : pos + rng.randint(1, 16)]
        elif op == 3:
            buf[pos:pos] = rng.choice(_TOKENS)
        elif op == 4:
            del buf[pos:]
        else:  # duplicate a slice somewhere else
            a = rng.randrange(len(buf) + 1)
            buf[pos:pos] = buf[a : a + rng.randint(1, 40)]
    return bytes(buf)


def exercise(data: bytes) -> bool:
    """Parse ``data`` and touch every lazy accessor; True if it parsed.

    Anything other than ParseError (or SdpError from the SDP body) propagates to the caller.
    """
    try:
        msg = parse_message(data)
    except ParseError:
        return False
    str(msg.uri) if not isinstance(msg, Response) else msg.reason
    msg.serialize()
    for accessor in ("contacts", "route", "record_route", "vias", "content_type"):
        with contextlib.suppress(ParseError):
            getattr(msg, accessor)
    with contextlib.suppress(ParseError):
        transaction_key(msg)
    if isinstance(msg, Response):
        parse_challenges(msg)
    if msg.body:
        with contextlib.suppress(SdpError):
            parse_answer(msg.body)
    return True


def exercise_stream(data: bytes, cuts: list[int]) -> None:
    """Feed ``data`` to a StreamParser in pieces; only ParseError may escape (and is caught)."""
    parser = StreamParser()
    start = 0
    try:
        for cut in [*sorted(cuts), len(data)]:
            parser.feed(data[start:cut])
            start = cut
    except ParseError:
        pass
