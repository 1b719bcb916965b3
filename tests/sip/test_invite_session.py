"""The INVITE session usage with explicit time: every rule of sipclient.sip.invite."""

from __future__ import annotations

import gc
import weakref
from dataclasses import replace

import pytest

from sipclient.sip.auth import DigestCredentials, DigestMemory
from sipclient.sip.endpoint import ORPHANS, Endpoint, OrphanAnswer
from sipclient.sip.invite import (
    Answered,
    ByeSent,
    CancelSent,
    InviteSent,
    InviteSession,
    PrackSent,
    PreemptiveAuthRefused,
    ProvisionalReceived,
    SessionEnded,
    SessionSpec,
    SessionState,
)
from sipclient.sip.message import URI, Request, make_response

from .usage_harness import PBX, SDP_ANSWER, T1, answer, endpoint, events, requests, sent

CHALLENGE = ("Proxy-Authenticate", 'Digest realm="pbx", nonce="n1", algorithm=MD5')
RR = ("Record-Route", "<sip:10.0.0.2:5060;lr>")
CONTACT = ("Contact", "<sip:far@10.0.0.3:5070>")


def new_session(
    ep: Endpoint,
    *,
    credentials: bool = False,
    ring_timeout: float | None = None,
    prack: bool = True,
) -> InviteSession:
    spec = SessionSpec(
        target=URI.parse("sip:4045550000@pbx"),
        from_uri=URI.parse("sip:1001@pbx"),
        proxy=PBX,
        credentials=DigestCredentials("1001", "pw") if credentials else None,
        sdp_offer=b"v=0\r\n",
        ring_timeout=ring_timeout,
        prack=prack,
    )
    return InviteSession(ep, spec)


def start(ep: Endpoint, **kw: object) -> tuple[InviteSession, Request]:
    session = new_session(ep, **kw)  # type: ignore[arg-type]
    session.start(0.0)
    (invite,) = requests(ep)
    assert invite.method == "INVITE"
    return session, invite


def ended(evs: list[object]) -> SessionEnded:
    last = evs[-1]
    assert isinstance(last, SessionEnded), evs
    assert sum(isinstance(e, SessionEnded) for e in evs) == 1
    return last


def test_invite_carries_offer_contact_and_is_retransmitted_on_timer_a() -> None:
    ep = endpoint()
    _, invite = start(ep)
    assert invite.body == b"v=0\r\n" and invite.headers.get("Content-Type") == "application/sdp"
    assert invite.headers.get("Contact") == "<sip:1001@10.0.0.1:5062>"
    assert invite.top_via.branch and invite.top_via.has_rport
    assert invite.cseq.seq == 1
    assert ep.get_timer() == pytest.approx(T1)
    ep.handle_timer(T1)
    (again,) = requests(ep)
    assert again.serialize() == invite.serialize()
    assert ep.get_timer() == pytest.approx(3 * T1)


def test_183_sdp_reason_then_404_is_acked_with_the_invite_branch() -> None:
    ep = endpoint()
    _, invite = start(ep)
    reason = ("Reason", 'Q.850;cause=1;text="Unallocated number"')
    answer(ep, invite, 183, 0.2, headers=[CONTACT, reason], body=SDP_ANSWER)
    answer(ep, invite, 404, 0.5)
    (ack,) = requests(ep)
    assert ack.method == "ACK" and ack.top_via.branch == invite.top_via.branch
    assert ack.to.tag == "far1"
    evs = events(ep)
    assert isinstance(evs[0], InviteSent)
    prov = evs[1]
    assert isinstance(prov, ProvisionalReceived)
    assert (prov.status, prov.q850, prov.sdp, prov.to_tag) == (183, 1, SDP_ANSWER, "far1")
    end = ended(evs)
    assert (end.status, end.q850, end.ended_by, end.cancelled_by_us) == (404, 1, "remote", False)


def test_reason_in_a_183_without_sdp_is_kept_when_the_final_has_none() -> None:
    ep = endpoint()
    _, invite = start(ep)
    answer(ep, invite, 183, 0.1, headers=[("Reason", "Q.850;cause=17")])
    answer(ep, invite, 480, 0.2)
    end = ended(events(ep))
    assert (end.status, end.q850) == (480, 17)


def test_cancel_waits_for_a_provisional_then_487_ends_it() -> None:
    ep = endpoint()
    session, invite = start(ep)
    session.cancel(0.01)
    assert requests(ep) == []  # §9.1: no CANCEL before a provisional
    answer(ep, invite, 100, 0.05)
    (cancel,) = requests(ep)
    assert cancel.method == "CANCEL"
    assert cancel.top_via.branch == invite.top_via.branch
    assert cancel.cseq.seq == invite.cseq.seq and cancel.uri == invite.uri
    assert cancel.to.tag is None
    answer(ep, cancel, 200, 0.06)
    answer(ep, invite, 487, 0.07)
    (ack,) = requests(ep)
    assert ack.method == "ACK"
    evs = events(ep)
    assert any(isinstance(e, CancelSent) for e in evs)
    end = ended(evs)
    assert (end.status, end.cancelled_by_us, end.ended_by) == (487, True, "local")


def test_cancel_asked_but_a_final_comes_first_sends_no_cancel() -> None:
    ep = endpoint()
    session, invite = start(ep)
    session.cancel(0.01)
    answer(ep, invite, 486, 0.02)
    assert [r.method for r in requests(ep)] == ["ACK"]
    assert ended(events(ep)).status == 486


