"""Lease reclaim with the fake clock: silent clients, late uploads, never finished twice."""

from __future__ import annotations

from aiohttp import web

from sipclient.server.app import DISPATCH
from sipclient.server.dispatch import FakeClock
from tests.server.conftest import ACCOUNTS, Api

URL = "http://127.0.0.1:9/cb"


async def _push(api: Api, phones: list[str]) -> int:
    await api.ok("POST", "/api/account", json={"account": ACCOUNTS})
    task = await api.ok("POST", "/api/dialplan", json={"phone": phones, "return_url": URL})
    return int(task["task_id"])


async def _statuses(api: Api, task_id: int) -> dict[str, tuple[str, str | None]]:
    task = await api.ok("GET", f"/api/tasks/{task_id}")
    return {p["phone"]: (p["status"], p["client_id"]) for p in task["dialplans"]}


async def test_silent_client_loses_accounts_and_numbers(
    api: Api, app: web.Application, clock: FakeClock
) -> None:
    task_id = await _push(api, ["100", "200", "300"])
    a = await api.notify()
    await api.ok("GET", f"/accounts/{a}?threadsNum=2")
    plans = (await api.ok("GET", f"/dialplan/{a}"))["dialplans"]
    assert [p["phoneNum"] for p in plans] == ["100", "200"]
    b = await api.notify()
    assert [
        x["extensionNum"] for x in (await api.ok("GET", f"/accounts/{b}?threadsNum=3"))["accounts"]
    ] == ["1003"]

    # 59 s of silence from a: nothing happens.
    clock.advance(59)
    await api.ok("POST", f"/heartbeat/{b}")
    out = await app[DISPATCH].sweep()
    assert out.expired_clients == []

    # Past client_timeout (60 s): a is expired, b (heard 2 s ago) is not.
    clock.advance(2)
    await api.ok("POST", f"/heartbeat/{b}")
    out = await app[DISPATCH].sweep()
    assert out.expired_clients == [a]
    assert out.freed_by_client == 2
    assert await _statuses(api, task_id) == {
        "100": ("free", None),
        "200": ("free", None),
        "300": ("free", None),
    }

    # a's control calls now fail so its daemon calls /notify again.
    for method, path in (
        ("POST", f"/heartbeat/{a}"),
        ("GET", f"/dialplan/{a}"),
        ("GET", f"/accounts/{a}?threadsNum=1"),
    ):
        status, body = await api.call(method, path)
        assert status == 404 and "expired" in body["msg"]

    # b takes over a's accounts and numbers.
    accounts = (await api.ok("GET", f"/accounts/{b}?threadsNum=3"))["accounts"]
    assert sorted(x["extensionNum"] for x in accounts) == ["1001", "1002", "1003"]
    plans = (await api.ok("GET", f"/dialplan/{b}"))["dialplans"]
    assert sorted(p["phoneNum"] for p in plans) == ["100", "200", "300"]

    # A late upload from a for "100" (busy with b now, unfinished): accepted.
    status, body = await api.upload(a, "1001", "100", sipCode=404)
    assert status == 200 and body["data"]["result"] == "empty"
    # b's own upload of the same number is then refused: never finished twice.
    ext_100 = next(p["extensionNum"] for p in plans if p["phoneNum"] == "100")
    status, body = await api.upload(b, ext_100, "100", sipCode=486)
    assert status == 409 and "already finished" in body["msg"]
    # a's second late upload of it: refused too.
    status, body = await api.upload(a, "1001", "100", sipCode=404)
    assert status == 409

    for p in plans:
        if p["phoneNum"] != "100":
            status, _ = await api.upload(b, p["extensionNum"], p["phoneNum"], sipCode=486)
            assert status == 200
    task = await api.ok("GET", f"/api/tasks/{task_id}")
    assert task["status"] == "finish"
    results = {p["phone"]: (p["result"], p["client_id"], p["tries"]) for p in task["dialplans"]}
    assert results == {"100": ("empty", a, 1), "200": ("busy", b, 1), "300": ("busy", b, 1)}


