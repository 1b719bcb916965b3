"""sipp 3.6.1 as the RTP source: its rtp_stream plays a raw PCMU, PCMA or G.722 file
to our receiver (the payload type is rtp_stream's third argument).

The test is the UAC (a plain UDP socket sending an INVITE whose SDP names
our leased RTP port); sipp answers 183 with SDP, streams the file from its
media port, then 404.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sipclient.config import PortRange
from sipclient.lab.sipp import Sipp
from sipclient.media.decoders import encode
from sipclient.media.ports import PortPool
from sipclient.media.recorder import Recorder
from sipclient.media.rtp import RtpReceiver, StreamOptions
from sipclient.media.stream import MediaFormat
from tests.media.conftest import dominant_frequency, rms, tone

pytestmark = pytest.mark.peers

SCENARIO = Path(__file__).with_name("sipp_uas_183_rtp.xml")


@pytest.fixture
def signalling() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


def invite(sip_port: int, local_port: int, rtp_port: int) -> bytes:
    sdp = (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {rtp_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    )
    return (
        f"INVITE sip:404@127.0.0.1:{sip_port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{local_port};branch=z9hG4bK-media1\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:test@127.0.0.1>;tag=t1\r\n"
        "To: <sip:404@127.0.0.1>\r\nCall-ID: media-test-1@127.0.0.1\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <sip:test@127.0.0.1:{local_port}>\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}"
    ).encode()


def ack(sip_port: int, local_port: int, to_header: str) -> bytes:
    return (
        f"ACK sip:404@127.0.0.1:{sip_port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{local_port};branch=z9hG4bK-media1\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:test@127.0.0.1>;tag=t1\r\n"
        f"{to_header.strip()}\r\nCall-ID: media-test-1@127.0.0.1\r\nCSeq: 1 ACK\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


@pytest.mark.parametrize(("codec", "pt"), [("PCMU", 0), ("PCMA", 8), ("G722", 9)])
async def test_sipp_rtp_stream_is_recorded(
    tmp_path: Path, port_range: PortRange, signalling: socket.socket, codec: str, pt: int
) -> None:
    sine = tone(700, 1.0, level=8000)
    (tmp_path / "tone.ulaw").write_bytes(encode(codec, sine))  # raw, not a WAV
    # the carrier's answer and its stream in `codec` (G.722: 160 bytes a 20 ms packet too)
    scenario = tmp_path / "uas.xml"
    scenario.write_text(
        SCENARIO.read_text()
        .replace("RTP/AVP 0", f"RTP/AVP {pt}")
        .replace("a=rtpmap:0 PCMU/8000", f"a=rtpmap:{pt} {codec}/8000")
        .replace('rtp_stream="tone.ulaw,1,0"', f'rtp_stream="tone.ulaw,1,{pt}"')
    )
    pool = PortPool(port_range, "127.0.0.1")
    lease = pool.allocate()
    loop = asyncio.get_running_loop()
    with Sipp(scenario, workdir=tmp_path, extra_args=["-m", "1"]) as uas:
        local_port = signalling.getsockname()[1]
        await loop.sock_sendto(
            signalling, invite(uas.port, local_port, lease.port), ("127.0.0.1", uas.port)
        )
        answer = (await asyncio.wait_for(loop.sock_recv(signalling, 4096), 5.0)).decode()
        assert answer.startswith("SIP/2.0 183")
        media_port = int(re.search(r"m=audio (\d+)", answer).group(1))  # type: ignore[union-attr]
        recorder = Recorder(tmp_path / "sipp.wav")
        rx = await RtpReceiver.open(
            lease,
            MediaFormat(codec, pt),
            ("127.0.0.1", media_port),
            recorder,
            options=StreamOptions(pad_to_end=False),
        )
        final = (await asyncio.wait_for(loop.sock_recv(signalling, 4096), 5.0)).decode()
        assert final.startswith("SIP/2.0 404")
        to_tag = re.search(r"^To:.*$", final, re.MULTILINE).group(0)  # type: ignore[union-attr]
        await loop.sock_sendto(
            signalling, ack(uas.port, local_port, to_tag), ("127.0.0.1", uas.port)
        )
        for _ in range(200):
            if rx.stats.packets >= 50:
                break
            await asyncio.sleep(0.01)
        stats = await rx.close()
    result = recorder.close()
    assert stats.packets == 50 and stats.lost == 0 and stats.garbage == 0
    assert stats.latched == ("127.0.0.1", media_port)
    assert pool.in_use == 0
    data, rate = sf.read(str(result.path), dtype="int16")
    assert rate == 8000 and len(data) == 8000
    assert dominant_frequency(data) == pytest.approx(700, abs=5)
    assert rms(data) == pytest.approx(rms(sine), rel=0.05)
    # the same waveform, sample for sample once G.722's filter delay (a few samples)
    # is taken out; G.711 has none
    x, y = data.astype(float), sine.astype(float)
    lag = max(range(40), key=lambda k: np.corrcoef(x[k:], y[: len(y) - k])[0, 1])
    assert np.corrcoef(x[lag:], y[: len(y) - lag])[0, 1] > 0.99
    assert lag == 0 or codec == "G722"
