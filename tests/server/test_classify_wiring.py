"""The server judges uploads with the library of `classify.templates` and keeps unknowns.

Real server over a socket, a real library built with espeak-ng speech.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sipclient.classify.templates import TemplateLibrary
from sipclient.classify.unknowns import UnknownStore
from sipclient.config import ClassifySettings, ConfigError, ServerConfig
from sipclient.server.app import create_app
from tests.classify.conftest import speak, write_wav
from tests.server.conftest import Api, LiveServer, UrlClient, make_config, upload_form

PHRASE = "您拨打的用户已设置呼叫限制，暂时无法呼入，谢谢。"


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One announcement no shipped template holds, with a second of silence before it."""
    d = tmp_path_factory.mktemp("wiring")
    x = speak(PHRASE, "cmn+m2", d / "clean.wav")
    capture = np.concatenate([np.zeros(8000), x, x])
    return write_wav(d / "capture.wav", capture)


async def _judge_once(config: ServerConfig, capture: Path) -> dict[str, object]:
    import aiohttp

    server = LiveServer(config)
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(UrlClient(session, server))
            await api.ok(
                "POST",
                "/api/account",
                json={"account": [{"host": "127.0.0.1:5060", "name": "1001", "pwd": "x"}]},
            )
            await api.ok(
                "POST",
                "/api/dialplan",
                json={"phone": ["13800000001"], "return_url": "http://127.0.0.1:9/"},
            )
            cid = await api.notify()
            await api.ok("GET", f"/accounts/{cid}?threadsNum=1")
            await api.ok("GET", f"/dialplan/{cid}")
            form = upload_form(
                "1001",
                "13800000001",
                capture.read_bytes(),
                sipCode=487,
                earlyMedia=1,
                cancelledByUs=1,
            )
            status, body = await api.call("POST", f"/dial_wav/{cid}", data=form)
            assert status == 200, body
            data = body["data"]
            assert isinstance(data, dict)
            return data
    finally:
        await server.stop()


async def test_the_configured_library_decides(tmp_path: Path, speech: Path) -> None:
    folder = tmp_path / "lib"
    TemplateLibrary.load(folder, create=True).add(
        speech.with_name("clean.wav"), "restricted", "呼叫受限"
    )
    config = replace(make_config(tmp_path), classify=ClassifySettings(templates=folder))
    data = await _judge_once(config, speech)
    assert data["result"] == "restricted", data


async def test_without_the_template_it_is_not_restricted_and_is_kept_as_unknown(
    tmp_path: Path, speech: Path
) -> None:
    store = tmp_path / "unknowns"
    config = replace(make_config(tmp_path), classify=ClassifySettings(unknown_store=store))
    data = await _judge_once(config, speech)
    assert data["result"] != "restricted", data
    groups = UnknownStore(store).groups()
    assert [len(g.ids) for g in groups] == [1]


def test_a_missing_library_folder_is_a_config_error(tmp_path: Path) -> None:
    config = replace(make_config(tmp_path), classify=ClassifySettings(templates=tmp_path / "nope"))
    with pytest.raises(ConfigError) as info:
        create_app(config)
    assert info.value.key == "classify.templates"
    cfg_file = tmp_path / "server.yaml"
    cfg_file.write_text(f"classify:\n  templates: {tmp_path / 'nope'}\n")
    out = subprocess.run(
        [sys.executable, "-m", "sipclient.cli", "server", "--config", str(cfg_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "classify.templates" in out.stderr