def test_407_is_acked_and_the_invite_retried_with_credentials() -> None:
    ep = endpoint()
    _, invite = start(ep, credentials=True)
    answer(ep, invite, 407, 0.1, headers=[CHALLENGE])
    ack, retry = requests(ep)
    assert ack.method == "ACK" and ack.top_via.branch == invite.top_via.branch
    assert retry.method == "INVITE" and retry.cseq.seq == 2
    assert retry.top_via.branch != invite.top_via.branch
    assert (retry.headers.get("Proxy-Authorization") or "").startswith("Digest ")
    assert retry.call_id == invite.call_id and retry.from_.tag == invite.from_.tag
    answer(ep, retry, 407, 0.2, headers=[CHALLENGE])  # same nonce again: wrong password
    end = ended(events(ep))
    assert (end.status, end.ended_by) == (407, "auth")


def test_a_shared_digest_memory_answers_the_next_invite_before_any_challenge() -> None:
    ep = endpoint()
    memory = DigestMemory()

    def call(now: float) -> tuple[InviteSession, Request]:
        spec = replace(new_session(ep, credentials=True).spec, digest_memory=memory)
        session = InviteSession(ep, spec)
        session.start(now)
        (invite,) = requests(ep)
        return session, invite

    _, invite = call(0.0)
    assert "Proxy-Authorization" not in invite.headers  # nothing remembered yet
    answer(ep, invite, 407, 0.1, headers=[CHALLENGE])
    _, retry = requests(ep)
    answer(ep, retry, 486, 0.2)
    requests(ep)
    assert ended(events(ep)).status == 486
    # the next call: its first INVITE answers the remembered challenge
    _, invite = call(1.0)
    assert invite.cseq.seq == 1
    assert (invite.headers.get("Proxy-Authorization") or "").startswith("Digest ")
    # the PBX forgot that nonce (restarted) and challenges with the same realm, not
    # stale: answered once more, as a call without a memory would be
    answer(ep, invite, 407, 1.1, headers=[CHALLENGE])
    ack, retry = requests(ep)
    assert ack.method == "ACK" and retry.method == "INVITE" and retry.cseq.seq == 2
    answer(ep, retry, 404, 1.2)
    requests(ep)
    assert ended(events(ep)).status == 404


def _remembering_call(
    ep: Endpoint, memory: DigestMemory, now: float
) -> tuple[InviteSession, Request]:
    spec = replace(new_session(ep, credentials=True).spec, digest_memory=memory)
    session = InviteSession(ep, spec)
    session.start(now)
    (invite,) = requests(ep)
    return session, invite


def _taught() -> tuple[Endpoint, DigestMemory]:
    """An endpoint and a memory that an extension's first call (407, then 486) taught."""
    ep = endpoint()
    memory = DigestMemory()
    _, invite = _remembering_call(ep, memory, 0.0)
    answer(ep, invite, 407, 0.1, headers=[CHALLENGE])
    _, retry = requests(ep)
    answer(ep, retry, 486, 0.2)
    requests(ep)
    events(ep)
    return ep, memory


def test_a_403_to_a_remembered_answer_is_tried_bare_and_then_never_answered_ahead() -> None:
    ep, memory = _taught()
    _, invite = _remembering_call(ep, memory, 1.0)
    assert "Proxy-Authorization" in invite.headers
    answer(ep, invite, 403, 1.1)  # the PBX refuses a reused nonce outright
    ack, bare = requests(ep)
    assert ack.method == "ACK" and bare.method == "INVITE" and bare.cseq.seq == 2
    assert "Proxy-Authorization" not in bare.headers
    assert not any(isinstance(e, SessionEnded) for e in events(ep))
    answer(ep, bare, 407, 1.2, headers=[("Proxy-Authenticate", 'Digest realm="pbx", nonce="n2"')])
    _, own = requests(ep)
    assert own.cseq.seq == 3 and 'nonce="n2"' in (own.headers.get("Proxy-Authorization") or "")
    assert not memory.refused
    answer(ep, own, 180, 1.3)  # through: it was the remembered answer the PBX refused
    assert memory.refused
    evs = events(ep)
    assert sum(isinstance(e, PreemptiveAuthRefused) for e in evs) == 1
    answer(ep, own, 486, 1.4)
    requests(ep)
    assert ended(events(ep)).status == 486
    # later calls go bare, as without a memory
    _, invite = _remembering_call(ep, memory, 2.0)
    assert "Proxy-Authorization" not in invite.headers


def test_a_403_again_after_the_bare_retry_is_the_numbers_own() -> None:
    ep, memory = _taught()
    _, invite = _remembering_call(ep, memory, 1.0)
    answer(ep, invite, 403, 1.1)
    _, bare = requests(ep)
    answer(ep, bare, 407, 1.2, headers=[CHALLENGE])
    _, own = requests(ep)
    answer(ep, own, 403, 1.3)  # answering its own challenge: no third INVITE
    (ack,) = requests(ep)
    assert ack.method == "ACK"
    evs = events(ep)
    assert not any(isinstance(e, PreemptiveAuthRefused) for e in evs)
    assert ended(evs).status == 403
    assert not memory.refused
    _, invite = _remembering_call(ep, memory, 2.0)
    assert "Proxy-Authorization" in invite.headers  # still answering ahead


