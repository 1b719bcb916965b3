"""The whole system on loopback: every verdict class, a daemon killed -9, the server away,
kamailio restarted, 5 % RTP loss. Numbers are few and timeouts short (see conftest)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sipclient.classify.templates import TemplateLibrary
from sipclient.demo import (
    CARRIERS,
    FAKE_ANSWER,
    LIVE_EXTRAS,
    Carrier,
    World,
    carrier_for,
    numbers_for,
)
from sipclient.lab.kamailio import Route
from sipclient.lab.sipp import Sipp

pytestmark = pytest.mark.peers

FAST = tuple(c for c in CARRIERS if c.name in {"empty_404_cause1", "busy_486", "unreachable_480"})
SERVER_AWAY_S = 30.0
"""How long the server stays away mid-run (the issue asks for 30 s)."""
MEDIA = tuple(
    c for c in CARRIERS if c.name in {"empty_announcement", "busy_tone", "ringing_ringback"}
)


def _wrong(world: World, phones: list[str]) -> list[tuple[str, str, str]]:
    out = []
    for p in phones:
        c = carrier_for(p, world.options.carriers)
        assert c is not None
        got = world.receiver.verdicts.results[p][0]
        if got != c.expected and got not in c.also_ok:
            out.append((p, c.name, got))
    return out


def _daemon_log(world: World) -> str:
    return (world.workdir / "daemon" / "daemon.log").read_text(errors="replace")


def _events(world: World) -> list[dict[str, object]]:
    """The daemon's JSON log lines."""
    out = []
    for line in _daemon_log(world).splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


async def _run(world: World, phones: list[str], timeout: float) -> None:
    await world.push_numbers(phones)
    done = await world.wait_for(phones, timeout)
    missing = sorted(set(phones) - set(world.receiver.verdicts.results))
    assert done, f"no verdict for {missing}"


async def _all_right_once(
    world: World, phones: list[str], timeout: float, earlier: list[str] | None = None
) -> None:
    """Every number of `phones` gets its verdict within `timeout`; those and `earlier`
    ones all right, each delivered once."""
    assert await world.wait_for(phones, timeout), sorted(
        set(phones) - set(world.receiver.verdicts.results)
    )
    judged = (earlier or []) + phones
    assert _wrong(world, judged) == []
    assert all(world.receiver.verdicts.deliveries[p] == 1 for p in judged)


async def test_every_verdict_class_arrives_at_the_return_url(
    make_world: Callable[..., World],
) -> None:
    carriers = (*CARRIERS, *LIVE_EXTRAS, FAKE_ANSWER)
    # the fake answer's clip is decided ~2.2 s into its audio: a listen window of 10 s
    # (the default is 4) keeps that inside it on a box several times slower than ours
    world = make_world(lines=len(carriers), carriers=carriers, answer_listen=10.0)
    await world.start()
    phones = numbers_for(len(carriers), carriers)
    await _run(world, phones, 90)
    assert _wrong(world, phones) == []
    got = {world.receiver.verdicts.results[p][0] for p in phones}
    expected = {"empty", "busy", "ringing", "powered_off", "suspended", "unreachable", "failed"}
    assert expected | {"answered", "rejected"} <= got
    deliveries = world.receiver.verdicts.deliveries
    assert all(n == 1 for n in deliveries.values()), deliveries
    # each call's time reaches the callback as the seed's timestamps are written
    calltimes = [world.receiver.verdicts.results[p][1]["calltime"] for p in phones]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", t) for t in calltimes), calltimes
    # the callee who answered was hung up on by our BYE (nothing billed past the answer)
    answered = [m.method for m in world.carriers["answered_200"].messages() if m.method]
    assert answered[-2:] == ["ACK", "BYE"], answered
    # a carrier answering an unringing number to play "empty" (假应答) is heard out:
    # empty, not answered, and our BYE ends it
    (fake,) = [p for p in phones if p.startswith(FAKE_ANSWER.prefix)]
    result, detail = world.receiver.verdicts.results[fake]
    assert result == "empty" and detail["evidence"].get("fake_answer") is True, detail
    faked = [m.method for m in world.carriers[FAKE_ANSWER.name].messages() if m.method]
    assert faked[-2:] == ["ACK", "BYE"], faked
    # seed 002's answertype: connected when the network answered (the fake answer
    # too: its carrier bills it, so billsec says so), caller for our side's failure
    for p in phones:
        result, detail = world.receiver.verdicts.results[p]
        answered = result == "answered" or p.startswith(FAKE_ANSWER.prefix)
        kind = "connected" if answered else "caller" if result == "failed" else "callee"
        assert (detail["answertype"], detail["answered"]) == (kind, int(answered)), (p, detail)
        assert detail["billsec"] == 0 or answered, (p, detail)
    assert world.receiver.verdicts.results[fake][1]["billsec"] >= 1
    # a call's one line at info carries clientId, extension, phone, call-id and RTP counters
    lines = [json.loads(x) for x in _daemon_log(world).splitlines() if x.startswith("{")]
    call_lines = [x for x in lines if x.get("event") == "call_classified"]
    assert sorted(x["phone"] for x in call_lines) == sorted(phones)
    for x in call_lines:
        assert x["client_id"] and x["extension"] and x["call_id"], x
        assert "sip_code" in x and "q850" in x and x["ended_by"], x
    media = [x for x in call_lines if x["media_ms"]]
    assert media and all(x["rtp"]["packets"] > 0 for x in media)
    # and nothing else a call does is logged at info (it was five lines a call)
    per_call = ("call_ended", "rtp_closed", "call_done", "uploaded")
    assert not [x for x in lines if x.get("event") in per_call]


