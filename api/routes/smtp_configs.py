"""/api/v1/smtp/configs: the MailSage view of the SMTP pools (scope `pools`).

The same records as /api/v1/smtp-pools, in MailSage's shape: `{data, meta}` pages, PUT for
changes, `use_tls` for `encryption` (true: "ssl" on port 465, else "tls" (STARTTLS); false:
"none"), and its error codes (`rate_limit` for 429, `smtp_auth_error` /
`smtp_connection_error` / `smtp_tls_error` / `timeout` when a test fails). Ids are the
pools' string ids. Config-file pools are read-only here too.
"""

from __future__ import annotations

import math
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api import errors, pool_ops
from api.auth import Caller, authenticate
from api.context import ApiContext, iso
from api.openapi import operation, path_parameter, query_parameter
from api.resource_schemas import (
    ConfigCreate,
    ConfigDeleted,
    ConfigTest,
    ConfigTestResult,
    ConfigUpdate,
    SmtpConfig,
    SmtpConfigPage,
)
from api.routes.pools import DELETE_REFUSALS, MOVE_TO, MOVE_TO_TEXT
from api.schemas import ErrorResponse, parse, refuse_nulls
from storage.pools import PoolRecord

SCOPE = "pools"
BASE = "/api/v1/smtp/configs"
MAX_PER_PAGE = 100
MAX_PAGE_NUMBER = 1_000_000
_ID = [path_parameter("config_id", "the configuration's id (an SMTP pool id)")]
_NOT_FOUND = ("no such configuration", ErrorResponse)
_CONFLICT = ("a config-file pool (config_pool), or the name is taken (conflict)", ErrorResponse)


def config_json(record: PoolRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.name,
        "host": record.host,
        "port": record.port,
        "username": record.username,
        "from_email": record.from_email,
        "is_default": record.is_default,
        "use_tls": record.encryption != "none",
        "created_at": iso(record.created_at),
        "has_password": record.has_password,
    }


def encryption(use_tls: bool, port: int) -> str:
    if not use_tls:
        return "none"
    return "ssl" if port == 465 else "tls"


async def _caller(request: Request) -> tuple[ApiContext, Caller]:
    ctx: ApiContext = request.app.state.api
    return ctx, await authenticate(request, ctx, SCOPE)


def _page_number(request: Request, name: str, default: int, most: int) -> int:
    raw = request.query_params.get(name, str(default))
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= most:
        raise errors.InvalidRequest(
            f"{name}: out of bounds", [{"field": name, "message": f"an integer from 1 to {most}"}]
        )
    return int(raw)


@operation(
    "List SMTP configurations",
    scope=SCOPE,
    parameters=[
        query_parameter(
            "page", "page number (default 1)", "integer", minimum=1, maximum=MAX_PAGE_NUMBER
        ),
        query_parameter(
            "per_page",
            f"items per page, 1 to {MAX_PER_PAGE} (default 20)",
            "integer",
            minimum=1,
            maximum=MAX_PER_PAGE,
        ),
    ],
    responses={200: ("one page", SmtpConfigPage)},
)
async def list_all(request: Request) -> Response:
    ctx, caller = await _caller(request)
    page = _page_number(request, "page", 1, MAX_PAGE_NUMBER)
    per_page = _page_number(request, "per_page", 20, MAX_PER_PAGE)
    records = await pool_ops.records(ctx, caller)
    chunk = records[(page - 1) * per_page : page * per_page]
    return JSONResponse(
        {
            "data": [config_json(record) for record in chunk],
            "meta": {
                "current_page": page,
                "total_pages": max(1, math.ceil(len(records) / per_page)),
                "total_items": len(records),
                "per_page": per_page,
            },
        }
    )


@operation(
    "Add an SMTP configuration",
    scope=SCOPE,
    request=ConfigCreate,
    responses={201: ("the configuration", SmtpConfig), 409: _CONFLICT},
)
async def create(request: Request) -> Response:
    ctx, caller = await _caller(request)
    body = parse(ConfigCreate, await request.body())
    values = body.model_dump(exclude={"password", "use_tls"})
    values["encryption"] = encryption(body.use_tls, body.port)
    record = await pool_ops.create(ctx, caller, values, body.password)
    return JSONResponse(config_json(record), status_code=201)


@operation(
    "Get an SMTP configuration",
    scope=SCOPE,
    parameters=_ID,
    responses={200: ("the configuration", SmtpConfig), 404: _NOT_FOUND},
)
async def show(request: Request) -> Response:
    ctx, caller = await _caller(request)
    record = await pool_ops.get(ctx, caller, request.path_params["config_id"])
    return JSONResponse(config_json(record))