def test_a_403_after_a_provisional_or_a_cancel_is_not_tried_again() -> None:
    ep, memory = _taught()
    # a 180 first: the PBX let the remembered answer through, the 403 is the far end's
    _, invite = _remembering_call(ep, memory, 1.0)
    answer(ep, invite, 180, 1.1)
    answer(ep, invite, 403, 1.2)
    (ack,) = requests(ep)
    assert ack.method == "ACK" and ended(events(ep)).status == 403
    # a CANCEL asked before the 403: no new INVITE
    session, invite = _remembering_call(ep, memory, 2.0)
    session.cancel(2.05)
    answer(ep, invite, 403, 2.1)
    (ack,) = requests(ep)
    assert ack.method == "ACK" and ended(events(ep)).status == 403
    assert not memory.refused


def test_answer_is_acked_through_the_route_set_and_bye_ends_it() -> None:
    ep = endpoint()
    session, invite = start(ep)
    answer(ep, invite, 180, 0.1, headers=[RR, CONTACT])
    ok = answer(ep, invite, 200, 0.5, headers=[RR, CONTACT], body=SDP_ANSWER)
    ((ack, ack_to),) = sent(ep)
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert str(ack.uri) == "sip:far@10.0.0.3:5070"  # the remote target
    assert ack.headers.get_all("Route") == ["<sip:10.0.0.2:5060;lr>"]
    assert ack_to == ("10.0.0.2", 5060)  # the first route, not the target
    assert ack.cseq.seq == 1 and ack.top_via.branch != invite.top_via.branch
    # a retransmitted 200 gets the same ACK again, and no BYE
    ep.receive(ok.serialize(), PBX, 0.6)
    ((again, _),) = sent(ep)
    assert again.serialize() == ack.serialize()
    evs = events(ep)
    assert isinstance(evs[-1], Answered) and evs[-1].sdp == SDP_ANSWER
    session.hangup(1.0)
    (bye,) = requests(ep)
    assert bye.method == "BYE" and bye.cseq.seq == 2 and bye.to.tag == "far1"
    assert isinstance(events(ep)[0], ByeSent)
    answer(ep, bye, 200, 1.1)
    end = ended(events(ep))
    assert (end.status, end.ended_by, end.cancelled_by_us) == (200, "local", False)


def _hung_up_after_a_challenged_answer() -> tuple[Endpoint, Request]:
    """A call answered after its INVITE was challenged, then hung up: the BYE."""
    ep = endpoint()
    session, invite = start(ep, credentials=True)
    answer(ep, invite, 407, 0.1, headers=[CHALLENGE])
    _, retry = requests(ep)
    answer(ep, retry, 200, 0.2, headers=[CONTACT], body=SDP_ANSWER)
    requests(ep)  # the ACK
    session.hangup(1.0)
    (bye,) = requests(ep)
    return ep, bye


def test_a_challenged_bye_is_sent_again_with_credentials() -> None:
    # a PBX that challenges every request: ending the session on the 407 would
    # leave the call up at the far end (billed)
    ep, bye = _hung_up_after_a_challenged_answer()
    assert 'nonce="n1"' in (bye.headers.get("Proxy-Authorization") or "")
    new_nonce = ("Proxy-Authenticate", 'Digest realm="pbx", nonce="n2", algorithm=MD5')
    answer(ep, bye, 407, 1.1, headers=[new_nonce])  # not stale: another request's challenge
    (again,) = requests(ep)
    assert again.method == "BYE" and again.cseq.seq == bye.cseq.seq + 1
    assert 'nonce="n2"' in (again.headers.get("Proxy-Authorization") or "")
    assert not any(isinstance(e, SessionEnded) for e in events(ep))
    answer(ep, again, 200, 1.2)
    assert ended(events(ep)).ended_by == "local"


def test_a_bye_challenged_again_ends_the_session_without_a_loop() -> None:
    ep, bye = _hung_up_after_a_challenged_answer()
    answer(ep, bye, 407, 1.1, headers=[CHALLENGE])
    (again,) = requests(ep)
    answer(ep, again, 407, 1.2, headers=[CHALLENGE])
    assert requests(ep) == []
    assert ended(events(ep)).ended_by == "local"


def test_a_second_fork_answering_gets_ack_and_bye() -> None:
    ep = endpoint()
    session, invite = start(ep)
    answer(ep, invite, 183, 0.1, tag="a", headers=[CONTACT])
    answer(ep, invite, 200, 0.2, tag="b", headers=[CONTACT])
    (ack_b,) = requests(ep)
    answer(ep, invite, 200, 0.3, tag="a", headers=[CONTACT])
    ack_a, bye_a = requests(ep)
    assert (ack_b.method, ack_b.to.tag) == ("ACK", "b")
    assert (ack_a.method, ack_a.to.tag, bye_a.method, bye_a.to.tag) == ("ACK", "a", "BYE", "a")
    answered = [e for e in events(ep) if isinstance(e, Answered)]
    assert [a.to_tag for a in answered] == ["b"]
    # the other fork's BYE answered: our call (b) is still up, to be ended by us
    answer(ep, bye_a, 200, 0.4)
    assert not any(isinstance(e, SessionEnded) for e in events(ep))
    assert session.state is SessionState.ANSWERED
    session.hangup(0.5)
    (bye_b,) = requests(ep)
    assert (bye_b.method, bye_b.to.tag) == ("BYE", "b")
    answer(ep, bye_b, 200, 0.6)
    assert ended(events(ep)).ended_by == "local"


