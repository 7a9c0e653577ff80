"""Settings → API keys: the keys the caller may see (a member: their own), create one (its
secret on the result page, this once, never again), revoke one (confirmed first).

The work is the API's own (api.key_ops): the scope `keys`, KeyCreate, no scope above the
caller's role nor beyond what it holds (the boxes offered are those it may grant; a forged
form is refused all the same), a member's or an owner's key out of reach as the API says.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api import key_ops
from api.auth import Caller
from api.context import ApiContext
from api.forms import form_fields
from api.schemas import KeyCreate
from gateway.errors import PosternError
from storage.keys import SCOPES, ApiKeyRecord, list_keys
from storage.users import list_users
from web.guard import signed_in
from web.pages.pool_form import answer_of
from web.pages.resource_form import Confirm, Form, back, checked, chosen, confirm, refused_confirm
from web.render import page

SCOPE = key_ops.SCOPE
PATH = "/keys"
BOX = "scope-"  # a checkbox per scope: `scope-send`, `scope-keys`...
DONE = {"revoked": "Key revoked: it stops working within seconds on every node."}


def grantable(caller: Caller) -> tuple[str, ...]:
    """The scopes the caller may give a key: those it holds, within its role."""
    return tuple(scope for scope in SCOPES if caller.has(scope))


async def _owners(ctx: ApiContext, caller: Caller, everything: bool) -> dict[str, str]:
    """User id -> email, for the keys' "User" column."""
    if everything:
        return {user.id: user.email for user in await list_users(ctx.db)}
    return {caller.user.id: caller.user.email} if caller.user is not None else {}


async def _list_page(
    request: Request, ctx: ApiContext, caller: Caller, form: Form, status: int = 200
) -> Response:
    seen = await key_ops.visibility(ctx, caller)
    return page(
        request, "keys/list.html", caller, status,
        keys=await list_keys(ctx.db, seen.user_id),
        owners=await _owners(ctx, caller, seen.everything),
        form=form, scopes=grantable(caller),
        notice=DONE.get(request.query_params.get("done", ""), ""),
    )  # fmt: skip


async def list_all(request: Request) -> Response:
    ctx, caller = await signed_in(request, SCOPE)
    return await _list_page(request, ctx, caller, Form({"name": "", "scopes": ["send"]}))


async def create(request: Request) -> Response:
    ctx, caller = await signed_in(request, SCOPE)
    fields = form_fields(await request.body())
    form = Form({"name": fields.get("name", "").strip(), "scopes": chosen(fields, BOX, SCOPES)})
    try:
        body = checked(KeyCreate, form.values)
        record, secret = await key_ops.create(ctx, caller, body)
    except PosternError as error:
        refused = form.refused(error, unnamed="scopes")
        return await _list_page(request, ctx, caller, refused, answer_of(error).status)
    return page(request, "keys/created.html", caller, record=record, secret=secret)


def _asked(record: ApiKeyRecord) -> Confirm:
    return Confirm(
        title=f"Revoke the key {record.name}?",
        text=f"Whatever uses the key {record.prefix}… is refused from then on. "
        "This cannot be undone.",
        action=f"{PATH}/{record.id}/revoke",
        button=f"Revoke {record.name}",
        cancel=PATH,
    )


async def confirm_revoke(request: Request) -> Response:
    ctx, caller = await signed_in(request, SCOPE)
    target = await key_ops.get(ctx, caller, request.path_params["key_id"])
    return confirm(request, caller, _asked(target))


async def revoke(request: Request) -> Response:
    ctx, caller = await signed_in(request, SCOPE)
    target = await key_ops.get(ctx, caller, request.path_params["key_id"])
    try:
        await key_ops.revoke(ctx, caller, target)
    except PosternError as error:
        return refused_confirm(request, caller, _asked(target), error)
    return back(PATH, "revoked")


routes = [
    Route(PATH, list_all, methods=["GET"]),
    Route(PATH, create, methods=["POST"]),
    Route(PATH + "/{key_id}/revoke", confirm_revoke, methods=["GET"]),
    Route(PATH + "/{key_id}/revoke", revoke, methods=["POST"]),
]
