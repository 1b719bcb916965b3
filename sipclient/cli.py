"""The one `sipclient` command and its subcommands (PROTOCOL.md, operating contract).

Exit codes: 0 ok, 2 usage or config error, 1 runtime failure.

Each subcommand's work lives in the module that owns it; this file only parses
arguments, loads the config and imports that module lazily (so `sipclient
classify` does not pay for aiohttp, nor `sipclient server` for scipy).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sipclient import __version__
from sipclient.config import ConfigError, DaemonConfig, ServerConfig, load_config

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def _entry(target: str) -> Callable[..., int]:
    module_name, _, func = target.partition(":")
    module = importlib.import_module(module_name)
    fn: Callable[..., int] = getattr(module, func)
    return fn


def _add_config(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--config", "-c", type=Path, default=None, help=f"{what} YAML file (defaults when omitted)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="sipclient", description="SIP dialing daemon and server for empty-number detection."
    )
    parser.add_argument("--version", action="version", version=f"sipclient {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("server", help="run the embedded server (000 + 001 APIs)")
    _add_config(p, "server")
    p.set_defaults(entry="sipclient.server.main:serve_main", config_cls=ServerConfig)

    p = sub.add_parser("run", help="run the dialing daemon")
    _add_config(p, "daemon")
    p.set_defaults(entry="sipclient.agent.daemon:run_main", config_cls=DaemonConfig)

    p = sub.add_parser("dial", help="one call by hand; prints the outcome as JSON")
    p.add_argument("number", help="the number to dial")
    p.add_argument(
        "--account", required=True, metavar="EXT:PASSWORD@HOST:PORT", help="extension to use"
    )
    p.add_argument("--record", type=Path, default=None, metavar="F.wav", help="write the audio")
    # unset, these three come from --config (pbx.transport, sip.bind, sip.ring_timeout)
    p.add_argument("--transport", choices=("udp", "tcp"), default=None)
    p.add_argument(
        "--bind", default=None, metavar="IP:PORT", help="local SIP address (default: sip.bind)"
    )
    p.add_argument("--ring-timeout", type=float, default=None, metavar="S")
    p.add_argument("--no-register", action="store_true", help="dial without registering first")
    _add_config(p, "daemon")
    p.set_defaults(entry="sipclient.agent.dial:dial_main", config_cls=DaemonConfig)

    p = sub.add_parser("classify", help="classify recordings; one JSON line per file")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE.wav")
    p.add_argument("--sip-code", type=int, default=None, metavar="N")
    p.add_argument("--q850", type=int, default=None, metavar="N")
    p.add_argument(
        "--ringing", action="store_true", help="a 180 came (colour ring-back counts as ringing)"
    )
    p.add_argument("--templates", type=Path, default=None, help="template library folder")
    p.set_defaults(entry="sipclient.classify.cli:classify_main", config_cls=None)

    p = sub.add_parser("templates", help="manage the announcement template library")
    p.add_argument("--templates", type=Path, default=None, help="template library folder")
    tsub = p.add_subparsers(dest="templates_command", metavar="ACTION", required=True)
    t = tsub.add_parser("add", help="add a labelled WAV to the library")
    t.add_argument("file", type=Path, metavar="FILE.wav")
    t.add_argument("--verdict", required=True)
    t.add_argument("--label", default=None, help="finer class, e.g. 欠费")
    tsub.add_parser("list", help="list the templates")
    t = tsub.add_parser("unknown", help="list unmatched announcements grouped by similarity")
    t.add_argument("--store", type=Path, default=None, help="folder of unknown fingerprints")
    p.set_defaults(entry="sipclient.classify.cli:templates_main", config_cls=None)

    p = sub.add_parser("demo", help="the whole system end to end on loopback")
    p.add_argument("--numbers", type=int, default=40, help="how many numbers to push")
    p.add_argument("--lines", type=int, default=8, help="how many extensions")
    p.add_argument(
        "--daemons", type=int, default=1, help="daemon processes sharing the lines (one a core)"
    )
    p.add_argument("--workdir", type=Path, default=None, help="keep files here (default: temp)")
    p.set_defaults(entry="sipclient.demo:demo_main", config_cls=None)

    p = sub.add_parser(
        "fleet", help="the daemons a server knows and their alerts (exit 3 on alerts, --check)"
    )
    p.add_argument("--server", default="http://127.0.0.1:8000", help="the server's base URL")
    p.add_argument("--token", default="", help="the server's auth.api_token, if set")
    p.add_argument("--expired", action="store_true", help="the expired clients instead")
    p.add_argument("--json", action="store_true", help="the listing as JSON")
    p.add_argument(
        "--check", action="store_true", help="only the alerting ones; exit 3 if there are any"
    )
    p.set_defaults(entry="sipclient.fleet:fleet_main", config_cls=None)

    p = sub.add_parser("check-config", help="validate a config file and exit")
    p.add_argument("kind", choices=("daemon", "server"))
    p.add_argument("file", type=Path)
    p.set_defaults(entry=None, config_cls=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sipclient` command."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check-config":
            cls: Any = DaemonConfig if args.kind == "daemon" else ServerConfig
            load_config(cls, args.file)
            print(f"{args.file}: ok")
            return EXIT_OK
        config = None
        if args.config_cls is not None:
            config = load_config(args.config_cls, args.config)
    except ConfigError as exc:
        print(f"sipclient: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        entry = _entry(args.entry)
    except (ImportError, AttributeError) as exc:
        print(f"sipclient {args.command}: not available in this build ({exc})", file=sys.stderr)
        return EXIT_FAILURE
    try:
        return entry(args, config) if config is not None else entry(args)
    except ConfigError as exc:
        print(f"sipclient: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
