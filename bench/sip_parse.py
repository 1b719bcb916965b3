"""SIP parser throughput on one core: messages parsed (and parsed + serialized) per second.

Usage: .venv/bin/python bench/sip_parse.py [--seconds 2]
Prints a table and writes bench/out/sip_parse.json. Figures, never assertions: on a shared
machine they vary with the load.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from sipclient.sip.message import parse_message

INVITE = (
    b"INVITE sip:13800138000@pbx.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK4b0f6e2a9c1d7e3f;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "8001" <sip:8001@pbx.example.com>;tag=5c1a9e2b7d30\r\n'
    b"To: <sip:13800138000@pbx.example.com>\r\n"
    b"Call-ID: 6f2c0d9a4e1b8c7d3a5f9e0b@192.0.2.10\r\n"
    b"CSeq: 2 INVITE\r\n"
    b"Contact: <sip:8001@192.0.2.10:5070;transport=udp>\r\n"
    b'Proxy-Authorization: Digest username="8001", realm="pbx.example.com", '
    b'nonce="Y2xpZW50LW5vbmNlLTEyMw", uri="sip:13800138000@pbx.example.com", '
    b'response="0f1e2d3c4b5a69788796a5b4c3d2e1f0", algorithm=MD5, qop=auth, '
    b'nc=00000001, cnonce="a1b2c3d4e5f60718"\r\n'
    b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, NOTIFY\r\n"
    b"Supported: replaces, timer\r\n"
    b"User-Agent: sipclient/0.1\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 229\r\n"
    b"\r\n"
    b"v=0\r\no=- 8264 8264 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0 8 9 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:9 G722/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n"
    b"a=ptime:20\r\na=sendrecv\r\n"
)

SDP_183 = (
    b"v=0\r\no=root 1634 1634 IN IP4 203.0.113.7\r\ns=Media Gateway\r\nc=IN IP4 203.0.113.7\r\n"
    b"t=0 0\r\nm=audio 17182 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
)
RESPONSE_183 = (
    b"SIP/2.0 183 Session Progress\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK4b0f6e2a9c1d7e3f;rport=5070;"
    b"received=192.0.2.10\r\n"
    b"Record-Route: <sip:203.0.113.1;lr;ftag=5c1a9e2b7d30>\r\n"
    b'From: "8001" <sip:8001@pbx.example.com>;tag=5c1a9e2b7d30\r\n'
    b"To: <sip:13800138000@pbx.example.com>;tag=as58f4a1c2\r\n"
    b"Call-ID: 6f2c0d9a4e1b8c7d3a5f9e0b@192.0.2.10\r\n"
    b"CSeq: 2 INVITE\r\n"
    b"Server: Asterisk PBX 18.0\r\n"
    b"Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, SUBSCRIBE, NOTIFY, INFO\r\n"
    b"Contact: <sip:13800138000@203.0.113.7:5060>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP_183)).encode() + b"\r\n\r\n" + SDP_183
)
REGISTER_401 = (
    b"SIP/2.0 401 Unauthorized\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK0a1b2c3d4e5f6071;rport=5070;"
    b"received=192.0.2.10\r\n"
    b"From: <sip:8001@pbx.example.com>;tag=77e0c1d2a3b4\r\n"
    b"To: <sip:8001@pbx.example.com>;tag=b27e1a1d33761e85846fc98f5f3a7e58.2b1c\r\n"
    b"Call-ID: 1c9e8d7f6a5b4c3d2e1f0a9b@192.0.2.10\r\n"
    b"CSeq: 1 REGISTER\r\n"
    b'WWW-Authenticate: Digest realm="pbx.example.com", '
    b'nonce="ZHcz2GRzZ2bkVwJ5nRkgHTxG8oWxTOB1", qop="auth", algorithm=MD5\r\n'
    b"Server: kamailio (5.6.3 (x86_64/linux))\r\n"
    b"Content-Length: 0\r\n\r\n"
)

MESSAGES = {"INVITE with SDP": INVITE, "183 with SDP": RESPONSE_183, "REGISTER 401": REGISTER_401}


def rate(fn: object, data: bytes, seconds: float) -> float:
    """Calls per second of fn(data) over about ``seconds`` (best of 3 runs)."""
    assert callable(fn)
    n = 1000
    while True:  # calibrate a batch size of ~0.1 s
        t0 = time.perf_counter()
        for _ in range(n):
            fn(data)
        dt = time.perf_counter() - t0
        if dt > 0.1:
            break
        n *= 2
    best = 0.0
    for _ in range(3):
        count = 0
        t0 = time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds / 3:
            for _ in range(n):
                fn(data)
            count += n
        best = max(best, count / elapsed)
    return best


def main() -> None:
    """Run the benchmark, print and save the figures."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = ap.parse_args()

    def parse_serialize(data: bytes) -> bytes:
        return parse_message(data).serialize()

    results = []
    for name, data in MESSAGES.items():
        parse_message(data)  # must be valid
        p = rate(parse_message, data, args.seconds)
        ps = rate(parse_serialize, data, args.seconds)
        results.append(
            {
                "message": name,
                "bytes": len(data),
                "parse_per_s": round(p),
                "parse_serialize_per_s": round(ps),
            }
        )
        print(f"{name:18} {len(data):5d} B  parse {p:10,.0f}/s  parse+serialize {ps:10,.0f}/s")
    out = {
        "bench": "sip_parse",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "note": "single process, one core; shared machine, figures vary with load",
        "results": results,
    }
    path = Path(__file__).parent / "out" / "sip_parse.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
