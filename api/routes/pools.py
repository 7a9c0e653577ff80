"""/api/v1/smtp-pools (also /api/smtp-pools): upstream SMTP pools (scope `pools`).

Pools declared in the config file are listed too, with `source: "config"`, and are
read-only here (409 `config_pool`). The password is write-only: no answer carries it (only
`has_password`), and it is stored encrypted, bound to the pool's id. Every change reaches
the live delivery pools before the answer goes out.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api import pool_ops, warmup_ops
from api.auth import Caller, authenticate
from api.context import ApiContext, iso
from api.openapi import operation, path_parameter, query_parameter
from api.resource_schemas import (
    PoolCreate,
    PoolDeleted,
    PoolTest,
    PoolTestResult,
    PoolUpdate,
    SmtpPool,
    SmtpPoolList,
)
from api.schemas import HEADER_TEXT, ErrorResponse, parse, refuse_nulls
from storage.pools import PoolRecord
from storage.warmup import WarmupState, warmup_states

SCOPE = "pools"
PREFIXES = ("/api/v1/smtp-pools", "/api/smtp-pools")
_ID = [path_parameter("pool_id", "the pool's id (smtp_...)")]
_NOT_FOUND = ("no such pool", ErrorResponse)
_CONFIG = ("a config-file pool (config_pool), or the name is taken (conflict)", ErrorResponse)
_HOST = ("a bad field, or a host in a denied network (host_not_allowed)", ErrorResponse)
# What a DELETE of a pool may refuse, in both views of the pools (ours and MailSage's).
DELETE_REFUSALS: dict[int, tuple[str, Any]] = {
    400: ("move_to names no other active pool", ErrorResponse),
    409: ("a config-file pool (config_pool), or queued mail needs it (pool_in_use)", ErrorResponse),
}
MOVE_TO = query_parameter(
    "move_to", "the id of another active pool to move queued mail to",
    minLength=1, maxLength=64, **HEADER_TEXT,
)  # fmt: skip
MOVE_TO_TEXT = (
    "Queued mail whose route needs this pool (it names the pool, or the pool is the last of "
    "the ip_pool group it names) is never sent another way on its own: the delete is a 409 "
    "`pool_in_use` while there is some, unless `?move_to=<pool id>` names another active "
    "pool to move it to (in the same transaction; it is then due at once)."
)


async def warmups(ctx: ApiContext, records: list[PoolRecord]) -> dict[str, WarmupState]:
    """The pools' warmups (storage.warmup), by pool id; a pool without one is missing."""
    return await warmup_states(ctx.db, "pool", [r.id for r in records], warmup_ops.now(ctx))


def pool_json(record: PoolRecord, warm: dict[str, WarmupState] | None = None) -> dict[str, Any]:
    state = (warm or {}).get(record.id)
    return {
        "id": record.id,
        "name": record.name,
        "host": record.host,
        "port": record.port,
        "username": record.username,
        "encryption": record.encryption,
        "is_active": record.is_active,
        "created_at": iso(record.created_at),
        "ip_pool": record.ip_pool,
        "priority": record.priority,
        "max_connections": record.max_connections,
        "is_default": record.is_default,
        "from_email": record.from_email,
        "tls_verify": record.tls_verify,
        "rate": record.rate,
        "daily_limit": record.daily_limit,
        "source": record.source,
        "has_password": record.has_password,
        "created_by": record.created_by,
        "warmup": warmup_ops.brief(state),
    }


async def _caller(request: Request) -> tuple[ApiContext, Caller]:
    ctx: ApiContext = request.app.state.api
    key = await authenticate(request, ctx, SCOPE)
    return ctx, key


@operation(
    "List SMTP pools",
    scope=SCOPE,
    responses={200: ("every pool, config-file ones included; never a password", SmtpPoolList)},
)
async def list_all(request: Request) -> Response:
    ctx, caller = await _caller(request)
    records = await pool_ops.records(ctx, caller)
    warm = await warmups(ctx, records)
    return JSONResponse([pool_json(record, warm) for record in records])


@operation(
    "Create an SMTP pool",
    scope=SCOPE,
    request=PoolCreate,
    responses={201: ("the pool", SmtpPool), 400: _HOST, 409: _CONFIG},
)
async def create(request: Request) -> Response:
    ctx, caller = await _caller(request)
    body = parse(PoolCreate, await request.body())
    values = body.model_dump(exclude={"password"})
    record = await pool_ops.create(ctx, caller, values, body.password)
    return JSONResponse(pool_json(record), status_code=201)


