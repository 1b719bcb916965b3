"""A throw-away kamailio on loopback: registrar with digest auth, proxy to sipp.

Used by the agent's integration tests, the benchmarks and (later) `sipclient
demo`. The config is rendered from `kamailio.cfg.tpl` for one listen port,
a set of extensions with passwords (an in-memory htable, no database) and
routing rules "number prefix -> sipp UAS at host:port". The process runs in
the foreground (-DD) in its own session, is waited for until it answers an
OPTIONS, and is stopped by its pid (its children by its process group).

    with Kamailio(extensions={"1001": "pw"}, routes=[Route("404", 127.0.0.1, 5071)]) as k:
        ... register to k.host:k.port ...
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sipclient.lab.ports import free_port, sip_host, sip_options_ok
from sipclient.lab.process import LabProcess

MODULES_DIR = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")
TEMPLATE = Path(__file__).with_name("kamailio.cfg.tpl")
_PREFIX_RE = re.compile(r"[0-9+*#]*")
_EXT_RE = re.compile(r"[A-Za-z0-9._-]+")


class LabError(RuntimeError):
    """A lab peer could not be started (the message carries its log's tail)."""


@dataclass(frozen=True)
class Route:
    """INVITEs whose request-URI user starts with `prefix` go to host:port."""

    prefix: str
    host: str
    port: int


@dataclass
class KamailioConfig:
    """What to render: listen address, extensions and prefix routes."""

    extensions: Mapping[str, str] = field(default_factory=dict)
    routes: Sequence[Route] = ()
    host: str = "127.0.0.1"
    port: int = 0
    domain: str = "lab.invalid"
    debug: int = 1
    children: int = 1
    min_expires: int = 10
    nonce_expire: int = 300
    one_time_nonce: bool = False
    """Each nonce is taken once, in the answer to its own challenge (auth module's
    `one_time_nonce`): a request answering a remembered challenge is challenged
    again (stale), or refused with `refuse_stale_403`."""
    auth_in_dialog: bool = False
    """Challenge our extensions' first in-dialog BYE and first PRACK of each call
    whatever credentials they carry, then authenticate them as INVITEs are (a PBX
    whose nonces serve one request, or that challenges every request it may)."""
    refuse_stale_403: bool = False
    """Refuse an expired or reused nonce with 403 Forbidden instead of a new challenge
    (as some PBX configurations do: a pre-emptive answer then looks like a barred call)."""


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_config(cfg: KamailioConfig, port: int) -> str:
    """The kamailio.cfg text for `cfg` listening on `port`."""
    users = []
    for ext, password in sorted(cfg.extensions.items()):
        if not _EXT_RE.fullmatch(ext):
            raise ValueError(f"extension {ext!r}: letters, digits, '._-' only")
        users.append(f"\t$sht(users=>{ext}) = {_quote(password)};")
    routes = []
    # longest prefix first, so "4041" wins over "404"
    for route in sorted(cfg.routes, key=lambda r: -len(r.prefix)):
        if not _PREFIX_RE.fullmatch(route.prefix):
            raise ValueError(f"route prefix {route.prefix!r}: digits, '+', '*', '#' only")
        pattern = "^" + re.escape(route.prefix)
        routes.append(
            f'\t\tif ($rU =~ "{pattern}") {{\n'
            f'\t\t\t$du = "sip:{sip_host(route.host)}:{route.port}";\n'
            "\t\t\troute(TO_PEER);\n"
            "\t\t}"
        )
    text = TEMPLATE.read_text(encoding="utf-8")
    values = {
        "DEBUG": str(cfg.debug),
        "CHILDREN": str(cfg.children),
        "HOST": sip_host(cfg.host),
        "PORT": str(port),
        "DOMAIN": cfg.domain,
        "MPATH": str(MODULES_DIR),
        "MIN_EXPIRES": str(cfg.min_expires),
        "NONCE_EXPIRE": str(cfg.nonce_expire),
        "ONE_TIME_NONCE": "1" if cfg.one_time_nonce else "0",
        "AUTH_IN_DIALOG": (
            '\t\tif (is_method("BYE|PRACK") && $sht(users=>$fU) != $null) {\n'
            "\t\t\tif ($sht(seen=>$ci::$rm) == $null) {\n"
            "\t\t\t\t$sht(seen=>$ci::$rm) = 1;\n"
            '\t\t\t\tproxy_challenge("$fd", "0");\n'
            "\t\t\t\texit;\n\t\t\t}\n"
            "\t\t\troute(AUTH_INVITE);\n\t\t}"
            if cfg.auth_in_dialog
            else "\t\t# in-dialog requests are not challenged"
        ),
        # pv_*_authenticate: -4 nonce expired, -6 nonce reused
        "REFUSE_STALE": (
            '\t\tif ($rc == -4 || $rc == -6) {\n\t\t\tsl_send_reply("403", "Forbidden");\n'
            "\t\t\texit;\n\t\t}"
            if cfg.refuse_stale_403
            else "\t\t# stale or reused nonces are challenged again"
        ),
        "USERS": "\n".join(users) or "\t$var(none) = 0;",
        "ROUTES": "\n".join(routes),
    }
    for key, value in values.items():
        text = text.replace(f"%%{key}%%", value)
    return text


class Kamailio(LabProcess):
    """One kamailio process; `start()` returns once it answers, `stop()` ends it by pid."""

    stop_signal = signal.SIGTERM
    stop_grace = 5.0

    def __init__(
        self,
        extensions: Mapping[str, str] | None = None,
        routes: Sequence[Route] = (),
        *,
        config: KamailioConfig | None = None,
        workdir: Path | None = None,
    ) -> None:
        self.config = config or KamailioConfig(extensions=dict(extensions or {}), routes=routes)
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="sipclient-kamailio-"))
        self.host = self.config.host
        self.port = self.config.port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "kamailio.log"

    @property
    def cfg_path(self) -> Path:
        return self.workdir / "kamailio.cfg"

    def start(self, timeout: float = 10.0) -> Kamailio:
        """Render the config, start kamailio and wait until it answers OPTIONS."""
        if self.proc is not None:
            raise LabError("kamailio already started")
        binary = shutil.which("kamailio") or "/usr/sbin/kamailio"
        tries = 3 if self.config.port == 0 else 1
        for attempt in range(tries):
            port = self.config.port or free_port(self.host)
            self.cfg_path.write_text(render_config(self.config, port), encoding="utf-8")
            check = subprocess.run(
                [binary, "-c", "-f", str(self.cfg_path)], capture_output=True, check=False
            )
            if check.returncode != 0:
                raise LabError(f"kamailio rejects its config:\n{check.stderr.decode()[-3000:]}")
            log = self.log_path.open("ab")
            self.proc = subprocess.Popen(
                [
                    binary,
                    "-f", str(self.cfg_path),
                    "-P", str(self.workdir / "kamailio.pid"),
                    "-DD", "-E",
                    "-m", "64", "-M", "8",
                    "-Y", str(self.workdir),
                    "-w", str(self.workdir),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )  # fmt: skip
            log.close()
            self.port = port
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if sip_options_ok(self.host, port):
                    return self
                time.sleep(0.05)
            self.stop()
            if attempt == tries - 1:
                raise LabError(f"kamailio did not come up on {port}:\n{self.log_tail()}")
        raise LabError("unreachable")

    def log_tail(self, size: int = 4000) -> str:
        """The end of kamailio's log, for error messages."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-size:]
        except OSError:
            return ""