async def _killed_and_restarted(
    world: World, phones: list[str], down_s: float, timeout: float
) -> None:
    """kill -9 the daemon, start it again `down_s` later: every number of `phones`
    still gets its verdict, right and delivered once."""
    world.kill_daemon()
    await asyncio.sleep(down_s)
    world.start_daemon()
    assert await world.wait_for(phones, timeout), sorted(
        set(phones) - set(world.receiver.verdicts.results)
    )
    assert world.receiver.verdicts.duplicates == []
    assert all(world.receiver.verdicts.deliveries[p] == 1 for p in phones)
    assert _wrong(world, phones) == []


async def test_kill_9_mid_call_and_restart_every_number_finishes_once(
    make_world: Callable[..., World],
) -> None:
    world = make_world(lines=3, carriers=MEDIA + FAST)
    await world.start()
    phones = numbers_for(9, world.options.carriers)
    await world.push_numbers(phones)
    # wait until calls are in flight (a carrier saw an INVITE), then kill -9
    async with asyncio.timeout(30):
        while not any(
            s.messages() and any(m.method == "INVITE" for m in s.messages())
            for s in world.carriers.values()
        ):
            await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    await _killed_and_restarted(world, phones, down_s=1.0, timeout=120)


async def test_numbers_held_ahead_through_a_kill_9_each_finish_once(
    make_world: Callable[..., World],
) -> None:
    """The look-ahead with real peers: 2 lines and 14 numbers, so the server hands
    each line its next number while it dials (more than twice the lines are free).
    A kill -9 while lines hold such numbers: those were never dialled, the server
    hands them out again once the dead client expires, and every number still
    finishes once, right. Then the restarted daemon's own calls start from held
    numbers too (its `stopped` line counts them)."""
    world = make_world(lines=2, carriers=MEDIA + FAST)
    await world.start()
    phones = numbers_for(14, world.options.carriers)
    await world.push_numbers(phones)
    db = world.workdir / "server" / "sipclient.db"

    def held() -> int:
        # numbers handed to a line after the "during" of the call it dials: held ahead
        with contextlib.closing(sqlite3.connect(db)) as conn:
            (n,) = conn.execute(
                "SELECT COUNT(*) FROM dialplans d JOIN accounts a ON d.account_id = a.id"
                " WHERE d.status = 'busy' AND a.state = 'during'"
                " AND d.phone != a.state_phone AND d.leased_at >= a.state_at"
            ).fetchone()
        return int(n)

    async with asyncio.timeout(30):
        while held() < 1:
            await asyncio.sleep(0.02)
    await _killed_and_restarted(world, phones, down_s=0.5, timeout=150)
    later = numbers_for(28, world.options.carriers)[14:]
    await world.push_numbers(later)
    await _all_right_once(world, later, 90, earlier=phones)
    assert await asyncio.to_thread(world.stop_daemon) == 0
    (stopped,) = [e for e in _events(world) if e.get("event") == "stopped"]
    assert isinstance(stopped["started_held"], int) and stopped["started_held"] >= 2, stopped


async def test_server_away_mid_run_nothing_is_lost_and_the_spool_drains(
    make_world: Callable[..., World],
) -> None:
    world = make_world(lines=3, carriers=FAST + MEDIA)
    await world.start()
    phones = numbers_for(8, world.options.carriers)
    await world.push_numbers(phones)
    async with asyncio.timeout(30):
        while not any(m.method == "INVITE" for s in world.carriers.values() for m in s.messages()):
            await asyncio.sleep(0.1)
    await asyncio.to_thread(world.stop_server)
    away_since = time.monotonic()
    spool = world.workdir / "daemon" / "spool"
    # calls in flight end meanwhile: their uploads wait in the spool
    async with asyncio.timeout(40):
        while not list(spool.glob("*.json")):
            await asyncio.sleep(0.2)
    # the outage: 30 s, longer than the heartbeat interval and the dialplan backoff cap
    await asyncio.sleep(max(0.0, SERVER_AWAY_S - (time.monotonic() - away_since)))
    await asyncio.to_thread(world.start_server)
    assert await world.wait_for(phones, 120), sorted(
        set(phones) - set(world.receiver.verdicts.results)
    )
    async with asyncio.timeout(20):
        while list(spool.glob("*.json")):
            await asyncio.sleep(0.2)
    assert _wrong(world, phones) == []
    assert world.receiver.verdicts.duplicates == []


def _registrations_since(world: World, since: str) -> set[str]:
    """Extensions the user agents logged as registered at or after `since` (ISO time)."""
    out = set()
    log = _daemon_log(world)
    for line in log.splitlines():
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        fresh = event.get("timestamp", "") >= since
        if event.get("event") == "registered" and event.get("expires") is not None and fresh:
            out.add(str(event.get("extension")))
    return out


