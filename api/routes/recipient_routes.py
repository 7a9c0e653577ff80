"""/api/v1/routes: routes by recipient domain, Postfix's transport maps (scope `admin`).

Mail to a recipient at a routed domain goes through the pool or ip_pool group the entry
names (gateway.routing, after alias_id and the From's account or alias, before the default);
a message whose recipients take several routes is stored as one message per route. The
config file's `[[routes]]` are listed too (`source: config`, no id) and win over a stored
entry for the same domain. This node follows a change at once, the others within 2 s. The
checks are api.route_ops' (shared with `postern routes`).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api import route_ops
from api.auth import authenticate
from api.context import ApiContext, iso
from api.openapi import operation, path_parameter
from api.route_ops import SCOPE, Entry
from api.route_schemas import RouteCreate, RouteList, RouteResponse
from api.schemas import ErrorResponse, Ok, parse
from storage.routes import RouteRecord

_ID = path_parameter("route_id", "the route's id (rte_...) or its recipient_domain")


def _entry(record: RouteRecord) -> Entry:
    return Entry(
        record.recipient_domain, record.pool, record.ip_pool, "api", record.id, record.created_at
    )


@operation("List routes", scope=SCOPE, responses={200: ("every route in force", RouteList)})
async def list_all(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    await authenticate(request, ctx, SCOPE)
    config_routes = ctx.management().identities.config_routes
    found = await route_ops.entries(ctx.db, config_routes)
    return JSONResponse({"success": True, "routes": [entry.as_json(iso) for entry in found]})


@operation(
    "Route a recipient domain",
    scope=SCOPE,
    request=RouteCreate,
    responses={
        201: ("stored; this node routes by it at once, the others within 2 s", RouteResponse),
        400: ("not a domain, or neither or both of pool and ip_pool", ErrorResponse),
        409: ("the domain has a route (route_exists), or the config routes it", ErrorResponse),
        422: ("no pool has that name (unknown_pool)", ErrorResponse),
    },
    description="Give exactly one of `pool` (a pool's name) and `ip_pool` (a group).",
)
async def create(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    caller = await authenticate(request, ctx, SCOPE)
    body = parse(RouteCreate, await request.body())
    manage = ctx.management()
    record = await route_ops.create(
        ctx.db, manage.identities.config_routes, body.recipient_domain, body.pool,
        body.ip_pool, caller.user.id if caller.user is not None else None,
    )  # fmt: skip
    await manage.identities.reload()
    return JSONResponse({"success": True, "route": _entry(record).as_json(iso)}, status_code=201)


@operation(
    "Delete a route",
    scope=SCOPE,
    parameters=[_ID],
    responses={
        200: ("deleted; its domain's mail takes the default route again", Ok),
        404: ("no such route", ErrorResponse),
        409: ("the config file's route: change the file", ErrorResponse),
    },
)
async def remove(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    await authenticate(request, ctx, SCOPE)
    manage = ctx.management()
    await route_ops.remove(ctx.db, request.path_params["route_id"], manage.identities.config_routes)
    await manage.identities.reload()
    return JSONResponse({"success": True})


routes = [
    Route("/api/v1/routes", list_all, methods=["GET"]),
    Route("/api/v1/routes", create, methods=["POST"]),
    Route("/api/v1/routes/{route_id}", remove, methods=["DELETE"]),
]
