"""Settings → Aliases: the sender aliases the caller may see, with their verification state;
create one (its verification message sent as POST /api/v1/aliases sends it), send that
message again, make one the default, delete one (confirmed on a page of its own).

The checks are the API's (api.routes.aliases): the scope `aliases`, AliasCreate and the
same address checks, a verified domain, storage.aliases' refusals, and an alias the caller
may not see (api.ownership) answered as absent.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api import errors
from api.auth import Caller
from api.context import ApiContext
from api.forms import form_fields
from api.management import TOKEN_TTL
from api.ownership import visible_to
from api.resource_schemas import AliasCreate
from api.routes import aliases as api_aliases
from gateway.addresses import envelope_problem, normalise
from gateway.errors import PosternError
from gateway.intake.fields import text_problem
from storage import aliases
from storage.aliases import AliasRecord
from storage.domains import get_domain
from web.guard import signed_in
from web.pages.pool_form import answer_of
from web.pages.resource_form import Confirm, Form, back, checked, confirm, refused_confirm
from web.render import page

SCOPE = api_aliases.SCOPE
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


async def _list_page(
    request: Request, ctx: ApiContext, caller: Caller, form: Form, status: int = 200
) -> Response:
    seen = await visible_to(ctx, caller, "alias")
    found = seen.only(await aliases.list_aliases(ctx.db), lambda a: (a.id, a.created_by))
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


def _checked_address(values: dict[str, Any]) -> tuple[str, str]:
    """The alias's address and name, checked as the API checks them."""
    body = checked(AliasCreate, {**values, "ip_pool": values["ip_pool"] or None})
    problem = text_problem(body.email, header=True) or envelope_problem(body.email)
    if problem:
        raise api_aliases._bad("email", problem)
    name = body.name or ""
    problem = text_problem(name, header=True) if name else None
    if problem:
        raise api_aliases._bad("name", problem)
    return normalise(body.email), name


async def _require_verified_domain(ctx: ApiContext, email: str) -> None:
    domain = email.rpartition("@")[2]
    registered = await get_domain(ctx.db, domain)
    if registered is None or not registered.is_verified:
        raise errors.DomainNotVerified(
            f"{domain} is not a verified domain: add it on the Domains page and verify it",
            [{"field": "email", "message": f"{domain} is not a verified domain"}],
        )


async def _send(ctx: ApiContext, caller: Caller, record: AliasRecord, token: str) -> str | None:
    """The verification message, as the API sends it (None: intake refused it)."""
    link = f"{ctx.management().public_url}{api_aliases.BASE}/verify?token={token}"
    return await api_aliases._send_verification(ctx, caller, record, link)


async def _create(ctx: ApiContext, caller: Caller, values: dict[str, Any]) -> str | None:
    """POST /api/v1/aliases's steps: the alias stored unverified, its message sent."""
    email, name = _checked_address(values)
    await _require_verified_domain(ctx, email)
    token = secrets.token_urlsafe(32)
    record = await aliases.create_alias(
        ctx.db, email=email, name=name, is_default=values["is_default"],
        ip_pool=values["ip_pool"] or None, token_hash=api_aliases.token_hash(token),
        expires_at=time.time() + TOKEN_TTL, created_by=caller.user_id,
    )  # fmt: skip
    await api_aliases._changed(ctx)
    return await _send(ctx, caller, record, token)


async def create_alias(request: Request) -> Response:
    ctx, caller = await signed_in(request, SCOPE)
    form = Form(_values(form_fields(await request.body())))
    try:
        sent = await _create(ctx, caller, form.values)
    except PosternError as error:
        return await _list_page(request, ctx, caller, form.refused(error), answer_of(error).status)
    return back(PATH, "created" if sent else "unsent")


async def resend(request: Request) -> Response:
    """A new link (the old ones stop working) in a new verification message."""
    ctx, caller = await signed_in(request, SCOPE)
    record = await api_aliases._visible(ctx, caller, request)
    if record.is_verified:
        raise errors.Conflict(f"{record.email} is verified already")
    token = secrets.token_urlsafe(32)
    expires = time.time() + TOKEN_TTL
    await aliases.new_token(ctx.db, record.id, api_aliases.token_hash(token), expires)
    sent = await _send(ctx, caller, record, token)
    return back(PATH, "resent" if sent else "unsent")


async def make_default(request: Request) -> Response:
    """PATCH /api/v1/aliases/{id} with is_default: true."""
    ctx, caller = await signed_in(request, SCOPE)
    record = await api_aliases._visible(ctx, caller, request)
    await aliases.update_alias(ctx.db, record.id, {"is_default": True})
    await api_aliases._changed(ctx)
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
    record = await api_aliases._visible(ctx, caller, request)
    return confirm(request, caller, _asked(record))


async def delete_alias(request: Request) -> Response:
    ctx, caller = await signed_in(request, SCOPE)
    record = await api_aliases._visible(ctx, caller, request)
    try:
        await aliases.delete_alias(ctx.db, record.id)
    except PosternError as error:
        return refused_confirm(request, caller, _asked(record), error)
    await api_aliases._changed(ctx)
    return back(PATH, "deleted")


routes = [
    Route(PATH, list_aliases, methods=["GET"]),
    Route(PATH, create_alias, methods=["POST"]),
    Route(PATH + "/{alias_id}/resend", resend, methods=["POST"]),
    Route(PATH + "/{alias_id}/default", make_default, methods=["POST"]),
    Route(PATH + "/{alias_id}/delete", confirm_delete, methods=["GET"]),
    Route(PATH + "/{alias_id}/delete", delete_alias, methods=["POST"]),
]