async def test_kamailio_restarted_extensions_register_again_and_dialling_resumes(
    make_world: Callable[..., World],
) -> None:
    world = make_world(lines=2, carriers=FAST, register_expires=30)
    await world.start()
    first = numbers_for(3, FAST)
    await _run(world, first, 60)
    await asyncio.to_thread(world.restart_kamailio)
    restarted = datetime.datetime.now().isoformat()
    second = [f"{c.prefix}9{i:03d}" for i, c in enumerate(FAST)]
    await _run(world, second, 90)
    assert _wrong(world, first + second) == []
    # the new kamailio knows nothing of us until the refresh: both register again
    async with asyncio.timeout(60):
        while _registrations_since(world, restarted) != set(world.extensions):
            await asyncio.sleep(0.5)


async def test_a_pbx_that_answers_nothing_for_a_while_misjudges_no_number(
    make_world: Callable[..., World],
) -> None:
    # T1 0.1 s: Timer B and F are 6.4 s. Before, every number dialled while kamailio
    # was hung came back `failed` (408, no response) and was final.
    world = make_world(lines=2, carriers=FAST, sip_t1=0.1)
    await world.start()
    first = numbers_for(3, FAST)
    await _run(world, first, 60)
    assert world.kamailio is not None
    world.kamailio.freeze()
    try:
        second = [f"{c.prefix}8{i:03d}" for i, c in enumerate(FAST * 2)]
        await world.push_numbers(second)
        async with asyncio.timeout(40):
            while _daemon_log(world).count('"unregistered_after_fault"') < 2:
                await asyncio.sleep(0.3)
        # both lines held their number and asked the registrar, which did not answer
        assert world.receiver.verdicts.results.keys().isdisjoint(second)
    finally:
        world.kamailio.freeze(False)
    await _all_right_once(world, second, 90, earlier=first)
    log = _daemon_log(world)
    assert log.count('"pbx_fault"') >= 2 and '"pbx_fault_number_failed"' not in log


async def test_a_trunk_failing_every_call_spends_few_numbers_the_rest_wait_for_it(
    make_world: Callable[..., World],
) -> None:
    """Every carrier hung (SIGSTOP) for OUTAGE_S: kamailio answers each INVITE 408 after
    its 5 s timer, a transient outcome, final here (max_tries 1). Without the breaker each
    line dialled on, ~3 lines x OUTAGE_S / 5 s numbers came back failed; with it, 3 in a
    row pause the trunk, one probe a pause goes out, and the others wait for the thaw."""
    outage_s = 25.0
    world = make_world(
        lines=3, carriers=FAST, trunk={"fault_after": 3, "pause_min": 2.0, "pause_max": 4.0}
    )
    await world.start()
    first = numbers_for(3, FAST)
    await _run(world, first, 60)
    carriers = list(world.carriers.values())
    for sipp in carriers:
        sipp.freeze()
    try:
        second = [f"{c.prefix}7{i:03d}" for i, c in enumerate(FAST * 8)]
        await world.push_numbers(second)
        await asyncio.sleep(outage_s)
    finally:
        for sipp in carriers:
            sipp.freeze(False)
    assert await world.wait_for(second, 120), sorted(
        set(second) - set(world.receiver.verdicts.results)
    )
    results = world.receiver.verdicts.results
    spent = [p for p in second if results[p][0] == "failed"]
    assert all(results[p][1].get("sip_code") == 408 for p in spent), spent
    # 3 to open it, then a probe after 2 s, 4 s, 4 s (each 5 s long): 6, or 7 if one
    # more went out just before the thaw; 12-15 without the breaker
    assert 3 <= len(spent) <= 7, spent
    assert _wrong(world, [p for p in second if p not in spent]) == []
    assert all(world.receiver.verdicts.deliveries[p] == 1 for p in second)
    events = [e.get("event") for e in _events(world)]
    assert events.count("trunk_fault") >= 2  # opened, and at least one probe failed
    assert "trunk_recovered" in events