@operation(
    "Get an SMTP pool",
    scope=SCOPE,
    parameters=_ID,
    responses={200: ("the pool", SmtpPool), 404: _NOT_FOUND},
)
async def show(request: Request) -> Response:
    ctx, caller = await _caller(request)
    record = await pool_ops.get(ctx, caller, request.path_params["pool_id"])
    return JSONResponse(pool_json(record, await warmups(ctx, [record])))


@operation(
    "Change an SMTP pool",
    scope=SCOPE,
    request=PoolUpdate,
    parameters=_ID,
    responses={200: ("the pool", SmtpPool), 400: _HOST, 404: _NOT_FOUND, 409: _CONFIG},
)
async def change(request: Request) -> Response:
    ctx, caller = await _caller(request)
    raw = await request.body()
    body = parse(PoolUpdate, raw)
    given = body.model_fields_set
    refuse_nulls(body)
    changes = {name: getattr(body, name) for name in given if name != "password"}
    partial = not {"username", "encryption", "host"} <= given
    pool_id = request.path_params["pool_id"]
    record = await pool_ops.update(
        ctx, caller, pool_id, changes, body.password, "password" in given, partial
    )
    return JSONResponse(pool_json(record, await warmups(ctx, [record])))


@operation(
    "Delete an SMTP pool",
    scope=SCOPE,
    parameters=[*_ID, MOVE_TO],
    description=MOVE_TO_TEXT,
    responses={
        200: ("deleted (with move_to: `moved`, how many messages moved)", PoolDeleted),
        **DELETE_REFUSALS,
        404: _NOT_FOUND,
    },
)
async def remove(request: Request) -> Response:
    ctx, caller = await _caller(request)
    move_to = request.query_params.get("move_to")
    moved = await pool_ops.delete(ctx, caller, request.path_params["pool_id"], move_to)
    return JSONResponse({"success": True, **({"moved": moved} if move_to else {})})


@operation(
    "Test an SMTP pool",
    scope=SCOPE,
    request=PoolTest,
    request_required=False,
    parameters=_ID,
    description=(
        "EHLO, STARTTLS or implicit TLS per `encryption`, AUTH when a username is set, QUIT. "
        'No body is needed; with `{"recipient": ...}` (the key then needs a send scope that '
        "covers the pool's ip_pool too) a test message is also sent through "
        "this pool (stored and delivered like any other message) and its `message_id` "
        "returned: 200 once the upstream accepted it within `handoff_timeout`, 400 "
        "`upstream_rejected` naming the reply when it refused it, 202 `queued: true` when it "
        "has not answered yet (the message is retried). A failed connection test is a 200 "
        "with `success: false`, `code`, `reason`, `reply` (the server's SMTP reply, "
        "sanitised, or null: nothing else the server sent is repeated) and `error`."
    ),
    responses={
        200: ("the outcome", PoolTestResult),
        202: ("the test message is queued: not accepted yet", PoolTestResult),
        400: ("a bad field, a denied host, or the upstream refused the message", ErrorResponse),
        403: (
            "the key lacks the scope (with a recipient: a send scope too), or from_email is "
            "unverified",
            ErrorResponse,
        ),
        404: _NOT_FOUND,
    },
)
async def test(request: Request) -> Response:
    ctx, key = await _caller(request)
    raw = await request.body()
    body = parse(PoolTest, raw) if raw.strip() else PoolTest(recipient=None)
    record = await pool_ops.get(ctx, key, request.path_params["pool_id"])
    result, sent = await pool_ops.test(ctx, key, record, body.recipient)
    answer: dict[str, Any] = {
        "success": result.success,
        "message": result.message,
        "latencyMs": result.latency_ms,
    }
    if not result.success:
        answer.update(error=result.error, code=result.code, reason=result.reason)
        answer.update(reply=result.reply)
    if sent is None:
        return JSONResponse(answer)
    if sent.outcome == "refused":
        raise pool_ops.refused(result, sent)
    answer["message_id"] = sent.message_id
    if sent.outcome == "pending":
        answer.update(success=False, queued=True, message=pool_ops.PENDING_TEXT)
        return JSONResponse(answer, status_code=202)
    return JSONResponse(answer)


routes = [
    route
    for prefix in PREFIXES
    for route in (
        Route(prefix, list_all, methods=["GET"]),
        Route(prefix, create, methods=["POST"]),
        Route(prefix + "/{pool_id}", show, methods=["GET"]),
        Route(prefix + "/{pool_id}", change, methods=["PATCH"]),
        Route(prefix + "/{pool_id}", remove, methods=["DELETE"]),
        Route(prefix + "/{pool_id}/test", test, methods=["POST"]),
    )
]
