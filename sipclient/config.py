"""YAML -> typed, frozen, validated settings.

Two files, two schemas: the daemon reads `config.example.yaml`'s keys
(`DaemonConfig`), the server `server.example.yaml`'s (`ServerConfig`). Every
key has a default, so an empty file is a valid config. An unknown key, a value
of the wrong type or an impossible one (port 70000, `rtp.ports: 5000-4000`)
raises `ConfigError` whose message starts with the dotted key, e.g.
``rtp.ports: expected "LOW-HIGH" with LOW <= HIGH, got '5000-4000'``.

The schema is the dataclasses themselves: a field's type says how its YAML
value is read, a `check` in the field's metadata says which values are
possible. Nested dataclasses are nested YAML mappings.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

from sipclient.phone import not_dialable


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class HostPort:
    """A "host:port" value; IPv6 hosts are written "[::1]:5060"."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str, *, allow_zero: bool = False) -> HostPort:
        text = text.strip()
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep or not rest.startswith(":"):
                raise ValueError(f'expected "[v6addr]:port", got {text!r}')
            port_text = rest[1:]
        else:
            host, sep, port_text = text.rpartition(":")
            if not sep or not host:
                raise ValueError(f'expected "host:port", got {text!r}')
        if not port_text.isdigit():
            raise ValueError(f"port must be a number, got {text!r}")
        port = int(port_text)
        if not (0 if allow_zero else 1) <= port <= 65535:
            low = 0 if allow_zero else 1
            raise ValueError(f"port must be {low}..65535, got {port}")
        return cls(host, port)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class PortRange:
    """An inclusive "LOW-HIGH" UDP port range, e.g. "20000-20999"."""

    low: int
    high: int

    @classmethod
    def parse(cls, text: str) -> PortRange:
        low_text, sep, high_text = text.strip().partition("-")
        if not sep or not low_text.strip().isdigit() or not high_text.strip().isdigit():
            raise ValueError(f'expected "LOW-HIGH", got {text!r}')
        low, high = int(low_text), int(high_text)
        if not 1 <= low <= high <= 65535:
            raise ValueError(f'expected "LOW-HIGH" with 1 <= LOW <= HIGH <= 65535, got {text!r}')
        return cls(low, high)

    def __len__(self) -> int:
        return self.high - self.low + 1

    def __str__(self) -> str:
        return f"{self.low}-{self.high}"


def _check(predicate: Callable[[Any], bool], expected: str) -> dict[str, Any]:
    return {"check": (predicate, expected)}


def _positive() -> dict[str, Any]:
    return _check(lambda v: v > 0, "a number > 0")


def _non_negative() -> dict[str, Any]:
    return _check(lambda v: v >= 0, "a number >= 0")


def _one_of(*choices: str) -> dict[str, Any]:
    return _check(lambda v: v in choices, "one of " + ", ".join(choices))


def _http_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is no number or out of range
        return False


def _ip_literal(value: HostPort) -> bool:
    try:
        ipaddress.ip_address(value.host)
    except ValueError:
        return False
    return True


def _ordered(low_key: str, low: float, high_key: str, high: float) -> None:
    """Two keys of one section whose values must not cross (min <= max)."""
    if low > high:
        raise ConfigError(high_key, f"expected a number >= {low_key} ({low:g}), got {high:g}")


_LOG_LEVELS = ("debug", "info", "warning", "error")


# --------------------------------------------------------------------- daemon


@dataclass(frozen=True)
class ServerLink:
    url: str = field(
        default="http://127.0.0.1:8000",
        metadata=_check(
            _http_url, 'an http:// or https:// URL with a host, e.g. "http://10.0.0.5:8000"'
        ),
    )
    timeout: float = field(default=10.0, metadata=_positive())
    """Seconds one HTTP call to the server may take."""
    token: str = ""
    """Sent as `Authorization: Bearer <token>` (the server's `auth.client_token`)."""
    uploads_in_flight: int = field(default=32, metadata=_positive())
    """Uploads of the spool sent at once. Each waits a round trip and the server's
    work (its fsyncs), so the spool drains at most this many per that time: at 8,
    the first default, 200 lines on one box outran it even on loopback (a backlog
    of ~900 records, 7 s; 32: ~130 records, 1 s) and a server 50 ms away would cap
    it at ~90 a second, under what 200 lines make."""