async def test_a_pbx_with_no_route_out_misjudges_no_number_and_they_are_dialled_once_mended(
    make_world: Callable[..., World],
) -> None:
    """kamailio answers a number no route matches with a bare 404 at once, as a PBX
    whose dial plan lost its outbound route does. Before, each such number came back
    `empty`, final. Now 4 alike in a row make the route suspect: the numbers wait,
    and once the route is mended (here: a prefix route to a ringing carrier, kamailio
    restarted) they are dialled again and rung."""
    ringing = next(c for c in CARRIERS if c.name == "ringing_180")
    world = make_world(
        lines=2,
        carriers=(*FAST, ringing),
        trunk={"same_rejections": 4, "pause_min": 1.0, "pause_max": 2.0},
    )
    await world.start()
    unrouted = [f"1999{i:03d}" for i in range(8)]
    assert all(carrier_for(p, world.options.carriers) is None for p in unrouted)
    await world.push_numbers(unrouted)
    async with asyncio.timeout(30):
        while _daemon_log(world).count('"number_redial"') < 6:
            await asyncio.sleep(0.3)
    suspect = [e for e in _events(world) if e.get("event") == "route_suspect"]
    assert [(e["sip_code"], e["q850"]) for e in suspect] == [(404, None)]
    await asyncio.sleep(2.0)  # a probe or two more: still nothing final
    assert world.receiver.verdicts.results.keys().isdisjoint(unrouted)
    # the server's fleet listing says which box it is (its heartbeat's health)
    (me,) = (await world.get("/api/clients"))["data"]["clients"]
    assert "route_suspect" in me["health"]["alerts"], me["health"]
    assert "route suspect (404 to every number)" in me["health"]["summary"]
    # the PBX's admin mends the dial plan
    assert world.kamailio is not None
    cfg = world.kamailio.config
    cfg.routes = [*cfg.routes, Route("1999", "127.0.0.1", world.carriers[ringing.name].port)]
    await asyncio.to_thread(world.restart_kamailio)
    assert await world.wait_for(unrouted, 90), sorted(
        set(unrouted) - set(world.receiver.verdicts.results)
    )
    results = world.receiver.verdicts.results
    assert {p: results[p][0] for p in unrouted} == dict.fromkeys(unrouted, "ringing")
    assert all(world.receiver.verdicts.deliveries[p] == 1 for p in unrouted)
    assert "route_proven" in [e.get("event") for e in _events(world)]


async def test_with_a_canary_a_list_of_bare_404_numbers_keeps_its_verdicts(
    make_world: Callable[..., World],
) -> None:
    """A carrier that answers unallocated numbers with a bare 404 (cause 1), a list
    of them: without a canary every 4 alike in a row made the route suspect and the
    numbers were dialled again, for ever. With a canary (a number that rings) each
    run is checked with one call, and the run goes up as the carrier said."""
    empty = next(c for c in CARRIERS if c.name == "empty_404_cause1")
    ringing = next(c for c in CARRIERS if c.name == "ringing_180")
    canary = f"{ringing.prefix}0999"
    world = make_world(
        lines=2,
        carriers=(empty, ringing),
        trunk={"same_rejections": 4, "canary": canary},
    )
    await world.start()
    phones = numbers_for(8, (empty,))
    await _run(world, phones, 60)
    assert _wrong(world, phones) == []
    assert all(world.receiver.verdicts.deliveries[p] == 1 for p in phones)
    invites = [
        m
        for m in world.carriers[empty.name].messages()
        if m.method == "INVITE" and m.direction == "received"
    ]
    assert len({m.header("Call-ID") for m in invites}) == 8  # each dialled once
    canaries = [e for e in _events(world) if e.get("event") == "canary_called"]
    assert len(canaries) >= 2 and {e["result"] for e in canaries} == {"rang"}
    assert "route_suspect" not in [e.get("event") for e in _events(world)]


async def test_a_password_changed_on_the_pbx_misjudges_no_number_and_the_new_one_is_taken_up(
    make_world: Callable[..., World],
) -> None:
    # Before, each INVITE the PBX refused our digest for came back `failed`, final, on
    # that line until its registration refresh failed; and a password pushed again
    # reached a running daemon only after a restart. (Long bindings: no refresh of
    # the registration finds the new password before an INVITE does.)
    world = make_world(lines=2, carriers=FAST, register_expires=600)
    await world.start()
    first = numbers_for(3, FAST)
    await _run(world, first, 60)
    assert world.kamailio is not None
    ext = sorted(world.extensions)[0]
    cfg = world.kamailio.config
    cfg.extensions = {**cfg.extensions, ext: f"new-{ext}"}
    await asyncio.to_thread(world.restart_kamailio)  # it reads its users at start
    second = [f"{c.prefix}7{i:03d}" for i, c in enumerate(FAST * 2)]
    await world.push_numbers(second)
    async with asyncio.timeout(40):
        while not any(
            e.get("event") == "unregistered_after_fault" and e.get("extension") == ext
            for e in _events(world)
        ):
            await asyncio.sleep(0.3)
    held = set(second) - set(world.receiver.verdicts.results)
    assert held, "the refused line holds its number"
    # the operator pushes the new password: the daemon takes it up with the lease
    world.extensions[ext] = f"new-{ext}"
    await world.push_accounts()
    await _all_right_once(world, second, 90, earlier=first)
    events = _events(world)
    faults = [e for e in events if e.get("event") == "pbx_fault"]
    assert faults and {(e["fault"], e["extension"]) for e in faults} == {("credentials", ext)}
    assert any(e.get("event") == "lease_changed" for e in events)


async def test_five_percent_rtp_loss_still_gives_the_right_verdicts(
    make_world: Callable[..., World],
) -> None:
    world = make_world(lines=3, carriers=MEDIA, daemon_env={"SIPCLIENT_TEST_RTP_DROP": "0.05"})
    await world.start()
    phones = numbers_for(6, MEDIA)
    await _run(world, phones, 90)
    assert _wrong(world, phones) == []
    log = _daemon_log(world)
    calls = [json.loads(x) for x in log.splitlines() if '"call_classified"' in x]
    closed = [e["rtp"] for e in calls if e["rtp"] is not None]
    received = sum(e["packets"] + e["test_dropped"] for e in closed)
    dropped = sum(e["test_dropped"] for e in closed)
    # ~400 packets at 5 %: 20 dropped, sd 4.4; 2 % (8) failed about one run in 300
    # (seen in session 6; hash() seeds each call's drops differently every run)
    assert received > 0 and 0.01 < dropped / received < 0.10


