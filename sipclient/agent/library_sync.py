"""The daemon's mirror of the server's template library (`classify.sync`).

The server names the version of the library it offers in each heartbeat reply
(classify/listing.py, server/library.py). When that is not the version of the
library the daemon uses, the daemon mirrors it: the listing from `GET
/library`, each WAV it does not already hold (same name and sha256) from `GET
/library/{file}`, checked against the listing's sha256, into a fresh folder
beside the mirror; the library is loaded (and indexed) from there, off the
loop, and only once it loads is it moved into place and used for the next
calls (calls in flight keep theirs, as after SIGHUP). Any failure leaves the
library in use as it was and is tried again at the next heartbeat that names
a version we do not have. The mirror's `VERSION` file keeps the version it
holds, so a restarted daemon uses the mirror at once.

The daemon does not take the server's word for how much that is: a listing whose
WAVs add up to more than `classify.mirror_max_mb` is refused before anything is
fetched, and no WAV is read past the size its row names. The missing WAVs are
fetched `FETCH_CONCURRENCY` at a time; one that fails ends the mirroring (the
others cancelled and awaited), the library in use unchanged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sipclient.agent.control import ControlClient
from sipclient.classify.listing import library_folder, list_library, safe_file_name
from sipclient.config import ClassifySettings, DaemonConfig
from sipclient.logs import get_logger

if TYPE_CHECKING:  # the classifier (numpy) is imported when a library is loaded
    from sipclient.classify.templates import TemplateLibrary

log = get_logger(__name__)

VERSION_FILE = "VERSION"
MANIFEST = "templates.json"
INDEX = "index.npz"
"""classify.templates' MANIFEST and INDEX (checked equal in tests/agent/test_library_sync.py)."""

FETCH_CONCURRENCY = 4
"""WAVs fetched at once. Each fetch is a round trip of a small file (~100 kB), so
its time is the round trip's, not the link's: four in flight make a library of
thousands arrive about four times as fast over a WAN, while the server (which
answers the whole fleet from the same loop, a file read off its loop for each)
sees at most four requests per box, and the mirroring holds at most four WAVs in
memory. More buys little once the round trips overlap."""

MB = 1024 * 1024


class LibraryUser(Protocol):
    """What uses the template library (the daemon's `SipSide`)."""

    @property
    def library_version(self) -> str | None: ...

    def use_library(self, library: Any, version: str | None) -> None: ...


def mirror_folder(config: DaemonConfig) -> Path:
    """`classify.mirror`, else `library` beside `spool.dir`."""
    return config.classify.mirror or config.spool.dir.parent / "library"


