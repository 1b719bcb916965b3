"""The daemon mirrors the template library the server offers (`classify.sync`,
agent/library_sync.py). The real server over a socket with a real library
folder; the daemon over fake lines, its library's user a stand-in for SipSide."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sipclient.agent.daemon import Daemon
from sipclient.agent.library_sync import INDEX, MANIFEST, daemon_library
from sipclient.classify import templates
from sipclient.classify.listing import list_library
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

    async def noting(name: str) -> bytes:
        fetched.append(name)
        return await fetch(name)

    daemon.client.library_file = noting  # type: ignore[method-assign]
    return daemon, user, fetched


async def _serve(server: LiveServer, library: Path) -> str:
    """(Re)start the server on `library`; the version it offers."""
    await server.stop()
    server.templates = library
    await server.start()
    return list_library(library).version


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