async def test_status_and_any_call_count_as_liveness(
    api: Api, app: web.Application, clock: FakeClock
) -> None:
    await _push(api, ["1"])
    a = await api.notify()
    await api.ok("GET", f"/accounts/{a}?threadsNum=1")
    for _ in range(5):
        clock.advance(50)
        await api.ok("GET", f"/status/{a}?status=idle&extensionNum=1001&phoneNum=")
        assert (await app[DISPATCH].sweep()).expired_clients == []
    clock.advance(50)
    await api.ok("GET", f"/dialplan/{a}")
    clock.advance(50)
    assert (await app[DISPATCH].sweep()).expired_clients == []
    clock.advance(11)
    assert (await app[DISPATCH].sweep()).expired_clients == [a]


async def test_number_held_too_long_is_freed_even_if_client_lives(
    api: Api, app: web.Application, clock: FakeClock
) -> None:
    task_id = await _push(api, ["9"])
    a = await api.notify()
    await api.ok("GET", f"/accounts/{a}?threadsNum=1")
    await api.ok("GET", f"/dialplan/{a}")
    for _ in range(11):  # 605 s, heartbeating: the client lives, the number does not
        clock.advance(55)
        await api.ok("POST", f"/heartbeat/{a}")
    out = await app[DISPATCH].sweep()
    assert out.expired_clients == [] and out.freed_by_timeout == 1
    assert await _statuses(api, task_id) == {"9": ("free", None)}
    # Handed out again, to the same idle extension.
    [plan] = (await api.ok("GET", f"/dialplan/{a}"))["dialplans"]
    assert plan["phoneNum"] == "9"
    status, _ = await api.upload(a, "1001", "9", sipCode=404)
    assert status == 200
    assert await _statuses(api, task_id) == {"9": ("finish", a)}


async def test_late_upload_for_a_freed_unleased_number_finishes_it(
    api: Api, app: web.Application, clock: FakeClock
) -> None:
    task_id = await _push(api, ["5"])
    a = await api.notify()
    await api.ok("GET", f"/accounts/{a}?threadsNum=1")
    await api.ok("GET", f"/dialplan/{a}")
    clock.advance(61)
    await app[DISPATCH].sweep()
    assert await _statuses(api, task_id) == {"5": ("free", None)}
    status, body = await api.upload(a, "1001", "5", sipCode=404)
    assert status == 200 and body["data"]["status"] == "finish"
    assert await _statuses(api, task_id) == {"5": ("finish", a)}
    # Nobody gets it again.
    b = await api.notify()
    await api.ok("GET", f"/accounts/{b}?threadsNum=3")
    assert (await api.ok("GET", f"/dialplan/{b}"))["dialplans"] == []


async def test_expired_client_restarting_with_notify_gets_work(
    api: Api, app: web.Application, clock: FakeClock
) -> None:
    await _push(api, ["1", "2"])
    a = await api.notify()
    await api.ok("GET", f"/accounts/{a}?threadsNum=2")
    await api.ok("GET", f"/dialplan/{a}")
    clock.advance(120)
    await app[DISPATCH].sweep()
    a2 = await api.notify()
    assert a2 != a
    assert len((await api.ok("GET", f"/accounts/{a2}?threadsNum=2"))["accounts"]) == 2
    assert len((await api.ok("GET", f"/dialplan/{a2}"))["dialplans"]) == 2