class LibraryMirror:
    """The mirrored library in `folder`, of at most `max_mb` MB of WAVs
    (`classify.mirror_max_mb`)."""

    def __init__(self, folder: Path, max_mb: int = ClassifySettings.mirror_max_mb) -> None:
        self.folder = folder
        self.max_mb = max_mb

    def held(self) -> str | None:
        """The version the mirror folder holds (None: no complete mirror there)."""
        try:
            version = (self.folder / VERSION_FILE).read_text(encoding="ascii").strip()
        except (OSError, ValueError):
            return None
        return version if (self.folder / MANIFEST).is_file() and version else None

    async def sync(self, client: ControlClient) -> tuple[TemplateLibrary, str]:
        """Mirror the server's library; the loaded library and its version.
        Raises (ControlError, LibraryError, OSError) with the mirror unchanged."""
        from sipclient.classify.templates import LibraryError, TemplateLibrary

        listing = await client.library()
        version, templates = _checked(listing)
        total = sum(t["size"] for t in templates)
        if total > self.max_mb * MB:
            raise LibraryError(
                f"the server's library ({total / MB:.1f} MB) is over classify.mirror_max_mb"
                f" ({self.max_mb}); {len(templates)} templates"
            )
        new = self.folder.with_name(self.folder.name + ".new")
        try:
            await asyncio.to_thread(_fresh_folder, new)
            await self._place_all(client, templates, new)
            rows = [{k: t[k] for k in ("file", "verdict", "label")} for t in templates]
            manifest = json.dumps({"templates": rows}, ensure_ascii=False, indent=1)
            await asyncio.to_thread((new / MANIFEST).write_text, manifest, "utf-8")
            # loaded (fingerprinted, its index cached in the folder) before it is used
            library = await asyncio.to_thread(TemplateLibrary.load, new)
            await asyncio.to_thread((new / VERSION_FILE).write_text, version + "\n", "ascii")
            await asyncio.to_thread(_swap_in, new, self.folder)
        except BaseException:
            # a half-fetched copy is no use to the next try (it starts afresh) and
            # holds up to mirror_max_mb of disk until then: gone now (shielded, so
            # a stop cancelling the sync still removes it)
            await asyncio.shield(asyncio.to_thread(shutil.rmtree, new, True))
            raise
        library.folder = self.folder
        return library, version

    async def _place_all(
        self, client: ControlClient, templates: list[dict[str, Any]], new: Path
    ) -> None:
        """Every template's WAV into `new`, `FETCH_CONCURRENCY` at a time; the first
        failure is raised once the others are cancelled and awaited."""
        todo = iter(templates)  # shared: each worker takes the next one

        async def worker() -> None:
            for t in todo:
                await self._place(client, t, new)

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(FETCH_CONCURRENCY, len(templates))):
                    group.create_task(worker())
        except ExceptionGroup as failed:  # the first one says why, as one fetch would
            raise failed.exceptions[0] from None

    async def _place(self, client: ControlClient, t: dict[str, Any], new: Path) -> None:
        """One template's WAV into `new`: the mirror's own copy when it is the one
        listed, else fetched, read no further than its listed size, and checked."""
        from sipclient.classify.templates import LibraryError

        name, sha, size = t["file"], t["sha256"], t["size"]
        data = await asyncio.to_thread(_read_if_same, self.folder / name, sha, size)
        if data is None:
            data = await client.library_file(name, max_bytes=size)
            if len(data) > size:
                raise LibraryError(
                    f"template {name}: not the size the listing names (over {size} bytes)"
                )
            if hashlib.sha256(data).hexdigest() != sha:
                raise LibraryError(f"template {name}: not the bytes the listing names")
        await asyncio.to_thread((new / name).write_bytes, data)


def _checked(listing: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    from sipclient.classify.templates import LibraryError

    version, templates = listing.get("version"), listing.get("templates")
    if not isinstance(version, str) or not version or not isinstance(templates, list):
        raise LibraryError("the server's library listing has no version or templates")
    files: set[str] = set()
    for t in templates:
        if (
            not isinstance(t, dict)
            or not all(isinstance(t.get(k), str) for k in ("file", "verdict", "label", "sha256"))
            or not safe_file_name(t["file"])
            or t["file"] in (MANIFEST, INDEX, VERSION_FILE)
            or t["file"] in files  # two fetches would write one file
            or not isinstance(t.get("size"), int)
            or isinstance(t["size"], bool)
            or t["size"] < 0
        ):
            raise LibraryError(f"the server's library listing has a bad entry: {t!r}"[:200])
        files.add(t["file"])
    return version, templates


def _fresh_folder(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def _read_if_same(path: Path, sha: str, size: int) -> bytes | None:
    try:
        if path.stat().st_size != size:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    return data if hashlib.sha256(data).hexdigest() == sha else None


def _swap_in(new: Path, folder: Path) -> None:
    """`new` becomes `folder`; the old one, if any, is removed after the move."""
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(new, folder)
    shutil.rmtree(old, ignore_errors=True)


def daemon_library(config: DaemonConfig) -> tuple[TemplateLibrary, str | None]:
    """The library the daemon starts (or reloads) with and its version: with
    `classify.sync`, the mirror when it holds one, else `classify.templates` (or
    the shipped one)."""
    from sipclient.classify.loading import load_library
    from sipclient.classify.templates import LibraryError, TemplateLibrary

    if config.classify.sync:
        mirror = LibraryMirror(mirror_folder(config))
        version = mirror.held()
        if version is not None:
            try:
                return TemplateLibrary.load(mirror.folder), version
            except LibraryError as exc:  # the configured one meanwhile, mirrored again
                log.warning("library_mirror_unusable", folder=str(mirror.folder), error=str(exc))
    library = load_library(config.classify)
    try:
        return library, list_library(library_folder(config.classify)).version
    except LibraryError:
        return library, None
