"""/api/v1/users: owners manage people (list, create, change a role, disable, enable, reset
a password). The rules are gateway.people.roles': only owners manage users, nobody grants a
role above their own, the last active owner stays. The actor is the caller's user (a
session, or a key acting for its user); a key without a user manages no one, since nothing
says whose role it would act with (`postern users` at the console is the operator's).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api import errors
from api.auth import acting_person, authenticate
from api.context import ApiContext
from api.openapi import operation, path_parameter
from api.people_schemas import CreatedUserResponse, UserCreate, UserList, UserPatch, UserResponse
from api.routes.auth import user_json
from api.schemas import ErrorResponse, parse
from gateway.people import passwords, roles
from storage import users as stored

_ID = [path_parameter("user_id", "the user's id (usr_...)")]
_REFUSALS = {
    401: ("no session or key", ErrorResponse),
    403: ("not an owner (owner_required), or a role above the caller's (role_above_own)",
          ErrorResponse),
}  # fmt: skip


async def _actor(request: Request) -> tuple[ApiContext, str]:
    """The context and the acting user's role; an owner's, or 403."""
    ctx: ApiContext = request.app.state.api
    caller = await authenticate(request, ctx)
    if caller.user is None:
        raise errors.OwnerRequired("users are managed by an owner (or at the console)")
    user = acting_person(caller)
    roles.require_user_manager(user.role)
    return ctx, user.role


@operation("List users", responses={200: ("every user", UserList), **_REFUSALS})
async def list_all(request: Request) -> Response:
    ctx, _ = await _actor(request)
    users = await stored.list_users(ctx.db)
    return JSONResponse({"success": True, "users": [user_json(user) for user in users]})


@operation(
    "Create a user",
    request=UserCreate,
    responses={
        201: ("the user; `password` when it was generated (shown this once)", CreatedUserResponse),
        400: ("a bad email, name, role or a weak password", ErrorResponse),
        409: ("a user with this email exists", ErrorResponse),
        **_REFUSALS,
    },
)
async def create(request: Request) -> Response:
    ctx, actor = await _actor(request)
    body = parse(UserCreate, await request.body())
    generated = passwords.generate() if body.password is None else None
    password = body.password if body.password is not None else generated or ""
    user = await ctx.persons().users.create(body.email, body.role, password, body.name, actor)
    answer = {"success": True, "user": user_json(user), "password": generated}
    return JSONResponse(answer, status_code=201)


@operation(
    "Change a user's role, or disable or enable them",
    request=UserPatch,
    parameters=_ID,
    responses={
        200: ("the user (their sessions are rotated, or ended when disabled)", UserResponse),
        404: ("no such user", ErrorResponse),
        409: ("it would leave no active owner (last_owner)", ErrorResponse),
        **_REFUSALS,
    },
)
async def change(request: Request) -> Response:
    ctx, actor = await _actor(request)
    body = parse(UserPatch, await request.body())
    users, user_id = ctx.persons().users, request.path_params["user_id"]
    if body.role is not None:
        await users.change_role(user_id, body.role, actor)
    if body.disabled is True:
        await users.disable(user_id, actor)
    elif body.disabled is False:
        await users.enable(user_id, actor)
    user = await stored.get_user(ctx.db, user_id)
    if user is None:
        raise errors.NotFound("user not found")
    return JSONResponse({"success": True, "user": user_json(user)})


@operation(
    "Reset a user's password",
    parameters=_ID,
    request_required=False,
    responses={
        200: ("a new generated password, shown this once; their sessions end",
              CreatedUserResponse),
        404: ("no such user", ErrorResponse),
        **_REFUSALS,
    },
)  # fmt: skip
async def reset_password(request: Request) -> Response:
    ctx, actor = await _actor(request)
    password = passwords.generate()
    user = await ctx.persons().users.reset_password(request.path_params["user_id"], password, actor)
    return JSONResponse({"success": True, "user": user_json(user), "password": password})


routes = [
    Route("/api/v1/users", list_all, methods=["GET"]),
    Route("/api/v1/users", create, methods=["POST"]),
    Route("/api/v1/users/{user_id}", change, methods=["PATCH"]),
    Route("/api/v1/users/{user_id}/reset-password", reset_password, methods=["POST"]),
]
