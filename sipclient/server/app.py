"""The aiohttp application: the 000 push/task API and the 001 control API.

`create_app(config)` builds it; the store, the dispatch, the callback worker
and the classifier's thread pool are opened and closed in its cleanup
context, so the app works the same under `aiohttp_client` in tests, under
`main.serve_main`, and in the benchmark.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web

from sipclient.classify.verdicts import Decision, Signalling, Verdict
from sipclient.config import ServerConfig
from sipclient.logs import get_logger
from sipclient.phone import not_dialable
from sipclient.server.callbacks import CallbackWorker
from sipclient.server.dispatch import Clock, Dispatch
from sipclient.server.errors import (
    ApiError,
    auth_middleware,
    bad_request,
    envelope,
    error_middleware,
    max_body_middleware,
    task_envelope,
)
from sipclient.server.library import LIBRARY, LibraryOffer, get_library, get_template_file
from sipclient.server.openapi import openapi_document
from sipclient.server.payloads import (
    HEALTH_MAX_BYTES,
    UploadFields,
    WavInfo,
    check_wav,
    parse_accounts,
    parse_health,
    parse_json,
    parse_next,
    parse_positive_int,
    parse_push,
    parse_status,
    parse_upload_fields,
    split_multipart,
)
from sipclient.server.retention import run_pruner
from sipclient.server.store import JSON, Store, Upload, open_store

log = get_logger(__name__)

Judge = Callable[[Path | None, Signalling], Decision]

CONFIG = web.AppKey("config", ServerConfig)
STORE = web.AppKey("store", Store)
DISPATCH = web.AppKey("dispatch", Dispatch)
CALLBACKS = web.AppKey("callbacks", CallbackWorker)
JUDGE: web.AppKey[Judge] = web.AppKey("judge")
JUDGE_POOL = web.AppKey("judge_pool", ThreadPoolExecutor)

_FIELD_MAX = 4096  # bytes of one non-file form field
_STOP_GRACE = 5.0  # seconds background tasks get to finish on shutdown


class LibraryJudge:
    """The classifier's authoritative judge (sipclient.classify.judge).

    The library of `classify.templates` (or the shipped one) is loaded here, so
    a bad folder stops the server at start; `reload` (SIGHUP, `reload_library`)
    loads it again. Announcements no template matches go to
    `classify.unknown_store` when it is set.
    """

    def __init__(self, config: ServerConfig) -> None:
        from sipclient.classify.loading import load_library, open_unknown_store

        self._settings = config.classify
        self.library = load_library(config.classify)
        self.unknown_store = open_unknown_store(config.classify)

    def reload(self) -> None:
        """The library again (a judgement running keeps the one it started with)."""
        from sipclient.classify.loading import load_library

        self.library = load_library(self._settings)

    def __call__(self, wav: Path | None, signalling: Signalling) -> Decision:
        from sipclient.classify.judge import judge_recording

        return judge_recording(wav, signalling, self.library, unknown_store=self.unknown_store)


async def reload_library(app: web.Application) -> bool:
    """SIGHUP: the template library again, for the verdicts and for the daemons
    (the listing they mirror) together; False (logged) when it could not be
    loaded: both keep the library they had."""
    judge = app[JUDGE]
    try:
        if isinstance(judge, LibraryJudge):
            await asyncio.to_thread(judge.reload)
    except Exception as exc:
        log.error("library_reload_failed", error=f"{type(exc).__name__}: {exc}")
        return False
    offer = app[LIBRARY]
    await offer.load()
    log.info("library_reloaded", version=offer.version, templates=offer.templates)
    return True


def create_app(
    config: ServerConfig,
    *,
    clock: Clock = time.time,
    steady: Clock | None = None,
    judge: Judge | None = None,
    store: Store | None = None,
) -> web.Application:
    """The server application; `clock` drives leases (fake in tests), `steady` (by
    default time.monotonic with the real clock) tells when it jumped."""
    app = web.Application(
        client_max_size=config.max_body,
        middlewares=[
            error_middleware,
            auth_middleware(config.auth.api_token, config.auth.client_token),
            max_body_middleware(config.max_body),
        ],
    )
    store = store if store is not None else open_store(config.database)
    app[CONFIG] = config
    app[STORE] = store
    if steady is None and clock is time.time:
        steady = time.monotonic
    app[DISPATCH] = Dispatch(store, config.leases, config.retries, clock, steady)
    app[CALLBACKS] = CallbackWorker(store, config.callbacks)
    app[JUDGE] = judge if judge is not None else LibraryJudge(config)
    app[JUDGE_POOL] = ThreadPoolExecutor(max_workers=2, thread_name_prefix="judge")
    app[LIBRARY] = LibraryOffer(config)
    app.cleanup_ctx.append(_lifecycle)
    app.add_routes(
        [
            web.post("/api/account", push_accounts),
            web.post("/api/dialplan", push_dialplan),
            web.get("/api/tasks", list_tasks),
            web.get("/api/tasks/{task_id}", get_task),
            web.get("/api/task/{task_id}", get_task),
            web.post("/api/tasks/{task_id}/cancel", cancel_task),
            web.post("/api/tasks/{task_id}/callback", resend_callback),
            web.get("/api/clients", list_clients),
            web.get("/notify", notify),
            web.get("/accounts/{clientId}", lease_accounts),
            web.get("/dialplan/{clientId}", lease_dialplans),
            web.post("/heartbeat/{clientId}", heartbeat),
            web.post("/leave/{clientId}", leave),
            web.get("/status/{clientId}", status),
            web.post("/dial_wav/{clientId}", dial_wav),
            web.get("/library", get_library),
            web.get("/library/{file}", get_template_file),
            web.get("/openapi.json", openapi),
        ]
    )
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    store = app[STORE]
    await store.open()
    await asyncio.to_thread(app[CONFIG].recordings.dir.mkdir, parents=True, exist_ok=True)
    dispatch = app[DISPATCH]
    await dispatch.load()
    await app[LIBRARY].load()
    sweeper = asyncio.create_task(dispatch.run_sweeper(), name="lease-sweeper")
    deliverer = asyncio.create_task(app[CALLBACKS].run(), name="callbacks")
    recordings = app[CONFIG].recordings
    pruner = asyncio.create_task(
        run_pruner(recordings.dir, recordings.keep_days, dispatch.clock), name="recordings-pruner"
    )
    try:
        yield
    finally:
        # callbacks being posted finish and are recorded, not cancelled after the
        # receiver took them (which posted them again after the restart)
        await app[CALLBACKS].finish_in_flight(_STOP_GRACE)
        for task in (sweeper, deliverer, pruner):
            task.cancel()
        # Bounded: a stuck background task must not keep the store open forever.
        _, stuck = await asyncio.wait((sweeper, deliverer, pruner), timeout=_STOP_GRACE)
        for task in stuck:
            log.error("background task did not stop", task=task.get_name())
        await asyncio.to_thread(app[JUDGE_POOL].shutdown, wait=True)
        await store.close()


# ---------------------------------------------------------------- 000


async def push_accounts(request: web.Request) -> web.Response:
    accounts = parse_accounts(parse_json(await request.read()))
    dispatch = request.app[DISPATCH]
    pool = await request.app[STORE].upsert_accounts(accounts, dispatch.clock())
    return envelope({"accounts": pool}, msg=None)


def _screen_push(raw: bytes) -> tuple[list[str], str, dict[str, tuple[str, JSON]]]:
    """The push's phones, return_url and the numbers no call can carry, finished
    here (`unknown` with the reason: "1380@x" would cost a line a failed call and
    come back the same). Pure Python, ~250 ms for 100,000 numbers: run in a
    thread, where the event loop still gets the GIL every few ms."""
    phones, return_url = parse_push(parse_json(raw))
    finished = {
        p: (Verdict.UNKNOWN.value, not_dialable_detail(why))
        for p in phones
        if (why := not_dialable(p))
    }
    return phones, return_url, finished


async def push_dialplan(request: web.Request) -> web.Response:
    # A big push (100,000 numbers) must not stop the 001 API: its parsing, the
    # answer's encoding and the database work are all off the event loop; before
    # session 8 one such push held every daemon's call for ~1.4 s.
    phones, return_url, finished = await asyncio.to_thread(_screen_push, await request.read())
    dispatch = request.app[DISPATCH]
    not_dialable_count = len(finished)
    store, now = request.app[STORE], dispatch.clock()
    within = request.app[CONFIG].reuse.within
    if within > 0:
        # lead lists overlap: a verdict on the phone this recent is given again, no call
        recent = await store.recent_results([p for p in phones if p not in finished], now - within)
        for phone, plan in recent.items():
            finished[phone] = (plan["result"], reused_detail(plan))
    task = await store.create_task(phones, return_url, now, finished)
    log.info(
        "task pushed",
        task_id=task["task_id"],
        numbers=len(phones),
        not_dialable=not_dialable_count,
        reused=len(finished) - not_dialable_count,
    )
    if finished and len(finished) == len(phones):
        request.app[CALLBACKS].wake()
    return await task_envelope(task)


async def list_tasks(request: web.Request) -> web.Response:
    page = parse_positive_int(request.query.get("page"), "page", default=1)
    size = parse_positive_int(request.query.get("size"), "size", default=10, high=1000)
    return envelope(await request.app[STORE].list_tasks(page, size), msg="success")


async def list_clients(request: web.Request) -> web.Response:
    """(ext) The fleet: every daemon with its lines' latest status, for an operator
    watching many boxes from the server (which one has lines unregistered, which
    went silent)."""
    state = request.query.get("state", "active")
    if state not in ("active", "expired"):
        raise bad_request("state", f"expected active or expired, got {state!r}")
    page = parse_positive_int(request.query.get("page"), "page", default=1)
    size = parse_positive_int(request.query.get("size"), "size", default=100, high=1000)
    dispatch = request.app[DISPATCH]
    await dispatch.note_heard()  # last_seen as of now, heartbeats included
    fleet = await request.app[STORE].fleet(state, page, size)
    for client in fleet["clients"]:
        client["health"] = dispatch.health.get(client["id"])
    # only active clients have a health (an expiry forgets it)
    alerting = sum(1 for h in dispatch.health.values() if h.get("alerts"))
    fleet["totals"]["alerting"] = alerting if state == "active" else 0
    return envelope(fleet, msg="success")


async def get_task(request: web.Request) -> web.Response:
    task_id = parse_positive_int(request.match_info["task_id"], "task_id", high=2**62)
    task = await request.app[STORE].get_task(task_id)
    if task is None:
        raise ApiError(404, f"task_id: no task {task_id}")
    return await task_envelope(task)


async def cancel_task(request: web.Request) -> web.Response:
    """(ext) Stop a task (a wrong list pushed, an order withdrawn): its numbers not
    being dialled are finished `unknown`, evidence "cancelled", at once; those on a
    line finish with their call; the callback goes when the last one is in."""
    task_id = parse_positive_int(request.match_info["task_id"], "task_id", high=2**62)
    dispatch = request.app[DISPATCH]
    outcome = await request.app[STORE].cancel_task(task_id, dispatch.clock())
    if outcome is None:
        raise ApiError(404, f"task_id: no task {task_id}")
    log.info("task cancelled", **outcome)
    if outcome["cancelled"] and not outcome["in_flight"]:
        request.app[CALLBACKS].wake()
    return envelope(outcome, msg=None)


async def resend_callback(request: web.Request) -> web.Response:
    """(ext) Deliver a finished task's callback again, with its full count of tries:
    the receiver was down past them (`callback.state` failed) or lost what it got.
    409 while the task is not finished (its callback goes when it is)."""
    task_id = parse_positive_int(request.match_info["task_id"], "task_id", high=2**62)
    queued = await request.app[STORE].resend_callback(task_id)
    if queued is None:
        raise ApiError(404, f"task_id: no task {task_id}")
    if not queued:
        raise ApiError(409, f"task_id: task {task_id} is not finished; its callback goes then")
    log.info("callback queued again", task_id=task_id)
    request.app[CALLBACKS].wake()
    return envelope({"task_id": task_id, "callback": "pending"}, msg=None)


# ---------------------------------------------------------------- 001


async def notify(request: web.Request) -> web.Response:
    dispatch = request.app[DISPATCH]
    client_id = await dispatch.notify()
    # (ext) how long a silent client keeps its id and leases: the daemon starts a
    # number waiting on a line only within half of it of the server's last answer
    return envelope({"clientId": client_id, "clientTimeout": dispatch.leases.client_timeout})


async def lease_accounts(request: web.Request) -> web.Response:
    count = parse_positive_int(request.query.get("threadsNum"), "threadsNum", high=10_000)
    accounts = await request.app[DISPATCH].lease_accounts(request.match_info["clientId"], count)
    return envelope({"accounts": accounts})


async def leave(request: web.Request) -> web.Response:
    accounts, numbers = await request.app[DISPATCH].leave(request.match_info["clientId"])
    return envelope({"accounts": accounts, "numbers": numbers})


async def lease_dialplans(request: web.Request) -> web.Response:
    plans = await request.app[DISPATCH].lease_dialplans(request.match_info["clientId"])
    return envelope({"dialplans": plans})


async def heartbeat(request: web.Request) -> web.Response:
    health = None
    if request.can_read_body:
        # (ext) the daemon's view of itself; never a reason to refuse a heartbeat
        raw = await request.content.read(HEALTH_MAX_BYTES + 1)
        health = parse_health(raw)
    ms = await request.app[DISPATCH].heartbeat(request.match_info["clientId"], health)
    data = {"timestamp": str(ms)}
    version = request.app[LIBRARY].version
    if version is not None:
        data["library"] = version  # (ext) daemons mirror the library it names
    return envelope(data)


async def status(request: web.Request) -> web.Response:
    state, extension, phone = parse_status(request.query)
    want_next = parse_next(request.query)
    dispatch = request.app[DISPATCH]
    client_id = request.match_info["clientId"]
    ms, plans = await dispatch.record_status(client_id, state, extension, phone, want_next)
    data: JSON = {"timestamp": str(ms)}
    if plans is not None:
        # (ext) with "idle", the line's next number in this reply: the daemon saves
        # the round trip of a GET /dialplan between two calls; with "during", one for
        # the line to hold while it dials, started the moment this call ends
        # (docs/server.md)
        data["dialplans"] = plans
        if state == "idle":
            # ...the extension recorded `during` the number handed: the daemon then
            # leaves that state unsent. Sent, it was still in flight when a call ended
            # at once (a 486), and the line's `idle` waited a round trip behind it.
            data["duringRecorded"] = True
    return envelope(data)


async def dial_wav(request: web.Request) -> web.Response:
    app = request.app
    client_id = request.match_info["clientId"]
    dispatch = app[DISPATCH]
    dispatch.check_uploader(client_id)  # before reading a byte of the body
    form, wav = await _read_form(request)
    fields = parse_upload_fields(form)
    if wav is None:
        raise bad_request("file_name", "missing: expected the WAV as a file part")
    info = check_wav(wav)
    now = dispatch.clock()
    path = (
        app[CONFIG].recordings.dir
        / time.strftime("%Y%m%d", time.localtime(now))
        / f"{int(now)}-{uuid.uuid4().hex}.wav"
    )
    loop = asyncio.get_running_loop()
    decision = await loop.run_in_executor(
        app[JUDGE_POOL], _keep_and_judge, app[JUDGE], path, wav, info, fields.signalling()
    )
    upload = Upload(
        client_id=client_id,
        extension=fields.extension,
        phone=fields.phone,
        dialplan_id=fields.dialplan_id,
        result=decision.verdict.value,
        transient=decision.transient,
        detail=build_detail(fields, decision, info),
        recording_path=str(path),
        fields={k: v for k, v in form.items() if k != "file_name"},
    )
    outcome = await dispatch.finish(upload)
    if outcome.task_finished:
        app[CALLBACKS].wake()
    log.info(
        "upload",
        clientId=client_id,
        extension=fields.extension,
        phone=fields.phone,
        dialplan_id=outcome.dialplan_id,
        result=upload.result,
        outcome=outcome.status.value,
    )
    data: JSON = {
        "timestamp": str(int(now * 1000)),
        "dialplanId": outcome.dialplan_id,
        "status": outcome.dialplan_status,
        "result": upload.result,
    }
    return envelope(data)


def _keep_and_judge(
    judge: Judge, path: Path, wav: bytes, info: WavInfo, signalling: Signalling
) -> Decision:
    """Runs in the judge pool: write the recording to disk, then classify it.

    A WAV of zero frames (a call without media) is kept too, but judged as
    "no recording": only the signalling can speak.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # "x": a name is never reused (it carries a uuid4); never overwrite.
    with path.open("xb") as fh:
        fh.write(wav)
    return judge(path if info.frames > 0 else None, signalling)


