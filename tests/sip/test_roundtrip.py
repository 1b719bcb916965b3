"""Two in-memory peers over a lossy wire, explicit time: client and server transactions,
dialogs, auth and SDP working together through real bytes (serialize -> parse)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from sipclient.sip.auth import (
    Challenge,
    DigestClient,
    DigestCredentials,
    digest_response,
    parse_auth_header,
)
from sipclient.sip.dialog import DialogSet, DialogState
from sipclient.sip.message import (
    Headers,
    Request,
    Response,
    make_branch,
    make_call_id,
    make_response,
    make_tag,
    parse_message,
)
from sipclient.sip.sdp import PCMA, make_offer, parse_answer
from sipclient.sip.transaction import (
    AckReceived,
    Event,
    FinalReceived,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    ProvisionalReceived,
    State,
    Terminated,
    Transaction,
    transaction_key,
)


@dataclass
class Wire:
    """Carries bytes between the peers; drops the messages whose start lines are listed."""

    drop: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    def transfer(self, txn: Transaction) -> list[Request | Response]:
        """Serialize what ``txn`` wants to send, parse it on the far side (minus drops)."""
        out: list[Request | Response] = []
        for msg in txn.messages_to_send():
            line = msg.start_line()
            self.log.append(line)
            if line in self.drop:
                self.drop.remove(line)
                continue
            out.append(parse_message(msg.serialize()))
        return out


def drain(txn: Transaction) -> list[Event]:
    events = []
    while (ev := txn.next_event()) is not None:
        events.append(ev)
    return events


def _invite(rng: random.Random) -> Request:
    h = Headers()
    h.add("Via", f"SIP/2.0/UDP 127.0.0.1:5070;branch={make_branch(rng)};rport")
    h.add("Max-Forwards", "70")
    h.add("From", f"<sip:8001@127.0.0.1>;tag={make_tag(rng)}")
    h.add("To", "<sip:13800138000@127.0.0.1>")
    h.add("Call-ID", make_call_id(rng, "127.0.0.1"))
    h.add("CSeq", "1 INVITE")
    h.add("Contact", "<sip:8001@127.0.0.1:5070>")
    h.add("Content-Type", "application/sdp")
    body = make_offer("127.0.0.1", 40000, rng.getrandbits(32))
    return Request("INVITE", "sip:13800138000@127.0.0.1:5080", h, body)


def _answer(invite: Request, status: int, tag: str, sdp: bytes = b"") -> Response:
    r = make_response(invite, status, to_tag=tag, copy_record_route=True)
    r.headers.add("Record-Route", "<sip:127.0.0.1:5090;lr>")
    r.headers.add("Contact", "<sip:gw@127.0.0.1:5080>")
    if sdp:
        r.headers.add("Content-Type", "application/sdp")
        r.body = sdp
    return r


ANSWER_SDP = (
    b"v=0\r\no=gw 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 30000 RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\n"
)


def test_lost_invite_early_media_then_busy(rng: random.Random) -> None:
    wire = Wire(drop=["INVITE sip:13800138000@127.0.0.1:5080 SIP/2.0"])
    invite = _invite(rng)
    uac = InviteClientTransaction(invite, now=0.0)
    dialogs = DialogSet(invite)
    assert wire.transfer(uac) == []  # the first INVITE is lost
    uac.handle_timer(0.5)  # Timer A
    [received] = wire.transfer(uac)
    assert isinstance(received, Request)
    uas = InviteServerTransaction(received, now=0.5)
    assert transaction_key(received) == uac.key == uas.key
    uas.respond(make_response(received, 100), 0.5)
    uas.respond(_answer(received, 183, "gw1", ANSWER_SDP), 0.6)
    for resp in wire.transfer(uas):
        uac.receive(resp, 0.6)
        if isinstance(resp, Response):
            dialogs.on_response(resp)
    provisionals = drain(uac)
    assert [type(e) for e in provisionals] == [ProvisionalReceived, ProvisionalReceived]
    last = provisionals[-1]
    assert isinstance(last, ProvisionalReceived)
    media = parse_answer(last.response.body)
    assert media.codec is not None and media.codec.name == PCMA.name
    assert (media.address, media.port, media.dtmf_payload_type) == ("127.0.0.1", 30000, 101)
    [early] = dialogs.early
    assert early.remote_tag == "gw1" and str(early.remote_target) == "sip:gw@127.0.0.1:5080"
    # the far end gives up: 486, whose first copy is lost; Timer G resends it
    wire.drop.append("SIP/2.0 486 Busy Here")
    busy = _answer(received, 486, "gw1")
    uas.respond(busy, 10.0)
    assert wire.transfer(uas) == []
    uas.handle_timer(10.5)
    [final] = wire.transfer(uas)
    uac.receive(final, 10.5)
    assert isinstance(final, Response)
    dialogs.on_response(final)
    assert early.state is DialogState.TERMINATED
    [ack] = wire.transfer(uac)
    assert isinstance(ack, Request) and ack.method == "ACK"
    uas.receive(ack, 10.6)
    assert [type(e) for e in drain(uas)] == [AckReceived]
    assert uac.state is State.COMPLETED and uas.state is State.CONFIRMED
    uac.handle_timer(10.5 + 32)
    uas.handle_timer(10.6 + 5)
    assert [type(e) for e in drain(uac)] == [FinalReceived, Terminated]
    assert drain(uas) == [Terminated()]
    assert wire.log.count("INVITE sip:13800138000@127.0.0.1:5080 SIP/2.0") == 2


def test_answered_call_then_bye_with_lost_200(rng: random.Random) -> None:
    wire = Wire()
    invite = _invite(rng)
    uac = InviteClientTransaction(invite, now=0.0)
    dialogs = DialogSet(invite)
    [received] = wire.transfer(uac)
    assert isinstance(received, Request)
    uas = InviteServerTransaction(received, now=0.0)
    uas.respond(_answer(received, 200, "gw9", ANSWER_SDP), 2.0)
    [ok] = wire.transfer(uas)
    assert isinstance(ok, Response)
    uac.receive(ok, 2.0)
    dialog = dialogs.on_response(ok)
    assert dialog is not None and dialog.state is DialogState.CONFIRMED
    assert [str(r.uri) for r in dialog.route_set] == ["sip:127.0.0.1:5090;lr"]
    ack = parse_message(
        bytes(dialog.make_ack(f"SIP/2.0/UDP 127.0.0.1:5070;branch={make_branch(rng)}"))
    )
    assert isinstance(ack, Request)
    assert (ack.cseq.seq, str(ack.uri), ack.headers.get("Route")) == (
        1,
        "sip:gw@127.0.0.1:5080",
        "<sip:127.0.0.1:5090;lr>",
    )
    # hang up; the far end's 200 to the BYE is lost once, Timer E brings it back
    bye = dialog.make_request("BYE", f"SIP/2.0/UDP 127.0.0.1:5070;branch={make_branch(rng)}")
    client = NonInviteClientTransaction(bye, now=30.0)
    [bye_in] = wire.transfer(client)
    assert isinstance(bye_in, Request) and bye_in.cseq.seq == 2
    server = NonInviteServerTransaction(bye_in, now=30.0)
    wire.drop.append("SIP/2.0 200 OK")
    server.respond(make_response(bye_in, 200), 30.0)
    assert wire.transfer(server) == []
    client.handle_timer(30.5)  # Timer E: BYE again
    [again] = wire.transfer(client)
    server.receive(again, 30.5)  # absorbed: the last response is resent
    [ok_bye] = wire.transfer(server)
    client.receive(ok_bye, 30.5)
    assert [type(e) for e in drain(client)] == [FinalReceived]
    assert client.get_timer() == 35.5 and server.get_timer() == 62.0  # Timers K and J


def test_register_challenge_and_retry(rng: random.Random) -> None:
    wire = Wire()
    auth = DigestClient(DigestCredentials("8001", "secret"), rng)
    h = Headers()
    h.add("Via", f"SIP/2.0/UDP 127.0.0.1:5070;branch={make_branch(rng)}")
    h.add("From", f"<sip:8001@127.0.0.1>;tag={make_tag(rng)}")
    h.add("To", "<sip:8001@127.0.0.1>")
    h.add("Call-ID", make_call_id(rng))
    h.add("CSeq", "1 REGISTER")
    reg = Request("REGISTER", "sip:127.0.0.1", h)
    first = NonInviteClientTransaction(reg, now=0.0)
    [reg_in] = wire.transfer(first)
    assert isinstance(reg_in, Request)
    challenge = make_response(reg_in, 401, to_tag="r1")
    challenge.headers.add(
        "WWW-Authenticate", 'Digest realm="127.0.0.1", nonce="abc", qop="auth", algorithm=MD5'
    )
    first.receive(parse_message(bytes(challenge)), 0.1)
    [ev] = [e for e in drain(first) if isinstance(e, FinalReceived)]
    auth.handle_challenge(ev.response)
    retry = Request("REGISTER", reg.uri, reg.headers.copy())
    retry.headers.set("Via", f"SIP/2.0/UDP 127.0.0.1:5070;branch={make_branch(rng)}")
    retry.headers.set("CSeq", "2 REGISTER")
    auth.sign(retry)
    second = NonInviteClientTransaction(retry, now=0.2)
    [retry_in] = wire.transfer(second)
    assert isinstance(retry_in, Request) and second.key != first.key
    authz = retry_in.headers.get("Authorization")
    assert authz is not None and 'username="8001"' in authz and "nc=00000001" in authz
    # the registrar's check: recompute the digest from its own challenge
    p = parse_auth_header(authz)[0][1]
    expected = digest_response(
        Challenge(realm="127.0.0.1", nonce="abc", qop=("auth",)),
        DigestCredentials("8001", "secret"),
        "REGISTER",
        p["uri"],
        qop="auth",
        nc=1,
        cnonce=p["cnonce"],
    )
    assert p["response"] == expected