@operation(
    "Update an SMTP configuration",
    scope=SCOPE,
    request=ConfigUpdate,
    parameters=_ID,
    description="Every field is optional; only those given change.",
    responses={200: ("the configuration", SmtpConfig), 404: _NOT_FOUND, 409: _CONFLICT},
)
async def update(request: Request) -> Response:
    ctx, caller = await _caller(request)
    config_id = request.path_params["config_id"]
    body = parse(ConfigUpdate, await request.body())
    given = body.model_fields_set
    refuse_nulls(body)
    changes = {name: getattr(body, name) for name in given - {"password", "use_tls"}}
    if "use_tls" in given or "port" in given:
        current = await pool_ops.get(ctx, caller, config_id)
        use_tls = body.use_tls if body.use_tls is not None else current.encryption != "none"
        changes["encryption"] = encryption(use_tls, body.port or current.port)
    partial = not {"username", "use_tls", "host"} <= given
    record = await pool_ops.update(
        ctx, caller, config_id, changes, body.password, "password" in given, partial
    )
    return JSONResponse({**config_json(record), "updated_at": iso(time.time())})


@operation(
    "Delete an SMTP configuration",
    scope=SCOPE,
    parameters=[*_ID, MOVE_TO],
    description=MOVE_TO_TEXT,
    responses={
        200: ("deleted (with move_to: `moved`, how many messages moved)", ConfigDeleted),
        **DELETE_REFUSALS,
        404: _NOT_FOUND,
    },
)
async def remove(request: Request) -> Response:
    ctx, caller = await _caller(request)
    move_to = request.query_params.get("move_to")
    moved = await pool_ops.delete(ctx, caller, request.path_params["config_id"], move_to)
    answer: dict[str, Any] = {"message": "SMTP configuration deleted successfully"}
    if move_to:
        answer["moved"] = moved
    return JSONResponse(answer)


@operation(
    "Test an SMTP configuration",
    scope=SCOPE,
    request=ConfigTest,
    parameters=_ID,
    description=(
        "Connects (EHLO, TLS, AUTH) and sends a test email to `recipient` through this "
        "configuration (the key needs a send scope covering its ip_pool as well as "
        "`pools`). 200 once the upstream accepted it within `handoff_timeout`; 202 "
        "`queued: true` (with `message_id`) when it has not answered yet (the email is "
        "retried). A failed connection is a 400 whose `code` names the stage: "
        "smtp_connection_error, smtp_tls_error, smtp_auth_error or timeout; a refused email "
        "a 400 `upstream_rejected` whose `message` is the upstream's reply."
    ),
    responses={
        200: ("the upstream accepted the test email", ConfigTestResult),
        202: ("the test email is queued: not accepted yet", ConfigTestResult),
        400: (
            "bad recipient, a denied host, the connection test failed, or the upstream "
            "refused the email (upstream_rejected)",
            ErrorResponse,
        ),
        403: ("the key lacks `pools` or a send scope for this pool", ErrorResponse),
        404: _NOT_FOUND,
    },
)
async def test(request: Request) -> Response:
    ctx, key = await _caller(request)
    body = parse(ConfigTest, await request.body())
    record = await pool_ops.get(ctx, key, request.path_params["config_id"])
    result, sent = await pool_ops.test(ctx, key, record, body.recipient)
    if not result.success or sent is None:
        raise errors.SmtpTestFailed(
            result.code or "smtp_connection_error",
            result.message,
            result.error or "the test failed",
            result.latency_ms,
            extra={"reason": result.reason, "reply": result.reply},
        )
    if sent.outcome == "refused":
        raise pool_ops.refused(result, sent)
    answer: dict[str, Any] = {
        "message": "Test email sent successfully",
        "delivery_id": sent.message_id,
        "latencyMs": result.latency_ms,
    }
    if sent.outcome == "pending":
        answer.update(message=f"Test email queued: {pool_ops.PENDING_TEXT}", queued=True)
        answer["message_id"] = sent.message_id
        return JSONResponse(answer, status_code=202)
    return JSONResponse(answer)


routes = [
    Route(BASE, list_all, methods=["GET"]),
    Route(BASE, create, methods=["POST"]),
    Route(BASE + "/{config_id}", show, methods=["GET"]),
    Route(BASE + "/{config_id}", update, methods=["PUT"]),
    Route(BASE + "/{config_id}", remove, methods=["DELETE"]),
    Route(BASE + "/{config_id}/test", test, methods=["POST"]),
]
