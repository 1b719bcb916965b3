"""(ext) The server's template library offered to the daemons (classify/listing.py).

`GET /library` answers the listing (version, and per template the manifest row
with its WAV's sha256 and size); `GET /library/{file}` one template's WAV; each
heartbeat's reply names the version (`data.library`), so a daemon learns of a
new library within one heartbeat. Both are on the 001 API (`auth.client_token`).
The library is listed when the server starts, as the judge loads it, and again
on SIGHUP (`app.reload_library`: `systemctl reload sipclient-server`): a template
added on disk reaches verdicts and daemons together.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from sipclient.classify.listing import LibraryListing, library_folder, list_library
from sipclient.config import ServerConfig
from sipclient.logs import get_logger
from sipclient.server.errors import ApiError, envelope

log = get_logger(__name__)


class LibraryOffer:
    """The listing of the server's library and where its WAVs are (`load` at start)."""

    def __init__(self, config: ServerConfig) -> None:
        self.folder = library_folder(config.classify)
        self.listing: LibraryListing | None = None
        """None: not listed yet, or it could not be (logged); nothing is offered."""
        self._files: set[str] = set()

    async def load(self) -> None:
        """List the library (again); a failure is logged and the last listing kept."""
        try:
            listing = await asyncio.to_thread(list_library, self.folder)
        except Exception as exc:  # the judge's own load decides whether we run
            log.error("library_not_offered", folder=str(self.folder), error=str(exc))
            return
        self.listing = listing
        self._files = {t["file"] for t in listing.templates}

    @property
    def version(self) -> str | None:
        return self.listing.version if self.listing else None

    @property
    def templates(self) -> int:
        return len(self.listing.templates) if self.listing else 0

    def path_of(self, file: str) -> Path:
        if self.listing is None or self.folder is None or file not in self._files:
            raise ApiError(404, f"file: no template {file!r} in the library")
        return self.folder / file


LIBRARY = web.AppKey("library", LibraryOffer)


async def get_library(request: web.Request) -> web.Response:
    offer = request.app[LIBRARY]
    if offer.listing is None:
        raise ApiError(503, "library: the server could not list its library (see its log)")
    return envelope(offer.listing.as_json())


async def get_template_file(request: web.Request) -> web.StreamResponse:
    path = request.app[LIBRARY].path_of(request.match_info["file"])
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except OSError as exc:
        raise ApiError(503, f"file: {exc.strerror or exc}") from None
    return web.Response(body=data, content_type="audio/wav")
