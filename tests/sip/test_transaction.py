"""Transactions driven by explicit time: every RFC 3261 timer at its exact deadline."""

from __future__ import annotations

import pytest

from sipclient.sip.message import Request, Response, parse_message
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
    TimedOut,
    Transaction,
    TransactionError,
    TransactionKey,
    TransportFailed,
    make_ack,
    make_cancel,
    transaction_key,
)
from tests.sip.conftest import build_request, build_response

T1 = 0.5


def run(txn: Transaction, until: float) -> list[tuple[float, str]]:
    """Fire timers at their exact deadlines up to ``until``; return (time, start line) sent."""
    sent = [(txn.created_at, m.start_line()) for m in txn.messages_to_send()]
    while (at := txn.get_timer()) is not None and at <= until:
        txn.handle_timer(at)
        sent += [(at, m.start_line()) for m in txn.messages_to_send()]
    return sent


def events(txn: Transaction) -> list[Event]:
    out = []
    while (ev := txn.next_event()) is not None:
        out.append(ev)
    return out


def times(sent: list[tuple[float, str]]) -> list[float]:
    return [round(t, 9) for t, _ in sent]


INVITE_LINE = "INVITE sip:bob@pbx.example.com SIP/2.0"


def test_timer_a_doubles_and_timer_b_times_out() -> None:
    txn = InviteClientTransaction(build_request(), now=100.0)
    sent = run(txn, 200.0)
    # sends at 0, then A at T1, 3T1, 7T1, 15T1, 31T1, 63T1 (intervals T1, 2T1, 4T1 ...)
    assert times(sent) == [100 + k * T1 for k in (0, 1, 3, 7, 15, 31, 63)]
    assert {line for _, line in sent} == {INVITE_LINE}
    assert events(txn) == [TimedOut("B"), Terminated()]
    assert txn.terminated and txn.history[-1].at == 100 + 64 * T1
    assert [(tr.old, tr.new) for tr in txn.history] == [(State.CALLING, State.TERMINATED)]
    assert txn.get_timer() is None


def test_invite_provisional_stops_a_and_b_then_non2xx_is_acked() -> None:
    inv = build_request(routes=("<sip:proxy.example.com;lr>",))
    seen: list[str] = []
    txn = InviteClientTransaction(
        inv, now=0.0, on_transition=lambda t, o, n: seen.append(f"{o.value} -> {n.value}")
    )
    assert times(run(txn, 1.0)) == [0.0, 0.5]
    ringing = build_response(inv, 180)
    txn.receive(ringing, 1.2)
    assert events(txn) == [ProvisionalReceived(ringing)]
    assert txn.get_timer() is None  # no A, and B only runs while Calling
    busy = build_response(inv, 486)
    txn.receive(busy, 20.0)
    [ack] = txn.messages_to_send()
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert events(txn) == [FinalReceived(busy)]
    assert txn.state is State.COMPLETED and txn.get_timer() == 20.0 + 32.0
    # a retransmitted 486 is absorbed and re-ACKed, not passed up
    txn.receive(busy, 21.0)
    assert txn.messages_to_send() == [ack] and events(txn) == []
    txn.handle_timer(51.9)
    assert not txn.terminated
    txn.handle_timer(52.0)
    assert events(txn) == [Terminated()]
    assert seen == ["Calling -> Proceeding", "Proceeding -> Completed", "Completed -> Terminated"]
    # the ACK: same branch and CSeq number, To from the response, Route kept (§17.1.1.3)
    wire = parse_message(bytes(ack))
    assert transaction_key(wire) == transaction_key(inv)
    assert wire.cseq.seq == 1 and wire.cseq.method == "ACK"
    assert wire.to.tag == "ttag" and wire.from_.tag == "ftag"
    assert wire.headers.get_all("Route") == ["<sip:proxy.example.com;lr>"]
    assert len(wire.vias) == 1 and wire.body == b""


def test_invite_2xx_goes_accepted_and_passes_every_2xx_up_until_timer_m() -> None:
    inv = build_request()
    txn = InviteClientTransaction(inv, now=0.0)
    run(txn, 0.0)
    ok = build_response(inv, 200)
    txn.receive(ok, 3.0)
    assert txn.state is State.ACCEPTED and txn.messages_to_send() == []  # TU ACKs 2xx
    other_fork = build_response(inv, 200, to_tag="fork2")
    txn.receive(ok, 3.5)
    txn.receive(other_fork, 4.0)
    txn.receive(build_response(inv, 486), 4.0)  # ignored once Accepted
    assert events(txn) == [FinalReceived(ok), FinalReceived(ok), FinalReceived(other_fork)]
    assert txn.get_timer() == 3.0 + 64 * T1
    txn.handle_timer(35.0)
    assert events(txn) == [Terminated()]


def test_invite_over_reliable_transport() -> None:
    inv = build_request()
    txn = InviteClientTransaction(inv, now=0.0, reliable=True)
    assert times(run(txn, 31.0)) == [0.0]  # no Timer A
    assert txn.get_timer() == 32.0  # Timer B still runs
    txn.receive(build_response(inv, 503), 2.0)
    assert [m.start_line().split()[0] for m in txn.messages_to_send()] == ["ACK"]
    assert [type(e) for e in events(txn)] == [FinalReceived, Terminated]  # Timer D = 0


