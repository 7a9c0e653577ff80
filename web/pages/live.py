"""Live: events as they happen (static/live.js follows GET /v1/events/stream with the page's
filters) above the last RECENT of them rendered here, and charts of the last hour drawn on
the server as SVG (web.charts), so that the reading parts need no JavaScript. Whose events a
person sees is the stream's rule, api.event_ops: a member, those of their own mail."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api import errors, event_ops
from gateway.queue import events
from web import charts
from web.guard import signed_in
from web.render import page

PATH = "/live"
FILTERS = ("type", "recipient")


def _filters(request: Request) -> dict[str, str]:
    return {name: request.query_params.get(name, "").strip() for name in FILTERS}


async def live(request: Request) -> Response:
    ctx, caller = await signed_in(request)
    given = _filters(request)
    problem = ""
    try:
        flt = event_ops.event_filter(caller, given)
    except errors.InvalidRequest as error:
        problem, given = error.error, dict.fromkeys(FILTERS, "")
        flt = event_ops.event_filter(caller, given)
    recent = [json.loads(text) for text in await event_ops.recent(ctx, flt)]
    since, stats = await event_ops.per_minute(ctx, flt, charts.MINUTES)
    context: dict[str, Any] = {
        "filters": given,
        "types": events.TYPES,
        "problem": problem,
        "recent": recent,
        "stream_query": urlencode({k: v for k, v in given.items() if v}),
        "outcomes": charts.outcomes(stats),
        "latency": charts.latency(stats),
        "since": since,
    }
    return page(request, "live.html", caller, **context)


routes = [Route(PATH, live, methods=["GET"])]