def test_200_crossing_our_cancel_is_acked_then_byed() -> None:
    ep = endpoint()
    session, invite = start(ep)
    answer(ep, invite, 180, 0.1, headers=[CONTACT])
    session.cancel(0.2)
    (cancel,) = requests(ep)
    answer(ep, invite, 200, 0.25, headers=[CONTACT])
    ack, bye = requests(ep)
    assert (ack.method, bye.method) == ("ACK", "BYE")
    answer(ep, cancel, 200, 0.26)
    answer(ep, bye, 200, 0.3)
    evs = events(ep)
    assert any(isinstance(e, Answered) for e in evs)
    end = ended(evs)
    assert (end.status, end.cancelled_by_us, end.ended_by) == (200, True, "local")


def test_timer_b_ends_a_call_nothing_answers_with_a_local_408() -> None:
    ep = endpoint()
    start(ep)
    times = []
    seen: list[object] = []
    while (at := ep.get_timer()) is not None and at < 100:
        ep.handle_timer(at)
        times.append(round(at / T1, 6))
        seen += events(ep)
        if any(isinstance(e, SessionEnded) for e in seen):
            break
    assert times[:6] == [1, 3, 7, 15, 31, 63]
    assert times[-1] == 64
    end = ended(seen)
    assert (end.status, end.local, end.ended_by) == (408, True, "timeout")


def test_ring_timeout_cancels_at_the_limit() -> None:
    ep = endpoint()
    _, invite = start(ep, ring_timeout=5.0)
    answer(ep, invite, 180, 0.2, headers=[CONTACT])
    assert ep.get_timer() == pytest.approx(5.0)
    ep.handle_timer(5.0)
    (cancel,) = requests(ep)
    assert cancel.method == "CANCEL"
    why = [e.why for e in events(ep) if isinstance(e, CancelSent)]
    assert why == ["ring timeout"]


def test_cancel_unanswered_for_64_t1_gives_up() -> None:
    ep = endpoint()
    session, invite = start(ep)
    answer(ep, invite, 180, 0.1)
    session.cancel(1.0)
    deadline = 1.0 + 64 * T1
    now = 1.0
    while (at := ep.get_timer()) is not None and at <= deadline:
        now = at
        ep.handle_timer(at)
    sent(ep)
    end = ended(events(ep))
    assert end.ended_by == "timeout" and now == pytest.approx(deadline)


def test_far_end_bye_and_in_dialog_requests() -> None:
    ep = endpoint()
    session, invite = start(ep)
    answer(ep, invite, 200, 0.1, headers=[CONTACT])
    sent(ep)

    def in_dialog(method: str, cseq: int) -> Request:
        req = Request(method, URI.parse("sip:1001@10.0.0.1:5062"))
        req.headers.add("Via", f"SIP/2.0/UDP 10.0.0.3:5070;branch=z9hG4bK{method}{cseq}")
        req.headers.add("From", "<sip:4045550000@pbx>;tag=far1")
        req.headers.add("To", f"<sip:1001@pbx>;tag={session.local_tag}")
        req.headers.add("Call-ID", session.call_id)
        req.headers.add("CSeq", f"{cseq} {method}")
        return req

    for method, cseq, code in (("OPTIONS", 1, 200), ("INVITE", 2, 488), ("UPDATE", 3, 488)):
        ep.receive(in_dialog(method, cseq).serialize(), ("10.0.0.3", 5070), 0.2)
        ((resp, dest),) = sent(ep)
        assert getattr(resp, "status", None) == code, method
        assert dest == ("10.0.0.3", 5070)
    bye = in_dialog("BYE", 4)
    ep.receive(bye.serialize(), ("10.0.0.3", 5070), 0.3)
    ((ok, _),) = sent(ep)
    assert getattr(ok, "status", None) == 200
    ep.receive(bye.serialize(), ("10.0.0.3", 5070), 0.4)  # retransmitted: same 200
    ((again, _),) = sent(ep)
    assert again.serialize() == ok.serialize()
    end = ended(events(ep))
    assert (end.status, end.ended_by) == (200, "remote")


def test_bye_from_a_stranger_gets_481() -> None:
    ep = endpoint()
    session, invite = start(ep)
    answer(ep, invite, 200, 0.1, headers=[CONTACT])
    sent(ep)
    req = Request("BYE", URI.parse("sip:1001@10.0.0.1:5062"))
    req.headers.add("Via", "SIP/2.0/UDP 10.0.0.3:5070;branch=z9hG4bKx")
    req.headers.add("From", "<sip:x@pbx>;tag=other")
    req.headers.add("To", f"<sip:1001@pbx>;tag={session.local_tag}")
    req.headers.add("Call-ID", session.call_id)
    req.headers.add("CSeq", "9 BYE")
    ep.receive(req.serialize(), ("10.0.0.3", 5070), 0.2)
    ((resp, _),) = sent(ep)
    assert getattr(resp, "status", None) == 481
    assert not session.ended


def test_make_response_helper_is_what_the_far_end_sends() -> None:
    # guards the harness itself: a 180 without tag would make every dialog test vacuous
    ep = endpoint()
    _, invite = start(ep)
    assert make_response(invite, 180, to_tag="t").to.tag == "t"


def _far_request(session: InviteSession, method: str, cseq: int, tag: str = "far1") -> Request:
    req = Request(method, URI.parse("sip:1001@10.0.0.1:5062"))
    req.headers.add("Via", f"SIP/2.0/UDP 10.0.0.3:5070;branch=z9hG4bK{method}{cseq}")
    req.headers.add("From", f"<sip:4045550000@pbx>;tag={tag}")
    req.headers.add("To", f"<sip:1001@pbx>;tag={session.local_tag}")
    req.headers.add("Call-ID", session.call_id)
    req.headers.add("CSeq", f"{cseq} {method}")
    return req