def test_custom_t1_scales_every_timer() -> None:
    txn = InviteClientTransaction(build_request(), now=0.0, t1=0.05)
    sent = run(txn, 10.0)
    assert times(sent) == [round(k * 0.05, 9) for k in (0, 1, 3, 7, 15, 31, 63)]
    assert txn.history[-1].at == pytest.approx(3.2)


def test_timer_e_capped_at_t2_and_timer_f() -> None:
    txn = NonInviteClientTransaction(build_request("REGISTER", uri="sip:pbx.example.com"), 0.0)
    sent = run(txn, 100.0)
    # intervals T1, 2T1, 4T1, then T2 = 4 s: 0.5 1.5 3.5 7.5 11.5 ... 31.5
    assert times(sent) == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert events(txn) == [TimedOut("F"), Terminated()]
    assert txn.history[-1].at == 64 * T1


def test_timer_e_after_provisional_uses_t2_and_timer_k() -> None:
    req = build_request("BYE", cseq=2)
    txn = NonInviteClientTransaction(req, 0.0)
    assert times(run(txn, 0.6)) == [0.0, 0.5]
    trying = build_response(req, 100, to_tag=None)
    txn.receive(trying, 0.7)
    assert txn.state is State.PROCEEDING
    sent = run(txn, 10.0)
    # the E already armed (1.5) fires, then every T2
    assert times(sent) == [1.5, 5.5, 9.5]
    ok = build_response(req, 200)
    txn.receive(ok, 10.0)
    txn.receive(ok, 10.1)  # retransmission absorbed in Completed
    assert events(txn) == [ProvisionalReceived(trying), FinalReceived(ok)]
    assert txn.get_timer() == 10.0 + 5.0  # Timer K = T4
    txn.handle_timer(15.0)
    assert events(txn) == [Terminated()]


def test_non_invite_reliable_has_no_e_and_zero_k() -> None:
    req = build_request("OPTIONS")
    txn = NonInviteClientTransaction(req, 0.0, reliable=True)
    assert times(run(txn, 1.0)) == [0.0] and txn.get_timer() == 32.0
    txn.receive(build_response(req, 200), 1.0)
    assert [type(e) for e in events(txn)] == [FinalReceived, Terminated]


def test_late_timer_handling_does_not_burst() -> None:
    txn = InviteClientTransaction(build_request(), now=0.0)
    txn.messages_to_send()
    txn.handle_timer(10.0)  # the loop stalled: A was due at 0.5, 1.5, 3.5, 7.5
    assert len(txn.messages_to_send()) == 1
    assert txn.get_timer() == 11.0  # restarted from now with the next (doubled) interval


def test_transport_failure_terminates() -> None:
    txn = NonInviteClientTransaction(build_request("REGISTER"), 0.0)
    txn.transport_failed(0.1, "ICMP port unreachable")
    txn.transport_failed(0.2)  # idempotent
    assert events(txn) == [TransportFailed("ICMP port unreachable"), Terminated()]
    assert txn.get_timer() is None
    txn.receive(build_response(build_request("REGISTER"), 200), 0.3)
    assert events(txn) == []


def test_wrong_methods_are_refused() -> None:
    with pytest.raises(TransactionError):
        InviteClientTransaction(build_request("BYE"), 0.0)
    with pytest.raises(TransactionError):
        NonInviteClientTransaction(build_request("INVITE"), 0.0)
    with pytest.raises(TransactionError):
        NonInviteServerTransaction(build_request("ACK"), 0.0)
    with pytest.raises(TransactionError):
        InviteServerTransaction(build_request("OPTIONS"), 0.0)


def test_non_invite_server_absorbs_retransmissions_and_timer_j() -> None:
    bye = build_request("BYE", cseq=5)
    txn = NonInviteServerTransaction(bye, 0.0)
    txn.receive(bye, 0.4)
    assert txn.messages_to_send() == []  # nothing to resend yet
    trying = build_response(bye, 100, to_tag=None)
    txn.respond(trying, 0.5)
    txn.receive(bye, 0.6)
    assert txn.messages_to_send() == [trying, trying]
    ok = build_response(bye, 200)
    txn.respond(ok, 1.0)
    txn.receive(bye, 2.0)
    assert txn.messages_to_send() == [ok, ok]
    with pytest.raises(TransactionError):
        txn.respond(ok, 2.0)
    assert txn.get_timer() == 1.0 + 64 * T1  # Timer J
    txn.handle_timer(33.0)
    assert events(txn) == [Terminated()]
    assert [t.new for t in txn.history] == [State.PROCEEDING, State.COMPLETED, State.TERMINATED]


def test_non_invite_server_reliable_terminates_at_once() -> None:
    opt = build_request("OPTIONS")
    txn = NonInviteServerTransaction(opt, 0.0, reliable=True)
    txn.respond(build_response(opt, 200), 0.0)
    assert txn.terminated and events(txn) == [Terminated()]


