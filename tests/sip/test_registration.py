"""The registration usage with explicit time."""

from __future__ import annotations

import pytest

from sipclient.sip.auth import DigestCredentials
from sipclient.sip.endpoint import Endpoint
from sipclient.sip.message import URI, Request, make_response
from sipclient.sip.registration import (
    Registered,
    Registration,
    RegistrationFailed,
    RegistrationSpec,
    RegistrationStopped,
    RegState,
)

from .usage_harness import PBX, answer, endpoint, events, requests, sent

CHALLENGE = ("WWW-Authenticate", 'Digest realm="pbx", nonce="n1", algorithm=MD5, qop="auth"')


def new_reg(ep: Endpoint, **kw: object) -> Registration:
    spec = RegistrationSpec(
        aor=URI.parse("sip:1001@pbx"),
        registrar=URI.parse("sip:pbx"),
        proxy=PBX,
        credentials=DigestCredentials("1001", "pw"),
        expires=300,
        **kw,  # type: ignore[arg-type]
    )
    return Registration(ep, spec)


def start(ep: Endpoint, **kw: object) -> tuple[Registration, Request]:
    reg = new_reg(ep, **kw)
    reg.start(0.0)
    (req,) = requests(ep)
    return reg, req


def contact_ok(req: Request, expires: int) -> tuple[str, str]:
    return ("Contact", f"{req.headers.get('Contact')};expires={expires}")


def test_401_then_200_then_refresh_at_half_the_granted_time() -> None:
    ep = endpoint()
    reg, first = start(ep)
    assert first.method == "REGISTER" and first.headers.get("Authorization") is None
    assert first.headers.get("Expires") == "300"
    assert first.headers.get("Contact") == "<sip:1001@10.0.0.1:5062>"
    answer(ep, first, 401, 0.1, headers=[CHALLENGE])
    (second,) = requests(ep)
    assert second.cseq.seq == 2 and second.call_id == first.call_id
    assert (second.headers.get("Authorization") or "").startswith("Digest ")
    answer(ep, second, 200, 0.2, headers=[contact_ok(second, 120)])
    evs = events(ep)
    assert isinstance(evs[-1], Registered) and evs[-1].expires == 120
    assert reg.state is RegState.REGISTERED and reg.reason == ""
    assert reg.get_timer() == pytest.approx(0.2 + 60)
    ep.handle_timer(60.2)
    (refresh,) = requests(ep)
    assert refresh.cseq.seq == 3
    assert "nc=00000002" in (refresh.headers.get("Authorization") or "")


def test_a_refresh_refused_403_is_sent_again_bare_at_once() -> None:
    # a registrar that takes each nonce once and refuses a reused one 403
    ep = endpoint()
    reg, first = start(ep)
    answer(ep, first, 401, 0.1, headers=[CHALLENGE])
    (second,) = requests(ep)
    answer(ep, second, 200, 0.2, headers=[contact_ok(second, 120)])
    events(ep)
    ep.handle_timer(60.2)
    (refresh,) = requests(ep)
    assert "Authorization" in refresh.headers
    answer(ep, refresh, 403, 60.3)
    (bare,) = requests(ep)
    assert bare.cseq.seq == refresh.cseq.seq + 1 and "Authorization" not in bare.headers
    assert not any(isinstance(e, RegistrationFailed) for e in events(ep))
    answer(ep, bare, 401, 60.4, headers=[CHALLENGE])
    (own,) = requests(ep)
    answer(ep, own, 403, 60.5)  # refused answering its own challenge: a refusal
    evs = events(ep)
    assert isinstance(evs[-1], RegistrationFailed) and evs[-1].status == 403
    assert requests(ep) == [] and reg.state is RegState.UNREGISTERED


def test_a_403_to_a_fresh_answer_is_a_refusal_without_a_retry() -> None:
    ep = endpoint()
    _, first = start(ep)
    answer(ep, first, 401, 0.1, headers=[CHALLENGE])
    (second,) = requests(ep)
    answer(ep, second, 403, 0.2)
    evs = events(ep)
    assert isinstance(evs[-1], RegistrationFailed) and evs[-1].status == 403
    assert requests(ep) == []


def test_long_bindings_refresh_30_s_before_expiry() -> None:
    ep = endpoint()
    reg, req = start(ep)
    answer(ep, req, 200, 1.0, headers=[("Expires", "3600")])
    assert reg.get_timer() == pytest.approx(1.0 + 3570)


def test_423_retries_with_min_expires() -> None:
    ep = endpoint()
    reg, req = start(ep)
    answer(ep, req, 423, 0.1, headers=[("Min-Expires", "1800")])
    (retry,) = requests(ep)
    assert retry.headers.get("Expires") == "1800" and reg.expires == 1800


