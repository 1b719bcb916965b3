"""The user agent against real peers: sipp (as registrar or far end) and kamailio.

Every assertion about what we sent is checked in sipp's -trace_msg file,
i.e. on the wire as the peer saw it, not only in our own outcome.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from sipclient.agent.call import Call, CallOutcome
from sipclient.agent.leftovers import JOURNAL, CallJournal
from sipclient.agent.transport import SipStack, open_stack
from sipclient.agent.useragent import Account, UserAgent, dial_string
from sipclient.classify.signalling import from_signalling
from sipclient.classify.verdicts import Verdict
from sipclient.config import HostPort
from sipclient.lab.kamailio import Kamailio, Route
from sipclient.lab.sipp import Sipp, TracedMessage

from .conftest import EXTENSIONS

pytestmark = pytest.mark.peers

T1 = 0.05  # Timer B = 3.2 s
RTP = ("127.0.0.1", 40000)


@asynccontextmanager
async def agent(
    port: int,
    *,
    ext: str = "1001",
    password: str | None = None,
    transport: str = "udp",
    prack: bool = True,
    preemptive_auth: bool = True,
    expires: int = 60,
) -> AsyncIterator[tuple[SipStack, UserAgent]]:
    stack = await open_stack(
        transport=transport,
        bind=HostPort("127.0.0.1", 0),
        remote=("127.0.0.1", port),
        t1=T1,
    )
    pw = EXTENSIONS.get(ext, "x") if password is None else password
    account = Account(ext, pw, HostPort("127.0.0.1", port), transport)
    ua = UserAgent(stack, account, expires=expires, prack=prack, preemptive_auth=preemptive_auth)
    try:
        yield stack, ua
    finally:
        await stack.close()


async def dial(
    ua: UserAgent,
    number: str,
    *,
    cancel_on: int | None = None,
    hangup_after_answer: float | None = None,
    ring_timeout: float | None = None,
    cancel_at_once: bool = False,
    timeout: float = 10.0,
    answers: list[int] | None = None,
) -> tuple[Call, CallOutcome]:
    call_box: list[Call] = []
    answered = asyncio.Event()

    def on_provisional(status: int) -> None:
        if cancel_on is not None and status == cancel_on:
            call_box[0].cancel()

    def on_answered(status: int) -> None:
        if answers is not None:
            answers.append(status)
        answered.set()

    call = ua.call(
        number,
        local_rtp=RTP,
        ring_timeout=ring_timeout,
        on_provisional=on_provisional,
        on_answered=on_answered,
    )
    call_box.append(call)
    await call.start()
    if cancel_at_once:
        call.cancel()
    if hangup_after_answer is not None:
        # the answer hook, not a poll of outcome.answered (the daemon relies on it)
        ended = asyncio.ensure_future(call.ended())
        got = asyncio.ensure_future(answered.wait())
        await asyncio.wait([ended, got], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        got.cancel()
        await asyncio.sleep(hangup_after_answer)
        call.hangup()
    outcome = await asyncio.wait_for(call.ended(), timeout)
    return call, outcome


def lines(msgs: list[TracedMessage]) -> list[tuple[str, str | int | None]]:
    return [(m.direction, m.method or m.status) for m in msgs]


# ------------------------------------------------------------------ registration


async def test_register_answers_401_refreshes_and_unregisters(
    sipp_uas: Callable[..., Sipp],
) -> None:
    registrar = sipp_uas("uas_register_auth.xml")
    async with agent(registrar.port, password="secret1001") as (_, ua):
        assert await ua.register(5)
        assert ua.state == "registered" and ua.reason == ""
        # the registrar granted 4 s: the refresh comes at 2 s
        refreshed = await registrar.wait_for_async("REGISTER", count=3, timeout=6)
        assert len(refreshed) == 3
        await ua.stop()
        assert ua.state == "unregistered"
    await registrar.wait_for_async("REGISTER", count=4)
    regs = [m for m in registrar.messages() if m.method == "REGISTER"]
    assert len(regs) == 4
    assert regs[0].header("Authorization") is None
    assert all(m.header("Authorization") for m in regs[1:])
    assert [m.header("Expires") for m in regs] == ["60", "60", "60", "0"]
    assert len({m.header("Call-ID") for m in regs}) == 1
    assert [int((m.header("CSeq") or "0").split()[0]) for m in regs] == [1, 2, 3, 4]
    # the digest is right (computed here independently, RFC 2617 qop=auth)
    auth = regs[1].header("Authorization") or ""
    params = dict(re.findall(r'(\w+)="?([^",]+)"?', auth))
    md5 = lambda s: hashlib.md5(s.encode()).hexdigest()  # noqa: E731
    ha1 = md5("1001:lab.invalid:secret1001")
    ha2 = md5(f"REGISTER:{params['uri']}")
    expected = md5(f"{ha1}:{params['nonce']}:{params['nc']}:{params['cnonce']}:auth:{ha2}")
    assert params["response"] == expected
    assert params["nc"] == "00000001"
    assert (
        dict(re.findall(r'(\w+)="?([^",]+)"?', regs[2].header("Authorization") or ""))["nc"]
        == "00000002"
    )


async def test_register_423_takes_min_expires(sipp_uas: Callable[..., Sipp]) -> None:
    registrar = sipp_uas("uas_register_423.xml")
    async with agent(registrar.port) as (_, ua):
        assert await ua.register(5)
        assert ua.registration.expires == 3600
        await ua.stop()
    await registrar.wait_for_async("REGISTER", count=3)
    regs = [m for m in registrar.messages() if m.method == "REGISTER"]
    assert [m.header("Expires") for m in regs] == ["60", "3600", "0"]


async def test_register_with_kamailio_and_a_wrong_password(
    kamailio_for: Callable[..., Kamailio],
) -> None:
    kam = kamailio_for()
    async with agent(kam.port) as (_, ua):
        assert await ua.register(5)
        await ua.stop()
    async with agent(kam.port, password="wrong") as (_, ua):
        assert not await ua.register(5)
        assert ua.state == "unregistered"
        assert ua.reason == "authentication refused"
        assert ua.last_status == 401


async def test_register_and_call_over_tcp(
    sipp_uas: Callable[..., Sipp], kamailio_for: Callable[..., Kamailio]
) -> None:
    uas = sipp_uas("uas_486.xml")
    kam = kamailio_for([Route("486", "127.0.0.1", uas.port)])
    async with agent(kam.port, transport="tcp") as (stack, ua):
        assert await ua.register(5)
        _, out = await dial(ua, "4861234")
        await ua.stop()
        assert stack.ep.transport == "tcp"
    assert out.sip_code == 486
    await uas.wait_for_async("ACK")
    assert lines(uas.messages())[-1] == ("received", "ACK")


# ------------------------------------------------------------------ calls via kamailio


async def test_183_with_sdp_then_404_through_kamailio(
    sipp_uas: Callable[..., Sipp], kamailio_for: Callable[..., Kamailio]
) -> None:
    uas = sipp_uas("uas_183_404.xml")
    kam = kamailio_for([Route("404", "127.0.0.1", uas.port)])
    started: list[object] = []
    async with agent(kam.port) as (_, ua):
        assert await ua.register(5)
        call = ua.call("4045550000", local_rtp=RTP, on_early_media=started.append)
        await call.start()
        out = await asyncio.wait_for(call.ended(), 10)
        await ua.stop()
    assert (out.sip_code, out.q850_cause, out.early_media, out.ringing) == (404, 1, True, False)
    assert out.media is not None and out.media.codec == "PCMU"
    assert out.media.remote_addr == ("127.0.0.1", uas.media_port)
    assert started == [out.media]
    t = out.times
    assert t.invite and t.first_provisional and t.early_media and t.end
    assert t.invite <= t.first_provisional <= t.early_media <= t.end
    assert from_signalling(out.signalling()).verdict is Verdict.EMPTY
    await uas.wait_for_async("ACK")
    far = uas.messages()
    assert lines(far) == [
        ("received", "INVITE"),
        ("sent", 100),
        ("sent", 183),
        ("sent", 404),
        ("received", "ACK"),
    ]
    invite = far[0]
    assert invite.header("Record-Route")
    assert b"m=audio 40000 RTP/AVP 0 8 9 101" in invite.text.encode() or (
        "m=audio 40000" in invite.text
    )


async def test_a_reliable_183_is_pracked_through_kamailio(
    sipp_uas: Callable[..., Sipp], kamailio_for: Callable[..., Kamailio]
) -> None:
    """RFC 3262 end to end: our INVITE offers 100rel, the far end sends its 183 reliably
    and retransmits it until a PRACK comes; ours goes through kamailio's record-route to
    the 183's Contact, and the call goes on to its 404 as any other."""
    uas = sipp_uas("uas_183_100rel_404.xml")
    kam = kamailio_for([Route("404", "127.0.0.1", uas.port)])
    async with agent(kam.port) as (_, ua):
        assert await ua.register(5)
        _, out = await dial(ua, "4045550002")
        await ua.stop()
    assert (out.sip_code, out.q850_cause, out.early_media) == (404, 1, True)
    assert out.media is not None and out.media.remote_addr == ("127.0.0.1", uas.media_port)
    await uas.wait_for_async("ACK")
    far = uas.messages()
    assert [x for x in lines(far) if x != ("sent", 183)] == [
        ("received", "INVITE"),
        ("sent", 100),
        ("received", "PRACK"),
        ("sent", 200),
        ("sent", 404),
        ("received", "ACK"),
    ]
    invite, prack = far[0], far[[m.method for m in far].index("PRACK")]
    assert "100rel" in (invite.header("Supported") or "")
    cseq = int((invite.header("CSeq") or "0").split()[0])
    assert prack.header("RAck") == f"1 {cseq} INVITE"
    assert prack.header("CSeq") == f"{cseq + 1} PRACK"
    assert prack.header("Call-ID") == invite.header("Call-ID")
    assert "SIPpTag01" in (prack.header("To") or "")  # in the 183's early dialog
    assert prack.first_line.startswith("PRACK sip:sipp@127.0.0.1:")  # its Contact


