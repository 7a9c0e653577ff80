"""Overview: who is signed in, and the pools at a glance for those who manage them."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api import pool_ops
from web.guard import signed_in
from web.render import page


async def overview(request: Request) -> Response:
    ctx, caller = await signed_in(request)
    summary = None
    if caller.has("pools"):
        records = await pool_ops.records(ctx, caller)
        summary = {
            "total": len(records),
            "active": sum(record.is_active for record in records),
            "default": next((record.name for record in records if record.is_default), None),
        }
    return page(request, "overview.html", caller, pools=summary)


routes = [Route("/", overview, methods=["GET"])]