async def test_idle_after_the_hand_out_frees_the_extension_before_the_upload(
    api: Api, clock: FakeClock
) -> None:
    """The daemon says idle once the result is in its spool: the line's next number
    comes at once, the first stays busy until its upload, and a stale idle frees nothing."""
    task_id = await _push(api, ["11", "22", "33"])
    a = await api.notify()
    await api.ok("GET", f"/accounts/{a}?threadsNum=1")
    clock.advance(1)
    # an idle recorded before the hand-out (the line's state after registering)
    await api.ok("GET", f"/status/{a}?status=idle&extensionNum=1001&phoneNum=")
    clock.advance(1)
    [first] = (await api.ok("GET", f"/dialplan/{a}"))["dialplans"]
    assert first["phoneNum"] == "11"
    clock.advance(1)
    assert (await api.ok("GET", f"/dialplan/{a}"))["dialplans"] == []  # stale idle
    await api.ok("GET", f"/status/{a}?status=during&extensionNum=1001&phoneNum=11")
    clock.advance(1)
    assert (await api.ok("GET", f"/dialplan/{a}"))["dialplans"] == []  # in a call
    await api.ok("GET", f"/status/{a}?status=idle&extensionNum=1001&phoneNum=")
    clock.advance(1)
    [second] = (await api.ok("GET", f"/dialplan/{a}"))["dialplans"]
    assert (second["extensionNum"], second["phoneNum"]) == ("1001", "22")
    assert await _statuses(api, task_id) == {
        "11": ("busy", a),
        "22": ("busy", a),
        "33": ("free", None),
    }
    clock.advance(1)
    assert (await api.ok("GET", f"/dialplan/{a}"))["dialplans"] == []  # 22 is out now
    # the first upload arrives late: it finishes its own number, frees nothing more
    status, _ = await api.upload(a, "1001", "11", sipCode=404)
    assert status == 200
    assert (await api.ok("GET", f"/dialplan/{a}"))["dialplans"] == []
    status, _ = await api.upload(a, "1001", "22", sipCode=404)
    assert status == 200
    [third] = (await api.ok("GET", f"/dialplan/{a}"))["dialplans"]
    assert third["phoneNum"] == "33"
    assert (await _statuses(api, task_id))["11"] == ("finish", a)


async def test_a_client_that_leaves_releases_its_lease_at_once(api: Api) -> None:
    task_id = await _push(api, ["400", "500", "600"])
    a = await api.notify()
    await api.ok("GET", f"/accounts/{a}?threadsNum=3")
    plans = (await api.ok("GET", f"/dialplan/{a}"))["dialplans"]
    await api.upload(a, plans[0]["extensionNum"], plans[0]["phoneNum"], sipCode=404)
    # (ext) the daemon stops: its accounts and the numbers still out on it come back now
    assert await api.ok("POST", f"/leave/{a}") == {"accounts": 3, "numbers": 2}
    statuses = await _statuses(api, task_id)
    assert statuses["500"] == ("free", None) and statuses["600"] == ("free", None)
    b = await api.notify()
    leased = (await api.ok("GET", f"/accounts/{b}?threadsNum=3"))["accounts"]
    assert len(leased) == 3
    # gone for good: leaving again, or any other call, is the unknown-client 404
    for method, path in (("POST", f"/leave/{a}"), ("POST", f"/heartbeat/{a}")):
        code, _ = await api.call(method, path)
        assert code == 404
    code, _ = await api.call("POST", "/leave/nosuchclient")
    assert code == 404


async def test_the_same_calls_upload_again_is_taken_once_another_call_is_refused(
    api: Api,
) -> None:
    # A daemon sends an upload again when the reply to it was lost (a kill -9
    # between our 200 and its spool's unlink). That copy was refused 409 and set
    # aside in the daemon's refused/ (three at once in soak 21); a transient one
    # counted a second try.
    task_id = await _push(api, ["100", "200"])
    cid = await api.notify()
    await api.ok("GET", f"/accounts/{cid}?threadsNum=2")
    plans = {p["phoneNum"]: p for p in (await api.ok("GET", f"/dialplan/{cid}"))["dialplans"]}
    one, two = plans["100"], plans["200"]
    call = {"sipCode": 404, "startedAt": "1795551121126", "dialplanId": one["dialplanId"]}
    status, _ = await api.upload(cid, one["extensionNum"], "100", **call)
    assert status == 200
    again = await api.notify()  # the daemon restarted: another clientId
    status, body = await api.upload(again, one["extensionNum"], "100", **call)
    assert status == 200 and body["data"]["status"] == "finish", body
    # another call of that number (another startedAt) is still refused
    other = dict(call, startedAt="1795551129999")
    status, body = await api.upload(again, one["extensionNum"], "100", **other)
    assert status == 409 and "already finished" in body["msg"]
    # a transient outcome sent twice counts one try, not two
    busy = {"sipCode": 503, "startedAt": "1795551130000", "dialplanId": two["dialplanId"]}
    for _ in range(2):
        status, body = await api.upload(cid, two["extensionNum"], "200", **busy)
        assert status == 200 and body["data"]["status"] == "free", body
    task = await api.ok("GET", f"/api/tasks/{task_id}")
    tries = {p["phone"]: (p["status"], p["tries"]) for p in task["dialplans"]}
    assert tries == {"100": ("finish", 1), "200": ("free", 1)}