async def _dial_with_prack_off(uas: Sipp, number: str) -> list[TracedMessage]:
    """One call with `sip.prack` off to a far end that ends it 404 cause 1; what it saw."""
    async with agent(uas.port, prack=False) as (_, ua):
        _, out = await dial(ua, number)
    assert (out.sip_code, out.q850_cause) == (404, 1)
    await uas.wait_for_async("ACK")
    return uas.messages()


async def test_with_prack_off_the_invite_offers_no_100rel_but_a_reliable_183_is_pracked(
    sipp_uas: Callable[..., Sipp],
) -> None:
    far = await _dial_with_prack_off(sipp_uas("uas_183_100rel_404.xml"), "4045550003")
    assert far[0].header("Supported") is None
    assert [m.header("RAck") for m in far if m.method == "PRACK"] == ["1 1 INVITE"]


async def test_a_challenged_prack_is_answered_and_reaches_the_far_end(
    sipp_uas: Callable[..., Sipp], kamailio_for: Callable[..., Kamailio]
) -> None:
    # a PBX that challenges the PRACK whatever it carries: the PRACK goes again
    # answering that challenge (the old code left it unacknowledged: sipp's
    # reliable 183 was never PRACKed, and kamailio's 407 was all it got)
    uas = sipp_uas("uas_183_100rel_404.xml")
    kam = kamailio_for([Route("404", "127.0.0.1", uas.port)], auth_in_dialog=True)
    async with agent(kam.port) as (_, ua):
        _, out = await dial(ua, "4045550002")
    assert (out.sip_code, out.q850_cause) == (404, 1)
    await uas.wait_for_async("ACK")
    got = [x for x in lines(uas.messages()) if x != ("sent", 183)]
    assert got[-4:] == [("received", "PRACK"), ("sent", 200), ("sent", 404), ("received", "ACK")]