@dataclass(frozen=True)
class PbxSettings:
    host: HostPort = HostPort("127.0.0.1", 5060)
    transport: str = field(default="udp", metadata=_one_of("udp", "tcp"))
    domain: str = ""
    """SIP domain of the accounts; empty means the host part of `pbx.host`."""
    resolve_every: float = field(default=60.0, metadata=_non_negative())
    """Seconds between two lookups of a PBX given by name (0: once at start). A
    name that now points elsewhere moves its lines there (`SipSide.look_again`)."""


@dataclass(frozen=True)
class SipSettings:
    bind: HostPort = field(
        default=HostPort("0.0.0.0", 0),
        metadata={
            "allow_zero": True,
            **_check(_ip_literal, 'an "ip:port" (an address, not a name)'),
        },
    )
    """Local SIP address. 0.0.0.0 or [::] (any address) reach each PBX in its own
    family (`SipSide.bind_for`); an address reaches only PBXs of its family."""
    socket_per_extension: bool = False
    register_expires: int = field(default=300, metadata=_check(lambda v: v >= 30, "an int >= 30"))
    ring_timeout: float = field(default=60.0, metadata=_positive())
    """Seconds to let a number ring with no verdict before CANCEL (-> no_answer)."""
    t1: float = field(default=0.5, metadata=_positive())
    user_agent: str = "sipclient/0.1"
    answer_listen: float = field(default=4.0, metadata=_non_negative())
    """Seconds to keep listening after a 2xx that came without a 180: a carrier that
    answers to play its announcement (假应答) is then judged by what it plays, not
    `answered`. A callee who answers after ringing is hung up on at once; 0: always."""
    prack: bool = True
    """Say `Supported: 100rel` in INVITEs (RFC 3262: the far end may then send its
    18x reliably, and we PRACK it). A reliable 18x is PRACKed even when off, and
    a 421 whose Require names 100rel has the INVITE sent once more offering it."""
    preemptive_auth: bool = True
    """Answer the PBX's last digest challenge (its nonce, counted up) in each call's
    first INVITE, as the registrations do: no INVITE / 407 / ACK round before every
    call. A refusal of it (an expired or forgotten nonce) is answered once as a
    fresh challenge, as without it; a 403 to it (a PBX refusing old nonces outright)
    has the INVITE sent again bare, and the extension's later calls are challenged
    each once that one went through (sip/invite.py). Off: every INVITE goes out
    bare first."""


@dataclass(frozen=True)
class RtpSettings:
    ports: PortRange = PortRange(20000, 20999)
    no_rtp_wait: float = field(default=3.0, metadata=_positive())
    """Seconds after a 183 with SDP and no RTP before signalling alone decides."""


@dataclass(frozen=True)
class RecordingSettings:
    dir: Path = Path("/var/lib/sipclient/recordings")
    max_seconds: float = field(default=60.0, metadata=_positive())
    max_bytes: int = field(default=2_000_000, metadata=_positive())
    keep: bool = False
    """Keep the local WAV after a successful upload."""
    keep_days: int = field(default=0, metadata=_check(lambda v: v >= 0, "an int >= 0"))
    """With `keep`: kept WAVs older than this many days are deleted, at start and
    hourly (`agent/housekeeping.py`); 0 keeps them all."""


@dataclass(frozen=True)
class SpoolSettings:
    dir: Path = Path("/var/lib/sipclient/spool")
    fallback: Path | None = None
    """Where a finished call's record is kept while `dir` cannot be written (a full
    disk), so a kill -9 or a stop meanwhile does not lose it (agent/spool.py); none:
    ``spool`` in systemd's RuntimeDirectory (a tmpfs under /run, which the shipped
    units set and keep across restarts), else the record is held in memory only.
    Put it on another file system than `dir`."""


@dataclass(frozen=True)
class HeartbeatSettings:
    interval: float = field(default=10.0, metadata=_positive())


LOOK_AHEAD_MAX = 3
"""The most numbers a line may hold (`dialplan.look_ahead`); our server hands no more."""