async def test_an_idle_asking_next_gets_the_lines_next_number_in_its_reply(
    api: Api, clock: FakeClock
) -> None:
    """(ext) GET /status idle with next=1: the extension's next number comes in the
    reply (a daemon's round trip to GET /dialplan saved); only that extension's, only
    for idle, and a line already served gets none from either call."""
    await _push(api, ["11", "22", "33"])
    a = await api.notify()
    await api.ok("GET", f"/accounts/{a}?threadsNum=2")
    clock.advance(1)
    data = await api.ok("GET", f"/status/{a}?status=idle&extensionNum=1001&next=1")
    [first] = data["dialplans"]
    assert (first["extensionNum"], first["phoneNum"]) == ("1001", "11")
    assert first["leaseSeconds"] > 0 and "timestamp" in data
    clock.advance(1)
    # GET /dialplan now serves only the other line: 1001 holds 11
    [other] = (await api.ok("GET", f"/dialplan/{a}"))["dialplans"]
    assert (other["extensionNum"], other["phoneNum"]) == ("1002", "22")
    clock.advance(1)
    # without next, or for another state, the reply carries no numbers
    data = await api.ok("GET", f"/status/{a}?status=during&extensionNum=1001&next=1")
    assert "dialplans" not in data
    clock.advance(1)
    data = await api.ok("GET", f"/status/{a}?status=idle&extensionNum=1001")
    assert "dialplans" not in data
    clock.advance(1)
    # that idle freed 1001 (its result is in the spool): the next asks get 33, then none
    data = await api.ok("GET", f"/status/{a}?status=idle&extensionNum=1002&next=1")
    [third] = data["dialplans"]
    assert (third["extensionNum"], third["phoneNum"]) == ("1002", "33")
    assert (await api.ok("GET", f"/dialplan/{a}"))["dialplans"] == []
    status, body = await api.call("GET", f"/status/{a}?status=idle&extensionNum=1001&next=4")
    assert status == 400 and body["msg"].startswith("next:")


async def _line_states(api: Api) -> dict[str, tuple[str, str]]:
    [box] = (await api.ok("GET", "/api/clients"))["clients"]
    return {e["extensionNum"]: (e["status"], e["phone"]) for e in box["extensions"]}


async def test_the_number_handed_with_an_idle_records_its_line_during_it(
    api: Api, clock: FakeClock
) -> None:
    """(ext) The extension handed a number in its idle's reply is recorded `during`
    it (`duringRecorded`), so the daemon need not say so; without a number, or
    without `next`, the idle stands; and that line's next idle frees it again."""
    await _push(api, ["11"])
    a = await api.notify()
    await api.ok("GET", f"/accounts/{a}?threadsNum=2")
    clock.advance(1)
    data = await api.ok("GET", f"/status/{a}?status=idle&extensionNum=1001&next=1")
    assert data["duringRecorded"] is True and len(data["dialplans"]) == 1
    clock.advance(1)
    data = await api.ok("GET", f"/status/{a}?status=idle&extensionNum=1002&next=1")
    assert data["dialplans"] == []
    clock.advance(1)
    await api.ok("GET", f"/status/{a}?status=idle&extensionNum=1002")
    assert await _line_states(api) == {"1001": ("during", "11"), "1002": ("idle", "")}
    # 1001 is not free while 11 is out on it, as after a "during" it sent itself
    await _push(api, ["22"])
    clock.advance(1)
    [plan] = (await api.ok("GET", f"/dialplan/{a}"))["dialplans"]
    assert plan["extensionNum"] == "1002"
    clock.advance(1)
    data = await api.ok("GET", f"/status/{a}?status=idle&extensionNum=1001&next=1")
    assert data["dialplans"] == [] and (await _line_states(api))["1001"] == ("idle", "")