async def test_183_without_sdp_carries_the_cause(
    sipp_uas: Callable[..., Sipp], kamailio_for: Callable[..., Kamailio]
) -> None:
    uas = sipp_uas("uas_183_reason_404.xml")
    kam = kamailio_for([Route("404", "127.0.0.1", uas.port)])
    async with agent(kam.port) as (_, ua):
        _, out = await dial(ua, "4045550001")  # unregistered calls are allowed by the lab
    assert out.sip_code == 404 and out.q850_cause == 1
    assert out.media is None
    assert out.early_media is True  # a 183, even without SDP


def test_a_phone_written_for_people_is_dialled_as_its_digits() -> None:
    assert dial_string("138 0000 0000") == "13800000000"
    assert dial_string("(010) 1234-5678") == "01012345678"
    assert dial_string("+86 138.0000.0000") == "+8613800000000"
    assert dial_string("13800000000") == "13800000000"
    # not a written phone number: as it is (a SIP user, a code with * or #)
    assert dial_string("echo-test") == "echo-test"
    assert dial_string("*86#") == "*86#"
    assert dial_string("- 123") == "- 123"


async def test_a_formatted_number_reaches_the_carrier_as_digits(
    sipp_uas: Callable[..., Sipp], kamailio_for: Callable[..., Kamailio]
) -> None:
    uas = sipp_uas("uas_183_reason_404.xml")
    kam = kamailio_for([Route("404", "127.0.0.1", uas.port)])
    async with agent(kam.port) as (_, ua):
        _, out = await dial(ua, "(404) 555-0002")
    assert out.sip_code == 404
    invite = next(m for m in uas.messages() if m.method == "INVITE")
    assert invite.first_line.startswith("INVITE sip:4045550002@")


