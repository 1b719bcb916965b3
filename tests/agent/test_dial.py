"""`sipclient dial` as an operator runs it: a real process, kamailio and sipp."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sipclient.lab.kamailio import Kamailio, Route
from sipclient.lab.sipp import Sipp
from sipclient.media.g711 import ulaw_encode

pytestmark = pytest.mark.peers


def run_dial(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sipclient.cli", "dial", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def dial_recording(
    tmp_path: Path, kam: Kamailio, number: str, wav: Path, ports: str, host: str = "127.0.0.1"
) -> subprocess.CompletedProcess[str]:
    """`sipclient dial NUMBER --record WAV` as extension 1001 through `kam` (reached
    as `host`), its RTP on `ports`."""
    cfg = tmp_path / "daemon.yaml"
    cfg.write_text(f"rtp:\n  ports: {ports}\nlog:\n  level: warning\n")
    account = f"1001:secret1001@{host}:{kam.port}"
    return run_dial(number, "--account", account, "--record", str(wav), "--config", str(cfg))


def tone_pcmu(seconds: float = 1.0) -> bytes:
    t = np.arange(int(8000 * seconds)) / 8000
    return ulaw_encode((8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16))


def test_dial_records_early_media_and_prints_one_json(
    tmp_path: Path, sipp_uas: Callable[..., Sipp], kamailio_for: Callable[..., Kamailio]
) -> None:
    uas = sipp_uas("uas_183_rtp_404.xml", files={"early.pcmu": tone_pcmu()})
    kam = kamailio_for([Route("404", "127.0.0.1", uas.port)])
    wav = tmp_path / "call.wav"
    done = dial_recording(tmp_path, kam, "4045550000", wav, "30000-30099")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)  # exactly one JSON object on stdout
    assert (out["verdict"], out["sip_code"], out["q850_cause"]) == ("empty", 404, 1)
    assert out["media"]["codec"] == "PCMU"
    assert out["timings"]["early_media_ms"] is not None
    assert out["recording"]["path"] == str(wav)
    audio, rate = sf.read(wav, dtype="int16")
    assert rate == 8000
    assert len(audio) > 8000 * 0.9  # the 1 s tone (then silence until the 404)
    assert np.abs(audio[:4000]).max() > 4000
    # the INVITE offered the port of rtp.ports the audio came to
    invite = next(m for m in uas.messages() if m.method == "INVITE")
    port = int(invite.text.split("m=audio ", 1)[1].split()[0])
    assert 30000 <= port <= 30099


def test_dial_exit_1_when_it_cannot_register(
    sipp_uas: Callable[..., Sipp], kamailio_for: Callable[..., Kamailio]
) -> None:
    kam = kamailio_for()
    done = run_dial("123", "--account", f"1001:wrong@127.0.0.1:{kam.port}")
    assert done.returncode == 1
    out = json.loads(done.stdout)
    assert out["verdict"] is None and "authentication refused" in out["error"]


def test_dial_exit_2_on_a_malformed_account() -> None:
    done = run_dial("123", "--account", "1001@127.0.0.1")
    assert done.returncode == 2
    assert "EXT:PASSWORD@HOST:PORT" in done.stderr
    assert done.stdout == ""


def test_dial_without_register_straight_to_a_busy_uas(
    sipp_uas: Callable[..., Sipp],
) -> None:
    uas = sipp_uas("uas_486.xml")
    done = run_dial("4861234", "--account", f"1001:x@127.0.0.1:{uas.port}", "--no-register")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert (out["verdict"], out["sip_code"]) == ("busy", 486)
    uas.wait_for("ACK")
    assert [m.method or m.status for m in uas.messages()] == ["INVITE", 486, "ACK"]


def test_dial_reaches_a_pbx_beyond_127_0_0_1_with_the_default_bind(
    sipp_uas: Callable[..., Sipp],
) -> None:
    # ::1 stands for any PBX not on 127.0.0.1: the default bind was 127.0.0.1:0, and
    # every send to another address failed (a 408 after Timer B, exit 0)
    uas = sipp_uas("uas_486.xml", host="::1")
    done = run_dial("4861234", "--account", f"1001:x@[::1]:{uas.port}", "--no-register")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert (out["verdict"], out["sip_code"]) == ("busy", 486)
    # and a --bind that cannot reach it is a usage error at once, not a 408 32 s later
    done = run_dial(
        "4861234", "--account", f"1001:x@[::1]:{uas.port}", "--no-register", "--bind", "127.0.0.1:0"
    )
    assert done.returncode == 2 and "cannot reach the PBX" in done.stderr
    assert done.stdout == ""


def test_dial_takes_its_ring_timeout_from_the_config(
    tmp_path: Path, sipp_uas: Callable[..., Sipp]
) -> None:
    uas = sipp_uas("uas_180_cancel.xml")
    cfg = tmp_path / "daemon.yaml"
    cfg.write_text("sip:\n  ring_timeout: 1\nlog:\n  level: warning\n")
    done = run_dial(
        "1801234",
        "--account",
        f"1001:x@127.0.0.1:{uas.port}",
        "--no-register",
        "--config",
        str(cfg),
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    # rung, then our CANCEL at sip.ring_timeout (the option's old default, 60 s, won)
    assert out["signalling"]["cancel_reason"] == "ring timeout", out
    assert (out["verdict"], out["sip_code"]) == ("no_answer", 487)


# the PBX as an address, and as a name (localhost): before session 16 a name was
# compared as written with the media's source address, and nothing was recorded
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_dial_records_early_media_whose_183_was_lost(
    tmp_path: Path,
    sipp_uas: Callable[..., Sipp],
    kamailio_for: Callable[..., Kamailio],
    host: str,
) -> None:
    # the carrier plays with no 183 reaching us (lost over UDP), then 480: the
    # recording still holds what it played (media/rtp.py, "Media before the answer")
    uas = sipp_uas("uas_rtp_no183_480.xml", files={"early.pcmu": tone_pcmu(2.5)})
    kam = kamailio_for([Route("480", "127.0.0.1", uas.port)])
    wav = tmp_path / "call.wav"
    done = dial_recording(tmp_path, kam, "4805550000", wav, "30100-30199", host)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["sip_code"] == 480 and out["recording"]["rtp"]["unanswered"] is True
    audio, rate = sf.read(wav, dtype="int16")
    assert rate == 8000 and len(audio) > 8000 and np.abs(audio).max() > 4000
