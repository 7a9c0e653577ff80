"""/api/v1/keys: list, create, show and revoke API keys (scope `keys`).

A key may only grant scopes it holds itself (an `admin` key any), so the `keys` scope is
no back door to `admin`. A key made by a logged-in user, or by a key that has an owner,
belongs to that user (`user_id`) and may hold no scope above the user's role (403
role_above_own); at use it is capped at the role the user has then (api.auth). Members see
and revoke only their own keys (api.ownership). The secret is in the creation response and
nowhere else, ever.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api import errors
from api.auth import Caller, authenticate
from api.context import ApiContext, iso
from api.openapi import operation, path_parameter
from api.ownership import Visibility, visible_to
from api.schemas import CreatedKeyResponse, ErrorResponse, KeyCreate, KeyList, KeyResponse, parse
from gateway.intake.fields import text_problem
from gateway.people import roles
from storage.keys import ApiKeyRecord, create_key, get_key, list_keys, revoke_key
from storage.users import get_user

SCOPE = "keys"


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
    keys = await list_keys(ctx.db, (await _visibility(ctx, caller)).user_id)
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
    problem = text_problem(body.name, header=True)
    if problem:
        raise errors.InvalidRequest(f"name: {problem}", [{"field": "name", "message": problem}])
    if caller.user is not None:
        roles.require_scopes_within(caller.user.role, body.scopes)  # 403 role_above_own
    beyond = [scope for scope in body.scopes if not caller.has(scope)]
    if beyond:
        raise errors.Forbidden(f"a key cannot grant scopes it lacks: {', '.join(beyond)}")
    record, secret = await create_key(ctx.db, body.name, body.scopes, caller.user_id)
    return JSONResponse(
        {"success": True, "key": {**key_json(record), "key": secret}}, status_code=201
    )


async def _visibility(ctx: ApiContext, caller: Caller) -> Visibility:
    return await visible_to(ctx, caller, "key")


async def _may_touch_owner(ctx: ApiContext, caller: Caller, target: ApiKeyRecord) -> None:
    """An admin does not take down an owner's key (403 role_above_own), as it does not
    change the owner."""
    if caller.user is None or target.user_id is None:
        return
    owner = await get_user(ctx.db, target.user_id)
    if owner is not None:
        roles.require_may_touch(caller.user.role, owner.role)


async def _visible(ctx: ApiContext, caller: Caller, key_id: str) -> ApiKeyRecord:
    """The key of the path, if the caller may see it (another member's is a 404)."""
    record = await get_key(ctx.db, key_id)
    if record is None or not (await _visibility(ctx, caller)).allows(record.id, record.user_id):
        raise errors.NotFound("no such API key")
    return record


@operation(
    "Get an API key",
    scope=SCOPE,
    parameters=[path_parameter("key_id", "the key's id (key_...)")],
    responses={200: ("the key", KeyResponse), 404: ("no such key", ErrorResponse)},
)
async def show(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    caller = await authenticate(request, ctx, SCOPE)
    record = await _visible(ctx, caller, request.path_params["key_id"])
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
    key_id = request.path_params["key_id"]
    target = await _visible(ctx, caller, key_id)
    own = caller.user_id is not None and target.user_id == caller.user_id
    if not own:
        await _may_touch_owner(ctx, caller, target)
    beyond = [] if own else [scope for scope in target.scopes if not caller.has(scope)]
    if beyond:  # as for creating: a `keys` key cannot take down a stronger one (but its own)
        raise errors.Forbidden(f"a key cannot revoke one with scopes it lacks: {', '.join(beyond)}")
    record = await revoke_key(ctx.db, key_id)
    if record is None:
        raise errors.NotFound("no such API key")
    ctx.keys.forget(key_id)
    return JSONResponse({"success": True, "key": key_json(record)})


routes = [
    Route("/api/v1/keys", list_all, methods=["GET"]),
    Route("/api/v1/keys", create, methods=["POST"]),
    Route("/api/v1/keys/{key_id}", show, methods=["GET"]),
    Route("/api/v1/keys/{key_id}", revoke, methods=["DELETE"]),
]