async def _held_with_during(
    api: Api, clock: FakeClock, client_id: str, ext: str, phone: str, want: int
) -> list[str]:
    """A second later, `ext` says it dials `phone`, asking to hold `want`: the numbers
    handed."""
    clock.advance(1)
    data = await api.ok(
        "GET",
        f"/status/{client_id}?status=during&extensionNum={ext}&phoneNum={phone}&next={want}",
    )
    assert "duringRecorded" not in data  # the held number is not being dialled
    return [p["phoneNum"] for p in data["dialplans"]]


async def test_a_during_asking_next_gets_one_number_to_hold_while_it_dials(
    api: Api, clock: FakeClock
) -> None:
    """(ext) GET /status during with next=1: a number for the line to hold while it
    dials phoneNum, only when none was handed to it after that one (so a line
    holds one at most), and while free numbers are more than three times the lines
    leased; it stays the line's alone: GET /dialplan passes it by."""
    await _push(api, ["11", "22", "33", "44", "55", "66", "77", "88", "99", "100"])
    a = await api.notify()
    await api.ok("GET", f"/accounts/{a}?threadsNum=2")

    async def during(ext: str, phone: str) -> list[str]:
        return await _held_with_during(api, clock, a, ext, phone, 1)

    clock.advance(1)
    [first] = (await api.ok("GET", f"/status/{a}?status=idle&extensionNum=1001&next=1"))[
        "dialplans"
    ]
    assert first["phoneNum"] == "11"
    assert await during("1001", "11") == ["22"]
    assert await during("1001", "11") == []  # it holds 22 already
    assert await during("1001", "22") == ["33"]  # 22 started: 33 to hold
    clock.advance(1)
    [other] = (await api.ok("GET", f"/dialplan/{a}"))["dialplans"]
    assert (other["extensionNum"], other["phoneNum"]) == ("1002", "44")
    assert await during("1002", "11") == []  # not a number out on 1002
    # 55 to 100 are left for 2 lines: the list's end is not held behind a call
    assert await during("1002", "44") == []
    assert (await _line_states(api))["1001"] == ("during", "22")
    clock.advance(1)
    data = await api.ok("GET", f"/status/{a}?status=idle&extensionNum=1002&next=1")
    assert [p["phoneNum"] for p in data["dialplans"]] == ["55"]
    # without next, a during hands nothing
    clock.advance(1)
    data = await api.ok("GET", f"/status/{a}?status=during&extensionNum=1001&phoneNum=33")
    assert "dialplans" not in data


async def test_a_during_asking_next_2_keeps_two_numbers_held_behind_the_call(
    api: Api, clock: FakeClock
) -> None:
    """(ext) next=N with "during": so many numbers that the line holds N after the
    number it dials. Asked again (a reply lost, the state sent twice), nothing more;
    never more than three held; a next the server does not know is a 400."""
    await _push(api, [str(n) for n in range(10, 40)])
    a = await api.notify()
    await api.ok("GET", f"/accounts/{a}?threadsNum=1")

    async def during(phone: str, want: int) -> list[str]:
        return await _held_with_during(api, clock, a, "1001", phone, want)

    clock.advance(1)
    [first] = (await api.ok("GET", f"/status/{a}?status=idle&extensionNum=1001&next=1"))[
        "dialplans"
    ]
    assert first["phoneNum"] == "10"
    assert await during("10", 2) == ["11", "12"]
    assert await during("10", 2) == []  # asked twice: it holds two already
    assert await during("11", 2) == ["13"]  # 11 started: 12 and 13 held
    assert await during("12", 3) == ["14", "15"]  # 13, 14, 15
    assert await during("13", 1) == []  # 14 and 15 held: more than asked
    # 13 ended at once and its upload came before its "during" (a 486 in 3 ms, a
    # round trip to the server of 100 ms): what the line holds after it still counts
    status, _ = await api.upload(a, "1001", "13")
    assert status == 200
    assert await during("13", 3) == ["16"]
    status, body = await api.call(
        "GET", f"/status/{a}?status=during&extensionNum=1001&phoneNum=13&next=4"
    )
    assert status == 400 and body["msg"].startswith("next:")
    # the line's own: no other hand-out takes them
    assert (await api.ok("GET", f"/dialplan/{a}"))["dialplans"] == []