async def _read_form(request: web.Request) -> tuple[dict[str, str], bytes | None]:
    """The multipart form: text fields, and the `file_name` part's bytes."""
    boundary = request.content_type.startswith("multipart/") and _boundary(request)
    if not boundary:
        raise bad_request(
            "body", "expected multipart/form-data with file_name, extensionNum and phone"
        )
    body = await request.read()  # bounded by client_max_size: 413 beyond max_body
    try:
        parts = split_multipart(body, boundary)
    except ValueError as exc:
        raise bad_request("body", f"malformed multipart ({exc})") from None
    form: dict[str, str] = {}
    wav: bytes | None = None
    for name, content in parts:
        if name == "file_name":
            wav = content
        elif name:
            if len(content) > _FIELD_MAX:
                raise bad_request(name, f"longer than {_FIELD_MAX} bytes")
            try:
                form[name] = content.decode("utf-8")
            except UnicodeDecodeError:
                raise bad_request(name, "not valid UTF-8 text") from None
    return form, wav


def _boundary(request: web.Request) -> str:
    params = request.headers.get("Content-Type", "").split(";")[1:]
    for param in params:
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "boundary":
            return value.strip().strip('"')
    return ""


def not_dialable_detail(why: str) -> JSON:
    """The `detail` of a number finished at push time: never dialled (`tries` 0)."""
    return {
        "sip_code": None,
        "q850_cause": None,
        "answered": 0,
        "answertype": "caller",
        "calltime": None,
        "duration": None,
        "billsec": 0,
        "evidence": {"kind": "not_dialable", "reason": why},
        "label": None,
        "tries": 0,
    }


