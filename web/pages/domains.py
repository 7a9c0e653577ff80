"""Settings → Domains: the domains mail may be sent From. Add one (its DKIM key made as
POST /api/v1/domains makes it), see the DNS records to publish (each with a copy button),
run the DNS check and see each record's state, see the domain's DKIM keys and rotate them
(a pending key beside the active one, its record to publish, activated once DNS answers it),
remove it.

The work is the API's own (api.domain_ops): the scope `domains`, DomainCreate and the same
name rules, `verified` for admins only, a domain the caller may not see (api.ownership)
answered as absent. The records and the check are gateway.dkim.domains'.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api import domain_ops
from api.auth import Caller
from api.context import ApiContext
from api.forms import form_fields
from api.resource_schemas import DkimKeyCreate, DomainCreate
from gateway.dkim import domains as sender_domains
from gateway.dkim.domains import Check
from gateway.dkim.keys import dns_record
from gateway.errors import PosternError
from storage.domains import DomainRecord
from web.guard import signed_in
from web.pages.pool_form import answer_of
from web.pages.resource_form import Confirm, Form, back, checked, confirm
from web.render import page

SCOPE = domain_ops.SCOPE
PATH = "/domains"
ALGORITHMS = (("rsa", "RSA 2048 (every receiver)"), ("ed25519", "Ed25519 (shorter; newer)"))
DEFAULTS: dict[str, Any] = {"domain": "", "algorithm": "rsa", "verified": False}
ADMIN_ONLY = "only an admin may add a domain as already verified"
DONE = {
    "added": "Domain added: publish its records, then verify it.",
    "deleted": "Domain removed.",
    "rotating": "New DKIM key made: publish its record, wait for DNS, then activate it.",
    "activated": "The new DKIM key signs from now on. Keep the old key's record published "
    "a few days, for mail still on its way.",
    "cancelled": "Rotation cancelled: the active key signs on.",
}


async def _list_page(
    request: Request, ctx: ApiContext, caller: Caller, form: Form, status: int = 200
) -> Response:
    records = await domain_ops.records(ctx, caller)
    notice = DONE.get(request.query_params.get("done", ""), "")
    return page(
        request, "domains/list.html", caller, status,
        domains=records, form=form, notice=notice, algorithms=ALGORITHMS,
        may_preverify=caller.has("admin"),
    )  # fmt: skip


async def list_domains(request: Request) -> Response:
    ctx, caller = await signed_in(request, SCOPE)
    return await _list_page(request, ctx, caller, Form(dict(DEFAULTS)))


async def _register(ctx: ApiContext, caller: Caller, values: dict[str, Any]) -> DomainRecord:
    """POST /api/v1/domains: checked, registered with its DKIM key."""
    body = checked(DomainCreate, values)
    return await domain_ops.create(ctx, caller, body, ADMIN_ONLY)


async def add_domain(request: Request) -> Response:
    ctx, caller = await signed_in(request, SCOPE)
    fields = form_fields(await request.body())
    values = {
        "domain": fields.get("domain", "").strip(),
        "algorithm": fields.get("algorithm", "rsa"),
        "verified": "verified" in fields,
    }
    form = Form(values)
    try:
        record = await _register(ctx, caller, values)
    except PosternError as error:
        return await _list_page(request, ctx, caller, form.refused(error), answer_of(error).status)
    return back(f"{PATH}/{record.id}", "added")


async def _domain_page(
    request: Request, ctx: ApiContext, caller: Caller, record: DomainRecord,
    checks: list[Check] | None = None, problem: str = "", status: int = 200,
) -> Response:  # fmt: skip
    """The domain, its records to publish (what GET /api/v1/domains/{id} answers), its
    DKIM keys (a pending one with its record), and what the last check found of each
    record, if one just ran."""
    key = await sender_domains.signing_key(ctx.db, record.domain)
    keys = await domain_ops.keys(ctx, record)
    return page(
        request, "domains/show.html", caller, status,
        domain=record,
        records=sender_domains.records(record.domain, key, ctx.hostname),
        keys=keys,
        pending=[
            (k, dns_record(k.selector, k.domain, k.algorithm, k.public_key))
            for k in keys if k.status == "pending"
        ],
        algorithms=ALGORITHMS,
        checks={check.purpose: check for check in checks or []},
        checked=checks is not None,
        notice=DONE.get(request.query_params.get("done", ""), ""),
        problem=problem,
    )  # fmt: skip


async def _one(ctx: ApiContext, caller: Caller, request: Request) -> DomainRecord:
    return await domain_ops.get(ctx, caller, request.path_params["domain_id"])


async def show_domain(request: Request) -> Response:
    ctx, caller = await signed_in(request, SCOPE)
    record = await _one(ctx, caller, request)
    return await _domain_page(request, ctx, caller, record)


async def verify_domain(request: Request) -> Response:
    """POST /api/v1/domains/{id}/verify's check, shown record by record."""
    ctx, caller = await signed_in(request, SCOPE)
    updated, checks = await domain_ops.verify(ctx, await _one(ctx, caller, request))
    return await _domain_page(request, ctx, caller, updated, checks)


