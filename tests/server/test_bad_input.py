"""Bad input: an envelope naming the field, the matching HTTP status; the server lives on."""

from __future__ import annotations

import io
import json
from typing import Any

import aiohttp
import pytest

from tests.server.conftest import ACCOUNTS, Api, upload_form, wav_bytes

URL = "http://127.0.0.1:9/cb"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("{not json", "body"),
        ("[1, 2]", "body"),
        ("null", "body"),
        (b"\xff\xfe\x00garbage", "body"),
        ({}, "phone"),
        ({"phone": [], "return_url": URL}, "phone"),
        ({"phone": "13800000000", "return_url": URL}, "phone"),
        ({"phone": ["1", 2], "return_url": URL}, "phone[1]"),
        ({"phone": ["1", ""], "return_url": URL}, "phone[1]"),
        ({"phone": ["1", None], "return_url": URL}, "phone[1]"),
        ({"phone": ["1" * 65], "return_url": URL}, "phone[0]"),
        ({"phone": ["1"]}, "return_url"),
        ({"phone": ["1"], "return_url": 5}, "return_url"),
        ({"phone": ["1"], "return_url": "ftp://x/"}, "return_url"),
        ({"phone": ["1"], "return_url": "not a url"}, "return_url"),
    ],
)
async def test_bad_dialplan_push(api: Api, body: Any, field: str) -> None:
    raw = body if isinstance(body, str | bytes) else json.dumps(body)
    status, answer = await api.call("POST", "/api/dialplan", data=raw)
    assert status == 400
    assert answer["msg"].startswith(f"{field}:"), answer
    assert await api.ok("GET", "/api/tasks") == []  # nothing half-created


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "account"),
        ({"account": []}, "account"),
        ({"account": {"host": "h:1"}}, "account"),
        ({"account": ["x"]}, "account[0]"),
        ({"account": [{"name": "1", "pwd": "1"}]}, "account[0].host"),
        ({"account": [{"host": "nohost", "name": "1", "pwd": "1"}]}, "account[0].host"),
        ({"account": [{"host": "h:70000", "name": "1", "pwd": "1"}]}, "account[0].host"),
        ({"account": [{"host": "h:5060", "pwd": "1"}]}, "account[0].name"),
        ({"account": [{"host": "h:5060", "name": 1001, "pwd": "1"}]}, "account[0].name"),
        ({"account": [{"host": "h:5060", "name": "1"}]}, "account[0].pwd"),
        (
            {"account": [{"host": "h:5060", "name": "1", "pwd": "1", "transport": "sctp"}]},
            "account[0].transport",
        ),
    ],
)
async def test_bad_account_push(api: Api, body: Any, field: str) -> None:
    status, answer = await api.call("POST", "/api/account", json=body)
    assert status == 400
    assert answer["msg"].startswith(f"{field}:"), answer


async def test_ten_megabyte_bodies_answer_413(api: Api) -> None:
    big = b"x" * (10 * 1024 * 1024)
    for path in ("/api/dialplan", "/api/account"):
        status, answer = await api.call("POST", path, data=io.BytesIO(big))
        assert status == 413 and answer["msg"].startswith("body:")

    cid = await api.notify()
    form = aiohttp.FormData()
    form.add_field("extensionNum", "1001")
    form.add_field("phone", "1")
    form.add_field("file_name", io.BytesIO(b"RIFF" + big), filename="a.wav")
    status, answer = await api.call("POST", f"/dial_wav/{cid}", data=form)
    assert status == 413


async def test_chunked_oversized_body_answers_413(api: Api) -> None:
    """No Content-Length: the limit is enforced while reading."""

    async def chunks() -> Any:
        for _ in range(10):
            yield b"y" * (1024 * 1024)

    status, _answer = await api.call("POST", "/api/dialplan", data=chunks())
    assert status == 413


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/accounts/{}?threadsNum=1"),
        ("GET", "/dialplan/{}"),
        ("POST", "/heartbeat/{}"),
        ("GET", "/status/{}?status=idle&extensionNum=1001&phoneNum="),
    ],
)
async def test_unknown_client_id_is_404(api: Api, method: str, path: str) -> None:
    status, answer = await api.call(method, path.format("no-such-client"))
    assert status == 404 and answer["msg"].startswith("clientId:")


