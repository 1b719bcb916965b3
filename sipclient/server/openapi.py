"""The OpenAPI 3 description of every route, served at GET /openapi.json."""

from __future__ import annotations

from typing import Any

from sipclient import __version__

JSON = dict[str, Any]

_STR: JSON = {"type": "string"}
_INT: JSON = {"type": "integer"}
_NULL_STR: JSON = {"type": "string", "nullable": True}


def _envelope(data: JSON, *, msg_nullable: bool = True) -> JSON:
    return {
        "type": "object",
        "required": ["code", "msg", "data"],
        "properties": {
            "code": {"type": "integer", "description": "200 success, anything else a failure"},
            "msg": {"type": "string", "nullable": msg_nullable},
            "data": data,
        },
    }


def _paging(size: int) -> list[JSON]:
    """The `page` and `size` query parameters of a listing (`size` up to 1000)."""
    return [
        {"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1, "default": 1}},
        {
            "name": "size",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": size},
        },
    ]


def _ok(data: JSON, description: str = "success") -> JSON:
    return {
        "description": description,
        "content": {"application/json": {"schema": _envelope(data)}},
    }


def _errors(*codes: int) -> JSON:
    text = {
        400: "bad input; msg names the field",
        404: "unknown clientId, task, extension or number",
        409: (
            "the number is already finished (/dial_wav; the same call's upload again,"
            " same extensionNum and startedAt, answers 200 and changes nothing),"
            " the task not yet (its callback)"
        ),
        413: "body larger than max_body",
        503: "the server could not list its template library (its log says why)",
    }
    return {
        str(c): {
            "description": text[c],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for c in codes
    }


_CLIENT_ID: JSON = {
    "name": "clientId",
    "in": "path",
    "required": True,
    "schema": _STR,
    "description": "the id /notify answered",
}

_TASK_ID: JSON = {
    "name": "task_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1},
}

_DIALPLANS: JSON = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["extensionNum", "phoneNum"],
        "properties": {
            "extensionNum": _STR,
            "phoneNum": _STR,
            "dialplanId": _INT,
            "leaseSeconds": {
                "type": "number",
                "description": "(ext) the server's leases.number_timeout: past it the"
                " number is handed out again",
            },
        },
    },
}
_TIMESTAMP: JSON = {
    "type": "object",
    "required": ["timestamp"],
    "properties": {"timestamp": {"type": "string", "description": "epoch ms"}},
}


def _components() -> JSON:
    return {
        "schemas": {
            "Error": _envelope({"type": "object"}),
            "Account": {
                "type": "object",
                "required": ["host", "name", "pwd"],
                "properties": {
                    "host": {"type": "string", "description": "registrar host:port"},
                    "name": _STR,
                    "pwd": _STR,
                    "transport": {"type": "string", "enum": ["udp", "tcp"], "nullable": True},
                    "domain": _NULL_STR,
                },
            },
            "Dialplan": {
                "type": "object",
                "required": [
                    "id",
                    "phone",
                    "client_id",
                    "status",
                    "result",
                    "created_at",
                    "updated_at",
                    "task_id",
                ],
                "properties": {
                    "id": _INT,
                    "phone": _STR,
                    "client_id": _NULL_STR,
                    "status": {"type": "string", "enum": ["free", "busy", "finish"]},
                    "result": _NULL_STR,
                    "created_at": _STR,
                    "updated_at": _STR,
                    "task_id": _INT,
                    "extensionNum": _NULL_STR,
                    "tries": _INT,
                    "detail": {"type": "object", "nullable": True},
                },
            },
            "Fleet": {
                "type": "object",
                "required": ["clients", "totals"],
                "properties": {
                    "clients": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["id", "state", "last_seen", "extensions"],
                            "properties": {
                                "id": _STR,
                                "state": {"type": "string", "enum": ["active", "expired"]},
                                "created_at": _STR,
                                "last_seen": _STR,
                                "busy_numbers": _INT,
                                "health": {
                                    "type": "object",
                                    "nullable": True,
                                    "description": "(ext) what the daemon said of itself at"
                                    " its latest heartbeat (none before one, or after a"
                                    " server restart until the next)",
                                    "properties": {
                                        "summary": _STR,
                                        "alerts": {"type": "array", "items": _STR},
                                        "decided": _INT,
                                        "spooled": _INT,
                                        "at": _STR,
                                    },
                                },
                                "extensions": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "properties": {
                                            "extensionNum": _STR,
                                            "host": _STR,
                                            "status": {
                                                "type": "string",
                                                "enum": [
                                                    "idle",
                                                    "during",
                                                    "call",
                                                    "unregistered",
                                                    "unknown",
                                                ],
                                            },
                                            "phone": _STR,
                                            "since": _NULL_STR,
                                        },
                                    },
                                },
                            },
                        },
                    },
                    "totals": {
                        "type": "object",
                        "additionalProperties": {"type": "integer"},
                    },
                },
            },
            "TaskSummary": {
                "type": "object",
                "required": ["id", "status", "return_url", "created_at", "updated_at"],
                "properties": {
                    "id": _INT,
                    "status": {"type": "string", "enum": ["free", "running", "finish"]},
                    "return_url": _STR,
                    "created_at": _STR,
                    "updated_at": _STR,
                },
            },
            "Task": {
                "allOf": [
                    {"$ref": "#/components/schemas/TaskSummary"},
                    {
                        "type": "object",
                        "properties": {
                            "dialplans": {
                                "type": "array",
                                "items": {"$ref": "#/components/schemas/Dialplan"},
                            },
                            "cancelled_at": {
                                **_NULL_STR,
                                "description": "(ext) when POST /api/tasks/{id}/cancel stopped it",
                            },
                            "callback": {
                                "type": "object",
                                "properties": {
                                    "state": {
                                        "type": "string",
                                        "enum": ["none", "pending", "delivered", "failed"],
                                    },
                                    "tries": _INT,
                                    "last_status": {"type": "integer", "nullable": True},
                                    "last_error": _NULL_STR,
                                    "delivered_at": _NULL_STR,
                                },
                            },
                        },
                    },
                ]
            },
        }
    }