async def test_sighup_reloads_and_sigterm_mid_call_exits_0_losing_nothing(
    make_world: Callable[..., World],
) -> None:
    world = make_world(lines=3, carriers=MEDIA)
    await world.start()
    assert world.daemon is not None
    log = world.workdir / "daemon" / "daemon.log"
    async with asyncio.timeout(20):
        while '"registered"' not in log.read_text(errors="replace"):
            await asyncio.sleep(0.1)
    world.daemon.send_signal(signal.SIGHUP)
    async with asyncio.timeout(20):  # the library is loaded again off the loop
        while '"library_reloaded"' not in log.read_text(errors="replace"):
            await asyncio.sleep(0.1)
    phones = numbers_for(6, MEDIA)
    await world.push_numbers(phones)
    async with asyncio.timeout(30):
        while not any(m.method == "INVITE" for s in world.carriers.values() for m in s.messages()):
            await asyncio.sleep(0.05)
    # SIGTERM while calls ring: they get CALL_FINISH_AT_STOP (5 s) to reach their
    # verdict, and these carriers decide within ~2.5 s. Until session 17 they were
    # cancelled at once; each cut short before anything was known was let go
    # (`number_let_go`) and dialled again: its number rung twice
    assert await asyncio.to_thread(world.stop_daemon) == 0
    text = log.read_text(errors="replace")
    assert '"stopped"' in text and '"spooled": 0' in text
    assert '"finishing_calls"' in text
    assert '"number_let_go"' not in text and '"cancelling_calls"' not in text
    # the collector's pauses are said at the stop (agent/heap.py)
    pauses = [json.loads(x) for x in text.splitlines() if '"gc_pauses"' in x]
    assert len(pauses) == 1 and all(len(pauses[0][k]) == 3 for k in ("collections", "ms"))
    world.start_daemon()
    await _all_right_once(world, phones, 90)


async def test_a_call_whose_cancel_is_lost_keeps_its_verdict_when_the_daemon_stops(
    make_world: Callable[..., World],
) -> None:
    # kamailio restarted mid-call forgets the INVITE: our CANCEL after the verdict
    # (`ringing`) is answered 481 and the INVITE waits 64*T1 (32 s) for a final. SIGTERM
    # then gave up on the call after 10 s without a record: the verdict was lost and
    # the number dialled a second time after the server's reclaim
    ringing = tuple(c for c in CARRIERS if c.name == "ringing_180")  # its 480 after 40 s
    world = make_world(lines=1, carriers=ringing, log_level="debug")
    await world.start()
    (phone,) = numbers_for(1, ringing)
    await world.push_numbers([phone])
    carrier = world.carriers["ringing_180"]
    async with asyncio.timeout(30):  # the 180 is on its way to us through kamailio
        while not any(m.direction == "sent" and m.status == 180 for m in carrier.messages()):
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    await asyncio.to_thread(world.restart_kamailio)
    async with asyncio.timeout(30):  # decided (no RTP 2 s after the 180), its CANCEL lost
        while not any(e.get("event") == "call_cancel_sent" for e in _events(world)):
            await asyncio.sleep(0.1)
    assert await asyncio.to_thread(world.stop_daemon, 30.0) == 0
    assert any(e.get("event") == "call_given_up_at_stop" for e in _events(world))
    world.start_daemon()
    assert await world.wait_for([phone], 60)
    assert world.receiver.verdicts.results[phone][0] == "ringing"
    invites = {m.header("Call-ID") for m in carrier.messages() if m.method == "INVITE"}
    assert len(invites) == 1  # dialled once


async def _kill_9_and_restart_until(world: World, carrier: Sipp, method: str) -> None:
    """kill -9 the daemon with its one call up at `carrier`, start it again, and wait
    (15 s) for `carrier` to receive `method` for that call: the journalled ending."""
    world.kill_daemon()
    (call_id,) = {m.header("Call-ID") for m in carrier.messages() if m.method == "INVITE"}
    assert not any(m.method == method for m in carrier.messages())  # killed in time
    world.start_daemon()

    def ended() -> bool:
        return any(
            m.direction == "received" and m.method == method and m.header("Call-ID") == call_id
            for m in carrier.messages()
        )

    async with asyncio.timeout(15):
        while not ended():
            await asyncio.sleep(0.1)