async def rotate_key(request: Request) -> Response:
    """POST /api/v1/domains/{id}/dkim-keys: a pending key beside the active one."""
    ctx, caller = await signed_in(request, SCOPE)
    record = await _one(ctx, caller, request)
    fields = form_fields(await request.body())
    try:
        body = checked(DkimKeyCreate, {"algorithm": fields.get("algorithm", "rsa")})
        await domain_ops.rotate(ctx, caller, record, body.algorithm)
    except PosternError as error:
        answer = answer_of(error)
        return await _domain_page(
            request, ctx, caller, record, problem=answer.error, status=answer.status
        )
    return back(f"{PATH}/{record.id}", "rotating")


async def _key_step(request: Request, step: str) -> Response:
    """Activate (once DNS answers its record) or cancel a pending key."""
    ctx, caller = await signed_in(request, SCOPE)
    record = await _one(ctx, caller, request)
    selector = request.path_params["selector"]
    try:
        if step == "activate":
            await domain_ops.activate_key(ctx, caller, record, selector)
        else:
            await domain_ops.cancel_key(ctx, caller, record, selector)
    except PosternError as error:
        answer = answer_of(error)
        return await _domain_page(
            request, ctx, caller, record, problem=answer.error, status=answer.status
        )
    return back(f"{PATH}/{record.id}", "activated" if step == "activate" else "cancelled")


async def activate_key(request: Request) -> Response:
    return await _key_step(request, "activate")


async def cancel_key(request: Request) -> Response:
    return await _key_step(request, "cancel")


def _asked(record: DomainRecord) -> Confirm:
    return Confirm(
        title=f"Remove the domain {record.domain}?",
        text="Mail From it is refused again; its DKIM keys stay, for adding it back.",
        action=f"{PATH}/{record.id}/delete",
        button=f"Remove {record.domain}",
        cancel=f"{PATH}/{record.id}",
    )


async def confirm_delete(request: Request) -> Response:
    ctx, caller = await signed_in(request, SCOPE)
    record = await _one(ctx, caller, request)
    return confirm(request, caller, _asked(record))


async def delete_domain(request: Request) -> Response:
    ctx, caller = await signed_in(request, SCOPE)
    record = await _one(ctx, caller, request)
    await domain_ops.delete(ctx, caller, record)
    return back(PATH, "deleted")


routes = [
    Route(PATH, list_domains, methods=["GET"]),
    Route(PATH, add_domain, methods=["POST"]),
    Route(PATH + "/{domain_id}", show_domain, methods=["GET"]),
    Route(PATH + "/{domain_id}/verify", verify_domain, methods=["POST"]),
    Route(PATH + "/{domain_id}/dkim-keys", rotate_key, methods=["POST"]),
    Route(PATH + "/{domain_id}/dkim-keys/{selector}/activate", activate_key, methods=["POST"]),
    Route(PATH + "/{domain_id}/dkim-keys/{selector}/cancel", cancel_key, methods=["POST"]),
    Route(PATH + "/{domain_id}/delete", confirm_delete, methods=["GET"]),
    Route(PATH + "/{domain_id}/delete", delete_domain, methods=["POST"]),
]