@dataclass(frozen=True)
class DialplanSettings:
    poll_min: float = field(default=0.5, metadata=_positive())
    poll_max: float = field(default=5.0, metadata=_positive())
    max_cps: float = field(default=0.0, metadata=_non_negative())
    """Calls started per second at most, by this daemon (a trunk's CPS limit, 呼叫频率:
    past it a carrier answers 503 and numbers are spent); 0: no limit. Calls start
    1/max_cps s apart; several daemons on one trunk each need their share."""

    hold_max: float = field(default=300.0, metadata=_non_negative())
    """Seconds a number may wait on its line (unregistered, a PBX fault, a paused
    trunk, no RTP port, the spool failing) before the daemon lets it go undialled:
    the server's lease reclaim (`leases.number_timeout`, 600 s by default) hands it
    out again, and dialled after that it would be dialled twice. Never longer than
    half the lease the server states with the number (`leaseSeconds`, ext), nor
    than that lease less the longest a call can last (`Daemon._hold_limit`). A
    server that knows only the seed states no lease: then keep this below that
    server's lease less a call; 0: no limit of our own."""

    look_ahead: int = field(
        default=2,
        metadata=_check(lambda v: 0 <= v <= LOOK_AHEAD_MAX, f"an int 0..{LOOK_AHEAD_MAX}"),
    )
    """Numbers each line holds while it dials one (ext: the server hands them in its
    reply to the call's "during"); the line starts the next the moment its call ends,
    with no round trip to the server in between (docs/daemon.md, "Life of the
    daemon"). One is enough on a server next door; after a call shorter than the
    round trip to the server (a 486 in 3 ms) the line waits for the rest of that
    round trip, and a second closes most of that (README, the figures). A number
    is then leased a call or two sooner; a daemon killed holds up to this many
    undialled numbers a line, which the server's lease reclaim hands out again.
    0: a line asks for its next number when its call has ended."""

    def __post_init__(self) -> None:
        _ordered("dialplan.poll_min", self.poll_min, "dialplan.poll_max", self.poll_max)


@dataclass(frozen=True)
class TrunkSettings:
    """The breaker of a trunk that fails every call (`sipclient.agent.trunk`)."""

    fault_after: int = field(default=10, metadata=_check(lambda v: v >= 0, "an int >= 0"))
    """Transient outcomes in a row (503, Q.850 34/38/41/42/47/102, 408 without a 180,
    网络忙, congestion) after which no call starts through that PBX for a pause; 0: off."""
    pause_min: float = field(default=5.0, metadata=_positive())
    """The first pause, seconds; it doubles after each probe call that fails too..."""
    pause_max: float = field(default=60.0, metadata=_positive())
    """...up to this."""
    same_rejections: int = field(default=20, metadata=_check(lambda v: v >= 0, "an int >= 0"))
    """Identical bare rejections in a row (same SIP code and Q.850 cause, no 180/183,
    no audio) after which the PBX's route is suspect (`sipclient.agent.route`): a PBX
    with no route out answers every number so, and each would be final (`empty`,
    `restricted`). Until a call rings or plays audio they are held back, then
    dialled again; dialling pauses as for a failing trunk. 0: off."""
    rejection_hold: float = field(default=30.0, metadata=_positive())
    """Seconds a bare rejection waits for such a call at most before its upload
    (the list's tail: no other call comes)."""
    canary: str = field(
        default="",
        metadata=_check(lambda v: v == "" or not not_dialable(v), "a dialable number or ''"),
    )
    """A number known to ring through this PBX (an office line, a test SIM): dialled
    when `same_rejections` alike come in a row, and before held rejections go up
    only because nothing else came. It rings: they were the network's answer,
    uploaded. Rejected: the route is suspect. '' (none): the run alone decides.
    Also the probe of the daemon's own breaker (calls failing in our code) instead
    of a held number, which such a failure may have rung already."""

    def __post_init__(self) -> None:
        _ordered("trunk.pause_min", self.pause_min, "trunk.pause_max", self.pause_max)


@dataclass(frozen=True)
class ClassifySettings:
    templates: Path | None = None
    """Folder of the template library; none means the library shipped with the package."""
    unknown_store: Path | None = None
    """Folder where unmatched announcements are kept (`sipclient templates unknown --store`)."""
    sync: bool = True
    """(daemon) Mirror the template library the server offers (it names its version
    in each heartbeat reply; agent/library_sync.py) and use it instead of
    `templates`. A server that names none (the seed's) changes nothing."""
    mirror: Path | None = None
    """(daemon) Where the mirrored library is kept; none: `library` beside `spool.dir`."""
    mirror_max_mb: int = field(default=512, metadata=_check(lambda v: v >= 1, "a number >= 1"))
    """(daemon) The most (MB, 2**20 bytes) of WAVs the daemon mirrors: a listing whose
    templates add up to more is refused before anything is fetched, and no WAV is
    read past the size its listing row names (`library_behind`, the library in use
    stays). The shipped library is 26 templates, 3.1 MB (a template ~100 kB), so
    512 MB is ~5,000 templates: room for any library an operator grows by hand,
    while a server gone wrong cannot fill the box's memory or StateDirectory. No
    value turns the bound off (0 is a config error): a bigger library wants a
    bigger number."""


