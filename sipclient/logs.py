"""structlog set-up: JSON lines when stdout is not a tty (journald), readable when it is.

Context that every line of a call must carry (clientId, extension, phone,
call_id) is bound with `structlog.contextvars.bound_contextvars(...)` around
the call, so lower layers need not pass it along. Secrets never reach a line:
any key named like a password is replaced before rendering, and digest
`Authorization` values are cut to their scheme.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from sipclient.text import readable

_SECRET_KEYS = (
    "password",
    "pwd",
    "passwd",
    "secret",
    "token",
    "authorization",
    "proxy_authorization",
)
REDACTED = "***"


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: no password or digest response is ever written."""
    for key in [k for k in event_dict if _secret(k)]:
        event_dict[key] = REDACTED
    return event_dict


def printable(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: a value holding a peer's undecodable bytes is made text
    (sipclient/text.py); written as it is, it would raise inside the log call."""
    for key, value in event_dict.items():
        if isinstance(value, str) and not value.isascii():
            event_dict[key] = readable(value)
    return event_dict


@functools.lru_cache(maxsize=4096)
def _secret(key: str) -> bool:
    # per key name, once: the daemon writes a handful of lines a call, each with
    # ~15 keys, and this test was ~90 substring searches a line (~40 % of the
    # time a log line took, cProfile of the daemon at 24 lines)
    low = key.lower()
    return any(s in low for s in _SECRET_KEYS)


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog and stdlib logging for the whole process.

    `stream` defaults to stdout (journald); commands whose stdout is their
    output (`dial`, `classify`) pass stderr.
    """
    out = sys.stdout if stream is None else stream
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    as_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if as_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=False),
            redact_secrets,
            printable,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr)


def get_logger(name: str) -> Any:
    """A structlog logger tagged with the module name.

    Stays lazy (no `.bind()` here): modules take their logger at import time,
    before `configure()` has run, and a bound logger would keep the default
    configuration forever.
    """
    return structlog.get_logger(name, module=name)
