"""The daemon mirrors the template library the server offers (`classify.sync`,
agent/library_sync.py). The real server over a socket with a real library
folder; the daemon over fake lines, its library's user a stand-in for SipSide."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from aiohttp import web

from sipclient.agent.control import ControlClient, ServerUnavailable
from sipclient.agent.daemon import Daemon
from sipclient.agent.library_sync import (
    FETCH_CONCURRENCY,
    INDEX,
    MANIFEST,
    MB,
    LibraryMirror,
    daemon_library,
)
from sipclient.classify import templates
from sipclient.classify.listing import list_library
from sipclient.classify.templates import LibraryError
from sipclient.config import ClassifySettings
from tests.agent.test_daemon_control import (
    FakeWorld,
    LiveServer,
    _daemon_config,
    _running,
    _wait,
)
from tests.server.test_library_offer import make_library


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[LiveServer]:
    """The embedded server, started by `_serve` on a library."""
    srv = LiveServer(tmp_path / "server")
    srv.folder.mkdir()
    try:
        yield srv
    finally:
        await srv.stop()


class User:
    """What SipSide does with a mirrored library: the next calls use it."""

    def __init__(self, version: str | None) -> None:
        self.library_version = version
        self.used: list[Any] = []

    def use_library(self, library: Any, version: str | None) -> None:
        self.library_version = version
        self.used.append(library)


def _daemon(
    tmp_path: Path, server: LiveServer, version: str | None, **classify: Any
) -> tuple[Daemon, User, list[str]]:
    """A daemon whose library is at `version`; the template files it fetches are listed."""
    config = _daemon_config(tmp_path, server, 1)
    if classify:
        config = dataclasses.replace(config, classify=ClassifySettings(**classify))
    (tmp_path / "rec").mkdir(exist_ok=True)
    daemon = Daemon(config, FakeWorld(tmp_path).factory)
    user = User(version)
    daemon.library_user = user
    fetched: list[str] = []
    fetch = daemon.client.library_file

    async def noting(name: str, max_bytes: int | None = None) -> bytes:
        fetched.append(name)
        return await fetch(name, max_bytes)

    daemon.client.library_file = noting  # type: ignore[method-assign]
    return daemon, user, fetched


async def _serve(server: LiveServer, library: Path) -> str:
    """(Re)start the server on `library`; the version it offers."""
    await server.stop()
    server.templates = library
    await server.start()
    return list_library(library).version


def _plain_library(folder: Path, n: int, seconds: float = 0.5, rate: int = 8000) -> list[str]:
    """A library of `n` distinct sweeps, its manifest written once (no index built
    per template, as `add` would); the file names."""
    folder.mkdir(parents=True)
    t = np.arange(int(seconds * rate)) / rate
    rows = []
    for k in range(n):
        name = f"tone-{k:02d}.wav"
        x = 0.3 * np.sin(2 * np.pi * (300.0 + 40 * k + 400 * t) * t)
        sf.write(str(folder / name), x, rate, subtype="PCM_16")
        rows.append({"file": name, "verdict": "empty", "label": "空号"})
    manifest = json.dumps({"templates": rows}, ensure_ascii=False)
    (folder / MANIFEST).write_text(manifest, encoding="utf-8")
    return [r["file"] for r in rows]


class FileRequests:
    """The server's side of `GET /library/{file}`: how many came, and the most in
    flight at once (each held `delay` s, so that overlapping fetches overlap there)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.count = 0
        self.in_flight = 0
        self.most = 0

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith("/library/"):
            return await handler(request)  # type: ignore[no-any-return]
        self.count += 1
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            return await handler(request)  # type: ignore[no-any-return]
        finally:
            self.in_flight -= 1


def test_the_file_names_kept_out_are_the_librarys_own() -> None:
    assert (MANIFEST, INDEX) == (templates.MANIFEST, templates.INDEX)


