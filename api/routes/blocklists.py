"""/api/v1/blocklists: the DNSBL verdicts of the sending IPs and domains (clean, listed with
which lists and codes, or unknown), as the scheduled check left them. Scope `admin`."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api import errors
from api.auth import authenticate
from api.blocklist_ops import SCOPE, overview
from api.blocklist_schemas import BlocklistOverview
from api.context import ApiContext
from api.openapi import operation, query_parameter
from storage.blocklists import STATUSES


def _field(name: str, problem: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(f"{name}: {problem}", [{"field": name, "message": problem}])


@operation(
    "DNSBL verdicts of the sending IPs and domains",
    scope=SCOPE,
    parameters=[query_parameter("status", "only this status (empty: any)", enum=["", *STATUSES])],
    responses={200: ("each subject's latest verdict, listed first", BlocklistOverview)},
    description=(
        "Each sending IP ([blocklists] sending_ips) and domain (verified sender domains, "
        "connected accounts' domains) as the last scheduled round found it: `listed` on any "
        "list, else `unknown` when a list gave no answer or failed its verification, else "
        "`clean`. `last_checked_at` is when the last check that reached a verdict completed."
    ),
)
async def show(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    await authenticate(request, ctx, SCOPE)
    for name in request.query_params:
        if name != "status":
            raise _field(name, "unknown parameter")
    status = request.query_params.get("status") or None
    if status is not None and status not in STATUSES:
        raise _field("status", f"one of {', '.join(STATUSES)}")
    return JSONResponse({"success": True} | await overview(ctx, status))


routes = [Route("/api/v1/blocklists", show, methods=["GET"])]
