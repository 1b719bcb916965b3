"""`sipclient server --config F`: serve until SIGTERM/SIGINT, then close cleanly;
SIGHUP loads the template library again (`app.reload_library`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from aiohttp import web

from sipclient import sdnotify
from sipclient.config import ServerConfig
from sipclient.logs import configure, get_logger

_SHUTDOWN_GRACE = 5.0


async def serve(config: ServerConfig) -> int:
    """Run the server on `config.listen` until a stop signal; 0 on a clean stop."""
    from sipclient.server.app import create_app, reload_library
    from sipclient.server.store import StoreError

    log = get_logger(__name__)
    app = create_app(config)
    # In-flight requests get a few seconds to finish on SIGTERM, not aiohttp's 60.
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=_SHUTDOWN_GRACE
    )
    try:
        await runner.setup()
    except StoreError as exc:
        log.error("cannot start", error=str(exc))
        return 1
    site = web.TCPSite(runner, config.listen.host, config.listen.port, backlog=1024)
    try:
        await site.start()
    except OSError as exc:
        log.error("cannot listen", listen=str(config.listen), error=str(exc))
        await runner.cleanup()
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[bool]] = set()  # referenced until done

    def reload() -> None:  # SIGHUP: the template library (sipclient.server.library)
        task = loop.create_task(reload_library(app))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    log.info("listening", listen=str(config.listen), database=config.database)
    sdnotify.ready(f"listening on {config.listen}")
    pinger = None
    interval = sdnotify.watchdog_interval()
    if interval is not None:
        pinger = asyncio.create_task(_watchdog(interval))
    try:
        await stop.wait()
    finally:
        sdnotify.stopping()
        log.info("stopping")
        if pinger is not None:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pinger
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
    log.info("stopped")
    return 0


async def _watchdog(interval: float) -> None:
    while True:
        sdnotify.watchdog()
        await asyncio.sleep(interval)


def serve_main(args: argparse.Namespace, config: ServerConfig) -> int:
    """CLI entry of `sipclient server`."""
    del args
    # Configure before importing the server modules: their module-level loggers
    # bind the structlog configuration current at import time.
    configure(config.log.level, config.log.format)
    from sipclient.server.store import StoreError

    try:
        return asyncio.run(serve(config))
    except StoreError as exc:
        print(f"sipclient server: {exc}", file=sys.stderr)
        return 1