def _task_get(summary: str) -> JSON:
    return {
        "get": {
            "summary": summary,
            "parameters": [_TASK_ID],
            "responses": {
                "200": _ok({"$ref": "#/components/schemas/Task"}),
                **_errors(400, 404),
            },
        }
    }


def openapi_document() -> JSON:
    """The whole OpenAPI 3.0 document."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "sipclient embedded server (000 push/task API + 001 control API)",
            "version": __version__,
            "description": "Every answer is the envelope {code, msg, data}; code 200 is success.",
        },
        "paths": {
            "/api/account": {
                "post": {
                    "summary": "add or update extension accounts; answers the pool",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["account"],
                                    "properties": {
                                        "account": {
                                            "type": "array",
                                            "minItems": 1,
                                            "items": {"$ref": "#/components/schemas/Account"},
                                        }
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _ok(
                            {
                                "type": "object",
                                "properties": {
                                    "accounts": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Account"},
                                    }
                                },
                            }
                        ),
                        **_errors(400, 413),
                    },
                }
            },
            "/api/dialplan": {
                "post": {
                    "summary": "create a task of numbers; return_url receives it when finished",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["phone", "return_url"],
                                    "properties": {
                                        "phone": {
                                            "type": "array",
                                            "minItems": 1,
                                            "items": {"type": "string", "minLength": 1},
                                        },
                                        "return_url": {"type": "string", "format": "uri"},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _ok(
                            {
                                "type": "object",
                                "required": ["task_id", "dialplans", "return_url"],
                                "properties": {
                                    "task_id": _INT,
                                    "dialplans": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Dialplan"},
                                    },
                                    "return_url": _STR,
                                },
                            }
                        ),
                        **_errors(400, 413),
                    },
                }
            },
            "/api/tasks": {
                "get": {
                    "summary": "tasks, newest first",
                    "parameters": _paging(10),
                    "responses": {
                        "200": _ok(
                            {"type": "array", "items": {"$ref": "#/components/schemas/TaskSummary"}}
                        ),
                        **_errors(400),
                    },
                }
            },
            "/api/clients": {
                "get": {
                    "summary": "(ext) the daemons with their lines' latest status",
                    "parameters": [
                        {
                            "name": "state",
                            "in": "query",
                            "schema": {
                                "type": "string",
                                "enum": ["active", "expired"],
                                "default": "active",
                            },
                        },
                        *_paging(100),
                    ],
                    "responses": {
                        "200": _ok({"$ref": "#/components/schemas/Fleet"}),
                        **_errors(400),
                    },
                }
            },
            "/api/tasks/{task_id}": _task_get("one task with its dialplans"),
            "/api/task/{task_id}": _task_get("the same, as the seed's example spells it"),
            "/api/tasks/{task_id}/callback": {
                "post": {
                    "summary": "(ext) deliver a finished task's callback again, from its"
                    " first try (409 while the task is not finished)",
                    "parameters": [_TASK_ID],
                    "responses": {
                        "200": _ok(
                            {
                                "type": "object",
                                "required": ["task_id", "callback"],
                                "properties": {
                                    "task_id": {"type": "integer"},
                                    "callback": {"type": "string", "enum": ["pending"]},
                                },
                            }
                        ),
                        **_errors(400, 404, 409),
                    },
                }
            },
            "/api/tasks/{task_id}/cancel": {
                "post": {
                    "summary": "(ext) stop a task: numbers not being dialled finish now as"
                    " unknown (evidence kind cancelled), those on a line with their call",
                    "parameters": [_TASK_ID],
                    "responses": {
                        "200": _ok(
                            {
                                "type": "object",
                                "required": ["task_id", "cancelled", "in_flight"],
                                "properties": {
                                    "task_id": {"type": "integer"},
                                    "cancelled": {"type": "integer", "minimum": 0},
                                    "in_flight": {"type": "integer", "minimum": 0},
                                },
                            }
                        ),
                        **_errors(400, 404),
                    },
                }
            },
            "/notify": {
                "get": {
                    "summary": "register a daemon; data.clientId is its id",
                    "responses": {
                        "200": _ok(
                            {
                                "type": "object",
                                "required": ["clientId"],
                                "properties": {
                                    "clientId": _STR,
                                    "clientTimeout": {
                                        "type": "number",
                                        "description": "(ext) leases.client_timeout:"
                                        " seconds of silence after which the id and"
                                        " its leases expire",
                                    },
                                },
                            }
                        )
                    },
                }
            },
            "/accounts/{clientId}": {
                "get": {
                    "summary": "lease up to threadsNum extension accounts (same lease on re-ask)",
                    "parameters": [
                        _CLIENT_ID,
                        {
                            "name": "threadsNum",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 10000},
                        },
                    ],
                    "responses": {
                        "200": _ok(
                            {
                                "type": "object",
                                "required": ["accounts"],
                                "properties": {
                                    "accounts": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": ["extensionNum", "password"],
                                            "properties": {
                                                "extensionNum": _STR,
                                                "password": _STR,
                                                "host": _STR,
                                                "transport": _STR,
                                                "domain": _STR,
                                            },
                                        },
                                    }
                                },
                            }
                        ),
                        **_errors(400, 404),
                    },
                }
            },
            "/dialplan/{clientId}": {
                "get": {
                    "summary": "at most one number per idle leased extension",
                    "parameters": [_CLIENT_ID],
                    "responses": {
                        "200": _ok(
                            {
                                "type": "object",
                                "required": ["dialplans"],
                                "properties": {
                                    "dialplans": _DIALPLANS,
                                },
                            }
                        ),
                        **_errors(404),
                    },
                }
            },
            "/heartbeat/{clientId}": {
                "post": {
                    "summary": "liveness; (ext) an optional JSON body with the daemon's"
                    " view of itself, shown by /api/clients (ignored when unreadable)",
                    "parameters": [_CLIENT_ID],
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "summary": _STR,
                                        "alerts": {"type": "array", "items": _STR},
                                        "decided": _INT,
                                        "spooled": _INT,
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _ok(
                            {
                                "type": "object",
                                "required": ["timestamp"],
                                "properties": {
                                    "timestamp": {"type": "string", "description": "epoch ms"},
                                    "library": {
                                        "type": "string",
                                        "description": "(ext) the version of the template"
                                        " library the server offers at /library",
                                    },
                                },
                            }
                        ),
                        **_errors(404),
                    },
                }
            },
            "/library": {
                "get": {
                    "summary": "(ext) the server's template library, for the daemons to"
                    " mirror: its version and each template's manifest row, sha256, size",
                    "responses": {
                        "200": _ok(
                            {
                                "type": "object",
                                "required": ["version", "templates"],
                                "properties": {
                                    "version": _STR,
                                    "templates": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": [
                                                "file",
                                                "verdict",
                                                "label",
                                                "sha256",
                                                "size",
                                            ],
                                            "properties": {
                                                "file": _STR,
                                                "verdict": _STR,
                                                "label": _STR,
                                                "sha256": _STR,
                                                "size": _INT,
                                            },
                                        },
                                    },
                                },
                            }
                        ),
                        **_errors(503),
                    },
                }
            },
            "/library/{file}": {
                "get": {
                    "summary": "(ext) one template's WAV, as /library lists it",
                    "parameters": [
                        {"name": "file", "in": "path", "required": True, "schema": _STR}
                    ],
                    "responses": {
                        "200": {
                            "description": "the WAV",
                            "content": {"audio/wav": {"schema": {"type": "string"}}},
                        },
                        **_errors(404),
                    },
                }
            },
            "/leave/{clientId}": {
                "post": {
                    "summary": "(ext) the client stops: its lease ends now, not at"
                    " leases.client_timeout (accounts back to the pool, busy numbers free)",
                    "parameters": [_CLIENT_ID],
                    "responses": {
                        "200": _ok(
                            {
                                "type": "object",
                                "required": ["accounts", "numbers"],
                                "properties": {
                                    "accounts": {"type": "integer", "minimum": 0},
                                    "numbers": {"type": "integer", "minimum": 0},
                                },
                            }
                        ),
                        **_errors(404),
                    },
                }
            },
            "/status/{clientId}": {
                "get": {
                    "summary": "state change of one extension",
                    "parameters": [
                        _CLIENT_ID,
                        {
                            "name": "status",
                            "in": "query",
                            "required": True,
                            "schema": {
                                "type": "string",
                                "enum": ["idle", "during", "call", "unregistered"],
                            },
                        },
                        {"name": "extensionNum", "in": "query", "required": True, "schema": _STR},
                        {"name": "phoneNum", "in": "query", "required": False, "schema": _STR},
                        {
                            "name": "next",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "enum": ["0", "1", "2", "3"]},
                            "description": "(ext) with status=idle, 1 or more: hand this"
                            " extension its next number in the reply's `dialplans` (as GET"
                            " /dialplan would, for it alone), saving the daemon that round"
                            " trip; with status=during, N: numbers for it to hold while it"
                            " dials phoneNum, so many that N were handed to it after"
                            " phoneNum (asked again, none more)",
                        },
                    ],
                    "responses": {
                        "200": _ok(
                            {
                                "type": "object",
                                "required": ["timestamp"],
                                "properties": {
                                    "timestamp": {"type": "string"},
                                    "dialplans": _DIALPLANS,
                                    "duringRecorded": {
                                        "type": "boolean",
                                        "description": "(ext) with `dialplans`: the"
                                        " extension is recorded `during` each number"
                                        " handed, so the client need not say so",
                                    },
                                },
                            }
                        ),
                        **_errors(400, 404),
                    },
                }
            },
            "/dial_wav/{clientId}": {
                "post": {
                    "summary": "the recording and signalling of one dialled number",
                    "parameters": [_CLIENT_ID],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "required": ["file_name", "extensionNum", "phone"],
                                    "properties": {
                                        "file_name": {"type": "string", "format": "binary"},
                                        "extensionNum": _STR,
                                        "phone": _STR,
                                        "dialplanId": _INT,
                                        "sipCode": _INT,
                                        "sipReason": _STR,
                                        "q850Cause": _INT,
                                        "answered": {"type": "integer", "enum": [0, 1]},
                                        "earlyMedia": {"type": "integer", "enum": [0, 1]},
                                        "ringing": {"type": "integer", "enum": [0, 1]},
                                        "cancelledByUs": {"type": "integer", "enum": [0, 1]},
                                        "cancelReason": {"type": "string"},
                                        "startedAt": _STR,
                                        "ringMs": _INT,
                                        "mediaMs": _INT,
                                        "localVerdict": _STR,
                                        "localConfidence": {"type": "number"},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _ok(
                            {
                                "type": "object",
                                "required": ["timestamp"],
                                "properties": {
                                    "timestamp": _STR,
                                    "dialplanId": {"type": "integer", "nullable": True},
                                    "status": {"type": "string", "enum": ["free", "finish"]},
                                    "result": _STR,
                                },
                            }
                        ),
                        **_errors(400, 404, 409, 413),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "this document",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3 document",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": _components(),
    }
