"""Settings → Routes: the routes by recipient domain in force (Postfix's transport maps),
the config file's first (read-only: the file is changed there) then the stored ones; add
one (a domain or `.suffix`, and a pool or a group), remove a stored one (confirmed first).

The work is the API's own (api.route_ops, as `postern routes` uses it): the scope `admin`
(an entry reroutes everyone's mail), the same checks and refusals (a domain the config
routes, one routed already, a pool no pool is named), and this node's routing changed at
once (the others follow storage within 2 s).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api import errors, route_ops
from api.auth import Caller
from api.context import ApiContext
from api.forms import form_fields
from api.route_ops import Entry
from gateway.errors import PosternError
from storage.pools import PoolRecord, pool_records
from storage.routes import RouteRecord, get_route
from web.guard import signed_in
from web.pages.pool_form import answer_of
from web.pages.resource_form import Confirm, Form, back, confirm, refused_confirm
from web.render import page

SCOPE = route_ops.SCOPE
PATH = "/settings/routes"
FIELDS = ("recipient_domain", "pool", "ip_pool")
DONE = {
    "added": "Route added: this node routes by it now, the others within 2 seconds.",
    "removed": "Route removed: its domain's mail takes the default route again.",
}
# A refusal that names no field of the form goes beside the one it is about.
_BESIDE: dict[type[errors.ApiError], str] = {
    errors.RouteInConfig: "recipient_domain",
    errors.RouteExists: "recipient_domain",
    errors.UnknownPool: "pool",
}


@dataclass(frozen=True)
class Shown:
    """One route as the list shows it, and whether its domain's mail is refused at the door
    now (routing refuses it while no active pool serves the entry in force)."""

    entry: Entry
    refused: bool


def _refuses(entry: Entry, pools: Sequence[PoolRecord]) -> bool:
    if entry.shadowed:  # not in force: the config's entry for its domain is
        return False
    active = [pool for pool in pools if pool.is_active]
    if entry.pool is not None:
        return not any(pool.name == entry.pool for pool in active)
    return not any(pool.ip_pool == entry.ip_pool for pool in active)


def _pool_choices(pools: Sequence[PoolRecord]) -> list[tuple[str, str]]:
    names = sorted({pool.name for pool in pools})
    return [("", "— none: the group below —")] + [(name, name) for name in names]


async def _list_page(
    request: Request, ctx: ApiContext, caller: Caller, form: Form, status: int = 200
) -> Response:
    config_routes = ctx.management().identities.config_routes
    pools = await pool_records(ctx.db)
    found = await route_ops.entries(ctx.db, config_routes)
    return page(
        request, "routes/list.html", caller, status,
        routes=[Shown(entry, _refuses(entry, pools)) for entry in found],
        pool_choices=_pool_choices(pools),
        groups=sorted({pool.ip_pool for pool in pools}),
        form=form, notice=DONE.get(request.query_params.get("done", ""), ""),
    )  # fmt: skip


async def list_all(request: Request) -> Response:
    ctx, caller = await signed_in(request, SCOPE)
    return await _list_page(request, ctx, caller, Form(dict.fromkeys(FIELDS, "")))


def _refused(form: Form, error: PosternError) -> Form:
    answer = answer_of(error)
    return form.refused(error, _BESIDE.get(type(answer), ""))


async def add(request: Request) -> Response:
    """POST /api/v1/routes' steps, with the form's empty target field left out."""
    ctx, caller = await signed_in(request, SCOPE)
    fields = form_fields(await request.body())
    # A pool's name is taken as chosen; the typed domain and group without stray blanks.
    form = Form({name: fields.get(name, "") for name in FIELDS})
    form.values["recipient_domain"] = form.values["recipient_domain"].strip()
    form.values["ip_pool"] = form.values["ip_pool"].strip()
    values = form.values
    manage = ctx.management()
    try:
        await route_ops.create(
            ctx.db, manage.identities.config_routes, values["recipient_domain"],
            values["pool"] or None, values["ip_pool"] or None,
            caller.user.id if caller.user is not None else None,
        )  # fmt: skip
    except PosternError as error:
        refused = _refused(form, error)
        return await _list_page(request, ctx, caller, refused, answer_of(error).status)
    await manage.identities.reload()
    return back(PATH, "added")


async def _stored(ctx: ApiContext, route_id: str) -> RouteRecord:
    """The stored entry of this id (the config's have none: they are never removed here)."""
    found = None
    if route_id.startswith("rte_") and len(route_id) <= 64:
        found = await get_route(ctx.db, route_id)
    if found is None:
        raise errors.NotFound("no such route")
    return found


def _target(entry: RouteRecord) -> str:
    return f"the pool {entry.pool}" if entry.pool is not None else f"the group {entry.ip_pool}"


def _asked(entry: RouteRecord) -> Confirm:
    return Confirm(
        title=f"Remove the route for {entry.recipient_domain}?",
        text=f"Mail to {entry.recipient_domain} stops going through {_target(entry)} and "
        "takes the default route again (this node at once, the others within 2 seconds). "
        "Mail already queued keeps its route.",
        action=f"{PATH}/{entry.id}/remove",
        button=f"Remove the route for {entry.recipient_domain}",
        cancel=PATH,
    )


async def confirm_remove(request: Request) -> Response:
    ctx, caller = await signed_in(request, SCOPE)
    entry = await _stored(ctx, request.path_params["route_id"])
    return confirm(request, caller, _asked(entry))


async def remove(request: Request) -> Response:
    """DELETE /api/v1/routes/{id}'s steps."""
    ctx, caller = await signed_in(request, SCOPE)
    entry = await _stored(ctx, request.path_params["route_id"])
    manage = ctx.management()
    try:
        await route_ops.remove(ctx.db, entry.id, manage.identities.config_routes)
    except PosternError as error:
        return refused_confirm(request, caller, _asked(entry), error)
    await manage.identities.reload()
    return back(PATH, "removed")


routes = [
    Route(PATH, list_all, methods=["GET"]),
    Route(PATH, add, methods=["POST"]),
    Route(PATH + "/{route_id}/remove", confirm_remove, methods=["GET"]),
    Route(PATH + "/{route_id}/remove", remove, methods=["POST"]),
]