async def test_a_call_a_kill_9_left_ringing_is_cancelled_by_the_next_start(
    make_world: Callable[..., World],
) -> None:
    # A daemon killed -9 leaves its INVITE ringing: the callee's phone rang on until
    # the carrier's own timer (this carrier: 480 after 40 s), a missed call from
    # nobody, billed if picked up, and its media went on to a port the next daemon
    # hands out again. The next start sends the CANCEL the dead one had journalled.
    ringing = tuple(c for c in CARRIERS if c.name == "ringing_180")
    world = make_world(lines=1, carriers=ringing)
    await world.start()
    (phone,) = numbers_for(1, ringing)
    await world.push_numbers([phone])
    carrier = world.carriers["ringing_180"]
    async with asyncio.timeout(30):  # ringing; the daemon decides 2 s after the 180
        while not any(m.direction == "sent" and m.status == 180 for m in carrier.messages()):
            await asyncio.sleep(0.02)
    await _kill_9_and_restart_until(world, carrier, "CANCEL")  # its 480 came after 40 s
    async with asyncio.timeout(10):  # logged once every copy went out (1.5 s)
        while not any(e.get("event") == "leftover_calls_ended" for e in _events(world)):
            await asyncio.sleep(0.1)
    # the number is dialled again after the lease reclaim and decided once
    assert await world.wait_for([phone], 60)
    assert world.receiver.verdicts.results[phone][0] == "ringing"
    assert world.receiver.verdicts.deliveries[phone] == 1


async def test_an_answered_call_a_kill_9_left_up_is_ended_by_the_next_start(
    make_world: Callable[..., World],
) -> None:
    # A carrier that answers to play its announcement (假应答) is heard out for up to
    # sip.answer_listen before our BYE: a kill -9 then leaves an answered call up,
    # billed by the second until the far end hangs up (this carrier never does).
    # The journal holds the BYE by then, and the next start sends it.
    world = make_world(lines=1, carriers=(FAKE_ANSWER,))
    await world.start()
    (phone,) = numbers_for(1, (FAKE_ANSWER,))
    await world.push_numbers([phone])
    carrier = world.carriers[FAKE_ANSWER.name]
    async with asyncio.timeout(30):  # answered, and our ACK is in
        while not any(m.direction == "received" and m.method == "ACK" for m in carrier.messages()):
            await asyncio.sleep(0.02)
    await _kill_9_and_restart_until(world, carrier, "BYE")
    # the number is dialled again after the lease reclaim and decided once
    assert await world.wait_for([phone], 60)
    assert world.receiver.verdicts.results[phone][0] == "empty"
    assert world.receiver.verdicts.deliveries[phone] == 1


async def test_two_daemons_share_the_lines_and_each_number_finishes_once(
    make_world: Callable[..., World],
) -> None:
    """Two daemon processes on one box (systemd/sipclient@.service): each leases its
    share of the extensions as its own client; no number is dialled by both."""
    world = make_world(lines=4, daemons=2, carriers=MEDIA + FAST)
    await world.start()
    assert len(world.daemons) == 2
    phones = numbers_for(18, world.options.carriers)
    await _run(world, phones, 120)
    assert _wrong(world, phones) == []
    assert world.receiver.verdicts.duplicates == []
    assert all(world.receiver.verdicts.deliveries[p] == 1 for p in phones)
    by_daemon: list[dict[str, set[str]]] = []
    for i in range(2):
        events = [
            json.loads(x)
            for x in (world.daemon_dir(i) / "daemon.log").read_text().splitlines()
            if x.startswith("{") and '"call_classified"' in x
        ]
        by_daemon.append(
            {
                "phones": {e["phone"] for e in events},
                "extensions": {e["extension"] for e in events},
                "clients": {e["client_id"] for e in events},
            }
        )
    a, b = by_daemon
    assert a["phones"] and b["phones"], "both daemons dialled"
    assert not a["phones"] & b["phones"] and a["phones"] | b["phones"] == set(phones)
    assert not a["extensions"] & b["extensions"]  # each line belongs to one daemon
    assert len(a["clients"] | b["clients"]) == 2
    assert await asyncio.to_thread(world.stop_daemon) == 0


async def test_rtp_ports_exhausted_numbers_wait_for_a_port_and_get_their_verdicts(
    make_world: Callable[..., World],
) -> None:
    # four lines, one RTP port: three of every four calls find no port when they start
    base = 31000 + (os.getpid() % 400) * 4  # even, under the ephemeral ports other peers get
    world = make_world(lines=4, carriers=MEDIA, rtp_ports=f"{base}-{base}")
    await world.start()
    phones = numbers_for(6, MEDIA)
    await _run(world, phones, 120)
    assert _wrong(world, phones) == []
    assert all(world.receiver.verdicts.deliveries[p] == 1 for p in phones)
    log = _daemon_log(world)
    assert '"call_waits_for_rtp_port"' in log and '"call_failed"' not in log


async def test_a_pbx_host_name_is_resolved_once_and_a_written_number_dials_its_digits(
    make_world: Callable[..., World],
) -> None:
    # "localhost" resolves from /etc/hosts: no query leaves the machine
    world = make_world(lines=2, carriers=FAST + MEDIA[:1], pbx_name="localhost")
    await world.start()
    # and a number as people write it: dialled as its digits, reported as written
    phones = [*numbers_for(6, FAST + MEDIA[:1]), "1100 2000-1"]
    await _run(world, phones, 60)
    assert _wrong(world, phones) == []
    log = _daemon_log(world)
    resolved = [json.loads(x) for x in log.splitlines() if '"pbx_resolved"' in x]
    assert [(e["host"], e["address"]) for e in resolved] == [("localhost", "127.0.0.1")]