def reused_detail(plan: JSON) -> JSON:
    """The `detail` of a phone given an earlier verdict at the push (`reuse.within`):
    never dialled (`tries` 0, no call times); the evidence names the dialplan whose
    call decided it, when, and what that call heard."""
    earlier: JSON = plan.get("detail") or {}
    return {
        "sip_code": earlier.get("sip_code"),
        "q850_cause": earlier.get("q850_cause"),
        "answered": 0,
        "answertype": earlier.get("answertype"),
        "calltime": None,
        "duration": None,
        "billsec": 0,
        "evidence": {
            "kind": "reused",
            "dialplan_id": plan["id"],
            "decided_at": plan["updated_at"],
            "evidence": earlier.get("evidence"),
        },
        "label": earlier.get("label"),
        "tries": 0,
    }


def build_detail(fields: UploadFields, decision: Decision, info: WavInfo) -> JSON:
    """The (ext) `detail` of a finished dialplan (PROTOCOL.md; timings as in seed 002)."""
    answered = decision.verdict is Verdict.ANSWERED or fields.answered
    if answered:
        answertype = "connected"
    elif decision.verdict is Verdict.FAILED:
        answertype = "caller"
    else:
        answertype = "callee"
    seconds = info.frames / info.samplerate if info.samplerate else 0.0
    return {
        "sip_code": fields.sip_code,
        "q850_cause": fields.q850_cause,
        "answered": 1 if answered else 0,
        "answertype": answertype,
        "calltime": fields.started_at,
        "duration": _seconds(fields.ring_ms),
        "billsec": _seconds(fields.media_ms) if answered else 0,
        "evidence": decision.evidence,
        "label": decision.label,
        "confidence": round(decision.confidence, 3),
        "decided_ms": decision.decided_ms,
        "transient": decision.transient,
        "local_verdict": fields.local_verdict,
        "local_confidence": fields.local_confidence,
        "recording": {
            "frames": info.frames,
            "samplerate": info.samplerate,
            "channels": info.channels,
            "bits": info.bits,
            "seconds": round(seconds, 3),
        },
    }


def _seconds(ms: int | None) -> int | None:
    return None if ms is None else round(ms / 1000)


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())