async def test_the_servers_library_is_mirrored_and_then_only_a_new_template_fetched(
    server: LiveServer, tmp_path: Path
) -> None:
    lib = tmp_path / "server-library"
    make_library(lib, [500.0, 900.0])
    # operators name recordings as they come (Chinese, spaces): quoted in the URL
    named = tmp_path / "空号 提示音.wav"
    shutil.copyfile(lib / "sweep-500.wav", named)
    templates.TemplateLibrary.load(lib).add(named, None, "空号")
    version = await _serve(server, lib)
    daemon, user, fetched = _daemon(tmp_path, server, "the shipped one")
    async with _running(daemon):
        await _wait(lambda: user.used, timeout=10)  # within a heartbeat or two
    mirror = tmp_path / "library"  # beside the spool: the default
    (library,) = user.used
    assert user.library_version == version and len(library) == 3 and library.folder == mirror
    files = sorted(t["file"] for t in list_library(lib).templates)
    assert sorted(fetched) == files
    for name in files:
        assert (mirror / name).read_bytes() == (lib / name).read_bytes()
    assert (mirror / "VERSION").read_text().strip() == version
    assert list_library(mirror).version == version  # what the server would offer of it

    # a restarted daemon starts with the mirror, the version known: nothing fetched
    config = _daemon_config(tmp_path, server, 1)
    started, started_version = daemon_library(config)
    assert (len(started), started_version) == (3, version)

    # a template added on the server (and the server restarted): only it is fetched
    make_library(lib, [1300.0])
    newer = await _serve(server, lib)
    assert newer != version
    daemon, user, fetched = _daemon(tmp_path, server, started_version)
    async with _running(daemon):
        await _wait(lambda: user.used, timeout=10)
    assert fetched == ["sweep-1300.wav"]
    assert user.library_version == newer and len(user.used[0]) == 4
    assert not (tmp_path / "library.new").exists() and not (tmp_path / "library.old").exists()


async def test_nothing_is_fetched_for_the_version_in_use_or_with_sync_off(
    server: LiveServer, tmp_path: Path
) -> None:
    lib = tmp_path / "server-library"
    make_library(lib, [500.0])
    version = await _serve(server, lib)
    for user_version, classify in ((version, {}), ("another", {"sync": False})):
        daemon, user, fetched = _daemon(tmp_path, server, user_version, **classify)
        async with _running(daemon):
            await asyncio.sleep(1.6)  # three heartbeats
        assert (user.used, fetched) == ([], [])
        assert not (tmp_path / "library").exists()