def test_far_end_request_with_a_cseq_going_backwards_gets_500() -> None:
    ep = endpoint()
    session, invite = start(ep)
    answer(ep, invite, 200, 0.1, headers=[CONTACT])
    sent(ep)
    ep.receive(_far_request(session, "OPTIONS", 5).serialize(), ("10.0.0.3", 5070), 0.2)
    ((ok, _),) = sent(ep)
    assert getattr(ok, "status", None) == 200
    ep.receive(_far_request(session, "BYE", 4).serialize(), ("10.0.0.3", 5070), 0.3)
    ((late, _),) = sent(ep)
    assert getattr(late, "status", None) == 500  # §12.2.2: out of order, the call goes on
    assert not session.ended
    ep.receive(_far_request(session, "BYE", 6).serialize(), ("10.0.0.3", 5070), 0.4)
    ((bye_ok, _),) = sent(ep)
    assert getattr(bye_ok, "status", None) == 200
    assert ended(events(ep)).ended_by == "remote"


def test_far_end_bye_in_an_early_dialog_ends_the_call() -> None:
    ep = endpoint()
    session, invite = start(ep)
    answer(ep, invite, 183, 0.1, tag="a", headers=[CONTACT])
    ep.receive(_far_request(session, "BYE", 1, tag="a").serialize(), ("10.0.0.3", 5070), 0.2)
    ((ok, _),) = sent(ep)
    assert getattr(ok, "status", None) == 200
    ep.receive(_far_request(session, "BYE", 2, tag="b").serialize(), ("10.0.0.3", 5070), 0.3)
    ((unknown, _),) = sent(ep)
    assert getattr(unknown, "status", None) == 481  # no dialog with tag b
    assert ended(events(ep)).ended_by == "remote"


def test_answer_to_the_retry_after_407_numbers_ack_and_bye_from_the_retry() -> None:
    ep = endpoint()
    session, invite = start(ep, credentials=True)
    answer(ep, invite, 407, 0.1, headers=[CHALLENGE])
    _, retry = requests(ep)
    answer(ep, retry, 200, 0.2, headers=[RR, CONTACT])
    (ack,) = requests(ep)
    assert (ack.method, ack.cseq.seq, ack.to.tag) == ("ACK", 2, "far1")
    assert ack.headers.get_all("Route") == ["<sip:10.0.0.2:5060;lr>"]
    assert (ack.headers.get("Proxy-Authorization") or "").startswith("Digest ")
    assert ack.from_.tag == invite.from_.tag and ack.call_id == invite.call_id
    session.hangup(0.3)
    (bye,) = requests(ep)
    assert (bye.method, bye.cseq.seq, str(bye.uri)) == ("BYE", 3, "sip:far@10.0.0.3:5070")
    assert bye.headers.get("User-Agent") == "sipclient"
    assert (bye.headers.get("Proxy-Authorization") or "").startswith("Digest ")


def test_strict_router_gets_the_in_dialog_requests_in_the_request_uri() -> None:
    ep = endpoint()
    session, invite = start(ep)
    strict = ("Record-Route", "<sip:10.0.0.7:5066>")
    answer(ep, invite, 200, 0.1, headers=[strict, CONTACT])
    ((ack, ack_to),) = sent(ep)
    assert isinstance(ack, Request)
    assert str(ack.uri) == "sip:10.0.0.7:5066" and ack_to == ("10.0.0.7", 5066)
    assert ack.headers.get_all("Route") == ["<sip:far@10.0.0.3:5070>"]  # §12.2.1.1
    session.hangup(0.2)
    ((bye, bye_to),) = sent(ep)
    assert isinstance(bye, Request) and bye.method == "BYE" and bye_to == ("10.0.0.7", 5066)


def test_2xx_with_an_unreadable_contact_ends_the_call_unacked() -> None:
    ep = endpoint()
    _, invite = start(ep)
    # the wire parser refuses such a Contact; a message handed over parsed can still carry it
    ok = make_response(invite, 200, to_tag="far1")
    ok.headers.add("Contact", "<<<not an address")
    ep.receive_message(ok, PBX, 0.1)
    assert requests(ep) == []
    evs = events(ep)
    assert not any(isinstance(e, Answered) for e in evs)
    end = ended(evs)
    assert (end.status, end.ended_by) == (200, "remote")


def test_a_2xx_after_timer_b_is_acked_and_byed_while_the_session_lingers() -> None:
    # a hung PBX that recovers may still run our INVITE and a callee answer it
    ep = endpoint()
    _, invite = start(ep)
    while (at := ep.get_timer()) is not None and at < 100:
        ep.handle_timer(at)
        if any(isinstance(e, SessionEnded) for e in events(ep)):
            break
    requests(ep)
    answer(ep, invite, 200, 40.0, headers=[CONTACT])
    ack, bye = requests(ep)
    assert (ack.method, bye.method) == ("ACK", "BYE")


# ------------------------------------------------------------------ RFC 3262 (100rel)

RELIABLE = ("Require", "100rel")


def test_invite_says_100rel_is_supported_unless_told_not_to() -> None:
    _, invite = start(endpoint())
    assert invite.headers.get_all("Supported") == ["100rel"]
    assert invite.headers.get("Require") is None  # we never insist
    _, plain = start(endpoint(), prack=False)
    assert plain.headers.get("Supported") is None