async def test_upload_from_unknown_client_is_404_and_nothing_stored(api: Api) -> None:
    status, answer = await api.upload("no-such-client", "1001", "1")
    assert status == 404 and answer["msg"].startswith("clientId:")


@pytest.mark.parametrize(
    ("wav", "needle"),
    [
        (b"", "file_name:"),
        (b"hello, this is not audio at all", "file_name:"),
        (b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk", "file_name:"),
        (b"ID3\x03\x00\x00\x00" + b"\x00" * 100, "file_name:"),  # an MP3
    ],
)
async def test_non_wav_upload_is_400(api: Api, wav: bytes, needle: str) -> None:
    await api.ok("POST", "/api/account", json={"account": ACCOUNTS})
    await api.ok("POST", "/api/dialplan", json={"phone": ["1"], "return_url": URL})
    cid = await api.notify()
    await api.ok("GET", f"/accounts/{cid}?threadsNum=1")
    await api.ok("GET", f"/dialplan/{cid}")
    status, answer = await api.call("POST", f"/dial_wav/{cid}", data=upload_form("1001", "1", wav))
    assert status == 400 and answer["msg"].startswith(needle), answer
    # The number is not lost: a good upload still finishes it.
    status, answer = await api.upload(cid, "1001", "1", sipCode=404)
    assert status == 200 and answer["data"]["result"] == "empty"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"extensionNum": "", "phone": "1"}, "extensionNum"),
        ({"extensionNum": "1001", "phone": ""}, "phone"),
        ({"extensionNum": "1001", "phone": "1", "sipCode": "abc"}, "sipCode"),
        ({"extensionNum": "1001", "phone": "1", "sipCode": "99"}, "sipCode"),
        ({"extensionNum": "1001", "phone": "1", "q850Cause": "300"}, "q850Cause"),
        ({"extensionNum": "1001", "phone": "1", "answered": "maybe"}, "answered"),
        ({"extensionNum": "1001", "phone": "1", "dialplanId": "x"}, "dialplanId"),
        ({"extensionNum": "1001", "phone": "1", "localConfidence": "2"}, "localConfidence"),
    ],
)
async def test_bad_upload_fields_are_400(api: Api, fields: dict[str, str], field: str) -> None:
    cid = await api.notify()
    form = aiohttp.FormData()
    form.add_field("file_name", wav_bytes(), filename="a.wav", content_type="audio/wav")
    for key, value in fields.items():
        form.add_field(key, value)
    status, answer = await api.call("POST", f"/dial_wav/{cid}", data=form)
    assert status == 400 and answer["msg"].startswith(f"{field}:"), answer


async def test_upload_without_file_or_multipart_is_400(api: Api) -> None:
    cid = await api.notify()
    form = aiohttp.FormData()
    form.add_field("extensionNum", "1001")
    form.add_field("phone", "1")
    form.add_field("dummy", b"x", filename="x.bin")  # keep it multipart
    status, answer = await api.call("POST", f"/dial_wav/{cid}", data=form)
    assert status == 400 and answer["msg"].startswith("file_name:")
    status, answer = await api.call(
        "POST", f"/dial_wav/{cid}", data={"extensionNum": "1001", "phone": "1"}
    )
    assert status == 400 and answer["msg"].startswith("body:")
    status, answer = await api.call(
        "POST",
        f"/dial_wav/{cid}",
        data=b"--b\r\ngarbage",
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert status == 400


async def test_unknown_route_and_method_answer_the_envelope(api: Api) -> None:
    status, _ = await api.call("GET", "/no/such/thing")
    assert status == 404
    status, _ = await api.call("DELETE", "/notify")
    assert status == 405


async def test_server_keeps_serving_after_a_storm_of_bad_input(api: Api) -> None:
    for raw in ("{", "[]", '{"phone": 1}', "\x00" * 100):
        await api.call("POST", "/api/dialplan", data=raw)
        await api.call("POST", "/api/account", data=raw)
    cid = await api.notify()
    assert cid