def test_invite_server_timer_g_doubles_to_t2_and_timer_h() -> None:
    reinvite = build_request("INVITE", cseq=7)
    txn = InviteServerTransaction(reinvite, 0.0)
    refuse = build_response(reinvite, 488)
    txn.respond(refuse, 0.0)
    sent = run(txn, 100.0)
    # G at T1, 3T1, 7T1, then every T2: 0.5 1.5 3.5 7.5 11.5 ... 31.5; H at 64*T1
    assert times(sent) == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert events(txn) == [TimedOut("H"), Terminated()]


def test_invite_server_ack_confirms_and_timer_i() -> None:
    reinvite = build_request("INVITE", cseq=7)
    txn = InviteServerTransaction(reinvite, 0.0)
    txn.receive(reinvite, 0.1)
    assert txn.messages_to_send() == []
    pending = build_response(reinvite, 491)
    txn.respond(pending, 0.2)
    txn.receive(reinvite, 0.3)  # retransmitted INVITE: resend the final
    assert txn.messages_to_send() == [pending, pending]
    ack = make_ack(reinvite, pending)
    assert transaction_key(ack) == txn.key
    txn.receive(ack, 0.4)
    txn.receive(ack, 0.5)  # absorbed in Confirmed
    assert txn.state is State.CONFIRMED and txn.get_timer() == pytest.approx(5.4)
    txn.handle_timer(5.4)
    assert events(txn) == [AckReceived(ack), Terminated()]
    with pytest.raises(TransactionError):
        txn.respond(pending, 6.0)


def test_invite_server_2xx_accepted_then_timer_l() -> None:
    inv = build_request("INVITE")
    txn = InviteServerTransaction(inv, 0.0, reliable=True)
    txn.respond(build_response(inv, 100, to_tag=None), 0.0)
    txn.respond(build_response(inv, 200), 1.0)
    assert txn.state is State.ACCEPTED and txn.get_timer() == 33.0
    txn.handle_timer(33.0)
    assert events(txn) == [Terminated()]


def test_reliable_invite_server_has_no_g_and_zero_i() -> None:
    inv = build_request("INVITE")
    txn = InviteServerTransaction(inv, 0.0, reliable=True)
    refuse = build_response(inv, 501)
    txn.respond(refuse, 0.0)
    assert txn.get_timer() == 32.0  # only H
    txn.receive(make_ack(inv, refuse), 0.1)
    assert [type(e) for e in events(txn)] == [AckReceived, Terminated]


def test_transaction_keys() -> None:
    inv = build_request("INVITE", branch="z9hG4bKabc")
    resp = build_response(inv, 180)
    assert transaction_key(inv) == transaction_key(resp) == TransactionKey("z9hG4bKabc", "INVITE")
    cancel = make_cancel(inv)
    assert transaction_key(cancel) == TransactionKey("z9hG4bKabc", "CANCEL")
    assert transaction_key(build_response(cancel, 200)) == transaction_key(cancel)
    assert transaction_key(make_ack(inv, build_response(inv, 486))).method == "INVITE"
    old = build_request("OPTIONS", branch="old2543")
    k = transaction_key(old)
    assert k.branch.startswith("2543:call-1@127.0.0.1:1:ftag:") and k.method == "OPTIONS"


def test_make_cancel_fields() -> None:
    inv = build_request(routes=("<sip:p1;lr>", "<sip:p2;lr>"))
    cancel = parse_message(bytes(make_cancel(inv)))
    assert isinstance(cancel, Request)
    assert cancel.method == "CANCEL" and cancel.uri == inv.uri
    assert (cancel.cseq.seq, cancel.cseq.method) == (1, "CANCEL")
    assert cancel.call_id == inv.call_id
    assert cancel.headers.get("From") == inv.headers.get("From")
    assert cancel.headers.get("To") == inv.headers.get("To")
    assert cancel.top_via.branch == inv.top_via.branch and len(cancel.vias) == 1
    assert cancel.headers.get_all("Route") == ["<sip:p1;lr>", "<sip:p2;lr>"]
    assert isinstance(build_response(cancel, 200), Response)


def test_cancel_sent_gives_up_after_64_t1_without_final() -> None:
    inv = build_request()
    txn = InviteClientTransaction(inv, now=0.0)
    txn.receive(build_response(inv, 180), 1.0)
    txn.cancel_sent(10.0)
    txn.cancel_sent(11.0)  # a second call does not move the deadline
    assert txn.get_timer() == 10.0 + 64 * T1
    txn.handle_timer(42.0)
    assert [type(e) for e in events(txn)] == [ProvisionalReceived, TimedOut, Terminated]
    assert txn.history[-1].at == 42.0


def test_cancel_timer_dropped_when_487_arrives() -> None:
    inv = build_request()
    txn = InviteClientTransaction(inv, now=0.0)
    txn.receive(build_response(inv, 183), 1.0)
    txn.cancel_sent(5.0)
    terminated = build_response(inv, 487)
    txn.receive(terminated, 5.2)
    assert txn.get_timer() == 5.2 + 32.0  # only Timer D is left
    assert events(txn)[-1] == FinalReceived(terminated)