def test_a_reliable_183_is_pracked_in_its_early_dialog_once() -> None:
    ep = endpoint()
    _, invite = start(ep)
    headers = [RR, CONTACT, RELIABLE, ("RSeq", "7")]
    r183 = answer(ep, invite, 183, 0.1, headers=headers, body=SDP_ANSWER)
    ((prack, dest),) = sent(ep)
    assert isinstance(prack, Request) and prack.method == "PRACK"
    assert prack.headers.get("RAck") == "7 1 INVITE"
    assert prack.cseq.seq == 2 and prack.cseq.method == "PRACK"
    assert str(prack.uri) == "sip:far@10.0.0.3:5070"  # the 18x's Contact
    assert prack.headers.get_all("Route") == ["<sip:10.0.0.2:5060;lr>"]
    assert dest == ("10.0.0.2", 5060)
    assert (prack.call_id, prack.from_.tag, prack.to.tag) == (
        invite.call_id,
        invite.from_.tag,
        "far1",
    )
    assert prack.top_via.branch not in (None, invite.top_via.branch)
    evs = events(ep)
    assert [type(e) for e in evs[1:]] == [PrackSent, ProvisionalReceived]
    assert evs[1] == PrackSent(0.1, 7)
    # the far end did not get our PRACK yet and sends its 183 again: no second PRACK
    # (our PRACK's own transaction retransmits it), no second event
    ep.receive(r183.serialize(), PBX, 0.55)
    assert requests(ep) == [] and events(ep) == []
    ep.handle_timer(0.6)  # Timer E: the same PRACK again
    (again,) = requests(ep)
    assert again.serialize() == prack.serialize()
    answer(ep, prack, 200, 0.7)
    # the next reliable one (RSeq + 1) is PRACKed in turn, with the next CSeq
    answer(ep, invite, 180, 0.8, headers=[RR, CONTACT, RELIABLE, ("RSeq", "8")])
    (second,) = requests(ep)
    assert second.method == "PRACK" and second.headers.get("RAck") == "8 1 INVITE"
    assert second.cseq.seq == 3
    answer(ep, invite, 404, 1.0)
    assert [r.method for r in requests(ep)] == ["ACK"]
    assert ended(events(ep)).status == 404


def test_a_reliable_provisional_out_of_order_is_neither_pracked_nor_reported() -> None:
    ep = endpoint()
    _, invite = start(ep)
    answer(ep, invite, 183, 0.1, headers=[CONTACT, RELIABLE, ("RSeq", "1")])
    assert [r.method for r in requests(ep)] == ["PRACK"]
    events(ep)
    answer(ep, invite, 180, 0.2, headers=[CONTACT, RELIABLE, ("RSeq", "3")])  # 2 is missing
    assert requests(ep) == [] and events(ep) == []
    answer(ep, invite, 180, 0.3, headers=[CONTACT, RELIABLE, ("RSeq", "2")])
    (prack,) = requests(ep)
    assert prack.headers.get("RAck") == "2 1 INVITE"
    assert any(isinstance(e, ProvisionalReceived) and e.status == 180 for e in events(ep))


def test_each_fork_has_its_own_rseq_space() -> None:
    ep = endpoint()
    _, invite = start(ep)
    answer(ep, invite, 183, 0.1, headers=[CONTACT, RELIABLE, ("RSeq", "1")])
    answer(ep, invite, 183, 0.2, tag="far2", headers=[CONTACT, RELIABLE, ("RSeq", "1")])
    pracks = requests(ep)
    assert [(p.method, p.to.tag) for p in pracks] == [("PRACK", "far1"), ("PRACK", "far2")]


def test_a_challenged_prack_is_sent_once_more_with_credentials() -> None:
    ep = endpoint()
    _, invite = start(ep, credentials=True)
    answer(ep, invite, 407, 0.1, headers=[CHALLENGE])
    _, retry = requests(ep)
    answer(ep, retry, 183, 0.2, headers=[CONTACT, RELIABLE, ("RSeq", "1")])
    (prack,) = requests(ep)
    assert 'nonce="n1"' in (prack.headers.get("Proxy-Authorization") or "")
    new_nonce = ("Proxy-Authenticate", 'Digest realm="pbx", nonce="n2", algorithm=MD5')
    answer(ep, prack, 407, 0.3, headers=[new_nonce])
    (again,) = requests(ep)
    assert again.method == "PRACK" and again.headers.get("RAck") == prack.headers.get("RAck")
    assert again.cseq.seq == prack.cseq.seq + 1 and again.to.tag == prack.to.tag
    assert 'nonce="n2"' in (again.headers.get("Proxy-Authorization") or "")
    # challenged again: no loop, and the call goes on (its 404 ends it)
    answer(ep, again, 407, 0.4, headers=[new_nonce])
    assert requests(ep) == []
    answer(ep, retry, 404, 0.5)
    assert ended(events(ep)).status == 404


def test_unreliable_provisionals_are_not_pracked() -> None:
    ep = endpoint()
    _, invite = start(ep)
    answer(ep, invite, 180, 0.1, headers=[CONTACT])  # no Require
    answer(ep, invite, 183, 0.2, headers=[CONTACT, RELIABLE])  # no RSeq: cannot be PRACKed
    answer(ep, invite, 183, 0.3, headers=[CONTACT, RELIABLE, ("RSeq", "zero")])
    answer(ep, invite, 183, 0.4, headers=[CONTACT, ("Supported", "100rel"), ("RSeq", "4")])
    answer(ep, invite, 100, 0.5, headers=[RELIABLE, ("RSeq", "5")])  # a 100 never is
    assert requests(ep) == []
    statuses = [e.status for e in events(ep) if isinstance(e, ProvisionalReceived)]
    assert statuses == [180, 183, 183, 183, 100]


