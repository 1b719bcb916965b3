"""UAC dialogs: early per To tag (forking), confirmation, route set, CSeq, routing."""

from __future__ import annotations

import pytest

from sipclient.sip.dialog import Dialog, DialogError, DialogId, DialogSet, DialogState
from sipclient.sip.message import Request, Response, parse_message
from tests.sip.conftest import build_request, build_response

VIA = "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKnew;rport"


def _resp(
    invite: Request,
    status: int,
    tag: str | None,
    contact: str | None = None,
    record_route: tuple[str, ...] = (),
) -> Response:
    r = build_response(invite, status, to_tag=tag)
    for rr in record_route:
        r.headers.add("Record-Route", rr)
    if contact:
        r.headers.add("Contact", contact)
    return r


def test_forked_early_dialogs_then_one_confirmed() -> None:
    inv = build_request()
    ds = DialogSet(inv)
    assert ds.on_response(_resp(inv, 100, None)) is None
    a = ds.on_response(_resp(inv, 180, "A", "<sip:bob@192.0.2.1>"))
    b = ds.on_response(_resp(inv, 183, "B", "<sip:bob@192.0.2.2>"))
    assert a is not None and b is not None and a is not b
    assert [d.remote_tag for d in ds.early] == ["A", "B"]
    assert ds.on_response(_resp(inv, 180, "A")) is a  # same tag: same dialog
    a2 = ds.on_response(_resp(inv, 200, "A", "<sip:bob@192.0.2.11>", ("<sip:rr1;lr>",)))
    assert a2 is a and a.state is DialogState.CONFIRMED
    assert str(a.remote_target) == "sip:bob@192.0.2.11"  # refreshed by the 2xx
    assert [str(r.uri) for r in a.route_set] == ["sip:rr1;lr"]  # recomputed from the 2xx
    assert ds.confirmed == [a] and ds.early == [b]
    # a final failure ends every early dialog
    ds.on_response(_resp(inv, 487, "B"))
    assert b.state is DialogState.TERMINATED and a.state is DialogState.CONFIRMED
    assert ds.get("A") is a and ds.get("Z") is None


def test_route_set_is_record_route_reversed_and_loose_routing() -> None:
    inv = build_request(cseq=3)
    ok = _resp(
        inv,
        200,
        "T",
        "<sip:bob@192.0.2.1:5062;transport=udp>",
        ("<sip:p3.example.com;lr>, <sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"),
    )
    d = Dialog.from_response(inv, ok)
    assert d.id == DialogId("call-1@127.0.0.1", "ftag", "T")
    assert [r.uri.host for r in d.route_set] == [
        "p1.example.com",
        "p2.example.com",
        "p3.example.com",
    ]
    bye = parse_message(bytes(d.make_request("BYE", VIA)))
    assert isinstance(bye, Request)
    assert str(bye.uri) == "sip:bob@192.0.2.1:5062;transport=udp"
    assert bye.headers.get_all("Route") == [
        "<sip:p1.example.com;lr>",
        "<sip:p2.example.com;lr>",
        "<sip:p3.example.com;lr>",
    ]
    assert (bye.cseq.seq, bye.cseq.method) == (4, "BYE")
    assert bye.from_.tag == "ftag" and bye.to.tag == "T" and bye.call_id == inv.call_id
    assert bye.top_via.branch == "z9hG4bKnew"
    assert "Contact" not in bye.headers
    info = d.make_request("INFO", VIA, b"Signal=1\r\n", "application/dtmf-relay")
    assert info.cseq.seq == 5 and info.headers.get("Content-Type") == "application/dtmf-relay"
    assert parse_message(bytes(info)).body == b"Signal=1\r\n"
    reinvite = d.make_request("INVITE", VIA)
    assert reinvite.headers.get("Contact") == "<sip:alice@127.0.0.1:5070>"


def test_ack_for_2xx_uses_invite_cseq() -> None:
    inv = build_request(cseq=7)
    d = Dialog.from_response(inv, _resp(inv, 200, "T", "<sip:bob@192.0.2.1>"))
    d.make_request("BYE", VIA)
    ack = d.make_ack(VIA)
    assert (ack.method, ack.cseq.seq, ack.cseq.method) == ("ACK", 7, "ACK")
    assert str(ack.uri) == "sip:bob@192.0.2.1" and ack.to.tag == "T"
    assert d.local_seq == 8  # the ACK did not bump it
    with pytest.raises(DialogError):
        d.make_request("ACK", VIA)


def test_strict_router_goes_in_request_uri() -> None:
    inv = build_request()
    ok = _resp(inv, 200, "T", "<sip:bob@192.0.2.1>", ("<sip:strict.example.com;maddr=x>",))
    d = Dialog.from_response(inv, ok)
    bye = d.make_request("BYE", VIA)
    assert str(bye.uri) == "sip:strict.example.com;maddr=x"
    assert bye.headers.get_all("Route") == ["<sip:bob@192.0.2.1>"]


def test_no_contact_keeps_request_uri_as_target() -> None:
    inv = build_request()
    d = Dialog.from_response(inv, _resp(inv, 183, "T"))
    assert d.state is DialogState.EARLY and d.remote_target == inv.uri
    assert d.make_request("BYE", VIA).headers.get("Route") is None


@pytest.mark.parametrize(("status", "tag"), [(100, "T"), (180, None), (486, "T"), (200, None)])
def test_responses_that_create_no_dialog(status: int, tag: str | None) -> None:
    inv = build_request()
    with pytest.raises(DialogError):
        Dialog.from_response(inv, _resp(inv, status, tag))


def test_matching_and_remote_cseq() -> None:
    inv = build_request()
    d = Dialog.from_response(inv, _resp(inv, 200, "T", "<sip:bob@192.0.2.1>"))
    assert d.matches(_resp(inv, 200, "T"))
    assert not d.matches(_resp(inv, 200, "U"))
    # a BYE from the far end: From carries their tag, To ours
    bye = build_request("BYE", cseq=20)
    bye.headers.set("From", "<sip:bob@pbx.example.com>;tag=T")
    bye.headers.set("To", "<sip:alice@pbx.example.com>;tag=ftag")
    assert d.matches(bye)
    bye.headers.set("Call-ID", "other")
    assert not d.matches(bye)
    assert d.accept_remote_cseq(bye) and d.remote_seq == 20
    assert not d.accept_remote_cseq(bye)  # same CSeq again: 500 per §12.2.2
    assert d.accept_remote_cseq(build_request("ACK", cseq=1))
    d.terminate()
    assert d.state is DialogState.TERMINATED
    d.update(_resp(inv, 200, "T"))
    assert d.state is DialogState.TERMINATED


def test_bad_record_route_is_a_dialog_error() -> None:
    inv = build_request()
    with pytest.raises(DialogError):
        Dialog.from_response(inv, _resp(inv, 200, "T", None, ("<sip:broken",)))
    other = _resp(inv, 200, "T")
    other.headers.set("Call-ID", "x")
    assert DialogSet(inv).on_response(other) is None
    with pytest.raises(DialogError):
        Dialog.from_response(inv, other)