async def test_a_template_not_as_listed_leaves_the_library_in_use_until_it_is(
    server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lib = tmp_path / "server-library"
    make_library(lib, [500.0, 900.0])
    version = await _serve(server, lib)
    good = (lib / "sweep-900.wav").read_bytes()
    # changed on the server's disk after it listed it: not the bytes the listing names
    (lib / "sweep-900.wav").write_bytes(good[:-200])
    daemon, user, fetched = _daemon(tmp_path, server, "older")
    async with _running(daemon):
        await _wait(lambda: fetched.count("sweep-900.wav") >= 2, timeout=10)  # tried again
        assert user.used == [] and user.library_version == "older"
        assert not (tmp_path / "library").exists()
        # the fleet listing (and STATUS=) says this box is behind
        assert "library_behind" in daemon.health()["alerts"]
        assert "templates not the server's (LibraryError" in daemon.status_line()
        (lib / "sweep-900.wav").write_bytes(good)
        await _wait(lambda: user.used, timeout=10)
    assert user.library_version == version and "library_behind" not in daemon.health()["alerts"]
    logged = capsys.readouterr().out
    assert "library_sync_failed" in logged and "not the bytes the listing names" in logged


async def test_a_library_over_the_cap_is_refused_before_anything_is_fetched(
    server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lib = tmp_path / "server-library"
    _plain_library(lib, 3, seconds=4.0, rate=48000)  # 3 x 384 kB
    assert MB < sum(t["size"] for t in list_library(lib).templates) < 2 * MB
    files = FileRequests()
    server.middlewares.append(files.middleware)
    version = await _serve(server, lib)
    daemon, user, fetched = _daemon(tmp_path, server, "older", mirror_max_mb=1)
    async with _running(daemon):
        await _wait(lambda: "library_behind" in daemon.health()["alerts"], timeout=10)
        await asyncio.sleep(1.1)  # two heartbeats more: tried again, still nothing fetched
        assert user.used == [] and user.library_version == "older"
        assert "over classify.mirror_max_mb (1)" in daemon.status_line()
    assert (files.count, fetched) == (0, [])
    assert not (tmp_path / "library").exists() and not (tmp_path / "library.new").exists()
    logged = capsys.readouterr().out
    assert "library_sync_failed" in logged and "over classify.mirror_max_mb (1)" in logged

    # under a cap it fits: the same library is mirrored
    daemon, user, fetched = _daemon(tmp_path, server, "older", mirror_max_mb=2)
    async with _running(daemon):
        await _wait(lambda: user.used, timeout=10)
    assert user.library_version == version and len(user.used[0]) == 3 and files.count == 3


async def test_a_template_longer_than_listed_is_read_no_further_and_refused(
    server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lib = tmp_path / "server-library"
    make_library(lib, [500.0, 900.0])
    await _serve(server, lib)
    good = (lib / "sweep-900.wav").read_bytes()
    # grown on the server's disk after it listed it: 8 MB more than its row names
    (lib / "sweep-900.wav").write_bytes(good + bytes(8 * MB))
    daemon, user, fetched = _daemon(tmp_path, server, "older")
    async with _running(daemon):
        await _wait(lambda: "library_behind" in daemon.health()["alerts"], timeout=10)
        assert user.used == [] and user.library_version == "older"
        assert "sweep-900.wav" in fetched
        # what the client read of that body: one byte past the listed size
        body = await daemon.client.library_file("sweep-900.wav", max_bytes=len(good))
        assert body == good + b"\0"
    assert not (tmp_path / "library").exists() and not (tmp_path / "library.new").exists()
    logged = capsys.readouterr().out
    assert "library_sync_failed" in logged
    assert "template sweep-900.wav: not the size the listing names" in logged


async def _forty_served_slowly(
    server: LiveServer, tmp_path: Path
) -> tuple[Path, list[str], FileRequests, str]:
    """A server offering a library of 40 small templates, each file request held
    20 ms and counted: its folder, the names, the counter, the version."""
    lib = tmp_path / "server-library"
    names = _plain_library(lib, 40)
    files = FileRequests(delay=0.02)
    server.middlewares.append(files.middleware)
    return lib, names, files, await _serve(server, lib)


async def test_many_templates_are_fetched_several_at_once_each_checked(
    server: LiveServer, tmp_path: Path
) -> None:
    lib, names, files, version = await _forty_served_slowly(server, tmp_path)
    daemon, user, fetched = _daemon(tmp_path, server, "older")
    async with _running(daemon):
        await _wait(lambda: user.used, timeout=20)
    assert user.library_version == version and len(user.used[0]) == 40
    assert sorted(fetched) == names and files.count == 40
    for name in names:
        assert (tmp_path / "library" / name).read_bytes() == (lib / name).read_bytes()
    # the old daemon fetched one at a time: never more than one in flight
    assert 2 <= files.most <= FETCH_CONCURRENCY


async def test_one_fetch_failing_ends_the_others_cleanly_and_changes_nothing(
    server: LiveServer, tmp_path: Path
) -> None:
    lib, names, files, _version = await _forty_served_slowly(server, tmp_path)
    (lib / names[5]).unlink()  # after the listing: the server answers 503 for it
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    client = ControlClient(server.url)
    mirror = LibraryMirror(tmp_path / "library")
    try:
        with pytest.raises(ServerUnavailable, match="HTTP 503"):
            await mirror.sync(client)
        # the fetches in flight were cancelled and awaited: none left, none more sent
        coros = [getattr(t.get_coro(), "__qualname__", "") for t in asyncio.all_tasks()]
        assert not [c for c in coros if "_place_all" in c]
        assert files.count <= 6 + FETCH_CONCURRENCY and files.most >= 2
        await asyncio.sleep(0.1)
        gc.collect()  # a task whose exception nobody retrieved says so when collected
        assert unhandled == []
        assert mirror.held() is None and not (tmp_path / "library").exists()
        # nor a half-fetched copy: the next try starts afresh anyway
        assert not (tmp_path / "library.new").exists()
    finally:
        loop.set_exception_handler(None)
        await client.close()


class Listing:
    """A control client whose listing is given; it must not be asked for a file."""

    def __init__(self, templates: list[Any]) -> None:
        self.templates = templates

    async def library(self) -> dict[str, Any]:
        return {"version": "v1", "templates": self.templates}

    async def library_file(self, name: str, max_bytes: int | None = None) -> bytes:
        raise AssertionError(f"{name} fetched")


@pytest.mark.parametrize(
    "size",
    [None, -1, "12", 12.0, True],
    ids=["none", "negative", "text", "float", "bool"],
)
async def test_a_listing_row_without_a_size_is_a_bad_entry(tmp_path: Path, size: Any) -> None:
    row = {"file": "a.wav", "verdict": "empty", "label": "x", "sha256": "0" * 64}
    if size is not None:
        row["size"] = size
    mirror = LibraryMirror(tmp_path / "library")
    with pytest.raises(LibraryError, match="bad entry"):
        await mirror.sync(Listing([row]))  # type: ignore[arg-type]


async def test_a_listing_naming_a_file_twice_is_a_bad_entry(tmp_path: Path) -> None:
    row = {"file": "a.wav", "verdict": "empty", "label": "x", "sha256": "0" * 64, "size": 1}
    with pytest.raises(LibraryError, match="bad entry"):
        await LibraryMirror(tmp_path / "library").sync(Listing([row, row]))  # type: ignore[arg-type]