def test_a_reliable_183_is_pracked_even_when_we_did_not_offer_100rel() -> None:
    ep = endpoint()
    _, invite = start(ep, prack=False)
    answer(ep, invite, 183, 0.1, headers=[CONTACT, ("Require", "timer, 100rel"), ("RSeq", "1")])
    (prack,) = requests(ep)
    assert prack.method == "PRACK" and prack.headers.get("RAck") == "1 1 INVITE"


def test_a_cancel_after_a_reliable_183_keeps_the_invite_cseq_and_the_bye_counts_on() -> None:
    ep = endpoint()
    session, invite = start(ep, credentials=True)
    answer(ep, invite, 407, 0.05, headers=[CHALLENGE])
    _, retry = requests(ep)
    answer(ep, retry, 183, 0.1, headers=[CONTACT, RELIABLE, ("RSeq", "1")])
    (prack,) = requests(ep)
    assert prack.headers.get("RAck") == "1 2 INVITE"  # the retry's CSeq
    assert (prack.headers.get("Proxy-Authorization") or "").startswith("Digest ")
    session.cancel(0.2)
    (cancel,) = requests(ep)
    assert cancel.method == "CANCEL" and cancel.cseq.seq == 2
    # the PRACK transaction failing (481, or nothing) changes nothing for the call
    answer(ep, prack, 481, 0.25)
    answer(ep, cancel, 200, 0.3)
    answer(ep, retry, 487, 0.35)
    assert [r.method for r in requests(ep)] == ["ACK"]
    end = ended(events(ep))
    assert (end.status, end.cancelled_by_us, end.ended_by) == (487, True, "local")


def test_a_421_asking_for_100rel_has_the_invite_sent_once_more_offering_it() -> None:
    ep = endpoint()
    _, invite = start(ep, prack=False)
    answer(ep, invite, 421, 0.1, headers=[("Require", "timer, 100rel")])
    ack, retry = requests(ep)
    assert (ack.method, retry.method) == ("ACK", "INVITE")
    assert retry.headers.get_all("Supported") == ["100rel"]
    assert retry.cseq.seq == invite.cseq.seq + 1 and retry.call_id == invite.call_id
    assert not any(isinstance(e, SessionEnded) for e in events(ep))  # not the outcome
    # once only: a second 421 is the call's outcome
    answer(ep, retry, 421, 0.2, headers=[("Require", "100rel")])
    assert [r.method for r in requests(ep)] == ["ACK"]
    assert ended(events(ep)).status == 421


@pytest.mark.parametrize(
    ("prack", "require"), [(False, "precondition"), (False, None), (True, "100rel")]
)
def test_a_421_for_anything_else_or_after_offering_100rel_is_the_outcome(
    prack: bool, require: str | None
) -> None:
    ep = endpoint()
    _, invite = start(ep, prack=prack)
    headers = [("Require", require)] if require else []
    answer(ep, invite, 421, 0.1, headers=headers)
    assert [r.method for r in requests(ep)] == ["ACK"]
    assert ended(events(ep)).status == 421


def test_the_request_that_would_end_the_call_follows_its_state_and_is_not_sent() -> None:
    # kept by the daemon for its next start in case this process dies with the call
    # up (agent/leftovers.py): the CANCEL of the INVITE in flight, then the BYE
    ep = endpoint()
    session, invite = start(ep, credentials=True)
    pending = session.ending_request()
    assert pending is not None
    cancel, dest = pending
    assert cancel.method == "CANCEL" and dest == PBX
    assert cancel.top_via.branch == invite.top_via.branch
    assert cancel.cseq.seq == invite.cseq.seq and cancel.cseq.method == "CANCEL"
    assert cancel.call_id == invite.call_id and cancel.from_.tag == invite.from_.tag
    assert requests(ep) == []  # nothing went out
    answer(ep, invite, 407, 0.1, headers=[CHALLENGE])
    _, retry = requests(ep)
    pending = session.ending_request()
    assert pending is not None and pending[0].top_via.branch == retry.top_via.branch
    answer(ep, retry, 180, 0.2, headers=[RR, CONTACT])
    answer(ep, retry, 200, 0.5, headers=[RR, CONTACT], body=SDP_ANSWER)
    sent(ep)  # the ACK
    pending = session.ending_request()
    assert pending is not None
    bye, dest = pending
    assert bye.method == "BYE" and bye.to.tag == "far1" and bye.cseq.seq == 3
    assert str(bye.uri) == "sip:far@10.0.0.3:5070" and dest == ("10.0.0.2", 5060)
    assert bye.headers.get_all("Route") == ["<sip:10.0.0.2:5060;lr>"]
    assert requests(ep) == []
    session.hangup(1.0)
    (real,) = requests(ep)
    assert real.method == "BYE" and real.cseq.seq == 3  # the kept one took no CSeq
    assert session.ending_request() is None  # ending: nothing more to send


def test_a_closed_session_is_freed_without_the_cyclic_collector() -> None:
    # the session held its INVITE transaction, whose owner is the session: every
    # call's session, dialogs, requests and responses then waited for a full
    # collection (agent/heap.py). Once closed, nothing holds it: not the
    # transaction's Timer D, which the endpoint serves from a light record, nor
    # the endpoint's timer heap, whose entries left behind (Timer A's, the ring
    # timeout's) name their owner by key
    ep = endpoint()
    gc.collect()
    gc.disable()
    try:
        session, invite = start(ep, ring_timeout=60.0)
        answer(ep, invite, 183, 0.05)
        answer(ep, invite, 404, 0.1)
        requests(ep)  # the ACK
        ended(events(ep))
        session.close()
        assert ep.usages == 0
        gone = weakref.ref(session)
        del session
        assert gone() is None
        assert ep.get_timer() == pytest.approx(0.1 + 64 * T1)  # Timer D, still served
    finally:
        gc.enable()


