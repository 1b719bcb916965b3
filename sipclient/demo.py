"""`sipclient demo`: the whole system end to end on loopback, and the world it builds.

`World` starts, all on 127.0.0.1 with ports chosen at run time and files in one
work directory:

- the embedded server (`sipclient server`, a subprocess, SQLite in the workdir);
- sipp "carriers", one per outcome in `CARRIERS`, each a UAS scenario rendered
  here (immediate final responses, 180/183, early media played with sipp's
  rtp_stream from raw µ-law files, waiting for our CANCEL);
- kamailio as the PBX (sipclient.lab): digest auth for `lines` extensions,
  INVITEs routed to a carrier by the number's prefix;
- a return_url receiver (aiohttp) that collects the server's callbacks;
- the daemon (`sipclient run`, a subprocess).

The demo pushes the extensions with POST /api/account, then each number as its
own task with POST /api/dialplan (so each verdict arrives by itself at the
return_url), prints each verdict as its callback arrives, and a summary: right
or wrong against what each carrier was told to do, and numbers per line per
hour. Everything started is stopped by pid, also on Ctrl-C or an error.

The audio the carriers play: when the template library shipped with the
classifier holds a recording for a verdict, that recording (as a carrier's own
recording would be: fingerprints recognise recordings); otherwise a phrase
spoken by espeak-ng, and tones made with numpy (Chinese plan, 450 Hz).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sipclient.lab.kamailio import Kamailio, KamailioConfig, LabError, Route
from sipclient.lab.ports import free_port, tcp_listening
from sipclient.lab.sipp import Sipp
from sipclient.server.payloads import MAX_PHONES

RATE = 8000

# ------------------------------------------------------------------ carriers


@dataclass(frozen=True)
class Carrier:
    """One simulated far end and the verdict it stands for.

    `provisional` is sent after 100 Trying ("180", "183" with SDP, "180+183",
    or "" for none); `audio` names a clip streamed as early media (needs a
    183); `final` is (code, reason, q850 cause or None) sent after `hold_ms`
    unless our CANCEL came first (then 200 + 487); a 2xx final carries the SDP
    answer and then waits for our BYE. `expected` is the verdict the daemon
    and the server should reach.
    """

    name: str
    prefix: str
    expected: str
    provisional: str = ""
    audio: str | None = None
    final: tuple[int, str, int | None] | None = None
    hold_ms: int = 0
    also_ok: tuple[str, ...] = ()


CARRIERS: tuple[Carrier, ...] = (
    Carrier("empty_404_cause1", "1100", "empty", final=(404, "Not Found", 1)),
    Carrier(
        "empty_announcement",
        "1101",
        "empty",
        provisional="183",
        audio="empty",
        final=(404, "Not Found", None),
        hold_ms=20000,
    ),
    Carrier("busy_486", "1102", "busy", final=(486, "Busy Here", None)),
    Carrier(
        "busy_tone",
        "1103",
        "busy",
        provisional="183",
        audio="busy_tone",
        final=(486, "Busy Here", None),
        hold_ms=20000,
    ),
    Carrier(
        "ringing_ringback",
        "1104",
        "ringing",
        provisional="180+183",
        audio="ringback",
        final=(480, "Temporarily Unavailable", 19),
        hold_ms=40000,
        also_ok=("no_answer",),
    ),
    Carrier(
        "ringing_crbt",
        "1105",
        "ringing",
        provisional="180+183",
        audio="crbt",
        final=(480, "Temporarily Unavailable", 19),
        hold_ms=40000,
        also_ok=("no_answer",),
    ),
    Carrier(
        "powered_off_announcement",
        "1106",
        "powered_off",
        provisional="183",
        audio="powered_off",
        final=(480, "Temporarily Unavailable", 20),
        hold_ms=20000,
    ),
    Carrier(
        "suspended_announcement",
        "1110",
        "suspended",
        provisional="183",
        audio="suspended",
        final=(480, "Temporarily Unavailable", None),
        hold_ms=20000,
    ),
    Carrier("unreachable_480", "1107", "unreachable", final=(480, "Temporarily Unavailable", None)),
    Carrier("failed_503", "1108", "failed", final=(503, "Service Unavailable", None)),
    Carrier(
        "ringing_180",
        "1109",
        "ringing",
        provisional="180",
        final=(480, "Temporarily Unavailable", 19),
        hold_ms=40000,
        also_ok=("no_answer",),
    ),
)


LIVE_EXTRAS: tuple[Carrier, ...] = (
    Carrier(
        "answered_200",
        "1111",
        "answered",
        provisional="180",
        final=(200, "OK", None),
        hold_ms=300,
    ),
    Carrier(
        "rejected_603",
        "1112",
        "rejected",
        provisional="180",
        final=(603, "Decline", None),
        hold_ms=300,
    ),
)
"""Live outcomes outside the demo's mix (so its figures stay comparable): a callee
who answers after 300 ms of ringing (the daemon must BYE at once) and one who
declines. The tests add them to the world's carriers."""

