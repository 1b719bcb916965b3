"""The seed's envelope {"code", "msg", "data"} for every answer, errors included."""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from sipclient.logs import get_logger

log = get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """A refusal the client caused: `status` is both the HTTP status and the envelope's code."""

    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status
        self.msg = msg


def bad_request(field: str, problem: str) -> ApiError:
    """400 naming the offending field first, e.g. ``phone[2]: expected a string``."""
    return ApiError(400, f"{field}: {problem}")


def envelope(
    data: Any, *, code: int = 200, msg: str | None = "", status: int = 200
) -> web.Response:
    """A JSON answer in the envelope."""
    return web.json_response({"code": code, "msg": msg, "data": data}, status=status)


TASK_SLICE = 2000
"""Dialplans encoded per json.dumps call in `task_json` (a few ms each)."""


def task_json(data: dict[str, Any], msg: str | None = None) -> bytes:
    """The envelope of a task (`data.dialplans` may hold 100,000 numbers) as JSON bytes.

    Run it in a thread (`task_envelope`): json.dumps is one C call that holds the
    GIL to its end, ~200 ms for 100,000 dialplans, during which no 001 call is
    served. Encoded a slice of dialplans at a time, the event loop gets the GIL
    between slices. Same separators as aiohttp's json_response; `dialplans`
    comes last in `data`.
    """
    plans = data.get("dialplans")
    if not isinstance(plans, list) or len(plans) <= TASK_SLICE:
        return json.dumps({"code": 200, "msg": msg, "data": data}).encode()
    rest = json.dumps({k: v for k, v in data.items() if k != "dialplans"})
    parts = [f'{{"code": 200, "msg": {json.dumps(msg)}, "data": ', rest[:-1]]
    parts.append(', "dialplans": [' if len(rest) > 2 else '"dialplans": [')
    slices = (json.dumps(plans[i : i + TASK_SLICE])[1:-1] for i in range(0, len(plans), TASK_SLICE))
    parts.append(", ".join(slices))
    parts.append("]}}")
    return "".join(parts).encode()


async def task_envelope(data: dict[str, Any], msg: str | None = None) -> web.Response:
    """`envelope(data)` for a task, encoded off the event loop (`task_json`)."""
    body = await asyncio.to_thread(task_json, data, msg)
    return web.Response(body=body, content_type="application/json")


def error_envelope(status: int, msg: str) -> web.Response:
    return envelope({}, code=status, msg=msg, status=status)


def auth_middleware(api_token: str, client_token: str) -> Middleware:
    """`Authorization: Bearer <token>` on /api/... (api_token) and on the 001 API
    (client_token), when set; /openapi.json stays open. Checked before the body is read."""
    expected = {"api": api_token.encode(), "client": client_token.encode()}

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        which = "api" if path.startswith("/api/") else "client"
        token = expected[which]
        if token and path != "/openapi.json":
            given = request.headers.get("Authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token):
                raise ApiError(
                    401,
                    "authorization: missing or wrong token (Authorization: Bearer <auth."
                    f"{which}_token>)",
                )
        return await handler(request)

    return middleware


def max_body_middleware(max_body: int) -> Middleware:
    """Refuse a declared oversized body before reading a byte of it."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.content_length is not None and request.content_length > max_body:
            raise ApiError(413, f"body: larger than max_body ({max_body} bytes)")
        return await handler(request)

    return middleware


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes an envelope; an unexpected one is logged and answers 500."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_envelope(exc.status, exc.msg)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 413:
            msg = "body: larger than max_body"
        elif exc.status == 404:
            msg = f"no such route: {request.method} {request.path}"
        elif exc.status == 405:
            msg = f"method {request.method} not allowed on {request.path}"
        else:
            msg = exc.reason
        resp = error_envelope(exc.status, msg)
        if "Allow" in exc.headers:
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("request failed", method=request.method, path=request.path)
        return error_envelope(500, "internal error (logged)")