def test_a_retransmitted_final_is_acked_again_until_timer_d_after_the_session_is_gone() -> None:
    ep = endpoint()
    session, invite = start(ep)
    final = answer(ep, invite, 486, 0.1)
    (ack,) = requests(ep)
    assert ack.method == "ACK"
    ended(events(ep))
    session.close()
    del session
    # the 486 again (our ACK was lost): the same ACK, byte for byte, to the same place
    ep.receive(final.serialize(), PBX, 5.0)
    ((again, dest),) = ep.datagrams_to_send()
    assert again == ack.serialize() and dest == PBX
    # a 1xx on that branch now is nobody's: nothing is sent (a 2xx: the next test)
    answer(ep, invite, 180, 5.1)
    assert ep.datagrams_to_send() == []
    assert ep.transactions == 1
    # Timer D (32 s after the final) ends it: a late 486 is nobody's
    ep.handle_timer(ep.get_timer() or 0.0)
    assert ep.transactions == 0 and ep.get_timer() is None
    ep.receive(final.serialize(), PBX, 40.0)
    assert ep.datagrams_to_send() == []


def _ended_by_our_cancel(ep: Endpoint, session: InviteSession, invite: Request) -> None:
    """Ringing, then our CANCEL: its 487 came back, and the session ended and is
    closed (a forking proxy may still forward another branch's 2xx)."""
    answer(ep, invite, 180, 0.1, tag="a")
    session.cancel(0.2)
    (cancel,) = requests(ep)
    answer(ep, cancel, 200, 0.25, tag=None)
    answer(ep, invite, 487, 0.3, tag="a")
    requests(ep)  # the 487's ACK
    ended(events(ep))
    session.close()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_a_fork_answering_after_the_487_of_a_session_gone_is_acked_and_byed(
    transport: str,
) -> None:
    # a forking proxy: one branch's 487 for our CANCEL came back, the session ended
    # and is gone; another branch had answered and the proxy forwards its 2xx
    # (RFC 3261 §16.7). Unanswered, that call would stay up at the far end, billed
    ep = endpoint(transport=transport)
    session, invite = start(ep)
    _ended_by_our_cancel(ep, session, invite)
    del session
    rr = ("Record-Route", "<sip:10.0.0.7:5070;lr>")
    answer(ep, invite, 200, 0.4, tag="b", headers=[rr, CONTACT], body=SDP_ANSWER)
    (ack, ack_to), (bye, bye_to) = sent(ep)
    assert isinstance(ack, Request) and isinstance(bye, Request)
    assert (ack.method, bye.method) == ("ACK", "BYE")
    for req, dest in ((ack, ack_to), (bye, bye_to)):
        assert dest == ("10.0.0.7", 5070)  # the route set's first hop
        assert str(req.uri) == "sip:far@10.0.0.3:5070"  # the 2xx's Contact
        assert req.headers.get_all("Route") == ["<sip:10.0.0.7:5070;lr>"]
        assert req.call_id == invite.call_id
        assert (req.from_.tag, req.to.tag) == (invite.from_.tag, "b")
    assert ack.cseq.seq == invite.cseq.seq and bye.cseq.seq == invite.cseq.seq + 1
    (orphan,) = [e for u, e in ep.events() if u is ORPHANS]
    assert isinstance(orphan, OrphanAnswer) and orphan.call_id == invite.call_id
    assert ep.orphan_answers == 1
    # the BYE's 200 ends its transaction; nothing else is sent
    answer(ep, bye, 200, 0.5, tag="b")
    assert ep.datagrams_to_send() == []


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_an_orphan_2xx_gets_a_bye_with_credentials_answered_again_when_challenged(
    transport: str,
) -> None:
    # the same fork's 2xx, for an INVITE the PBX had challenged: the orphan's ACK
    # and BYE carry the INVITE's answers, and a PBX that challenges every in-dialog
    # request gets the BYE once more answering it (once: no loop)
    ep = endpoint(transport=transport)
    session, invite = start(ep, credentials=True)
    answer(ep, invite, 407, 0.05, headers=[CHALLENGE])
    _, retry = requests(ep)
    _ended_by_our_cancel(ep, session, retry)
    del session
    answer(ep, retry, 200, 0.4, tag="b", headers=[CONTACT], body=SDP_ANSWER)
    ack, bye = requests(ep)
    assert (ack.method, bye.method) == ("ACK", "BYE")
    for req in (ack, bye):
        assert 'nonce="n1"' in (req.headers.get("Proxy-Authorization") or "")
    new_nonce = ("Proxy-Authenticate", 'Digest realm="pbx", nonce="n2", algorithm=MD5')
    answer(ep, bye, 407, 0.5, tag="b", headers=[new_nonce])
    (again,) = requests(ep)
    assert again.method == "BYE" and again.cseq.seq == bye.cseq.seq + 1
    assert again.call_id == invite.call_id and again.to.tag == "b"
    assert 'nonce="n2"' in (again.headers.get("Proxy-Authorization") or "")
    answer(ep, again, 407, 0.6, tag="b", headers=[new_nonce])
    assert requests(ep) == []
    assert ep.orphan_answers == 1