FAKE_ANSWER = Carrier("empty_fake_answer", "1113", "empty", audio="empty", final=(200, "OK", None))
"""A carrier that answers an unringing empty number (no 180) to play its announcement
(假应答): the daemon listens `sip.answer_listen` after such a 2xx, and the verdict is
the announcement's, not `answered`. Outside the demo's mix too; the tests add it."""


def carrier_for(phone: str, carriers: Iterable[Carrier] = CARRIERS) -> Carrier | None:
    """The carrier a number is routed to (longest prefix)."""
    best = None
    for c in carriers:
        if phone.startswith(c.prefix) and (best is None or len(c.prefix) > len(best.prefix)):
            best = c
    return best


def numbers_for(count: int, carriers: Iterable[Carrier] = CARRIERS) -> list[str]:
    """`count` numbers spread round-robin over the carriers."""
    cs = list(carriers)
    return [f"{cs[i % len(cs)].prefix}{1000 + i:04d}" for i in range(count)]


# ----------------------------------------------------------------- scenarios

# Every Via of the INVITE is kept (search_in="hdr" keeps only the first, and a
# response with only kamailio's Via never reaches us); sipp's XML parser does not
# decode &#13; so the line breaks are matched as [[:cntrl:]].
_HEAD = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<!-- rendered by sipclient.demo for carrier {name} -->
<scenario name="{name}">
  <recv request="INVITE">
    <action>
      <ereg regexp="Via:[[:print:]]*([[:cntrl:]]+Via:[[:print:]]*)*" search_in="msg"
            check_it="true" assign_to="vias"/>
      <ereg regexp=".*" search_in="hdr" header="From:" assign_to="from"/>
      <ereg regexp=".*" search_in="hdr" header="To:" assign_to="to"/>
      <ereg regexp="[0-9]+" search_in="hdr" header="CSeq:" assign_to="cseqn"/>
    </action>
  </recv>
  <send>
    <![CDATA[

      SIP/2.0 100 Trying
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
"""

_HDRS = """      [$vias]
      From: [$from]
      To: [$to];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      CSeq: [$cseqn] INVITE
"""

_SDP = """v=0
o=carrier 1 1 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000
a=sendrecv
"""


RETRANS_MS = 500
"""The carriers' T1 for their final responses (sipp's `retrans`, UDP only)."""


def _response(code: int, reason: str, extra: str = "", sdp: bool = False) -> str:
    body = _SDP if sdp else ""
    ctype = "      Content-Type: application/sdp\n" if sdp else ""
    contact = "      Contact: <sip:carrier@[local_ip]:[local_port]>\n" if code < 300 else ""
    rr = "      [last_Record-Route:]\n" if code < 300 else ""
    # A final response is sent again (T1, doubling) until its ACK comes, as a UAS
    # over UDP must (RFC 3261 17.2.1 Timer G; 13.3.1.4 for a 2xx): sipp sends it
    # once without `retrans`. A 200-line burst overflows kamailio's socket on
    # loopback now and then; a 480 lost there was never sent again, kamailio's
    # INVITE (past the 100) waited on, and our call ran its ring timeout, a
    # CANCEL and 64*T1 for the 487 (62 s: the e2e bench's ~45 s tail).
    send = f'  <send retrans="{RETRANS_MS}">' if code >= 200 else "  <send>"
    return (
        f"{send}\n    <![CDATA[\n\n"
        f"      SIP/2.0 {code} {reason}\n{_HDRS}{rr}{contact}{extra}{ctype}"
        "      Content-Length: [len]\n\n"
        f"{body}\n    ]]>\n  </send>\n"
    )


_OK_TO_LAST = (
    "  <send>\n    <![CDATA[\n\n      SIP/2.0 200 OK\n      [last_Via:]\n"
    "      [last_From:]\n      [last_To:]\n      [last_Call-ID:]\n      [last_CSeq:]\n"
    "      Content-Length: 0\n\n    ]]>\n  </send>\n"
)
"""200 OK to the request just received (our CANCEL, our BYE)."""


def render_scenario(carrier: Carrier, clip: Path | None) -> str:
    """The sipp UAS scenario XML of one carrier."""
    out = [_HEAD.format(name=carrier.name)]
    provisional = carrier.provisional
    if "180" in provisional:
        out.append(_response(180, "Ringing"))
    if "183" in provisional:
        if clip is not None:
            # start the stream just before the 183 it belongs to (sipp may abort otherwise)
            out.append(f'  <nop><action><exec rtp_stream="{clip},-1,0"/></action></nop>\n')
        out.append(_response(183, "Session Progress", sdp=True))
    if carrier.final is None:
        raise ValueError(f"carrier {carrier.name}: a final response is needed")
    code, reason, cause = carrier.final
    reason_hdr = f'      Reason: Q.850;cause={cause};text="{reason}"\n' if cause else ""
    if provisional and carrier.hold_ms:
        out.append(f'  <recv request="CANCEL" timeout="{carrier.hold_ms}" ontimeout="10"/>\n')
        out.append(_OK_TO_LAST)
        if clip is not None:
            out.append('  <nop><action><exec rtp_stream="pause"/></action></nop>\n')
        out.append(_response(487, "Request Terminated"))
        out.append('  <recv request="ACK" next="99"/>\n')
        out.append('  <label id="10"/>\n')
    answered = 200 <= code < 300
    if clip is not None and not answered:
        out.append('  <nop><action><exec rtp_stream="pause"/></action></nop>\n')
    if clip is not None and answered and "183" not in provisional:
        # a carrier that answers to play its announcement (假应答): the stream goes
        # with the 2xx
        out.append(f'  <nop><action><exec rtp_stream="{clip},-1,0"/></action></nop>\n')
    out.append(_response(code, reason, reason_hdr, sdp=answered))
    out.append('  <recv request="ACK"/>\n')
    if answered:
        # an answered call is ours to end: the daemon's BYE (at once after a 180; a
        # fake answer once its announcement is recognised)
        out.append('  <recv request="BYE"/>\n')
        if clip is not None:
            out.append('  <nop><action><exec rtp_stream="pause"/></action></nop>\n')
        out.append(_OK_TO_LAST)
    out.append('  <label id="99"/>\n')
    out.append("</scenario>\n")
    return "".join(out)


# --------------------------------------------------------------------- audio


def _tone(freqs: Iterable[float], on: float, off: float, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    x = sum(np.sin(2 * np.pi * f * t) for f in freqs)
    period = on + off
    gate = (t % period) < on
    return np.asarray(0.3 * 32767 * x * gate / max(len(list(freqs)), 1), dtype=np.float64)


def _crbt(seconds: float) -> np.ndarray:
    """Music-like stand-in for a colour ring-back: a chord progression with a melody."""
    t = np.arange(int(seconds * RATE)) / RATE
    chords = [
        (261.6, 329.6, 392.0),
        (220.0, 261.6, 329.6),
        (174.6, 220.0, 261.6),
        (196.0, 246.9, 293.7),
    ]
    melody = [523.3, 587.3, 659.3, 698.5, 784.0, 698.5, 659.3, 587.3]
    x = np.zeros_like(t)
    for i in range(int(seconds / 0.25) + 1):
        sl = (t >= i * 0.25) & (t < (i + 1) * 0.25)
        chord = chords[(i // 8) % len(chords)]
        x[sl] += sum(np.sin(2 * np.pi * f * t[sl]) for f in chord) / 3
        x[sl] += 0.6 * np.sin(2 * np.pi * melody[i % len(melody)] * t[sl])
    return 0.25 * 32767 * x / 1.6


_PHRASES = {
    "empty": "您拨打的号码是空号，请查证后再拨。",
    "powered_off": "对不起，您拨打的电话已关机。",
    "suspended": "您拨打的电话已停机。",
    "unreachable": "您拨打的电话暂时无法接通，请稍后再拨。",
}


def _library_clip(verdict: str) -> np.ndarray | None:
    """A recording of `verdict` from the shipped template library, when it has one.

    Chinese first (the network plays it first), the longest of them.
    """
    try:
        from sipclient.classify.audio import load_pcm
        from sipclient.classify.templates import TemplateLibrary

        library = TemplateLibrary.default()
    except Exception:  # no library yet, or an unreadable one: espeak-ng instead
        return None
    if library.folder is None:
        return None
    hits = [e for e in library.entries() if e.verdict.value == verdict]
    hits.sort(key=lambda e: (not any("\u4e00" <= ch <= "\u9fff" for ch in e.label), -e.duration_ms))
    for entry in hits:
        with contextlib.suppress(Exception):
            return load_pcm(library.folder / entry.file).astype(np.float64)
    return None


def _espeak(text: str, workdir: Path) -> np.ndarray:
    import soundfile as sf

    raw = workdir / "espeak.wav"
    conv = workdir / "espeak8k.wav"
    subprocess.run(["espeak-ng", "-v", "cmn", "-s", "150", "-w", str(raw), text], check=True)
    subprocess.run(["sox", str(raw), "-r", "8000", "-c", "1", "-b", "16", str(conv)], check=True)
    data, _ = sf.read(str(conv), dtype="float64")
    raw.unlink(missing_ok=True)
    conv.unlink(missing_ok=True)
    peak = float(np.max(np.abs(data))) or 1.0
    return np.asarray(data / peak * 0.5 * 32767)


def prepare_audio(workdir: Path, names: Iterable[str]) -> dict[str, Path]:
    """Raw µ-law clips (160 bytes a packet, as sipp's rtp_stream wants) for `names`."""
    from sipclient.media.g711 import ulaw_encode

    out: dict[str, Path] = {}
    folder = workdir / "audio"
    folder.mkdir(parents=True, exist_ok=True)
    for name in sorted(set(names)):
        if name == "ringback":
            pcm = _tone([450.0], 1.0, 4.0, 30.0)
        elif name == "busy_tone":
            pcm = _tone([450.0], 0.35, 0.35, 20.0)
        elif name == "crbt":
            pcm = _crbt(30.0)
        else:
            pcm_lib = _library_clip(name)
            pcm = pcm_lib if pcm_lib is not None else _espeak(_PHRASES[name], folder)
            # a carrier repeats its announcement after a short pause
            gap = np.zeros(int(0.8 * RATE))
            pcm = np.concatenate([pcm, gap, pcm, gap, pcm])
        pcm16 = np.clip(np.round(pcm), -32768, 32767).astype(np.int16)
        data = ulaw_encode(pcm16)
        data += b"\xff" * (-len(data) % 160)
        path = folder / f"{name}.ulaw"
        path.write_bytes(data)
        out[name] = path
    return out


# ------------------------------------------------------------------ callbacks


@dataclass
class Verdicts:
    """The return_url receiver's findings: phone -> (result, detail), in arrival order."""

    results: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    arrivals: list[tuple[float, str, str]] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    deliveries: dict[str, int] = field(default_factory=dict)
    """How many callbacks carried each phone (one task per phone: exactly once)."""
    callbacks: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class CallbackReceiver:
    """A local aiohttp return_url that records every dialplan of every task POSTed to it."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.verdicts = Verdicts()
        self._runner: Any = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/callback"

    async def start(self) -> None:
        from aiohttp import web

        async def handle(request: web.Request) -> web.Response:
            try:
                body = await request.json()
            except ValueError:
                return web.Response(status=400, text="not json")
            self.verdicts.callbacks += 1
            data = body.get("data", body) if isinstance(body, dict) else {}
            data = data if isinstance(data, dict) else {}
            self.on_task(data)
            for dp in data.get("dialplans") or []:
                if not isinstance(dp, dict):
                    continue
                phone = str(dp.get("phone"))
                self.verdicts.deliveries[phone] = self.verdicts.deliveries.get(phone, 0) + 1
                if phone in self.verdicts.results:
                    # the same task delivered again is fine; the same number twice is not
                    if self.verdicts.results[phone][0] != str(dp.get("result")):
                        self.verdicts.duplicates.append(phone)
                    continue
                detail = dp.get("detail") if isinstance(dp.get("detail"), dict) else {}
                self.verdicts.results[phone] = (str(dp.get("result")), detail or {})
                self.verdicts.arrivals.append((time.monotonic(), phone, str(dp.get("result"))))
            self.verdicts.changed.set()
            return web.json_response({"code": 200, "msg": "ok"})

        # a task's callback carries every dialplan with its evidence: ~0.7 kB a number,
        # past aiohttp's 1 MiB default (413, retried for ever) from ~1,500 numbers a task
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/callback", handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port(self.host)
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()

    def on_task(self, data: dict[str, Any]) -> None:
        """One task as POSTed (its `data`), before its dialplans are recorded: for
        receivers that count more (bench/soak.py)."""

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


# --------------------------------------------------------------------- world


def _cli() -> list[str]:
    return [sys.executable, "-m", "sipclient.cli"]


UNITS = Path(__file__).resolve().parents[1] / "systemd"
"""The repository's systemd units: the lab runs each program under its unit's rules."""


def _confined(unit: str, command: list[str], writable: Path) -> list[str]:
    """`command` under the seccomp and file-system rules of `UNITS/unit`
    (`sipclient.lab.confine`), `writable` standing for its state and runtime
    directories: what the unit forbids fails in the lab as it would under systemd."""
    confine = [sys.executable, "-m", "sipclient.lab.confine", "--unit", str(UNITS / unit)]
    return [*confine, "--writable", str(writable), *command]


def _stop_proc(proc: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> int | None:
    """SIGTERM, wait, then SIGKILL — by pid, and its process group (we made it a session)."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode


@dataclass
class WorldOptions:
    """Knobs of the world; the tests and the bench shorten the timeouts."""

    lines: int = 8
    carriers: tuple[Carrier, ...] = CARRIERS
    ring_timeout: float = 30.0
    poll_min: float = 0.2
    poll_max: float = 1.0
    heartbeat: float = 2.0
    client_timeout: float = 10.0
    number_timeout: float = 120.0
    """The server's `leases.number_timeout`: longer than the daemon's longest call
    (`ring_timeout` + 64*T1 + 10 s, its stuck limit: 72 s here), or a call still up
    has its number handed out again and dialled twice (a 60 s lease did, past a
    62 s call)."""
    sweep_interval: float = 1.0
    max_tries: int = 1
    log_level: str = "info"
    rtp_ports: str = ""
    pbx_transport: str = "udp"
    """The daemon's SIP transport to kamailio (it listens on both)."""
    pbx_name: str = "127.0.0.1"
    """How the daemon and the accounts name kamailio (it listens on 127.0.0.1):
    "localhost" makes the daemon resolve a name, as with a PBX in the DNS."""
    register_expires: int = 60
    sip_t1: float = 0.5
    """The daemon's T1: the tests shorten Timer B and F (64*T1) with it."""
    answer_listen: float = 4.0
    """The daemon's `sip.answer_listen`: how long a 2xx without a 180 is heard out (假应答)."""
    daemon_env: dict[str, str] = field(default_factory=dict)
    keep_recordings: bool = False
    """The daemon's `recordings.keep`: WAV files in its recordings folder (else in memory)."""
    trunk: dict[str, float | str] = field(default_factory=dict)
    """The daemon's `trunk:` keys (the breaker of a failing trunk); empty: its defaults."""
    daemon_templates: str = ""
    """The daemon's `classify.templates` (a folder); empty: the shipped library. The
    server always uses the shipped one and offers it: a daemon started on another
    mirrors it at its first heartbeat."""
    look_ahead: int = 2
    """The daemon's `dialplan.look_ahead` (bench/e2e.py's `--look-ahead`)."""
    daemon_server_url: str = ""
    """The daemons' `server.url`; empty: the server's own. bench/e2e.py points it at a
    proxy that delays every byte, to put the server at a WAN's distance."""
    daemons: int = 1
    """Daemon processes sharing the lines (`World.daemon_config`): one asyncio loop
    runs on one core, so a box with more cores runs a daemon per core (what
    systemd/sipclient@.service is for); each is its own client of the server."""


class World:
    """Everything of the demo, started and stopped as one (by pid)."""

    def __init__(self, workdir: Path, options: WorldOptions | None = None) -> None:
        self.workdir = workdir
        self.options = options or WorldOptions()
        self.carriers: dict[str, Sipp] = {}
        self.kamailio: Kamailio | None = None
        self.server: subprocess.Popen[bytes] | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        """The first daemon (the only one unless `options.daemons` > 1)."""
        self.more_daemons: list[subprocess.Popen[bytes]] = []
        self.receiver = CallbackReceiver()
        self.server_port = 0
        self.extensions: dict[str, str] = {}
        self.clips: dict[str, Path] = {}
        self._server_log: Any = None
        self._daemon_logs: dict[int, Any] = {}

    # ---------------------------------------------------------- pieces

    @property
    def server_url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def start_carriers(self) -> None:
        """Render every carrier's scenario and start one sipp UAS each."""
        needed = [c.audio for c in self.options.carriers if c.audio]
        self.clips = prepare_audio(self.workdir, [n for n in needed if n])
        for c in self.options.carriers:
            folder = self.workdir / "carriers" / c.name
            folder.mkdir(parents=True, exist_ok=True)
            xml = folder / f"{c.name}.xml"
            # the declared ISO-8859-1: a reason phrase may carry raw bytes (a GBK one)
            xml.write_text(render_scenario(c, self.clips.get(c.audio or "")), encoding="latin-1")
            sipp = Sipp(xml, workdir=folder, extra_args=["-aa", "-max_recv_loops", "100"])
            sipp.start()
            self.carriers[c.name] = sipp

    def start_kamailio(self) -> None:
        """kamailio with `lines` extensions and one route per carrier."""
        self.extensions = {
            f"{2001 + i}": f"pw{os.urandom(4).hex()}" for i in range(self.options.lines)
        }
        routes = [
            Route(c.prefix, "127.0.0.1", self.carriers[c.name].port) for c in self.options.carriers
        ]
        cfg = KamailioConfig(extensions=self.extensions, routes=routes, children=2)
        folder = self.workdir / "kamailio"
        if self.kamailio is not None:  # a restart keeps its port
            cfg.port = self.kamailio.port
        folder.mkdir(parents=True, exist_ok=True)
        self.kamailio = Kamailio(config=cfg, workdir=folder)
        self.kamailio.start()

    def restart_kamailio(self) -> None:
        """Stop kamailio and start it again on the same port (registrations are lost)."""
        assert self.kamailio is not None
        port = self.kamailio.port
        self.kamailio.stop()
        cfg = self.kamailio.config
        cfg.port = port
        self.kamailio = Kamailio(config=cfg, workdir=self.workdir / "kamailio")
        self.kamailio.start()

    def start_server(self) -> None:
        """The embedded server as a subprocess; returns once it answers."""
        folder = self.workdir / "server"
        folder.mkdir(parents=True, exist_ok=True)
        if not self.server_port:
            self.server_port = free_port()
        o = self.options
        cfg = {
            "listen": f"127.0.0.1:{self.server_port}",
            "database": f"sqlite:///{folder / 'sipclient.db'}",
            "recordings": {"dir": str(folder / "recordings")},
            "leases": {
                "client_timeout": o.client_timeout,
                "number_timeout": o.number_timeout,
                "sweep_interval": o.sweep_interval,
            },
            "callbacks": {"tries": 20, "backoff_initial": 0.5, "backoff_max": 2.0, "timeout": 5.0},
            "retries": {"max_tries": o.max_tries},
            "log": {"level": o.log_level, "format": "json"},
        }
        path = folder / "server.yaml"
        path.write_text(json.dumps(cfg), encoding="utf-8")  # JSON is YAML
        self._server_log = (folder / "server.log").open("ab")
        self.server = subprocess.Popen(
            _confined(
                "sipclient-server.service", [*_cli(), "server", "--config", str(path)], folder
            ),
            stdin=subprocess.DEVNULL,
            stdout=self._server_log,
            stderr=self._server_log,
            start_new_session=True,
        )
        self._wait_http(f"{self.server_url}/api/tasks?page=1&size=1", self.server, "server")

    def stop_server(self) -> None:
        _stop_proc(self.server)
        self.server = None
        if self._server_log is not None:
            self._server_log.close()
            self._server_log = None

    def daemon_dir(self, index: int = 0) -> Path:
        """Daemon `index`'s folder (config, log, spool): daemon/, daemon2/, ..."""
        return self.workdir / ("daemon" if index == 0 else f"daemon{index + 1}")

    def daemon_config(self, index: int = 0) -> Path:
        """Write daemon `index`'s config file; its path.

        With several daemons each gets its share of the lines (`threads`), its
        own spool, RTP ports and SIP port, as two instances of
        systemd/sipclient@.service on one box would.
        """
        assert self.kamailio is not None
        folder = self.daemon_dir(index)
        folder.mkdir(parents=True, exist_ok=True)
        o = self.options
        n = max(1, o.daemons)
        threads = o.lines // n + (1 if index < o.lines % n else 0)
        ports = o.rtp_ports
        if not ports:
            span = max(4 * o.lines, 40)
            base = 30000 + (os.getpid() % 1000) * 20 + index * span
            ports = f"{base}-{base + span - 1}"
        elif n > 1:
            lo, hi = (int(x) for x in ports.split("-"))
            share = (hi - lo + 1) // n
            ports = f"{lo + index * share}-{lo + (index + 1) * share - 1}"
        cfg = {
            "server": {"url": o.daemon_server_url or self.server_url, "timeout": 5.0},
            "threads": threads,
            "pbx": {"host": f"{o.pbx_name}:{self.kamailio.port}", "transport": o.pbx_transport},
            "sip": {
                "bind": "127.0.0.1:0",
                "ring_timeout": o.ring_timeout,
                "register_expires": o.register_expires,
                "t1": o.sip_t1,
                "answer_listen": o.answer_listen,
            },
            "rtp": {"ports": ports, "no_rtp_wait": 2.0},
            "recordings": {"dir": str(folder / "recordings"), "keep": o.keep_recordings},
            "spool": {"dir": str(folder / "spool")},
            "heartbeat": {"interval": o.heartbeat},
            # (hold_max: the default, capped at half the lease the server states)
            "dialplan": {
                "poll_min": o.poll_min,
                "poll_max": o.poll_max,
                "look_ahead": o.look_ahead,
            },
            "log": {"level": o.log_level, "format": "json"},
        }
        if o.trunk:
            cfg["trunk"] = dict(o.trunk)
        if o.daemon_templates:
            cfg["classify"] = {"templates": o.daemon_templates}
        path = folder / "daemon.yaml"
        path.write_text(json.dumps(cfg), encoding="utf-8")
        return path

    @property
    def daemons(self) -> list[subprocess.Popen[bytes]]:
        """Every daemon process running now."""
        return [p for p in [self.daemon, *self.more_daemons] if p is not None]

    def start_daemon(self) -> None:
        """`sipclient run` as a subprocess per `options.daemons` (logs in their folders),
        each under systemd/sipclient.service's seccomp and file-system rules (`_confined`)."""
        procs = [self._start_one_daemon(i) for i in range(max(1, self.options.daemons))]
        self.daemon, self.more_daemons = procs[0], list(procs[1:])

    def _start_one_daemon(self, index: int) -> subprocess.Popen[bytes]:
        path = self.daemon_config(index)
        log = self._daemon_logs.get(index)
        if log is None:
            log = self._daemon_logs[index] = (self.daemon_dir(index) / "daemon.log").open("ab")
        env = dict(os.environ)
        # what systemd gives the unit's RuntimeDirectory= (a tmpfs under /run there):
        # the fallback spool's default place
        env["RUNTIME_DIRECTORY"] = str(self.daemon_dir(index) / "run")
        env.update(self.options.daemon_env)
        return subprocess.Popen(
            _confined(
                "sipclient.service",
                [*_cli(), "run", "--config", str(path)],
                self.daemon_dir(index),
            ),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            env=env,
        )

    def stop_daemon(self, timeout: float = 20.0) -> int | None:
        """Stop every daemon (SIGTERM, then SIGKILL); the first non-zero exit code, else 0."""
        codes = [_stop_proc(p, timeout) for p in self.daemons]
        self.daemon, self.more_daemons = None, []
        return next((c for c in codes if c), codes[0] if codes else None)

    def kill_daemon(self) -> None:
        """kill -9 every daemon (the crash the spool and the leases must survive)."""
        for proc in self.daemons:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        self.daemon, self.more_daemons = None, []

    @staticmethod
    def _wait_http(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
        """Until `url` answers below 500; connecting only once the port has a listener
        (`tcp_listening`: a connect before that may connect to itself)."""
        import http.client
        import urllib.error
        import urllib.parse
        import urllib.request

        port = urllib.parse.urlsplit(url).port or 80
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LabError(f"{what} exited with {proc.returncode} at start")
            if tcp_listening(port) is False:
                time.sleep(0.05)
                continue
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status < 500:
                        return
            except urllib.error.HTTPError as exc:
                if exc.code < 500:
                    return
            except (OSError, ValueError, http.client.HTTPException):
                pass
            time.sleep(0.1)
        raise LabError(f"{what} did not answer at {url}")

    # ---------------------------------------------------------- API pushes

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import aiohttp

        async with aiohttp.ClientSession() as s, s.post(self.server_url + path, json=body) as r:
            data = await r.json(content_type=None)
            if not isinstance(data, dict) or data.get("code") != 200:
                raise LabError(f"POST {path}: HTTP {r.status}: {str(data)[:300]}")
            return data

    async def get(self, path: str) -> dict[str, Any]:
        import aiohttp

        async with aiohttp.ClientSession() as s, s.get(self.server_url + path) as r:
            data = await r.json(content_type=None)
            return data if isinstance(data, dict) else {}

    async def push_accounts(self) -> None:
        assert self.kamailio is not None
        host = f"{self.options.pbx_name}:{self.kamailio.port}"
        accounts = [{"host": host, "name": e, "pwd": p} for e, p in self.extensions.items()]
        await self.post("/api/account", {"account": accounts})

    async def push_numbers(self, phones: Iterable[str], *, one_task_each: bool = True) -> None:
        phones = list(phones)
        if one_task_each:
            for p in phones:
                await self.post("/api/dialplan", {"phone": [p], "return_url": self.receiver.url})
        else:  # one task, or as few as the server takes (a long bench's list)
            for i in range(0, len(phones), MAX_PHONES):
                body = {"phone": phones[i : i + MAX_PHONES], "return_url": self.receiver.url}
                await self.post("/api/dialplan", body)

    # ---------------------------------------------------------- whole

    async def start(self, *, daemon: bool = True) -> None:
        """Start every piece (the caller must `await stop()` in a finally)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        await self.receiver.start()
        await asyncio.to_thread(self.start_carriers)
        await asyncio.to_thread(self.start_kamailio)
        await asyncio.to_thread(self.start_server)
        await self.push_accounts()
        if daemon:
            self.start_daemon()

    async def wait_for(self, phones: Iterable[str], timeout: float) -> bool:
        """Until every phone has a verdict at the return_url, or the timeout."""
        want = set(phones)
        deadline = time.monotonic() + timeout
        while not want <= set(self.receiver.verdicts.results):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.receiver.verdicts.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.receiver.verdicts.changed.wait(), timeout=min(left, 1))
        return True

    async def stop(self) -> None:
        """Stop everything this world started, by pid; never raises."""
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.stop_daemon)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.stop_server)
        if self.kamailio is not None:
            with contextlib.suppress(Exception):
                self.kamailio.stop()
        for sipp in self.carriers.values():
            with contextlib.suppress(Exception):
                sipp.stop()
        with contextlib.suppress(Exception):
            await self.receiver.stop()
        for fh in (self._server_log, *self._daemon_logs.values()):
            if fh is not None:
                fh.close()
        self._server_log = None
        self._daemon_logs = {}


# ---------------------------------------------------------------- the demo


def _summary(world: World, phones: list[str], started: float, lines: int) -> tuple[int, int]:
    right = wrong = 0
    rows: dict[str, list[int]] = {}
    for phone in phones:
        carrier = carrier_for(phone, world.options.carriers)
        got = world.receiver.verdicts.results.get(phone)
        if carrier is None or got is None:
            continue
        ok = got[0] == carrier.expected or got[0] in carrier.also_ok
        right += ok
        wrong += not ok
        row = rows.setdefault(carrier.name, [0, 0])
        row[0 if ok else 1] += 1
    elapsed = max(time.monotonic() - started, 1e-6)
    done = len([p for p in phones if p in world.receiver.verdicts.results])
    print()
    print(f"{'carrier':28} {'right':>5} {'wrong':>5}")
    for name, (r, w) in rows.items():
        print(f"{name:28} {r:5} {w:5}")
    print()
    print(
        f"{done}/{len(phones)} numbers finished in {elapsed:.1f} s: {right} right, {wrong} wrong;"
        f" {done / lines / elapsed * 3600:.0f} numbers per line per hour ({lines} lines)"
    )
    return right, wrong


async def _demo(args: argparse.Namespace, workdir: Path) -> int:
    options = WorldOptions(lines=args.lines, daemons=getattr(args, "daemons", 1))
    world = World(workdir, options)
    phones = numbers_for(args.numbers, options.carriers)
    budget = 170.0
    t0 = time.monotonic()
    try:
        print(f"demo: starting the world in {workdir}", flush=True)
        await world.start()
        kport = world.kamailio.port if world.kamailio else 0
        print(
            f"demo: server {world.server_url}, kamailio 127.0.0.1:{kport},"
            f" {len(world.carriers)} carriers, {args.lines} lines, return_url {world.receiver.url}",
            flush=True,
        )
        started = time.monotonic()
        await world.push_numbers(phones)
        print(f"demo: pushed {len(phones)} numbers", flush=True)
        seen = 0
        deadline = t0 + budget
        while seen < len(phones) and time.monotonic() < deadline:
            world.receiver.verdicts.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(world.receiver.verdicts.changed.wait(), timeout=1.0)
            arrivals = world.receiver.verdicts.arrivals
            for _at, phone, result in arrivals[seen:]:
                carrier = carrier_for(phone, options.carriers)
                expected = carrier.expected if carrier else "?"
                ok = carrier is not None and (result == expected or result in carrier.also_ok)
                detail = world.receiver.verdicts.results[phone][1]
                evidence = json.dumps(detail.get("evidence"), ensure_ascii=False)[:80]
                print(
                    f"  {phone:12} {result:12} {'ok ' if ok else 'WRONG'}"
                    f" (carrier {carrier.name if carrier else '?'}, expected {expected};"
                    f" sip {detail.get('sip_code')}, evidence {evidence})",
                    flush=True,
                )
            seen = len(arrivals)
            gone = [p for p in world.daemons if p.poll() is not None]
            if gone:
                print(f"demo: a daemon exited with {gone[0].returncode}", flush=True)
                break
        _right, wrong = _summary(world, phones, started, args.lines)
        missing = [p for p in phones if p not in world.receiver.verdicts.results]
        if missing:
            print(f"demo: {len(missing)} numbers without a verdict in time: {missing[:10]}")
        if missing or wrong:
            print(f"demo: logs are in {workdir} (kept)")
        # a self-check: exit 1 on a wrong verdict too (it was 0 unless one was missing)
        return 0 if not missing and not wrong else 1
    finally:
        await world.stop()


def demo_main(args: argparse.Namespace) -> int:
    """Entry of `sipclient demo [--numbers 40] [--lines 8] [--daemons 1] [--workdir DIR]`."""
    for tool in ("sipp", "kamailio"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"sipclient demo: {tool} is not installed (make install puts it there)")
            return 1
    own = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="sipclient-demo-")) if own else Path(args.workdir)
    code = 1
    try:
        code = asyncio.run(_demo(args, workdir))
        return code
    except KeyboardInterrupt:
        print("demo: interrupted; everything it started is stopped")
        return 1
    except LabError as exc:
        print(f"demo: {exc} (logs in {workdir})")
        return 1
    finally:
        # a failed demo keeps its temp folder: the logs it pointed to are there
        if own and code == 0:
            shutil.rmtree(workdir, ignore_errors=True)