@dataclass(frozen=True)
class MemorySettings:
    restart_above_mb: int = field(
        default=1024, metadata=_check(lambda v: v == 0 or v >= 256, "0 (off) or >= 256")
    )
    """Resident memory (MB) past which the daemon starts no new call, lets those in
    flight end, stops as on SIGTERM (uploads go in, it leaves the server) and
    exits 75, for its service manager to start it again (the unit's
    Restart=always). Its heap creeps ~0.2 kB a call for the first ~90,000 calls
    (glibc's fragmentation), then levelled off near 170 MB in a 144,000-call run
    at 24 lines (docs/daemon.md, "Memory restart"); this bounds it where it would
    not. Never within its first 10 minutes. 0: never."""


@dataclass(frozen=True)
class LogSettings:
    level: str = field(default="info", metadata=_one_of(*_LOG_LEVELS))
    format: str = field(default="auto", metadata=_one_of("auto", "json", "console"))


@dataclass(frozen=True)
class DaemonConfig:
    server: ServerLink = ServerLink()
    threads: int = field(default=8, metadata=_check(lambda v: 1 <= v <= 1000, "1..1000"))
    pbx: PbxSettings = PbxSettings()
    sip: SipSettings = SipSettings()
    rtp: RtpSettings = RtpSettings()
    recordings: RecordingSettings = RecordingSettings()
    spool: SpoolSettings = SpoolSettings()
    heartbeat: HeartbeatSettings = HeartbeatSettings()
    dialplan: DialplanSettings = DialplanSettings()
    trunk: TrunkSettings = TrunkSettings()
    classify: ClassifySettings = ClassifySettings()
    memory: MemorySettings = MemorySettings()
    log: LogSettings = LogSettings()


# --------------------------------------------------------------------- server


@dataclass(frozen=True)
class LeaseSettings:
    client_timeout: float = field(default=60.0, metadata=_positive())
    """Seconds without heartbeat or status after which a client loses its leases."""
    number_timeout: float = field(default=600.0, metadata=_positive())
    """Seconds a handed-out number may stay unfinished before it is free again."""
    sweep_interval: float = field(default=5.0, metadata=_positive())
    share: str = field(default="pusher", metadata=_one_of("pusher", "task", "none"))
    """How unfinished tasks share the lines. "pusher": the tasks of each return_url
    origin (scheme://host:port, as far as the server can tell who pushed) take
    turns with the other origins' hand-out by hand-out, oldest task first within
    one origin; "task": every task takes its turn; "none": the oldest free numbers
    first, whoever pushed them (a big push then holds back every later one)."""


@dataclass(frozen=True)
class CallbackSettings:
    tries: int = field(default=10, metadata=_positive())
    backoff_initial: float = field(default=2.0, metadata=_positive())
    backoff_max: float = field(default=600.0, metadata=_positive())
    timeout: float = field(default=10.0, metadata=_positive())


@dataclass(frozen=True)
class RetrySettings:
    max_tries: int = field(default=3, metadata=_positive())
    """How often a number with a transient outcome is dialled before it is final."""
    spacing: float = field(default=60.0, metadata=_check(lambda v: v >= 0, "a number >= 0"))
    """Seconds before a transient number is handed out again, doubling with each
    try (60, 120 ...); 0 = at once. A congested trunk or a PBX answering 503 to
    everything stays so for minutes: retried at once, every number dialled into
    it spent its tries within a second and was `failed` for good."""


@dataclass(frozen=True)
class AuthSettings:
    """Shared secrets a request must carry as `Authorization: Bearer <token>`; empty:
    that API is open (the seeds' curl examples carry none). The 001 API hands out
    the SIP passwords of the pool: a server listening beyond loopback wants both."""

    api_token: str = ""
    """For the 000 push/task API and the fleet view (`/api/...`)."""
    client_token: str = ""
    """For the 001 control API the daemons call (their `server.token`)."""


@dataclass(frozen=True)
class ReuseSettings:
    within: float = field(default=0.0, metadata=_check(lambda v: v >= 0, "a number >= 0"))
    """Seconds: a phone pushed again within this long of a verdict that says something
    of it (anything but `failed` and `unknown`, in any task) gets that verdict at the
    push, not a call (`detail.evidence.kind` "reused"). Lead lists overlap; 0 (the
    default) dials every push, as the seeds do."""


