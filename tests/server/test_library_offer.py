"""(ext) The server offers its template library to the daemons: GET /library,
GET /library/{file}, and its version in every heartbeat reply. Real server, real
library folder."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from aiohttp import web
from aiohttp.test_utils import TestClient

from sipclient.classify.listing import list_library
from sipclient.classify.templates import TemplateLibrary
from sipclient.config import AuthSettings, ClassifySettings
from sipclient.server.app import JUDGE, LibraryJudge, create_app, reload_library
from tests.server.conftest import Api, make_config

AppClient = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


def make_library(folder: Path, tones: list[float]) -> TemplateLibrary:
    """A library of one template per tone (a 1 s sweep from it), all `empty`."""
    lib = TemplateLibrary.load(folder, create=True)
    t = np.arange(8000) / 8000
    for f in tones:
        src = folder.parent / f"sweep-{int(f)}.wav"
        x = 0.3 * np.sin(2 * np.pi * (f + 400 * t) * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
        sf.write(str(src), x, 8000, subtype="PCM_16")
        lib.add(src, "empty", "空号")
    return lib


async def _api(tmp_path: Path, aiohttp_client: AppClient, **auth: str) -> tuple[Api, Path]:
    folder = tmp_path / "lib"
    make_library(folder, [500.0, 900.0])
    config = make_config(
        tmp_path, classify=ClassifySettings(templates=folder), auth=AuthSettings(**auth)
    )
    return Api(await aiohttp_client(create_app(config))), folder


async def test_the_library_is_listed_with_each_wavs_digest_and_served(
    tmp_path: Path, aiohttp_client: AppClient
) -> None:
    api, folder = await _api(tmp_path, aiohttp_client)
    data = await api.ok("GET", "/library")
    rows = json.loads((folder / "templates.json").read_text(encoding="utf-8"))["templates"]
    assert [t["file"] for t in data["templates"]] == [r["file"] for r in rows]
    for t in data["templates"]:
        wav = (folder / t["file"]).read_bytes()
        assert t["sha256"] == hashlib.sha256(wav).hexdigest() and t["size"] == len(wav)
        assert (t["verdict"], t["label"]) == ("empty", "空号")
        async with api.client.get(f"/library/{t['file']}") as resp:
            assert resp.status == 200 and resp.content_type == "audio/wav"
            assert await resp.read() == wav
    assert data["version"] == list_library(folder).version
    # every heartbeat reply names that version
    cid = await api.notify()
    assert (await api.ok("POST", f"/heartbeat/{cid}"))["library"] == data["version"]


async def test_only_the_listed_files_are_served(tmp_path: Path, aiohttp_client: AppClient) -> None:
    api, folder = await _api(tmp_path, aiohttp_client)
    (folder / "other.wav").write_bytes(b"RIFF")  # in the folder, not in the manifest
    for name in ("templates.json", "index.npz", "other.wav", "..%2Fserver.db", "nope.wav"):
        status, body = await api.call("GET", f"/library/{name}")
        assert status == 404 and body["msg"].startswith("file:"), name


async def test_the_library_wants_the_daemons_token(
    tmp_path: Path, aiohttp_client: AppClient
) -> None:
    api, _ = await _api(tmp_path, aiohttp_client, api_token="push-1", client_token="box-2")
    status, _body = await api.call("GET", "/library", headers={"Authorization": "Bearer push-1"})
    assert status == 401
    data = await api.ok("GET", "/library", headers={"Authorization": "Bearer box-2"})
    assert len(data["templates"]) == 2


async def test_without_a_configured_library_the_shipped_one_is_offered(
    tmp_path: Path, aiohttp_client: AppClient
) -> None:
    api = Api(await aiohttp_client(create_app(make_config(tmp_path))))
    data = await api.ok("GET", "/library")
    assert len(data["templates"]) == len(TemplateLibrary.default()) > 0
    cid = await api.notify()
    assert (await api.ok("POST", f"/heartbeat/{cid}"))["library"] == data["version"]


def _get(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        body: dict[str, Any] = json.loads(resp.read())
    return body


def test_sighup_lists_the_library_again_for_verdicts_and_daemons(tmp_path: Path) -> None:
    # after `sipclient templates add`, `systemctl reload sipclient-server` (SIGHUP)
    # rather than a restart: the judge and the listing the daemons mirror, together
    folder = tmp_path / "lib"
    make_library(folder, [500.0])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    config = tmp_path / "server.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{port}\n"
        f"database: sqlite:///{tmp_path / 'db.sqlite'}\n"
        f"recordings:\n  dir: {tmp_path / 'rec'}\n"
        f"classify:\n  templates: {folder}\n"
        "log:\n  format: json\n"
    )
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sipclient.cli", "server", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                first = _get(port, "/library")["data"]
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        assert len(first["templates"]) == 1
        make_library(folder, [900.0])  # `templates add`
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while len(_get(port, "/library")["data"]["templates"]) != 2:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        version = list_library(folder).version
        client = _get(port, "/notify")["data"]["clientId"]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/heartbeat/{client}", method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert json.loads(resp.read())["data"]["library"] == version
        # a library that does not load: both keep the one they had
        (folder / "templates.json").write_text("not json", encoding="utf-8")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "library_reload_failed" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert _get(port, "/library")["data"]["version"] == version
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_a_reload_gives_the_judge_the_library_the_daemons_are_offered(
    tmp_path: Path, aiohttp_client: AppClient
) -> None:
    folder = tmp_path / "lib"
    make_library(folder, [500.0])
    app = create_app(make_config(tmp_path, classify=ClassifySettings(templates=folder)))
    api = Api(await aiohttp_client(app))
    judge = app[JUDGE]
    assert isinstance(judge, LibraryJudge) and len(judge.library) == 1
    make_library(folder, [900.0])
    assert await reload_library(app)
    assert len(judge.library) == 2
    assert len((await api.ok("GET", "/library"))["templates"]) == 2
