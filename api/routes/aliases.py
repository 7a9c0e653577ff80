"""/api/v1/aliases: sender aliases (scope `aliases`).

An alias's address must be on a verified domain. Creating one sends a verification message
(through Intake, From no-reply@ the alias's domain) with a link to
`GET /api/v1/aliases/verify?token=...`: single-use, valid 48 hours, only its SHA-256 kept;
`POST /{id}/resend` sends a new link (the old ones stop working). Following it sets
`is_verified`; from then on mail From the alias routes to its ip_pool and passes the
`verified` sender policy. Only name, is_default and ip_pool change afterwards. The work is
api.alias_ops' (shared with the dashboard); here requests are read and answered. An alias
records the user who made it (`created_by`); a caller sees the aliases api.ownership lets it
see, another's is a 404.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api import alias_ops
from api.alias_ops import MAX_TOKEN, SCOPE
from api.auth import Caller, authenticate
from api.context import ApiContext, iso
from api.openapi import operation, path_parameter, query_parameter
from api.resource_schemas import AliasCreate, AliasList, AliasResponse, AliasUpdate
from api.schemas import ErrorResponse, Ok, parse
from storage.aliases import AliasRecord

BASE = "/api/v1/aliases"
_ID = [path_parameter("alias_id", "the alias's id (ali_...)")]
_NOT_FOUND = ("alias not found", ErrorResponse)


def alias_json(record: AliasRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "email": record.email,
        "name": record.name,
        "is_default": record.is_default,
        "is_verified": record.is_verified,
        "ip_pool": record.ip_pool,
        "created_at": iso(record.created_at),
        "created_by": record.created_by,
    }


async def _caller(request: Request) -> tuple[ApiContext, Caller]:
    ctx: ApiContext = request.app.state.api
    return ctx, await authenticate(request, ctx, SCOPE)


async def _visible(ctx: ApiContext, caller: Caller, request: Request) -> AliasRecord:
    return await alias_ops.get(ctx, caller, request.path_params["alias_id"])


@operation("List sending aliases", scope=SCOPE, responses={200: ("every alias", AliasList)})
async def list_all(request: Request) -> Response:
    ctx, caller = await _caller(request)
    found = await alias_ops.records(ctx, caller)
    return JSONResponse({"success": True, "aliases": [alias_json(a) for a in found]})


@operation(
    "Create an alias",
    scope=SCOPE,
    request=AliasCreate,
    description="The address must be on a verified domain; a verification message is sent.",
    responses={
        201: ("the alias, not yet verified", AliasResponse),
        409: ("an alias for this address exists", ErrorResponse),
        422: ("the address's domain is not verified (domain_not_verified)", ErrorResponse),
    },
)
async def create(request: Request) -> Response:
    ctx, caller = await _caller(request)
    body = parse(AliasCreate, await request.body())
    record, message_id = await alias_ops.create(ctx, caller, body)
    return JSONResponse(
        {"success": True, "alias": alias_json(record), "verification_message_id": message_id},
        status_code=201,
    )


@operation(
    "Send an alias's verification message again",
    scope=SCOPE,
    parameters=_ID,
    description=(
        "A new link, in a new verification message: the links sent before stop working. "
        "For an alias not verified yet."
    ),
    responses={
        200: ("the alias, still unverified, and the message's id", AliasResponse),
        404: _NOT_FOUND,
        409: ("the alias is verified already (alias_verified)", ErrorResponse),
    },
)
async def resend(request: Request) -> Response:
    ctx, caller = await _caller(request)
    record = await _visible(ctx, caller, request)
    message_id = await alias_ops.resend(ctx, caller, record)
    return JSONResponse(
        {"success": True, "alias": alias_json(record), "verification_message_id": message_id}
    )


@operation(
    "Confirm an alias",
    parameters=[
        query_parameter(
            "token",
            "the token of the verification link",
            required=True,
            minLength=1,
            maxLength=MAX_TOKEN,
            pattern="^[\\x00-\\x7f]*$",
        )
    ],
    description="The link of the verification message; no API key. Works once.",
    responses={
        200: ("the alias, now verified", AliasResponse),
        400: ("a malformed token (invalid_token)", ErrorResponse),
        404: ("an unknown, used or expired token (invalid_token)", ErrorResponse),
    },
)
async def verify(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    record = await alias_ops.verify(ctx, request.query_params.get("token", ""))
    return JSONResponse({"success": True, "alias": alias_json(record)})


@operation(
    "Get an alias",
    scope=SCOPE,
    parameters=_ID,
    responses={200: ("the alias", AliasResponse), 404: _NOT_FOUND},
)
async def show(request: Request) -> Response:
    ctx, caller = await _caller(request)
    record = await _visible(ctx, caller, request)
    return JSONResponse({"success": True, "alias": alias_json(record)})


@operation(
    "Update an alias",
    scope=SCOPE,
    request=AliasUpdate,
    parameters=_ID,
    description="Only name, is_default and ip_pool can be changed after creation.",
    responses={200: ("the alias", AliasResponse), 404: _NOT_FOUND},
)
async def change(request: Request) -> Response:
    ctx, caller = await _caller(request)
    raw = await request.body()
    try:
        fields = json.loads(raw)
    except (ValueError, RecursionError):  # malformed or nested too deep: parse() says which
        fields = None
    alias_ops.refuse_fixed(fields)
    body = parse(AliasUpdate, raw)
    record = await _visible(ctx, caller, request)  # after the body's checks, as before
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    updated = await alias_ops.change(ctx, record, changes)
    return JSONResponse({"success": True, "alias": alias_json(updated)})


@operation(
    "Remove an alias",
    scope=SCOPE,
    parameters=_ID,
    responses={
        200: ("removed", Ok),
        403: ("the only remaining verified alias (last_verified_alias)", ErrorResponse),
        404: _NOT_FOUND,
        409: ("queued mail still references it (alias_in_use)", ErrorResponse),
    },
)
async def remove(request: Request) -> Response:
    ctx, caller = await _caller(request)
    await alias_ops.delete(ctx, await _visible(ctx, caller, request))
    return JSONResponse({"success": True})


routes = [
    Route(BASE, list_all, methods=["GET"]),
    Route(BASE, create, methods=["POST"]),
    Route(BASE + "/verify", verify, methods=["GET"]),  # before /{alias_id}
    Route(BASE + "/{alias_id}", show, methods=["GET"]),
    Route(BASE + "/{alias_id}", change, methods=["PATCH"]),
    Route(BASE + "/{alias_id}", remove, methods=["DELETE"]),
    Route(BASE + "/{alias_id}/resend", resend, methods=["POST"]),
]
