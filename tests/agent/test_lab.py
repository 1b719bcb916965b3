"""The lab itself, proven with sipp as UAC through kamailio to a sipp UAS."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sipclient.lab.kamailio import Kamailio, KamailioConfig, Route, render_config
from sipclient.lab.sipp import Sipp, parse_trace

pytestmark = pytest.mark.peers

UAC_ARGS = ["-key", "ext", "1001", "-au", "1001"]


def test_render_config_routes_longest_prefix_first() -> None:
    cfg = KamailioConfig(
        extensions={"1001": 'pa"ss'},
        routes=[Route("404", "127.0.0.1", 5001), Route("4041", "127.0.0.1", 5002)],
    )
    text = render_config(cfg, 5099)
    assert "listen=udp:127.0.0.1:5099" in text
    assert '$sht(users=>1001) = "pa\\"ss";' in text
    assert text.index('"^4041"') < text.index('"^404"')
    assert "%%" not in text


def test_render_config_refuses_odd_prefix() -> None:
    with pytest.raises(ValueError, match="prefix"):
        render_config(KamailioConfig(routes=[Route('4"; exit;', "127.0.0.1", 1)]), 5099)


def test_parse_trace_reads_both_directions() -> None:
    text = (
        "----------------------------------------------- 2026-01-01 00:00:00.000\n"
        "UDP message received [20] bytes :\n\n"
        "INVITE sip:1@x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nCSeq: 1 INVITE\r\n\r\n\n"
        "----------------------------------------------- 2026-01-01 00:00:00.001\n"
        "UDP message sent (20 bytes):\n\n"
        "SIP/2.0 100 Trying\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nCSeq: 1 INVITE\r\n\r\n\n"
    )
    msgs = parse_trace(text)
    assert [(m.direction, m.method, m.status) for m in msgs] == [
        ("received", "INVITE", None),
        ("sent", None, 100),
    ]
    assert msgs[0].branch == "z9hG4bK1"
    assert msgs[1].cseq_method == "INVITE"


def test_sipp_uac_registers_and_dials_through_kamailio(
    sipp_uas: Callable[..., Sipp], kamailio_for: Callable[..., Kamailio]
) -> None:
    uas = sipp_uas("uas_183_404.xml")
    kam = kamailio_for([Route("404", "127.0.0.1", uas.port)])
    uac = sipp_uas(
        "uac_register_invite.xml",
        remote=f"127.0.0.1:{kam.port}",
        extra_args=[
            *("-key", "ext", "1001", "-au", "1001", "-ap", "secret1001"),
            "-s",
            "4045550000",
            "-m",
            "1",
        ],
    )
    assert uac.proc is not None
    assert uac.proc.wait(timeout=15) == 0, uac.errors()
    seen = [(m.direction, m.method or m.status) for m in uac.messages()]
    assert seen[:4] == [
        ("sent", "REGISTER"),
        ("received", 401),
        ("sent", "REGISTER"),
        ("received", 200),
    ]
    assert ("received", 407) in seen
    assert seen[-2:] == [("received", 404), ("sent", "ACK")]
    # the far end saw the INVITE with kamailio's Record-Route and answered 183 then 404
    far = uas.wait_for("ACK")
    assert far, uas.messages()
    got = uas.messages()
    invite = next(m for m in got if m.method == "INVITE")
    assert invite.header("Record-Route") is not None
    assert [m.status for m in got if m.direction == "sent"] == [100, 183, 404]
    final = next(m for m in uac.messages() if m.status == 404)
    assert final.header("Reason") == 'Q.850;cause=1;text="Unallocated number"'


def test_unknown_extension_is_refused(
    sipp_uas: Callable[..., Sipp], kamailio_for: Callable[..., Kamailio]
) -> None:
    kam = kamailio_for()
    uac = sipp_uas(
        "uac_register_invite.xml",
        remote=f"127.0.0.1:{kam.port}",
        extra_args=[
            "-key",
            "ext",
            "9999",
            "-au",
            "9999",
            "-ap",
            "x",
            "-s",
            "1",
            "-m",
            "1",
            "-timeout",
            "3",
        ],
    )
    assert uac.proc is not None
    uac.proc.wait(timeout=10)
    assert [m.status for m in uac.messages() if m.direction == "received"][:1] == [403]
