"""/api/v1/keys: list, create, show and revoke API keys (scope `keys`).

A key may only grant scopes it holds itself (an `admin` key any), so the `keys` scope is
no back door to `admin`. A key made by a logged-in user, or by a key that has an owner,
belongs to that user (`user_id`) and may hold no scope above the user's role (403
role_above_own); at use it is capped at the role the user has then (api.auth). Members see
and revoke only their own keys (api.ownership). The secret is in the creation response and
nowhere else, ever. The work is api.key_ops' (shared with the dashboard); here requests are
read and answered.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api import key_ops
from api.auth import authenticate
from api.context import ApiContext, iso
from api.key_ops import SCOPE
from api.openapi import operation, path_parameter
from api.schemas import CreatedKeyResponse, ErrorResponse, KeyCreate, KeyList, KeyResponse, parse
from storage.keys import ApiKeyRecord


def key_json(record: ApiKeyRecord) -> dict[str, Any]:
    return {
        **record.as_json(),
        "created_at": iso(record.created_at),
        "revoked_at": iso(record.revoked_at),
    }


@operation("List API keys", scope=SCOPE, responses={200: ("every key, revoked ones too", KeyList)})
async def list_all(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    caller = await authenticate(request, ctx, SCOPE)
    keys = await key_ops.records(ctx, caller)
    return JSONResponse({"success": True, "keys": [key_json(key) for key in keys]})


@operation(
    "Create an API key",
    scope=SCOPE,
    request=KeyCreate,
    responses={201: ("the key, with its secret (shown this once)", CreatedKeyResponse)},
)
async def create(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    caller = await authenticate(request, ctx, SCOPE)
    body = parse(KeyCreate, await request.body())
    record, secret = await key_ops.create(ctx, caller, body)
    return JSONResponse(
        {"success": True, "key": {**key_json(record), "key": secret}}, status_code=201
    )


@operation(
    "Get an API key",
    scope=SCOPE,
    parameters=[path_parameter("key_id", "the key's id (key_...)")],
    responses={200: ("the key", KeyResponse), 404: ("no such key", ErrorResponse)},
)
async def show(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    caller = await authenticate(request, ctx, SCOPE)
    record = await key_ops.get(ctx, caller, request.path_params["key_id"])
    return JSONResponse({"success": True, "key": key_json(record)})


@operation(
    "Revoke an API key",
    scope=SCOPE,
    parameters=[path_parameter("key_id", "the key's id (key_...)")],
    responses={
        200: ("the key, now revoked", KeyResponse),
        403: (
            "the key holds scopes the caller lacks, or is an owner's (role_above_own)",
            ErrorResponse,
        ),
        404: ("no such key", ErrorResponse),
    },
)
async def revoke(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    caller = await authenticate(request, ctx, SCOPE)
    target = await key_ops.get(ctx, caller, request.path_params["key_id"])
    record = await key_ops.revoke(ctx, caller, target)
    return JSONResponse({"success": True, "key": key_json(record)})


routes = [
    Route("/api/v1/keys", list_all, methods=["GET"]),
    Route("/api/v1/keys", create, methods=["POST"]),
    Route("/api/v1/keys/{key_id}", show, methods=["GET"]),
    Route("/api/v1/keys/{key_id}", revoke, methods=["DELETE"]),
]
