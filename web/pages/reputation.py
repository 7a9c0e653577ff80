"""Settings → Reputation: each account, pool and domain the caller may see, its score (or
"collecting"), its status, and the components that cost it points, with the rule each
reached (issue 21). The reports are the API's own (api.reputation_ops, as GET
/api/v1/reputation): each kind's visibility, pools and domains by their scopes."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api import reputation_ops
from web.guard import signed_in
from web.render import page

PATH = "/reputation"
HEADINGS = {"account": "Connected accounts", "pool": "SMTP pools", "domain": "Sending domains"}


async def show(request: Request) -> Response:
    ctx, caller = await signed_in(request)
    sections = []
    evaluated = None
    for kind in reputation_ops.KINDS:
        if not reputation_ops.may_see(caller, kind):
            continue
        found = await reputation_ops.of(ctx, await reputation_ops.subjects(ctx, caller, kind))
        sections.append((kind, HEADINGS[kind], found))
        evaluated = next((r.evaluated_at for r in found), evaluated)
    shown: dict[str, Any] = {
        "kinds": sections,
        "evaluated_at": evaluated,
        "threshold": ctx.reputation_threshold,
    }
    return page(request, "reputation.html", caller, 200, **shown)


routes = [Route(PATH, show, methods=["GET"])]
