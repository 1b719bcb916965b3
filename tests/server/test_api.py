"""Every route over a real socket on a real SQLite file: the seed examples and the 001 cycle."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
from aiohttp import web
from aiohttp.test_utils import TestClient

from sipclient.config import AuthSettings, ReuseSettings, ServerConfig
from sipclient.server.app import DISPATCH, create_app
from sipclient.server.dispatch import FakeClock
from sipclient.server.errors import task_json
from sipclient.server.store import iso_local
from tests.server.conftest import ACCOUNTS, Api, make_config, upload_form, wav_bytes

# The seeds' curl bodies, verbatim (seed 000_59e7b47d2d83e2b8.txt).
SEED_ACCOUNT_BODY = """{
    "account": [
        {
            "host": "192.168.10.51:5060",
            "name": "1004",
            "pwd": "1004"
        },
        {
            "host": "192.168.10.51:5060",
            "name": "1001",
            "pwd": "1001"
        },
        {
            "host": "192.168.10.51:5060",
            "name": "1002",
            "pwd": "1002"
        }
    ]
}"""

SEED_DIALPLAN_BODY = """{
    "phone": [
        "818871357213"
    ],
    "return_url": "http://127.0.0.1:5001"
}"""

DIALPLAN_KEYS = {"id", "phone", "client_id", "status", "result", "created_at", "updated_at"}


async def test_seed_000_examples_work_unchanged(api: Api) -> None:
    headers = {"Content-Type": "application/json"}
    data = await api.ok("POST", "/api/account", data=SEED_ACCOUNT_BODY, headers=headers)
    assert {(a["host"], a["name"], a["pwd"]) for a in data["accounts"]} == {
        ("192.168.10.51:5060", "1004", "1004"),
        ("192.168.10.51:5060", "1001", "1001"),
        ("192.168.10.51:5060", "1002", "1002"),
    }
    status, body = await api.call("POST", "/api/dialplan", data=SEED_DIALPLAN_BODY, headers=headers)
    assert status == 200 and body["msg"] is None
    task = body["data"]
    assert task["return_url"] == "http://127.0.0.1:5001"
    [plan] = task["dialplans"]
    assert DIALPLAN_KEYS | {"task_id"} <= set(plan)
    assert plan["phone"] == "818871357213" and plan["status"] == "free"
    assert plan["client_id"] is None and plan["result"] is None
    assert plan["task_id"] == task["task_id"]

    status, body = await api.call("GET", "/api/tasks?page=1&size=10", headers=headers)
    assert body["msg"] == "success"
    assert [t["id"] for t in body["data"]] == [task["task_id"]]
    assert set(body["data"][0]) == {"id", "status", "return_url", "created_at", "updated_at"}

    one = await api.ok("GET", f"/api/task/{task['task_id']}")
    same = await api.ok("GET", f"/api/tasks/{task['task_id']}")
    assert one == same
    assert one["status"] == "free" and one["dialplans"][0]["id"] == plan["id"]
    assert one["callback"]["state"] == "none"


async def test_account_push_updates_by_host_and_name_and_answers_the_pool(api: Api) -> None:
    await api.ok("POST", "/api/account", json={"account": ACCOUNTS})
    changed = [{"host": "127.0.0.1:5060", "name": "1001", "pwd": "new"}]
    pool = (await api.ok("POST", "/api/account", json={"account": changed}))["accounts"]
    assert len(pool) == 3
    assert {a["name"]: a["pwd"] for a in pool}["1001"] == "new"
    other_host = [{"host": "127.0.0.2:5060", "name": "1001", "pwd": "x"}]
    pool = (await api.ok("POST", "/api/account", json={"account": other_host}))["accounts"]
    assert len(pool) == 4


async def test_phones_kept_as_pushed_and_deduplicated(api: Api) -> None:
    phones = ["+86 138 0000 0000", "0086138", "0086138", "13800000000", "+86 138 0000 0000"]
    data = await api.ok(
        "POST", "/api/dialplan", json={"phone": phones, "return_url": "http://127.0.0.1:9/cb"}
    )
    assert [p["phone"] for p in data["dialplans"]] == [
        "+86 138 0000 0000",
        "0086138",
        "13800000000",
    ]


async def test_tasks_listed_newest_first_with_paging(api: Api) -> None:
    ids = []
    for i in range(5):
        body = {"phone": [str(1000 + i)], "return_url": "http://127.0.0.1:9/"}
        ids.append((await api.ok("POST", "/api/dialplan", json=body))["task_id"])
    first = await api.ok("GET", "/api/tasks?page=1&size=2")
    second = await api.ok("GET", "/api/tasks?page=2&size=2")
    third = await api.ok("GET", "/api/tasks?page=3&size=2")
    assert [t["id"] for t in first + second + third] == ids[::-1]
    assert [t["id"] for t in await api.ok("GET", "/api/tasks")] == ids[::-1]
    assert await api.ok("GET", "/api/tasks?page=9&size=2") == []


async def test_unknown_task_is_404_and_bad_id_400(api: Api) -> None:
    status, body = await api.call("GET", "/api/tasks/999")
    assert status == 404 and "task_id" in body["msg"]
    status, body = await api.call("GET", "/api/task/abc")
    assert status == 400 and "task_id" in body["msg"]


async def _setup(api: Api, phones: list[str], accounts: list[dict[str, str]] = ACCOUNTS) -> int:
    await api.ok("POST", "/api/account", json={"account": accounts})
    task = await api.ok(
        "POST", "/api/dialplan", json={"phone": phones, "return_url": "http://127.0.0.1:9/cb"}
    )
    return int(task["task_id"])


async def test_the_001_cycle_finishes_a_task(api: Api, config: ServerConfig) -> None:
    task_id = await _setup(api, ["111", "222"])
    cid = await api.notify()
    accounts = (await api.ok("GET", f"/accounts/{cid}?threadsNum=2"))["accounts"]
    assert [(a["extensionNum"], a["password"]) for a in accounts] == [
        ("1001", "p1001"),
        ("1002", "p1002"),
    ]
    assert accounts[0]["host"] == "127.0.0.1:5060"
    plans = (await api.ok("GET", f"/dialplan/{cid}"))["dialplans"]
    assert [(p["extensionNum"], p["phoneNum"]) for p in plans] == [("1001", "111"), ("1002", "222")]
    task = await api.ok("GET", f"/api/tasks/{task_id}")
    assert task["status"] == "running"
    assert [p["status"] for p in task["dialplans"]] == ["busy", "busy"]
    assert task["dialplans"][0]["client_id"] == cid

    # Busy extensions get nothing more.
    assert (await api.ok("GET", f"/dialplan/{cid}"))["dialplans"] == []
    ts = await api.ok("POST", f"/heartbeat/{cid}")
    assert ts["timestamp"].isdigit()
    await api.ok("GET", f"/status/{cid}?status=during&extensionNum=1001&phoneNum=111")

    status, body = await api.upload(cid, "1001", "111", sipCode=404)
    assert status == 200 and body["data"]["result"] == "empty"
    assert body["data"]["status"] == "finish"
    status, body = await api.upload(
        cid, "1002", "222", sipCode=486, q850Cause=17, ringMs=2500, startedAt="2026-01-01T10:00:00"
    )
    assert body["data"]["result"] == "busy"

    task = await api.ok("GET", f"/api/tasks/{task_id}")
    assert task["status"] == "finish"
    by_phone = {p["phone"]: p for p in task["dialplans"]}
    assert by_phone["111"]["result"] == "empty" and by_phone["111"]["status"] == "finish"
    detail = by_phone["222"]["detail"]
    assert detail["sip_code"] == 486 and detail["q850_cause"] == 17
    assert detail["answertype"] == "callee" and detail["answered"] == 0
    assert detail["duration"] == 2 and detail["calltime"] == "2026-01-01T10:00:00"
    assert detail["tries"] == 1 and detail["evidence"]["kind"] == "signalling"
    assert task["callback"]["state"] in ("pending", "failed")

    wavs = sorted(config.recordings.dir.rglob("*.wav"))
    assert len(wavs) == 2 and len({w.name for w in wavs}) == 2


async def test_a_seed_only_upload_works(api: Api) -> None:
    await _setup(api, ["555"])
    cid = await api.notify()
    await api.ok("GET", f"/accounts/{cid}?threadsNum=1")
    await api.ok("GET", f"/dialplan/{cid}")
    # Exactly the seed's three fields, a WAV with audio.
    status, body = await api.call(
        "POST", f"/dial_wav/{cid}", data=upload_form("1001", "555", wav_bytes(frames=800))
    )
    assert status == 200 and body["data"]["status"] == "finish"
    assert body["data"]["result"] in {"unknown", "ringing"}


async def test_the_push_answers_the_dialplans_as_the_task_shows_them(api: Api) -> None:
    # the push builds its answer from what it inserted (no read-back of the rows):
    # it must say exactly what GET /api/tasks/{id} says, a number finished at the
    # push (not dialable) included, over more than one encoding slice
    phones = [f"1{n:010d}" for n in range(4500)] + ["1380@x"]
    pushed = await api.ok(
        "POST", "/api/dialplan", json={"phone": phones, "return_url": "http://127.0.0.1:9/"}
    )
    task = await api.ok("GET", f"/api/tasks/{pushed['task_id']}")
    assert pushed["dialplans"] == task["dialplans"]
    assert [d["phone"] for d in pushed["dialplans"]] == phones
    assert pushed["dialplans"][-1]["status"] == "finish"
    assert pushed["dialplans"][-1]["detail"]["evidence"]["kind"] == "not_dialable"


def test_a_task_encoded_in_slices_is_the_same_json() -> None:
    plans = [{"id": i, "phone": f"1{i:05d}", "detail": {"x": [i, None]}} for i in range(4001)]
    for data in (
        {"task_id": 7, "dialplans": plans, "return_url": "http://h/é"},
        {"dialplans": plans},  # nothing else in data
        {"task_id": 7, "dialplans": plans[:3]},  # one slice: plain json.dumps
        {"task_id": 7, "dialplans": []},
    ):
        assert json.loads(task_json(data)) == {"code": 200, "msg": None, "data": data}
    assert json.loads(task_json({"dialplans": plans}, msg="ok"))["msg"] == "ok"


def _ringback_wav(seconds: float = 6.0) -> bytes:
    """The Chinese ringback (450 Hz, 1 s on, 4 s off) as a daemon records it."""
    t = np.arange(int(seconds * 8000)) / 8000
    on = (t % 5.0) < 1.0
    samples = (np.sin(2 * np.pi * 450 * t) * 6000 * on).astype(np.int16)
    buf = io.BytesIO()
    soundfile.write(buf, samples, 8000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


async def test_calltime_is_iso_local_time_whatever_startedat_carries(api: Api) -> None:
    task_id = await _setup(api, ["301", "302", "303"])
    cid = await api.notify()
    await api.ok("GET", f"/accounts/{cid}?threadsNum=3")
    await api.ok("GET", f"/dialplan/{cid}")
    epoch = 1795478928.346
    sent = {"301": str(int(epoch * 1000)), "302": str(int(epoch)), "303": "2026-01-01 10:00:00"}
    for ext, (phone, started) in zip(("1001", "1002", "1003"), sent.items(), strict=True):
        status, body = await api.upload(cid, ext, phone, sipCode=404, startedAt=started)
        assert status == 200, body
    task = await api.ok("GET", f"/api/tasks/{task_id}")
    got = {p["phone"]: p["detail"]["calltime"] for p in task["dialplans"]}
    # our daemon's epoch milliseconds (and seconds) become the seed's timestamp form
    assert got["301"] == got["302"] == iso_local(int(epoch))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", got["301"])
    assert got["303"] == "2026-01-01 10:00:00"  # a daemon's own rendering, kept


async def test_a_487_without_cancelledbyus_is_our_cancel_and_the_recording_decides(
    api: Api,
) -> None:
    # a daemon that sends PROTOCOL.md's (ext) fields but not ours: its 487 comes after
    # its own CANCEL, so a ringback recording says `ringing` (it was `failed`, 487 "not
    # ours", for every live number such a daemon hung up on)
    await _setup(api, ["401", "402"])
    cid = await api.notify()
    await api.ok("GET", f"/accounts/{cid}?threadsNum=2")
    await api.ok("GET", f"/dialplan/{cid}")
    form = upload_form("1001", "401", _ringback_wav(), sipCode=487, earlyMedia=1)
    status, body = await api.call("POST", f"/dial_wav/{cid}", data=form)
    assert status == 200 and body["data"]["result"] == "ringing", body
    # said outright, a 487 that was not ours is still a failure of the network
    form = upload_form("1002", "402", _ringback_wav(), sipCode=487, earlyMedia=1, cancelledByUs=0)
    status, body = await api.call("POST", f"/dial_wav/{cid}", data=form)
    assert status == 200 and body["data"]["result"] == "failed", body


async def test_account_lease_is_stable_and_exclusive(api: Api) -> None:
    await _setup(api, ["1"])
    a, b = await api.notify(), await api.notify()
    first = (await api.ok("GET", f"/accounts/{a}?threadsNum=2"))["accounts"]
    again = (await api.ok("GET", f"/accounts/{a}?threadsNum=2"))["accounts"]
    assert first == again
    rest = (await api.ok("GET", f"/accounts/{b}?threadsNum=5"))["accounts"]
    assert [r["extensionNum"] for r in rest] == ["1003"]  # only what is free
    more = (await api.ok("GET", f"/accounts/{a}?threadsNum=3"))["accounts"]
    assert len(more) == 2  # nothing left to top up with
    status, body = await api.call("GET", f"/accounts/{a}?threadsNum=0")
    assert status == 400 and "threadsNum" in body["msg"]
    status, body = await api.call("GET", f"/accounts/{a}")
    assert status == 400 and "threadsNum" in body["msg"]


async def test_same_name_on_two_hosts_is_not_leased_twice_to_one_client(api: Api) -> None:
    twins = [
        {"host": "127.0.0.1:5060", "name": "2001", "pwd": "a"},
        {"host": "127.0.0.2:5060", "name": "2001", "pwd": "b"},
    ]
    await _setup(api, ["1"], twins)
    cid = await api.notify()
    accounts = (await api.ok("GET", f"/accounts/{cid}?threadsNum=2"))["accounts"]
    assert [a["extensionNum"] for a in accounts] == ["2001"]


async def test_unregistered_extension_gets_no_number(api: Api) -> None:
    await _setup(api, ["1", "2"])
    cid = await api.notify()
    await api.ok("GET", f"/accounts/{cid}?threadsNum=2")
    await api.ok("GET", f"/status/{cid}?status=unregistered&extensionNum=1001&phoneNum=")
    plans = (await api.ok("GET", f"/dialplan/{cid}"))["dialplans"]
    assert [p["extensionNum"] for p in plans] == ["1002"]
    await api.ok("GET", f"/status/{cid}?status=idle&extensionNum=1001")
    plans = (await api.ok("GET", f"/dialplan/{cid}"))["dialplans"]
    assert [p["extensionNum"] for p in plans] == ["1001"]


async def test_status_validation(api: Api) -> None:
    await _setup(api, ["1"])
    cid = await api.notify()
    await api.ok("GET", f"/accounts/{cid}?threadsNum=1")
    status, body = await api.call("GET", f"/status/{cid}?status=dancing&extensionNum=1001")
    assert status == 400 and body["msg"].startswith("status:")
    status, body = await api.call("GET", f"/status/{cid}?status=idle")
    assert status == 400 and body["msg"].startswith("extensionNum:")
    status, body = await api.call("GET", f"/status/{cid}?status=idle&extensionNum=1003")
    assert status == 404 and body["msg"].startswith("extensionNum:")


async def test_transient_outcome_is_dialled_again_up_to_max_tries(
    api: Api, clock: FakeClock
) -> None:
    task_id = await _setup(api, ["777"])
    cid = await api.notify()
    await api.ok("GET", f"/accounts/{cid}?threadsNum=1")
    for attempt in (1, 2):
        [plan] = (await api.ok("GET", f"/dialplan/{cid}"))["dialplans"]
        assert plan["phoneNum"] == "777"
        status, body = await api.upload(cid, "1001", "777", sipCode=503)
        assert status == 200 and body["data"]["status"] == "free", attempt
        task = await api.ok("GET", f"/api/tasks/{task_id}")
        assert task["dialplans"][0]["tries"] == attempt
        assert task["dialplans"][0]["status"] == "free"
        await api.ok("GET", f"/status/{cid}?status=idle&extensionNum=1001")
        # retries.spacing (60 s, doubling): not again before it has passed
        clock.advance(60.0 * 2 ** (attempt - 1) - 1)
        assert (await api.ok("GET", f"/dialplan/{cid}"))["dialplans"] == [], attempt
        clock.advance(1.0)
    [plan] = (await api.ok("GET", f"/dialplan/{cid}"))["dialplans"]
    status, body = await api.upload(cid, "1001", "777", sipCode=503)
    assert body["data"]["status"] == "finish" and body["data"]["result"] == "failed"
    task = await api.ok("GET", f"/api/tasks/{task_id}")
    assert task["status"] == "finish"
    assert task["dialplans"][0]["detail"]["tries"] == 3  # retries.max_tries default


async def test_a_phone_in_two_tasks_is_never_dialled_twice_at_once(api: Api) -> None:
    # lead lists overlap: a second call while the first rings finds the line taken
    await _setup(api, ["888"])
    second = await api.ok(
        "POST",
        "/api/dialplan",
        json={"phone": ["888", "999"], "return_url": "http://127.0.0.1:9/cb"},
    )
    cid = await api.notify()
    await api.ok("GET", f"/accounts/{cid}?threadsNum=2")
    plans = (await api.ok("GET", f"/dialplan/{cid}"))["dialplans"]
    assert sorted(p["phoneNum"] for p in plans) == ["888", "999"]
    first_888 = next(p for p in plans if p["phoneNum"] == "888")
    status, _ = await api.upload(
        cid, first_888["extensionNum"], "888", sipCode=404, dialplanId=first_888["dialplanId"]
    )
    assert status == 200
    await api.ok(
        "GET", f"/status/{cid}?status=idle&extensionNum={first_888['extensionNum']}&phoneNum="
    )
    # 999's line is still busy; 888's line is free and the second copy goes now
    [again] = (await api.ok("GET", f"/dialplan/{cid}"))["dialplans"]
    assert again["phoneNum"] == "888" and again["dialplanId"] != first_888["dialplanId"]
    task = await api.ok("GET", f"/api/tasks/{second['task_id']}")
    assert task["dialplans"][0]["status"] == "busy"


async def test_dialplan_id_ext_field_names_the_number(api: Api) -> None:
    await _setup(api, ["42"])
    cid = await api.notify()
    await api.ok("GET", f"/accounts/{cid}?threadsNum=1")
    [plan] = (await api.ok("GET", f"/dialplan/{cid}"))["dialplans"]
    status, body = await api.upload(cid, "1001", "43", dialplanId=plan["dialplanId"])
    assert status == 409 and body["msg"].startswith("phone:")
    status, body = await api.upload(cid, "1001", "42", dialplanId=plan["dialplanId"] + 100)
    assert status == 404 and body["msg"].startswith("dialplanId:")
    status, body = await api.upload(cid, "1001", "42", dialplanId=plan["dialplanId"], sipCode=404)
    assert status == 200 and body["data"]["dialplanId"] == plan["dialplanId"]


async def test_upload_for_a_number_never_handed_out_is_404(api: Api) -> None:
    await _setup(api, ["42"])
    cid = await api.notify()
    status, body = await api.upload(cid, "1001", "42")
    assert status == 404 and body["msg"].startswith("phone:")


async def test_the_fleet_shows_each_daemon_with_its_lines_latest_status(
    api: Api, clock: FakeClock
) -> None:
    await _setup(api, ["13800000001", "13800000002"])
    box_a = await api.notify()
    box_b = await api.notify()
    await api.ok("GET", f"/accounts/{box_a}?threadsNum=2")
    await api.ok("GET", f"/accounts/{box_b}?threadsNum=1")
    [plan, _] = (await api.ok("GET", f"/dialplan/{box_a}"))["dialplans"]
    ext = plan["extensionNum"]
    await api.ok(
        "GET", f"/status/{box_a}?status=during&extensionNum={ext}&phoneNum={plan['phoneNum']}"
    )
    other = "1002" if ext == "1001" else "1001"
    await api.ok("GET", f"/status/{box_a}?status=unregistered&extensionNum={other}")
    clock.advance(5.0)
    await api.ok("POST", f"/heartbeat/{box_b}")
    fleet = await api.ok("GET", "/api/clients")
    assert [c["id"] for c in fleet["clients"]] == [box_b, box_a]  # last seen first
    a = fleet["clients"][1]
    assert a["state"] == "active" and a["busy_numbers"] == 2
    states = {e["extensionNum"]: (e["status"], e["phone"]) for e in a["extensions"]}
    assert states == {ext: ("during", plan["phoneNum"]), other: ("unregistered", "")}
    assert [e["status"] for e in fleet["clients"][0]["extensions"]] == ["unknown"]
    assert fleet["totals"] == {
        "clients": 2,
        "extensions": 3,
        "idle": 0,
        "during": 1,
        "call": 0,
        "unregistered": 1,
        "unknown": 1,
        "alerting": 0,
    }
    page = await api.ok("GET", "/api/clients?size=1&page=2")
    assert [c["id"] for c in page["clients"]] == [box_a] and page["totals"]["clients"] == 2
    assert (await api.ok("GET", "/api/clients?state=expired"))["clients"] == []
    status, body = await api.call("GET", "/api/clients?state=gone")
    assert status == 400 and body["msg"].startswith("state:")


async def test_the_fleet_shows_what_each_daemon_says_of_itself_and_forgets_it_at_expiry(
    api: Api, app: web.Application, clock: FakeClock
) -> None:
    # (ext) Before, an operator with fifty boxes saw from the server which lines were
    # unregistered, not which box's PBX had lost its route or whose loop ran late:
    # only each box's own STATUS= said so.
    box_a, box_b = await api.notify(), await api.notify()
    said = {
        "summary": "2/2 registered, 0 in call, 12 decided, route suspect (404 to every number)",
        "alerts": ["route_suspect", 7, ""],
        "decided": 12,
        "spooled": 3,
        "unknown_key": "dropped",
    }
    await api.ok("POST", f"/heartbeat/{box_a}", json=said)
    # unreadable bodies: the heartbeat still counts, and no health is shown
    for body in (b"not json", b"[1]", b'{"decided": -1, "alerts": "x"}', b"{" + b" " * 5000 + b"}"):
        await api.ok("POST", f"/heartbeat/{box_b}", data=body)
    fleet = await api.ok("GET", "/api/clients")
    health = {c["id"]: c["health"] for c in fleet["clients"]}
    assert health[box_b] is None
    at = health[box_a].pop("at")
    assert at and health[box_a] == {
        "summary": said["summary"],
        "alerts": ["route_suspect"],
        "decided": 12,
        "spooled": 3,
    }
    assert fleet["totals"]["alerting"] == 1
    await api.ok("POST", f"/heartbeat/{box_a}", json={"alerts": [], "decided": 13})
    fleet = await api.ok("GET", "/api/clients")
    assert fleet["totals"]["alerting"] == 0  # the latest beat is what counts
    clock.advance(61)  # past client_timeout: both expire, and what they said goes
    await app[DISPATCH].sweep()
    assert app[DISPATCH].health == {}
    expired = await api.ok("GET", "/api/clients?state=expired")
    assert [c["health"] for c in expired["clients"]] == [None, None]


async def test_with_tokens_set_each_api_wants_its_own_and_openapi_stays_open(
    tmp_path: Path,
    clock: FakeClock,
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient[Any, Any]]],
) -> None:
    config = make_config(tmp_path, auth=AuthSettings(api_token="push-1", client_token="box-2"))
    api = Api(await aiohttp_client(create_app(config, clock=clock)))
    push = {"Authorization": "Bearer push-1"}
    box = {"Authorization": "Bearer box-2"}
    body = {"phone": ["1"], "return_url": "http://x:9/"}
    for headers in ({}, {"Authorization": "Bearer box-2"}, {"Authorization": "Basic push-1"}):
        status, answer = await api.call("POST", "/api/dialplan", json=body, headers=headers)
        assert status == 401 and answer["msg"].startswith("authorization:"), headers
    assert (await api.ok("POST", "/api/dialplan", json=body, headers=push))["task_id"]
    status, _ = await api.call("GET", "/notify", headers=push)  # not the daemons' token
    assert status == 401
    assert (await api.ok("GET", "/notify", headers=box))["clientId"]
    status, _ = await api.call("GET", "/api/clients", headers=box)
    assert status == 401
    assert (await api.ok("GET", "/api/clients", headers=push))["totals"]["clients"] == 1
    async with api.client.get("/openapi.json") as resp:
        assert resp.status == 200


async def test_openapi_lists_every_route(api: Api, tmp_path: Path) -> None:
    async with api.client.get("/openapi.json") as resp:
        doc = await resp.json()
    assert doc["openapi"].startswith("3.")
    routes = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    served = {
        (r.method, r.resource.canonical)
        for r in api.client.app.router.routes()
        if r.resource is not None and r.method != "HEAD"
    }
    assert routes == served
    (tmp_path / "openapi.json").write_text(json.dumps(doc))


async def test_a_ring_timeout_cancel_after_180_is_no_answer(api: Api) -> None:
    await _setup(api, ["777", "778"])
    cid = await api.notify()
    await api.ok("GET", f"/accounts/{cid}?threadsNum=2")
    await api.ok("GET", f"/dialplan/{cid}")
    common = {"sipCode": 487, "ringing": 1, "cancelledByUs": 1}
    _, body = await api.upload(cid, "1001", "777", cancelReason="ring_timeout", **common)
    assert body["data"]["result"] == "no_answer", body
    _, body = await api.upload(cid, "1002", "778", cancelReason="verdict", **common)
    assert body["data"]["result"] == "ringing", body


async def test_a_number_no_call_can_carry_is_finished_at_push_never_handed_out(
    api: Api,
) -> None:
    # before, it was handed to a line, the call failed locally and came back unknown
    task_id = await _setup(api, ["555", "1380@x", "138 0000 0000"])
    cid = await api.notify()
    await api.ok("GET", f"/accounts/{cid}?threadsNum=2")
    plans = (await api.ok("GET", f"/dialplan/{cid}"))["dialplans"]
    assert sorted(p["phoneNum"] for p in plans) == ["138 0000 0000", "555"]
    task = await api.ok("GET", f"/api/tasks/{task_id}")
    bad = next(d for d in task["dialplans"] if d["phone"] == "1380@x")
    assert (bad["status"], bad["result"]) == ("finish", "unknown")
    assert bad["detail"]["evidence"]["kind"] == "not_dialable" and bad["detail"]["tries"] == 0
    assert task["status"] != "finish"


async def test_a_phone_decided_recently_gets_that_verdict_at_the_push_when_reuse_is_on(
    tmp_path: Path,
    clock: FakeClock,
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient[Any, Any]]],
) -> None:
    config = make_config(tmp_path, reuse=ReuseSettings(within=3600.0))
    api = Api(await aiohttp_client(create_app(config, clock=clock)))
    await _setup(api, ["404404", "503503", "486486"])
    cid = await api.notify()
    await api.ok("GET", f"/accounts/{cid}?threadsNum=3")
    plans = {p["phoneNum"]: p for p in (await api.ok("GET", f"/dialplan/{cid}"))["dialplans"]}
    for phone, fields in (
        ("404404", {"sipCode": 404, "q850Cause": 1}),
        ("503503", {"sipCode": 503}),  # transient: dialled again later, not a verdict
        ("486486", {"sipCode": 486}),
    ):
        plan = plans[phone]
        status, _ = await api.upload(
            cid, plan["extensionNum"], phone, dialplanId=plan["dialplanId"], **fields
        )
        assert status == 200
    clock.advance(1800.0)
    second = await api.ok(
        "POST",
        "/api/dialplan",
        json={"phone": ["404404", "503503", "486486", "900900"], "return_url": "http://x:9/"},
    )
    got = {d["phone"]: d for d in second["dialplans"]}
    assert (got["404404"]["status"], got["404404"]["result"]) == ("finish", "empty")
    assert (got["486486"]["status"], got["486486"]["result"]) == ("finish", "busy")
    assert got["503503"]["status"] == got["900900"]["status"] == "free"
    evidence = got["404404"]["detail"]["evidence"]
    assert evidence["kind"] == "reused" and evidence["dialplan_id"] == plans["404404"]["dialplanId"]
    assert evidence["evidence"]["kind"] == "signalling"
    assert got["404404"]["detail"]["tries"] == 0 and got["404404"]["detail"]["billsec"] == 0
    # a task of only such phones is finished at once, its callback due
    only = await api.ok(
        "POST", "/api/dialplan", json={"phone": ["486486"], "return_url": "http://x:9/"}
    )
    task = await api.ok("GET", f"/api/tasks/{only['task_id']}")
    assert task["status"] == "finish" and task["callback"]["state"] in ("pending", "failed")
    # an hour after the call (not after the reuse, which is no call): dialled again
    clock.advance(1801.0)
    third = await api.ok(
        "POST", "/api/dialplan", json={"phone": ["404404"], "return_url": "http://x:9/"}
    )
    assert third["dialplans"][0]["status"] == "free"


async def test_without_reuse_a_phone_decided_before_is_dialled_again(api: Api) -> None:
    await _setup(api, ["404405"])
    cid = await api.notify()
    await api.ok("GET", f"/accounts/{cid}?threadsNum=1")
    [plan] = (await api.ok("GET", f"/dialplan/{cid}"))["dialplans"]
    await api.upload(cid, plan["extensionNum"], "404405", sipCode=404)
    again = await api.ok(
        "POST", "/api/dialplan", json={"phone": ["404405"], "return_url": "http://x:9/"}
    )
    assert again["dialplans"][0]["status"] == "free"  # reuse.within is 0 by default


async def test_a_task_of_only_numbers_no_call_can_carry_is_finished_at_once(api: Api) -> None:
    task_id = await _setup(api, ["a@b", "sip:1"])
    task = await api.ok("GET", f"/api/tasks/{task_id}")
    assert task["status"] == "finish"
    assert {d["result"] for d in task["dialplans"]} == {"unknown"}
    assert task["callback"]["state"] in ("pending", "failed")