def test_5xx_and_timeouts_back_off_capped_with_jitter() -> None:
    ep = endpoint()
    reg, req = start(ep, backoff_initial=2.0, backoff_max=10.0)
    answer(ep, req, 503, 0.0)
    (failed,) = events(ep)
    assert isinstance(failed, RegistrationFailed) and failed.status == 503
    assert failed.retry_at is not None and 1.6 <= failed.retry_at <= 2.0
    assert reg.state is RegState.UNREGISTERED and reg.reason == "503 Service Unavailable"
    now = failed.retry_at
    ep.handle_timer(now)
    (again,) = requests(ep)
    # nothing answers: Timer F (64*T1), then the next back-off step
    retries: list[float] = []
    for _ in range(200):
        at = ep.get_timer()
        assert at is not None
        ep.handle_timer(at)
        requests(ep)
        for ev in events(ep):
            if isinstance(ev, RegistrationFailed):
                assert ev.reason == "no response from registrar" and ev.retry_at
                retries.append(ev.retry_at - ev.at)
        if len(retries) == 3:
            break
    assert 3.2 <= retries[0] <= 4.0 and 6.4 <= retries[1] <= 8.0 and 8.0 <= retries[2] <= 10.0
    assert again.method == "REGISTER"


def test_wrong_password_is_refused_without_looping() -> None:
    ep = endpoint()
    reg, req = start(ep)
    sent_count = 1
    for i in range(5):
        answer(ep, req, 401, 0.1 * (i + 1), headers=[CHALLENGE])
        out = requests(ep)
        if not out:
            break
        (req,) = out
        sent_count += 1
    assert sent_count == 3  # the first, the answer, one fresh retry
    evs = events(ep)
    assert isinstance(evs[-1], RegistrationFailed) and evs[-1].status == 401
    assert reg.reason == "authentication refused"


def test_stop_unregisters_with_expires_0() -> None:
    ep = endpoint()
    reg, req = start(ep)
    answer(ep, req, 200, 0.1, headers=[contact_ok(req, 300)])
    events(ep)
    reg.stop(1.0)
    (unreg,) = requests(ep)
    assert unreg.headers.get("Expires") == "0"
    answer(ep, unreg, 200, 1.1)
    (stopped,) = events(ep)
    assert isinstance(stopped, RegistrationStopped) and stopped.status == 200
    assert reg.state is RegState.UNREGISTERED
    assert reg.get_timer() is None  # no refresh, no retry left


def test_nat_seen_by_the_registrar_corrects_the_contact() -> None:
    ep = endpoint()
    reg, req = start(ep)
    resp = make_response(req, 200, to_tag="r")
    via = (req.headers.get("Via") or "").replace(";rport", ";rport=40000;received=203.0.113.7")
    resp.headers.set("Via", via)
    ep.receive(resp.serialize(), PBX, 0.1)
    (again,) = requests(ep)
    assert again.headers.get("Contact") == "<sip:1001@203.0.113.7:40000>"
    assert reg.state is RegState.REGISTERING
    answer(ep, again, 200, 0.2, headers=[("Expires", "300")])
    assert reg.state is RegState.REGISTERED
    assert requests(ep) == []  # corrected once, not a loop


def test_unknown_request_to_a_registration_call_id_is_481() -> None:
    ep = endpoint()
    reg, _ = start(ep)
    bye = Request("BYE", URI.parse("sip:1001@10.0.0.1:5062"))
    bye.headers.add("Via", "SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKq")
    bye.headers.add("From", "<sip:x@pbx>;tag=a")
    bye.headers.add("To", "<sip:1001@pbx>;tag=b")
    bye.headers.add("Call-ID", reg.call_id)
    bye.headers.add("CSeq", "1 BYE")
    ep.receive(bye.serialize(), PBX, 0.1)
    assert [getattr(m, "status", None) for m, _ in sent(ep)] == [481]


def test_refresh_registers_again_now_and_not_on_top_of_one_in_flight() -> None:
    ep = endpoint()
    reg, req = start(ep)
    reg.refresh(0.05)
    assert requests(ep) == []  # the first REGISTER is still out: it answers the question
    answer(ep, req, 200, 0.1, headers=[contact_ok(req, 300)])
    events(ep)
    reg.refresh(5.0)  # long before the refresh timer (270 s)
    (again,) = requests(ep)
    assert again.cseq.seq == req.cseq.seq + 1 and reg.state is RegState.REGISTERING
    # nothing answers: Timer F, and the line is unregistered with the reason
    for _ in range(50):
        at = ep.get_timer()
        assert at is not None
        ep.handle_timer(at)
        requests(ep)
        failed = [e for e in events(ep) if isinstance(e, RegistrationFailed)]
        if failed:
            break
    assert failed and failed[0].reason == "no response from registrar"
    assert reg.state is RegState.UNREGISTERED


def test_refresh_before_start_or_after_stop_sends_nothing() -> None:
    ep = endpoint()
    reg = new_reg(ep)
    reg.refresh(0.0)
    assert requests(ep) == []
    reg.start(0.1)
    (req,) = requests(ep)
    answer(ep, req, 200, 0.2, headers=[contact_ok(req, 300)])
    reg.stop(1.0)
    (unreg,) = requests(ep)
    answer(ep, unreg, 200, 1.1)
    reg.refresh(2.0)
    assert requests(ep) == []
