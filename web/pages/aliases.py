"""Settings → Aliases: the sender aliases the caller may see, with their verification state;
create one (its verification message sent as POST /api/v1/aliases sends it), send that
message again, make one the default, delete one (confirmed on a page of its own).

The work is the API's own (api.alias_ops): the scope `aliases`, AliasCreate and the same
address checks, a verified domain, storage.aliases' refusals, and an alias the caller may
not see (api.ownership) answered as absent.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api import alias_ops
from api.auth import Caller
from api.context import ApiContext
from api.forms import form_fields
from api.resource_schemas import AliasCreate
from gateway.errors import PosternError
from storage.aliases import AliasRecord
from web.guard import signed_in
from web.pages.pool_form import answer_of
from web.pages.resource_form import Confirm, Form, back, checked, confirm, refused_confirm
from web.render import page

SCOPE = alias_ops.SCOPE
PATH = "/aliases"
DEFAULTS: dict[str, Any] = {"email": "", "name": "", "ip_pool": "", "is_default": False}
DONE = {
    "created": "Alias created. A verification message is on its way to the address: the "
    "alias works once its link is followed.",
    "unsent": "The verification message could not be sent (the log says why).",
    "resent": "Verification message sent again: only its link works now.",
    "default": "Default alias changed.",
    "deleted": "Alias deleted.",
}
ADVICE = alias_ops.DomainAdvice(
    "{domain} is not a verified domain: add it on the Domains page and verify it",
    "{domain} is not a verified domain",
)


async def _list_page(
    request: Request, ctx: ApiContext, caller: Caller, form: Form, status: int = 200
) -> Response:
    found = await alias_ops.records(ctx, caller)
    notice = DONE.get(request.query_params.get("done", ""), "")
    shown: dict[str, Any] = {"aliases": found, "form": form, "notice": notice}
    return page(request, "aliases/list.html", caller, status, **shown)


async def list_aliases(request: Request) -> Response:
    ctx, caller = await signed_in(request, SCOPE)
    return await _list_page(request, ctx, caller, Form(dict(DEFAULTS)))


def _values(fields: dict[str, str]) -> dict[str, Any]:
    return {
        "email": fields.get("email", "").strip(),
        "name": fields.get("name", ""),
        "ip_pool": fields.get("ip_pool", "").strip(),
        "is_default": "is_default" in fields,
    }


async def _create(ctx: ApiContext, caller: Caller, values: dict[str, Any]) -> str | None:
    """POST /api/v1/aliases: the alias stored unverified, its message sent (its id)."""
    body = checked(AliasCreate, {**values, "ip_pool": values["ip_pool"] or None})
    _, sent = await alias_ops.create(ctx, caller, body, ADVICE)
    return sent


async def create_alias(request: Request) -> Response:
    ctx, caller = await signed_in(request, SCOPE)
    form = Form(_values(form_fields(await request.body())))
    try:
        sent = await _create(ctx, caller, form.values)
    except PosternError as error:
        return await _list_page(request, ctx, caller, form.refused(error), answer_of(error).status)
    return back(PATH, "created" if sent else "unsent")


async def _visible(ctx: ApiContext, caller: Caller, request: Request) -> AliasRecord:
    return await alias_ops.get(ctx, caller, request.path_params["alias_id"])


async def resend(request: Request) -> Response:
    """A new link (the old ones stop working) in a new verification message."""
    ctx, caller = await signed_in(request, SCOPE)
    sent = await alias_ops.resend(ctx, caller, await _visible(ctx, caller, request))
    return back(PATH, "resent" if sent else "unsent")


async def make_default(request: Request) -> Response:
    """PATCH /api/v1/aliases/{id} with is_default: true."""
    ctx, caller = await signed_in(request, SCOPE)
    record = await _visible(ctx, caller, request)
    await alias_ops.change(ctx, record, {"is_default": True})
    return back(PATH, "default")


def _asked(record: AliasRecord) -> Confirm:
    return Confirm(
        title=f"Delete the alias {record.email}?",
        text="Mail can no longer be sent From this address through Postern.",
        action=f"{PATH}/{record.id}/delete",
        button=f"Delete {record.email}",
        cancel=PATH,
    )


async def confirm_delete(request: Request) -> Response:
    ctx, caller = await signed_in(request, SCOPE)
    record = await _visible(ctx, caller, request)
    return confirm(request, caller, _asked(record))


async def delete_alias(request: Request) -> Response:
    ctx, caller = await signed_in(request, SCOPE)
    record = await _visible(ctx, caller, request)
    try:
        await alias_ops.delete(ctx, record)
    except PosternError as error:
        return refused_confirm(request, caller, _asked(record), error)
    return back(PATH, "deleted")


routes = [
    Route(PATH, list_aliases, methods=["GET"]),
    Route(PATH, create_alias, methods=["POST"]),
    Route(PATH + "/{alias_id}/resend", resend, methods=["POST"]),
    Route(PATH + "/{alias_id}/default", make_default, methods=["POST"]),
    Route(PATH + "/{alias_id}/delete", confirm_delete, methods=["GET"]),
    Route(PATH + "/{alias_id}/delete", delete_alias, methods=["POST"]),
]