@dataclass(frozen=True)
class ServerRecordingSettings:
    dir: Path = Path("/var/lib/sipclient-server/recordings")
    keep_days: int = field(default=0, metadata=_check(lambda v: v >= 0, "an int >= 0"))
    """Days of uploaded recordings kept (day folders older are deleted hourly; the
    verdicts stay in the database); 0 keeps them all (`server/retention.py`)."""


@dataclass(frozen=True)
class ServerConfig:
    listen: HostPort = HostPort("127.0.0.1", 8000)
    database: str = "sqlite:////var/lib/sipclient-server/sipclient.db"
    recordings: ServerRecordingSettings = ServerRecordingSettings()
    leases: LeaseSettings = LeaseSettings()
    callbacks: CallbackSettings = CallbackSettings()
    retries: RetrySettings = RetrySettings()
    reuse: ReuseSettings = ReuseSettings()
    auth: AuthSettings = AuthSettings()
    max_body: int = field(default=8 * 1024 * 1024, metadata=_positive())
    """Largest request body accepted, bytes (a bigger one answers 413)."""
    classify: ClassifySettings = ClassifySettings()
    log: LogSettings = LogSettings()

    def __post_init__(self) -> None:
        if self.database.startswith("postgresql://"):
            # PROTOCOL.md names it for a fleet; refused here, not at start after
            # `check-config` said yes (README: only SQLite is implemented)
            raise ConfigError(
                "database", "postgresql:// is not implemented yet; use sqlite:///PATH"
            )
        if not self.database.startswith("sqlite:///"):
            raise ConfigError("database", f"expected sqlite:///PATH, got {self.database!r}")
        _ordered(
            "callbacks.backoff_initial",
            self.callbacks.backoff_initial,
            "callbacks.backoff_max",
            self.callbacks.backoff_max,
        )


# --------------------------------------------------------------------- loader

T = TypeVar("T")


def _convert(key: str, value: Any, typ: Any, meta: Mapping[str, Any]) -> Any:
    origin = typing.get_origin(typ)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None:
            return None
        return _convert(key, value, args[0], meta)
    if typ is HostPort:
        if not isinstance(value, str):
            raise ConfigError(key, f'expected "host:port", got {value!r}')
        try:
            return HostPort.parse(value, allow_zero=bool(meta.get("allow_zero")))
        except ValueError as exc:
            raise ConfigError(key, str(exc)) from None
    if typ is PortRange:
        try:
            return PortRange.parse(str(value))
        except ValueError as exc:
            raise ConfigError(key, str(exc)) from None
    if dataclasses.is_dataclass(typ) and isinstance(typ, type):
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"expected a mapping, got {type(value).__name__}")
        return _build(typ, value, key)
    if typ is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(key, f"expected a path, got {value!r}")
        return Path(value)
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"expected a number, got {value!r}")
        if not math.isfinite(value):  # YAML's .inf and .nan: a timer that never fires
            raise ConfigError(key, f"expected a finite number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    raise ConfigError(key, f"unsupported type {typ!r}")  # a schema bug, not a user's


def _build(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for name in data:
        if name not in fields:
            where = f"{prefix}.{name}" if prefix else str(name)
            known = ", ".join(sorted(fields))
            raise ConfigError(where, f"unknown key (known here: {known})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            continue
        key = f"{prefix}.{name}" if prefix else name
        value = _convert(key, data[name], hints[name], f.metadata)
        check = f.metadata.get("check")
        if check is not None and value is not None and not check[0](value):
            raise ConfigError(key, f"expected {check[1]}, got {data[name]!r}")
        kwargs[name] = value
    return cls(**kwargs)


def parse_config(cls: type[T], text: str, *, source: str = "<config>") -> T:
    """Parse YAML text into `cls` (DaemonConfig or ServerConfig)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{source}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError("", f"{source}: expected a mapping of keys at the top")
    return _build(cls, data)


def load_config(cls: type[T], path: Path | str | None) -> T:
    """Read a config file; None gives the defaults."""
    if path is None:
        return cls()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read config {path}: {exc.strerror}") from None
    return parse_config(cls, text, source=str(path))


def sqlite_path(database_url: str) -> Path:
    """The file of a `sqlite:///path` URL (`sqlite:////abs` or `sqlite:///rel`)."""
    return Path(database_url.removeprefix("sqlite:///"))