async def test_sigterm_with_the_pbx_gone_exits_0_within_the_units_stop_timeout(
    make_world: Callable[..., World],
) -> None:
    # one after the other, each un-REGISTER waited 2 s: 24 lines took past the 40 s
    world = make_world(lines=24, carriers=FAST)
    await world.start()
    assert world.kamailio is not None
    async with asyncio.timeout(30):
        while _registrations_since(world, "") != set(world.extensions):
            await asyncio.sleep(0.2)
    await asyncio.to_thread(world.kamailio.stop)  # no answer to any un-REGISTER now
    # systemd/sipclient.service: TimeoutStopSec=40, then SIGKILL (no exit 0)
    assert await asyncio.to_thread(world.stop_daemon, 40.0) == 0
    log = _daemon_log(world)
    assert log.count('"unregister_timeout"') == 24 and '"stopped"' in log


async def _dialling(world: World, phones: list[str]) -> None:
    """`phones` pushed, and the first verdicts back: the lines are at work."""
    await world.push_numbers(phones)
    async with asyncio.timeout(30):
        while len(world.receiver.verdicts.results) < 3:
            await asyncio.sleep(0.1)


def _invites(world: World) -> int:
    """INVITEs the carriers got so far (one a call: kamailio takes the digest)."""
    return sum(1 for s in world.carriers.values() for m in s.messages() if m.method == "INVITE")


def _break_spool(world: World) -> Callable[[], None]:
    """The daemon's spool folder gone and a file holding its name: every write
    fails. Returns what mends it."""
    spool = world.workdir / "daemon" / "spool"
    away = spool.with_name("spool.away")
    spool.rename(away)
    spool.write_text("not a folder")

    def mend() -> None:
        spool.unlink()
        away.rename(spool)

    return mend


async def test_a_spool_that_cannot_be_written_stops_dialling_and_loses_nothing(
    make_world: Callable[..., World],
) -> None:
    world = make_world(lines=3, carriers=FAST + MEDIA)
    await world.start()
    phones = numbers_for(18, FAST + MEDIA)
    await _dialling(world, phones)

    at_break = _invites(world)
    mend = _break_spool(world)
    await asyncio.sleep(8.0)  # the calls in flight end (2.2 s at most) and are held
    # no call starts while results cannot be kept: at most one a line that was
    # starting as the folder went (before, all 15 numbers left were dialled and
    # their results thrown away, to be dialled again after the lease reclaim)
    assert _invites(world) - at_break <= 3
    mend()
    await _all_right_once(world, phones, 90)
    log = _daemon_log(world)
    assert '"spool_failed"' in log and '"spool_writable_again"' in log
    # and each number was dialled once: the uploads went up when the spool came back,
    # before the leases ran out (an uploader killed by a disk error uploaded nothing
    # more, and 14 of the 18 were dialled again after their lease: seen in a full run)
    dialled = [e["phone"] for e in _events(world) if e.get("event") == "call_classified"]
    assert sorted(dialled) == sorted(phones)


async def test_records_a_failing_spool_holds_survive_a_kill_9_with_the_server_away(
    make_world: Callable[..., World],
) -> None:
    # The disk fails and the server is away: the calls then ending were held in
    # memory only, and a kill -9 lost them; their numbers were dialled again once
    # the server reclaimed the lease. Now they wait in the fallback spool (the
    # unit's RuntimeDirectory, here the lab's daemon/run) for the next start.
    world = make_world(lines=3, carriers=FAST + MEDIA)
    await world.start()
    phones = numbers_for(12, FAST + MEDIA)
    await _dialling(world, phones)
    await asyncio.to_thread(world.stop_server)

    def ended() -> list[str]:
        return [e["phone"] for e in _events(world) if e.get("event") == "call_classified"]

    before_break = len(ended())
    mend = _break_spool(world)
    fallback = world.workdir / "daemon" / "run" / "spool"

    def kept() -> set[str]:
        return {json.loads(f.read_text())["phone"] for f in fallback.glob("*.json")}

    async with asyncio.timeout(30):  # a call in flight ends and is held
        while not kept():
            await asyncio.sleep(0.1)
    # the others in flight too (2.2 s each at most, longer on a loaded box): a call
    # still up at the kill would be dialled again, as documented, and this test is
    # about the records held, so it waits for every INVITE to have its end, and for
    # the records of the calls ended since the break to be in the fallback (a kill
    # between a call's end and its record's write also has it dialled again: CI
    # ran into that once, session 20)
    async with asyncio.timeout(30):
        while _invites(world) > len(ended()) or not set(ended()[before_break:]) <= kept():
            await asyncio.sleep(0.1)
    held = kept()
    world.kill_daemon()
    mend()
    await asyncio.to_thread(world.start_server)
    world.start_daemon()
    await _all_right_once(world, phones, 120)
    # each number was dialled once: the kept records went up from the fallback,
    # none was left for the lease reclaim to hand out again
    assert sorted(ended()) == sorted(phones) and held <= set(phones)
    assert '"spool_fallback_adopted"' in _daemon_log(world)
    assert not list(fallback.glob("*.json"))


