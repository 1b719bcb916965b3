"""sipp as a scripted far end (UAS, or UAC) on loopback, with its traces kept.

    with Sipp("uas_486.xml") as uas:            # a free port, chosen now
        ... dial 127.0.0.1:uas.port ...
        uas.messages()                           # what sipp saw and sent, parsed

sipp runs in the foreground in its own session with `-trace_msg` and
`-trace_err` into its work directory; `stop()` ends it by pid. The scenario
files shipped with the package are in `SCENARIOS` (see scenarios/*.xml).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sipclient.lab.kamailio import LabError
from sipclient.lab.ports import free_port, udp_port_bound
from sipclient.lab.process import LabProcess

SCENARIOS = Path(__file__).with_name("scenarios")

# "----------------------------------------------- 2026-11-23 09:50:01.123456\n"
# "UDP message received [512] bytes :\n\n<message>" or "UDP message sent (182 bytes):"
_SEPARATOR = re.compile(r"^-{20,} [^\n]*\n", re.MULTILINE)
_HEADLINE = re.compile(
    r"^(?P<transport>\w+) message (?P<dir>sent|received)"
    r"\s*[\[(](?P<size>\d+)\]? bytes\)?\s*:?\s*\n",
)


@dataclass(frozen=True)
class TracedMessage:
    """One SIP message from sipp's -trace_msg file; `direction` is sipp's view."""

    direction: str  # "received" (by sipp) | "sent" (by sipp)
    text: str

    @property
    def first_line(self) -> str:
        return self.text.split("\r\n", 1)[0].split("\n", 1)[0].strip()

    @property
    def method(self) -> str | None:
        """The request method, or None for a response."""
        line = self.first_line
        return None if line.startswith("SIP/2.0") else line.split(" ", 1)[0]

    @property
    def status(self) -> int | None:
        """The response code, or None for a request."""
        parts = self.first_line.split(" ", 2)
        return int(parts[1]) if parts[0] == "SIP/2.0" and len(parts) > 1 else None

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive, full names only)."""
        values = self.headers(name)
        return values[0] if values else None

    def headers(self, name: str) -> list[str]:
        """Every value of header `name`, in order."""
        out = []
        head = self.text.replace("\r\n", "\n").split("\n\n", 1)[0]
        for line in head.split("\n")[1:]:
            key, sep, value = line.partition(":")
            if sep and key.strip().lower() == name.lower():
                out.append(value.strip())
        return out

    @property
    def branch(self) -> str | None:
        """The branch of the first Via."""
        via = self.header("Via")
        if via is None:
            return None
        match = re.search(r";\s*branch=([^;,\s]+)", via)
        return match.group(1) if match else None

    @property
    def cseq_method(self) -> str | None:
        cseq = self.header("CSeq")
        return cseq.split()[-1] if cseq else None


def parse_trace(text: str) -> list[TracedMessage]:
    """Split sipp's -trace_msg text into messages."""
    out = []
    for chunk in _SEPARATOR.split(text):
        match = _HEADLINE.match(chunk.lstrip("\n"))
        if not match:
            continue
        body = chunk.lstrip("\n")[match.end() :].lstrip("\n")
        body = body.rstrip("\n") + "\n" if body.strip() else ""
        if body:
            out.append(TracedMessage(direction=match.group("dir"), text=body))
    return out


class Sipp(LabProcess):
    """One sipp process running `scenario` (a name in SCENARIOS or a path).

    `files` are written into its working directory first (media a scenario
    streams with rtp_stream).
    """

    stop_signal = signal.SIGUSR1
    stop_grace = 2.0

    def __init__(
        self,
        scenario: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        remote: str | None = None,
        transport: str = "udp",
        extra_args: Sequence[str] = (),
        workdir: Path | None = None,
        files: Mapping[str, bytes] | None = None,
    ) -> None:
        path = Path(scenario)
        self.scenario = path if path.is_absolute() or path.exists() else SCENARIOS / path
        if not self.scenario.is_file():
            raise LabError(f"no sipp scenario {scenario}")
        self.host = host
        self.port = port
        self.remote = remote
        self.transport = transport
        self.extra_args = list(extra_args)
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="sipclient-sipp-"))
        # files the scenario reads from its working directory (e.g. early.pcmu)
        for name, data in (files or {}).items():
            (self.workdir / Path(name).name).write_bytes(data)
        self.media_port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def message_file(self) -> Path:
        return self.workdir / "messages.log"

    @property
    def error_file(self) -> Path:
        return self.workdir / "errors.log"

    @property
    def output_file(self) -> Path:
        return self.workdir / "sipp.out"

    def start(self, timeout: float = 5.0) -> Sipp:
        """Start sipp and return once its SIP port is bound."""
        if self.proc is not None:
            raise LabError("sipp already started")
        binary = shutil.which("sipp") or "/usr/bin/sipp"
        tries = 3 if self.port == 0 else 1
        wanted = self.port
        for attempt in range(tries):
            port = wanted or free_port(self.host)
            self.media_port = free_port(self.host)
            args = [
                binary,
                "-sf", str(self.scenario),
                "-i", self.host,
                "-p", str(port),
                "-mi", self.host,
                "-mp", str(self.media_port),
                "-t", "u1" if self.transport == "udp" else "t1",
                "-nostdin",
                "-trace_msg", "-message_file", str(self.message_file),
                "-trace_err", "-error_file", str(self.error_file),
                *self.extra_args,
            ]  # fmt: skip
            if self.remote:
                args.append(self.remote)
            out = self.output_file.open("ab")
            self.proc = subprocess.Popen(
                args,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
            out.close()
            self.port = port
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if udp_port_bound(self.host, port) if self.transport == "udp" else True:
                    return self
                time.sleep(0.02)
            self.stop()
            if attempt == tries - 1:
                raise LabError(f"sipp did not start on {port}:\n{self.output_tail()}")
        raise LabError("unreachable")

    def output_tail(self, size: int = 3000) -> str:
        try:
            return self.output_file.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def trace_text(self) -> str:
        """The raw -trace_msg file as written so far."""
        try:
            return self.message_file.read_text(errors="replace")
        except OSError:
            return ""

    def messages(self) -> list[TracedMessage]:
        """Every SIP message sipp logged so far, in order."""
        return parse_trace(self.trace_text())

    def errors(self) -> str:
        """sipp's -trace_err text (unexpected messages, scenario failures)."""
        try:
            return self.error_file.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for(
        self, predicate: str | None = None, *, count: int = 1, timeout: float = 5.0
    ) -> list[TracedMessage]:
        """Poll the trace until `count` messages with first line starting `predicate` exist."""
        deadline = time.monotonic() + timeout
        while True:
            msgs = self.messages()
            hits = [m for m in msgs if predicate is None or m.first_line.startswith(predicate)]
            if len(hits) >= count or time.monotonic() > deadline:
                return hits
            time.sleep(0.02)

    async def wait_for_async(
        self, predicate: str | None = None, *, count: int = 1, timeout: float = 5.0
    ) -> list[TracedMessage]:
        """`wait_for` for asyncio code: polls without blocking the event loop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            msgs = self.messages()
            hits = [m for m in msgs if predicate is None or m.first_line.startswith(predicate)]
            if len(hits) >= count or loop.time() > deadline:
                return hits
            await asyncio.sleep(0.02)