async def test_486_busy_through_kamailio(
    sipp_uas: Callable[..., Sipp], kamailio_for: Callable[..., Kamailio]
) -> None:
    uas = sipp_uas("uas_486.xml")
    kam = kamailio_for([Route("486", "127.0.0.1", uas.port)])
    async with agent(kam.port) as (_, ua):
        _, out = await dial(ua, "4861234")
    assert (out.sip_code, out.q850_cause) == (486, 17)
    assert from_signalling(out.signalling()).verdict is Verdict.BUSY


async def test_a_486_heard_again_after_the_call_gets_the_same_ack(
    sipp_uas: Callable[..., Sipp],
) -> None:
    # the call is over and its session gone; the INVITE transaction's Timer D
    # is served by the endpoint's light record (sip/endpoint.py, _Completed)
    # -nr: sipp takes our second ACK, byte for byte the first, for a retransmission
    # of it and would answer with its last message again, for ever
    uas = sipp_uas("uas_486_again.xml", extra_args=["-nr"])
    async with agent(uas.port) as (stack, ua):
        _, out = await dial(ua, "4861234")
        assert out.sip_code == 486
        assert stack.ep.usages == 0 and stack.ep.transactions == 1
        await uas.wait_for_async("ACK", count=2)
    far = uas.messages()
    assert lines(far) == [
        ("received", "INVITE"),
        ("sent", 486),
        ("received", "ACK"),
        ("sent", 486),
        ("received", "ACK"),
    ]
    assert far[2].text == far[4].text and far[2].branch == far[0].branch


async def test_503_is_500_through_kamailio_but_503_direct(
    sipp_uas: Callable[..., Sipp], kamailio_for: Callable[..., Kamailio]
) -> None:
    uas = sipp_uas("uas_503.xml")
    kam = kamailio_for([Route("503", "127.0.0.1", uas.port)])
    async with agent(kam.port) as (_, ua):
        _, proxied = await dial(ua, "5031234")
    # an RFC 3261 proxy turns a downstream 503 into 500 (§16.7) and kamailio drops Reason
    assert proxied.sip_code == 500
    direct_uas = sipp_uas("uas_503.xml")
    async with agent(direct_uas.port) as (_, ua):
        _, direct = await dial(ua, "5031234")
    assert (direct.sip_code, direct.q850_cause) == (503, 34)
    assert from_signalling(direct.signalling()).transient


async def test_invite_answers_the_407_challenge_with_an_ack(
    sipp_uas: Callable[..., Sipp], kamailio_for: Callable[..., Kamailio]
) -> None:
    uas = sipp_uas("uas_486.xml")
    kam = kamailio_for([Route("486", "127.0.0.1", uas.port)])
    async with agent(kam.port, password="wrong") as (_, ua):
        _, refused = await dial(ua, "4861234")
    assert refused.sip_code == 407 and refused.ended_by == "auth"
    assert uas.messages() == []  # kamailio never let it through
    async with agent(kam.port) as (_, ua):
        _, ok = await dial(ua, "4861234")
    assert ok.sip_code == 486
    invite = next(m for m in uas.messages() if m.method == "INVITE")
    assert invite.header("CSeq") == "2 INVITE"  # the retry after the 407


