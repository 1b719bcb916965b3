"""The lab itself, proven with sipp as UAC through kamailio to a sipp UAS."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sipclient.demo import CARRIERS, RETRANS_MS, render_scenario
from sipclient.lab.kamailio import Kamailio, KamailioConfig, Route, render_config
from sipclient.lab.ports import LAB_PORTS, free_port, tcp_listening
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


def _sipp_request(method: str, port: int, local_port: int, call_id: str) -> bytes:
    return (
        f"{method} sip:11070001@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{local_port};branch=z9hG4bK-tail-1\r\n"
        "From: <sip:2001@127.0.0.1>;tag=t1\r\nTo: <sip:11070001@127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def test_demo_carrier_sends_its_final_again_until_the_ack(
    sipp_uas: Callable[..., Sipp], tmp_path: Path
) -> None:
    """A demo carrier's final response is retransmitted (Timer G) until the ACK, as
    an RFC 3261 UAS over UDP does; sent once, a 480 lost on a full socket hung
    kamailio's INVITE and our call for 62 s (the e2e bench's tail at 200 lines)."""
    carrier = next(c for c in CARRIERS if c.name == "unreachable_480")
    xml = tmp_path / "unreachable_480.xml"
    xml.write_text(render_scenario(carrier, None), encoding="latin-1")
    uas = sipp_uas(str(xml))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.1", 0))
        local_port = sock.getsockname()[1]
        far = ("127.0.0.1", uas.port)
        sock.sendto(_sipp_request("INVITE", uas.port, local_port, "tail-1"), far)

        def finals(seconds: float) -> list[float]:
            got: list[float] = []
            end = time.monotonic() + seconds
            while (left := end - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    data = sock.recv(4096)
                except TimeoutError:
                    break
                if data.startswith(b"SIP/2.0 480"):
                    got.append(time.monotonic())
            return got

        # sent at once, then again after T1 (500 ms) and 2*T1: never ACKed
        assert len(finals(1.8)) >= 3
        sock.sendto(_sipp_request("ACK", uas.port, local_port, "tail-1"), far)
        finals(0.3)  # one may already be on its way
        assert finals(2.5) == []  # the ACK stops them
    finally:
        sock.close()


def test_demo_scenarios_retransmit_finals_only() -> None:
    """`retrans` on every final response (the 487 after a CANCEL, the 486, a 2xx),
    none on a provisional or on the 200 to our CANCEL (answered per request)."""
    busy = next(c for c in CARRIERS if c.name == "busy_tone")
    xml = render_scenario(busy, Path("/x/busy.ulaw"))
    sends = re.findall(r"<send([^>]*)>\s*<!\[CDATA\[\s*SIP/2\.0 (\d+)", xml)
    assert [(code, attrs.strip()) for attrs, code in sends] == [
        ("100", ""),
        ("183", ""),
        ("200", ""),
        ("487", f'retrans="{RETRANS_MS}"'),
        ("486", f'retrans="{RETRANS_MS}"'),
    ]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_tcp_listening_sees_a_listener_not_a_bound_or_connected_socket(host: str) -> None:
    # the lab waits for this before it connects to a server it started: a connect to
    # a port nobody listens on may connect to itself and hold the port (session 20)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    port = free_port(host)
    assert tcp_listening(port) is False
    with socket.socket(family, socket.SOCK_STREAM) as srv:
        srv.bind((host, port))
        assert tcp_listening(port) is False  # bound, not yet listening
        srv.listen()
        assert tcp_listening(port) is True
        with socket.create_connection((host, port)) as client:
            # the client's own port is connected, not listening
            assert tcp_listening(client.getsockname()[1]) is False
    assert tcp_listening(port) is False


def test_free_ports_are_below_the_ephemeral_range_and_never_handed_twice() -> None:
    # a connect takes its source port from the ephemeral range: a lab port there,
    # polled while nobody listens, could be connected to by itself
    with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as fh:
        ephemeral_low = int(fh.read().split()[0])
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(LAB_PORTS[0] <= p < LAB_PORTS[1] < ephemeral_low for p in ports)
    for p in ports[:5]:  # free for both, as handed
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", p))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", p))
