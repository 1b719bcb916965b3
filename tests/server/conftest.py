"""Fixtures for the server tests: a real app over a real socket, a real SQLite file."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import soundfile
from aiohttp import web
from aiohttp.test_utils import TestClient

from sipclient.config import CallbackSettings, LeaseSettings, ServerConfig, ServerRecordingSettings
from sipclient.server.app import create_app
from sipclient.server.dispatch import FakeClock

ACCOUNTS = [
    {"host": "127.0.0.1:5060", "name": "1001", "pwd": "p1001"},
    {"host": "127.0.0.1:5060", "name": "1002", "pwd": "p1002"},
    {"host": "127.0.0.1:5060", "name": "1003", "pwd": "p1003"},
]


def make_config(tmp_path: Path, **overrides: Any) -> ServerConfig:
    """A config on files under tmp_path, with short callback back-off."""
    config = ServerConfig(
        database=f"sqlite:///{tmp_path / 'server.db'}",
        recordings=ServerRecordingSettings(dir=tmp_path / "recordings"),
        leases=LeaseSettings(client_timeout=60.0, number_timeout=600.0, sweep_interval=3600.0),
        callbacks=CallbackSettings(tries=5, backoff_initial=0.05, backoff_max=0.2, timeout=2.0),
    )
    return replace(config, **overrides)


def wav_bytes(frames: int = 0, rate: int = 8000) -> bytes:
    """An 8 kHz mono 16-bit PCM WAV (zero frames: a call with no media)."""
    buf = io.BytesIO()
    samples = (np.sin(np.arange(frames) * 2 * np.pi * 425 / rate) * 8000).astype(np.int16)
    soundfile.write(buf, samples, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def upload_form(
    extension: str, phone: str, wav: bytes | None = None, **fields: str | int
) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field(
        "file_name",
        wav if wav is not None else wav_bytes(),
        filename="call.wav",
        content_type="audio/wav",
    )
    form.add_field("extensionNum", extension)
    form.add_field("phone", phone)
    for key, value in fields.items():
        form.add_field(key, str(value))
    return form


class Api:
    """Small helpers over a TestClient; every call checks the envelope shape."""

    def __init__(self, client: Any) -> None:
        # A TestClient, or a UrlClient on a LiveServer: anything with .request().
        self.client = client

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        async with self.client.request(method, path, **kwargs) as resp:
            body = await resp.json()
            assert set(body) == {"code", "msg", "data"}, body
            if resp.status == 200:
                assert body["code"] == 200, body
            else:
                assert body["code"] == resp.status, body
            return resp.status, body

    async def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        status, body = await self.call(method, path, **kwargs)
        assert status == 200, body
        return body["data"]

    async def notify(self) -> str:
        return str((await self.ok("GET", "/notify"))["clientId"])

    async def upload(
        self, client_id: str, extension: str, phone: str, **fields: str | int
    ) -> tuple[int, dict[str, Any]]:
        return await self.call(
            "POST", f"/dial_wav/{client_id}", data=upload_form(extension, phone, **fields)
        )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def config(tmp_path: Path) -> ServerConfig:
    return make_config(tmp_path)


@pytest.fixture
async def app(config: ServerConfig, clock: FakeClock) -> web.Application:
    return create_app(config, clock=clock)


@pytest.fixture
async def api(
    app: web.Application,
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient[Any, Any]]],
) -> Api:
    return Api(await aiohttp_client(app))


class LiveServer:
    """The app on a real loopback port, stoppable and restartable (for restart tests)."""

    def __init__(
        self,
        config: ServerConfig,
        clock: FakeClock | None = None,
        steady: FakeClock | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.steady = steady
        self.runner: web.AppRunner | None = None
        self.url = ""

    @property
    def app(self) -> web.Application:
        assert self.runner is not None
        return self.runner.app

    async def start(self) -> str:
        app = (
            create_app(self.config, clock=self.clock, steady=self.steady)
            if self.clock is not None
            else create_app(self.config)
        )
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


class UrlClient:
    """`request(method, path)` against a LiveServer's current URL (it moves on restart)."""

    def __init__(self, session: aiohttp.ClientSession, server: LiveServer) -> None:
        self.session = session
        self.server = server

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.session.request(method, self.server.url + path, **kwargs)


@pytest.fixture
async def live(config: ServerConfig) -> AsyncIterator[LiveServer]:
    server = LiveServer(config)
    yield server
    await server.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s