async def test_later_calls_answer_the_last_challenge_in_their_first_invite(
    sipp_uas: Callable[..., Sipp], kamailio_for: Callable[..., Kamailio]
) -> None:
    # sip.preemptive_auth: one INVITE / 407 / ACK round for the extension's first
    # call, none for the next; a kamailio restarted has a new secret, refuses the
    # remembered nonce, and its fresh challenge is answered as the first was
    uas = sipp_uas("uas_486.xml")
    kam = kamailio_for([Route("486", "127.0.0.1", uas.port)])
    async with agent(kam.port) as (_, ua):
        for _ in range(3):
            _, out = await dial(ua, "4861234")
            assert out.sip_code == 486
        kam.stop()
        kam.config.port = kam.port
        kam.start()
        _, out = await dial(ua, "4861234")
        assert out.sip_code == 486
        _, out = await dial(ua, "4861234")
        assert out.sip_code == 486
    invites = [m for m in uas.messages() if m.method == "INVITE"]
    assert [m.header("CSeq") for m in invites] == [
        "2 INVITE",
        "1 INVITE",
        "1 INVITE",
        "2 INVITE",
        "1 INVITE",
    ]


async def test_a_pbx_refusing_remembered_answers_with_403_gets_each_call_challenged(
    sipp_uas: Callable[..., Sipp], kamailio_for: Callable[..., Kamailio]
) -> None:
    # a PBX with one-time nonces that answers a reused one 403, not with a challenge:
    # the second call's pre-emptive INVITE is refused outright. It goes again bare
    # (CSeq 2: 407; CSeq 3 through), busy as it is, and the extension's later calls
    # are challenged each (the old code: the second call ended 403, `restricted`)
    uas = sipp_uas("uas_486.xml")
    kam = kamailio_for(
        [Route("486", "127.0.0.1", uas.port)], one_time_nonce=True, refuse_stale_403=True
    )
    async with agent(kam.port) as (_, ua):
        for _ in range(3):
            _, out = await dial(ua, "4861234")
            assert out.sip_code == 486
        assert ua.digest_memory is not None and ua.digest_memory.refused
    invites = [m for m in uas.messages() if m.method == "INVITE"]
    assert [m.header("CSeq") for m in invites] == ["2 INVITE", "3 INVITE", "2 INVITE"]


async def test_a_carriers_own_403_after_a_remembered_answer_stays_403(
    sipp_uas: Callable[..., Sipp], kamailio_for: Callable[..., Kamailio]
) -> None:
    # a barred number's 403 from the far end, through a PBX that takes remembered
    # answers: the retry without them (after its own 407) hears the same 403, so
    # the call is the number's 403 and the extension keeps answering ahead
    uas = sipp_uas("uas_403.xml")
    kam = kamailio_for([Route("403", "127.0.0.1", uas.port)])
    async with agent(kam.port) as (_, ua):
        for _ in range(2):
            _, out = await dial(ua, "4031234")
            assert out.sip_code == 403
        assert ua.digest_memory is not None and not ua.digest_memory.refused
    invites = [m for m in uas.messages() if m.method == "INVITE"]
    # the pre-emptive INVITE (1) reached the carrier; the retry's bare one (2) did not
    assert [m.header("CSeq") for m in invites] == ["2 INVITE", "1 INVITE", "3 INVITE"]


async def test_a_registrar_refusing_a_remembered_answer_with_403_keeps_the_binding(
    kamailio_for: Callable[..., Kamailio],
) -> None:
    # a refresh answers the last challenge again; a registrar with one-time nonces
    # that answers it 403 gets the REGISTER once more at once, bare: no
    # registration_failed, no back-off (the old code: unregistered for ~2 s)
    kam = kamailio_for(one_time_nonce=True, refuse_stale_403=True)
    async with agent(kam.port, expires=10) as (_, ua):
        assert await ua.register()
        states: list[str] = []
        ua.on_state = lambda u: states.append(u.state)
        reg = ua.registration
        cseq = reg.cseq
        await asyncio.sleep(6.5)  # past the refresh, due at half of the 10 s granted
        assert reg.cseq >= cseq + 3  # the refresh (403), bare (401), answered (200)
        assert "registered" in states and "unregistered" not in states
        assert ua.registered.is_set() and reg.failures == 0