async def test_calls_failing_in_the_daemon_pause_it_and_every_number_keeps_its_verdict(
    make_world: Callable[..., World],
) -> None:
    # The recordings folder turns into a file (a bad mount, a cleanup script): every
    # call fails in our own code as it closes its WAV. Before, each was uploaded as a
    # local failure, `unknown` for good: the rest of the list misjudged in seconds.
    world = make_world(
        lines=3,
        carriers=FAST + MEDIA,
        keep_recordings=True,
        trunk={"pause_min": 1.0, "pause_max": 2.0},
    )
    await world.start()
    first = numbers_for(3, FAST + MEDIA)
    await _run(world, first, 60)
    recordings = world.workdir / "daemon" / "recordings"
    away = recordings.with_name("recordings.away")
    recordings.rename(away)
    recordings.write_text("not a folder")
    second = [f"{c.prefix}6{i:03d}" for i, c in enumerate((FAST + MEDIA) * 2)]
    await world.push_numbers(second)
    async with asyncio.timeout(60):
        while '"calls_failing"' not in _daemon_log(world):
            await asyncio.sleep(0.2)
    await asyncio.sleep(4.0)  # paused: a probe a pause (1 s, then 2 s), each failing
    assert not set(second) & set(world.receiver.verdicts.results)
    recordings.unlink()
    away.rename(recordings)
    await _all_right_once(world, second, 120)
    events = [e.get("event") for e in _events(world)]
    assert "calls_recovered" in events and events.count("call_failed") >= 3


async def test_the_daemon_over_tcp_gets_every_verdict_right(
    make_world: Callable[..., World],
) -> None:
    # one TCP connection to kamailio carries every line's REGISTERs and calls
    world = make_world(lines=3, carriers=FAST + MEDIA, pbx_transport="tcp")
    await world.start()
    phones = numbers_for(12, FAST + MEDIA)
    await _run(world, phones, 60)
    assert _wrong(world, phones) == []
    assert all(world.receiver.verdicts.deliveries[p] == 1 for p in phones)
    opened = [json.loads(x) for x in _daemon_log(world).splitlines() if '"sip_stack_opened"' in x]
    assert [e["transport"] for e in opened] == ["tcp"]


async def test_a_second_daemon_on_the_same_spool_stops_at_start_and_the_first_goes_on(
    make_world: Callable[..., World],
) -> None:
    world = make_world(lines=2, carriers=FAST)
    await world.start()
    assert world.daemon is not None
    async with asyncio.timeout(30):  # the first one is up and holds its spool
        while '"registered"' not in _daemon_log(world):
            await asyncio.sleep(0.1)
    # an operator copies config 1 to config 2 and forgets spool.dir
    second = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "sipclient.cli", "run", "--config", str(world.daemon_config(0))],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == 2
    assert "spool.dir" in second.stderr and f"pid {world.daemon.pid}" in second.stderr
    phones = numbers_for(4, FAST)
    await _run(world, phones, 30)
    assert _wrong(world, phones) == []


async def test_a_carrier_with_a_gbk_reason_phrase_gets_its_verdict(
    make_world: Callable[..., World],
) -> None:
    # 404 空号 with the phrase in GBK, in the status line and the Reason header's text
    gbk = "空号".encode("gbk").decode("latin-1")  # the scenario file is ISO-8859-1
    carriers = (Carrier("empty_404_gbk", "1113", "empty", final=(404, gbk, 1)),)
    world = make_world(lines=1, carriers=carriers)
    await world.start()
    phones = numbers_for(2, carriers)
    await _run(world, phones, 30)  # each call crashed on writing the reason before
    assert _wrong(world, phones) == []
    # the upload carried the phrase as text: the server's record of each call has it
    db = sqlite3.connect(world.workdir / "server" / "sipclient.db")
    try:
        rows = db.execute("SELECT fields FROM recordings").fetchall()
        reasons = [json.loads(f)["sipReason"] for (f,) in rows]
    finally:
        db.close()
    assert reasons == ["空号", "空号"]


ANNOUNCED = tuple(c for c in CARRIERS if c.name.endswith("_announcement"))


async def test_a_box_without_the_servers_templates_mirrors_them_and_hangs_up_in_time(
    make_world: Callable[..., World], tmp_path: Path
) -> None:
    # The server judges with its library; a box whose own lacks a template held each
    # call meeting that announcement until the carrier's final (20 s here, not ~2 s),
    # on every box nobody copied the template to. The daemon mirrors the library the
    # server offers (its version in each heartbeat reply).
    nothing = tmp_path / "no-templates"
    nothing.mkdir()
    world = make_world(lines=3, carriers=ANNOUNCED, daemon_templates=str(nothing))
    await world.start()
    async with asyncio.timeout(30):
        while '"library_synced"' not in _daemon_log(world):
            await asyncio.sleep(0.2)
    phones = numbers_for(6, ANNOUNCED)
    await _run(world, phones, 60)
    assert _wrong(world, phones) == []
    calls = [e for e in _events(world) if e.get("event") == "call_classified"]
    assert len(calls) == 6
    for e in calls:  # decided by the daemon on the mirrored templates, hung up by us
        assert (e["evidence"], e["ended_by"]) == ("announcement", "local"), e
        assert isinstance(e["call_ms"], int) and e["call_ms"] < 10_000, e
    mirror = world.workdir / "daemon" / "library"
    assert len(list(mirror.glob("*.wav"))) == len(TemplateLibrary.default())
