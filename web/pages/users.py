"""Settings → Users (owners): list, create with a role (a generated password shown once),
change a role, disable and enable. The rules are gateway.people's, as for /api/v1/users:
only owners manage users, nobody grants a role above their own, the last owner stays."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from api.auth import Caller
from api.context import ApiContext
from api.forms import form_fields
from gateway.errors import PosternError
from gateway.people import passwords, roles
from storage import users as stored
from web.guard import signed_in
from web.pages.pool_form import answer_of
from web.render import page

PATH = "/settings/users"
DONE = {"role": "Role changed.", "disabled": "User disabled.", "enabled": "User enabled."}


async def _page(
    request: Request, ctx: ApiContext, caller: Caller, status: int = 200, **shown: str
) -> Response:
    users = await stored.list_users(ctx.db)
    context: dict[str, Any] = {"notice": "", "problem": "", "created": "", "password": ""}
    context |= {"users": users, "roles": roles.ROLES, **shown}
    return page(request, "users.html", caller, status, **context)


async def list_users(request: Request) -> Response:
    ctx, caller = await signed_in(request, owner=True)
    notice = DONE.get(request.query_params.get("done", ""), "")
    return await _page(request, ctx, caller, notice=notice)


async def create_user(request: Request) -> Response:
    ctx, caller = await signed_in(request, owner=True)
    fields = form_fields(await request.body())
    password = passwords.generate()
    try:
        user = await ctx.persons().users.create(
            fields.get("email", ""), fields.get("role", ""), password, fields.get("name", ""),
            caller.role,
        )  # fmt: skip
    except PosternError as error:
        answer = answer_of(error)
        return await _page(request, ctx, caller, answer.status, problem=answer.error)
    return await _page(request, ctx, caller, created=user.email, password=password)


async def change_user(request: Request) -> Response:
    """One form per user and action: `action` is role (with `role`), disable or enable."""
    ctx, caller = await signed_in(request, owner=True)
    fields = form_fields(await request.body())
    users, user_id, action = ctx.persons().users, request.path_params["user_id"], ""
    try:
        action = fields.get("action", "")
        if action == "role":
            await users.change_role(user_id, fields.get("role", ""), caller.role)
        elif action == "disable":
            await users.disable(user_id, caller.role)
            action = "disabled"
        elif action == "enable":
            await users.enable(user_id, caller.role)
            action = "enabled"
    except PosternError as error:
        answer = answer_of(error)
        return await _page(request, ctx, caller, answer.status, problem=answer.error)
    return RedirectResponse(f"{PATH}?done={action}", status_code=303)


routes = [
    Route(PATH, list_users, methods=["GET"]),
    Route(PATH, create_user, methods=["POST"]),
    Route(PATH + "/{user_id}", change_user, methods=["POST"]),
]