async def test_without_preemptive_auth_every_invite_is_challenged(
    sipp_uas: Callable[..., Sipp], kamailio_for: Callable[..., Kamailio]
) -> None:
    uas = sipp_uas("uas_486.xml")
    kam = kamailio_for([Route("486", "127.0.0.1", uas.port)])
    async with agent(kam.port, preemptive_auth=False) as (_, ua):
        for _ in range(2):
            _, out = await dial(ua, "4861234")
            assert out.sip_code == 486
    invites = [m for m in uas.messages() if m.method == "INVITE"]
    assert [m.header("CSeq") for m in invites] == ["2 INVITE", "2 INVITE"]


async def test_200_then_our_bye_through_kamailio(
    sipp_uas: Callable[..., Sipp], kamailio_for: Callable[..., Kamailio]
) -> None:
    uas = sipp_uas("uas_200_bye.xml")
    kam = kamailio_for([Route("200", "127.0.0.1", uas.port)])
    async with agent(kam.port) as (_, ua):
        answers: list[int] = []
        _, out = await dial(ua, "2001234", hangup_after_answer=0.1, answers=answers)
    assert answers == [200]  # the answer hook ran once, with the 2xx's status
    assert out.answered and out.sip_code == 200 and out.ended_by == "local"
    assert out.times.answer is not None and out.times.ringing is not None
    assert from_signalling(out.signalling()).verdict is Verdict.ANSWERED
    far = await uas.wait_for_async("SIP/2.0 200", count=2)
    assert len(far) == 2
    got = lines(uas.messages())
    assert got[-3:] == [("received", "ACK"), ("received", "BYE"), ("sent", 200)]
    invite = next(m for m in uas.messages() if m.method == "INVITE")
    bye = next(m for m in uas.messages() if m.method == "BYE")
    invite_cseq = int((invite.header("CSeq") or "0").split()[0])
    assert bye.header("CSeq") == f"{invite_cseq + 1} BYE"
    assert bye.header("Route") is None  # kamailio consumed its own Route entry


def _journalled(path: Path) -> dict[str, str]:
    """Each call the journal file at `path` holds now, and the method that ends it."""
    calls: dict[str, str] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if "data" in row:
            calls[row["call"]] = row["method"]
        else:
            calls.pop(row["call"], None)
    return calls


async def test_the_journal_holds_a_calls_ending_before_its_invite_or_ack_is_sent(
    sipp_uas: Callable[..., Sipp], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A kill -9 may come between any two instructions: what would end the call must
    # be on file before the request that makes it needed is on the wire, or the
    # next start has nothing (INVITE) or a CANCEL where a BYE is needed (ACK). CI
    # caught the ACK case once in the e2e kill test (session 20).
    uas = sipp_uas("uas_200_bye.xml")
    journal, _ = CallJournal.open(tmp_path)
    seen: list[tuple[str, dict[str, str]]] = []
    async with agent(uas.port) as (stack, ua):
        stack.journal = journal
        send = stack._send

        def watched(data: bytes, addr: tuple[str, int]) -> None:
            method = data.split(b" ", 1)[0].decode()
            if method in ("INVITE", "ACK"):
                seen.append((method, _journalled(tmp_path / JOURNAL)))
            send(data, addr)

        monkeypatch.setattr(stack, "_send", watched)
        call, out = await dial(ua, "2001234", hangup_after_answer=0.1)
    journal.close()
    assert out.answered and out.ended_by == "local"
    assert seen[0] == ("INVITE", {call.call_id: "CANCEL"})
    assert ("ACK", {call.call_id: "BYE"}) in seen
    assert all(calls == {call.call_id: "CANCEL"} for m, calls in seen if m == "INVITE")
    assert _journalled(tmp_path / JOURNAL) == {}  # ended: forgotten


async def test_a_challenged_bye_is_answered_and_reaches_the_far_end(
    sipp_uas: Callable[..., Sipp], kamailio_for: Callable[..., Kamailio]
) -> None:
    # a PBX that challenges the BYE whatever it carries (one-time nonces too): the
    # BYE goes again answering that challenge. The old code ended the call on the
    # 407: the far end never got a BYE and the call stayed up, billed
    uas = sipp_uas("uas_200_bye.xml")
    kam = kamailio_for(
        [Route("200", "127.0.0.1", uas.port)], one_time_nonce=True, auth_in_dialog=True
    )
    async with agent(kam.port) as (_, ua):
        _, out = await dial(ua, "2001234", hangup_after_answer=0.1)
    assert out.answered and out.ended_by == "local"
    far = await uas.wait_for_async("SIP/2.0 200", count=2)
    assert len(far) == 2  # the INVITE's 200 and the BYE's
    got = lines(uas.messages())
    assert got[-2:] == [("received", "BYE"), ("sent", 200)]


async def test_ring_timeout_cancels_through_kamailio(
    sipp_uas: Callable[..., Sipp], kamailio_for: Callable[..., Kamailio]
) -> None:
    uas = sipp_uas("uas_180_cancel.xml")
    kam = kamailio_for([Route("180", "127.0.0.1", uas.port)])
    async with agent(kam.port) as (_, ua):
        _, out = await dial(ua, "1801234", ring_timeout=0.5)
    assert (out.sip_code, out.cancelled_by_us, out.ringing) == (487, True, True)
    assert out.cancel_reason == "ring timeout"
    assert out.signalling().cancel_reason == "ring_timeout"
    assert from_signalling(out.signalling()).verdict is Verdict.NO_ANSWER
    await uas.wait_for_async("ACK")
    got = lines(uas.messages())
    assert got.index(("sent", 180)) < got.index(("received", "CANCEL"))
    assert got[-1] == ("received", "ACK")


async def test_200_crossing_our_cancel_gets_ack_then_bye(
    sipp_uas: Callable[..., Sipp], kamailio_for: Callable[..., Kamailio]
) -> None:
    uas = sipp_uas("uas_200_crosses_cancel.xml")
    kam = kamailio_for([Route("200", "127.0.0.1", uas.port)])
    async with agent(kam.port) as (_, ua):
        answers: list[int] = []
        _, out = await dial(ua, "2001234", cancel_on=180, answers=answers)
    assert out.answered and out.cancelled_by_us and out.sip_code == 200
    assert answers == [200]  # once, though the 2xx may be retransmitted
    got = lines(await uas.wait_for_async("SIP/2.0 200", count=3))
    assert len(got) == 3, uas.errors()
    got = lines(uas.messages())
    cancel_at = got.index(("received", "CANCEL"))
    assert got[cancel_at:] == [
        ("received", "CANCEL"),
        ("sent", 200),  # the 200 of the CANCEL
        ("sent", 200),  # the 200 of the INVITE, crossing our CANCEL
        ("received", "ACK"),
        ("received", "BYE"),
        ("sent", 200),
    ]


# ------------------------------------------------------------------ calls straight to sipp


async def test_cancel_after_180_and_ack_of_the_487(sipp_uas: Callable[..., Sipp]) -> None:
    uas = sipp_uas("uas_180_cancel.xml")
    async with agent(uas.port) as (_, ua):
        _, out = await dial(ua, "1801234", cancel_on=180)
    assert (out.sip_code, out.cancelled_by_us) == (487, True)
    await uas.wait_for_async("ACK")
    far = uas.messages()
    assert lines(far) == [
        ("received", "INVITE"),
        ("sent", 180),
        ("received", "CANCEL"),
        ("sent", 200),
        ("sent", 487),
        ("received", "ACK"),
    ]
    invite, cancel, ack = far[0], far[2], far[5]
    assert invite.branch == cancel.branch == ack.branch  # §9.1 and §17.1.1.3
    assert cancel.header("CSeq") == "1 CANCEL" and ack.header("CSeq") == "1 ACK"
    assert "tag=" in (ack.header("To") or "")


async def test_a_forks_200_after_the_487_is_acked_and_byed(sipp_uas: Callable[..., Sipp]) -> None:
    """A forking proxy's late 2xx (RFC 3261 §16.7) for a call already ended 487: the
    old code dropped it (the session gone, the INVITE's transaction completed), and
    that fork's call stayed up at the far end, billed. The far end challenges the
    BYE (as a PBX that challenges in-dialog requests): until session 19 that BYE
    carried no credentials and the call stayed up until the PBX's own timers."""
    uas = sipp_uas("uas_487_then_fork_200.xml")
    async with agent(uas.port) as (stack, ua):
        _, out = await dial(ua, "1801234", cancel_on=180)
        assert (out.sip_code, out.cancelled_by_us, out.answered) == (487, True, False)
        await uas.wait_for_async("BYE", count=2)
        assert stack.ep.orphan_answers == 1
    await uas.wait_for_async("SIP/2.0 200", count=3)
    far = uas.messages()
    assert lines(far)[-8:] == [
        ("sent", 487),
        ("received", "ACK"),
        ("sent", 200),  # the other branch's answer
        ("received", "ACK"),
        ("received", "BYE"),
        ("sent", 407),
        ("received", "BYE"),
        ("sent", 200),
    ]
    first, again = (m for m in far if m.method == "BYE")
    for bye in (first, again):
        assert "SIPpTag02" in (bye.header("To") or "")  # the fork that answered
    assert (first.header("CSeq"), again.header("CSeq")) == ("2 BYE", "3 BYE")
    assert 'nonce="orphan' in (again.header("Proxy-Authorization") or "")


async def test_cancel_asked_before_any_provisional_waits_for_one(
    sipp_uas: Callable[..., Sipp],
) -> None:
    uas = sipp_uas("uas_180_cancel.xml")
    async with agent(uas.port) as (_, ua):
        _, out = await dial(ua, "1801234", cancel_at_once=True)
    assert out.sip_code == 487
    await uas.wait_for_async("ACK")
    got = lines(uas.messages())
    assert got.index(("sent", 180)) < got.index(("received", "CANCEL"))


async def test_first_invite_ignored_retransmission_gets_through(
    sipp_uas: Callable[..., Sipp],
) -> None:
    uas = sipp_uas("uas_drop_first.xml")
    async with agent(uas.port) as (_, ua):
        _, out = await dial(ua, "4041234")
    assert out.sip_code == 404 and out.ringing
    invites = [m for m in uas.messages() if m.method == "INVITE"]
    # Timer A: T1, 2*T1, 4*T1 ... while sipp sat on it for 400 ms
    assert len(invites) >= 3
    assert len({m.branch for m in invites}) == 1
    assert len({m.text for m in invites}) == 1


async def test_nothing_answers_timer_b(sipp_uas: Callable[..., Sipp]) -> None:
    uas = sipp_uas("uas_silent.xml")
    async with agent(uas.port) as (_, ua):
        _, out = await dial(ua, "9991234", timeout=10)
    assert (out.sip_code, out.local_code, out.ended_by) == (408, True, "timeout")
    await uas.wait_for_async("INVITE", count=7, timeout=2)
    invites = [m for m in uas.messages() if m.method == "INVITE"]
    # sends at 0, T1, 3T1, 7T1, 15T1, 31T1, 63T1 before Timer B at 64*T1
    assert len(invites) == 7
    assert len({m.branch for m in invites}) == 1


async def test_a_2xx_after_timer_b_is_acked_and_byed(sipp_uas: Callable[..., Sipp]) -> None:
    # a hung PBX that recovers runs our INVITE after we gave up on it (Timer B): the
    # session lingers 64*T1 so the answer is ACKed and BYEd, not left up to be billed
    uas = sipp_uas("uas_late_200.xml")
    async with agent(uas.port) as (_, ua):
        _, out = await dial(ua, "9991234", timeout=10)
        assert (out.sip_code, out.local_code, out.ended_by) == (408, True, "timeout")
        await uas.wait_for_async("BYE", timeout=5)
    assert lines(uas.messages())[-4:] == [
        ("sent", 200),
        ("received", "ACK"),
        ("received", "BYE"),
        ("sent", 200),
    ], uas.errors()


async def test_with_prack_off_a_421_asking_for_100rel_is_answered_by_offering_it(
    sipp_uas: Callable[..., Sipp],
) -> None:
    # a trunk that insists on reliable provisionals (421 Extension Required, Require:
    # 100rel): the INVITE goes again with Supported: 100rel, and the number gets its
    # outcome; before, with sip.prack off, every number ended 421
    far = await _dial_with_prack_off(sipp_uas("uas_421_100rel_404.xml"), "4045550004")
    invites = [m for m in far if m.method == "INVITE"]
    assert len(invites) == 2
    assert invites[0].header("Supported") is None
    assert "100rel" in (invites[1].header("Supported") or "")
    assert invites[0].header("Call-ID") == invites[1].header("Call-ID")
    seqs = [int((m.header("CSeq") or "0").split()[0]) for m in invites]
    assert seqs[1] == seqs[0] + 1
    assert [m.header("RAck") for m in far if m.method == "PRACK"] == [f"1 {seqs[1]} INVITE"]
