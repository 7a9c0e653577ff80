"""Bounces: the reports that came back (bounces, complaints, auto-replies), newest first, a
page at a time, all or by status (unmatched: those no message of ours was found for); one
report with its raw text (size-capped) and a form to give it another class.

The reading is GET /api/v1/bounces' (storage.bounce_reports), the reclassifying `postern
bounces reclassify`'s (BounceIngest.reclassify); the scope is the API's: `suppressions`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api import errors
from api.context import ApiContext
from api.forms import form_fields
from gateway.bounces.ingest import CLASSES
from storage import bounce_reports as stored
from web.guard import signed_in
from web.pages.resource_form import back
from web.render import page

SCOPE = "suppressions"  # as /api/v1/bounces: what comes back fills the suppression list
PATH = "/bounces"
PAGE_SIZE = 50
MAX_SHOWN = 64 * 1024  # of a report's raw text: a huge report would make a huge page
_MAX_DIGITS = 18
DONE = {
    "changed": "Report reclassified: its new class is applied to its matched recipients.",
    "unchanged": "The report already had that class: nothing done.",
}


def _number(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    if not (value.isascii() and value.isdigit() and len(value) <= _MAX_DIGITS):
        raise errors.InvalidRequest(f"{name}: not a number")
    return int(value)


def _status(request: Request) -> str | None:
    status = request.query_params.get("status") or None
    if status is not None and status not in stored.STATUSES:
        raise errors.InvalidRequest(f"status: one of {', '.join(stored.STATUSES)}")
    return status


def _next_url(status: str | None, cursor: int | None) -> str:
    if cursor is None:
        return ""
    query = {"chosen": status or "", "cursor": str(cursor)}
    return f"{PATH}?{urlencode({k: v for k, v in query.items() if v})}"


async def list_reports(request: Request) -> Response:
    ctx, caller = await signed_in(request, SCOPE)
    status = _status(request)
    cursor = _number(request.query_params.get("cursor"), "cursor")
    statuses = [status] if status else None
    found = await ctx.db.read(lambda conn: stored.page(conn, statuses, PAGE_SIZE, cursor))
    shown: dict[str, Any] = {
        "reports": [stored.as_json(row) for row in found.rows], "chosen": status or "",
        "statuses": stored.STATUSES, "next_url": _next_url(status, found.next_cursor),
    }  # fmt: skip
    return page(request, "bounces/list.html", caller, **shown)


async def _report(ctx: ApiContext, request: Request) -> dict[str, Any]:
    report_id = _number(request.path_params["report_id"], "id")
    row = None
    if report_id is not None:
        row = await ctx.db.read(lambda conn: stored.get(conn, report_id))
    if row is None:
        raise errors.NotFound("no such report")
    return stored.as_json(row, with_raw=True)


async def show(request: Request) -> Response:
    ctx, caller = await signed_in(request, SCOPE)
    report = await _report(ctx, request)
    raw: str = report["raw"]
    shown: dict[str, Any] = {
        "report": report, "raw": raw[:MAX_SHOWN], "cut": len(raw) > MAX_SHOWN,
        "classes": CLASSES, "notice": DONE.get(request.query_params.get("done", ""), ""),
    }  # fmt: skip
    return page(request, "bounces/show.html", caller, **shown)


async def reclassify(request: Request) -> Response:
    """`postern bounces reclassify`: the new class, applied to its matched recipients."""
    ctx, _ = await signed_in(request, SCOPE)
    report = await _report(ctx, request)
    cls = form_fields(await request.body()).get("class", "")
    if cls not in CLASSES:
        raise errors.InvalidRequest(f"class: one of {', '.join(CLASSES)}")
    if ctx.bounces is None:
        raise errors.Unavailable("bounce processing is not running on this node")
    outcome = await ctx.bounces.reclassify(report["id"], cls)
    if outcome == "unknown":
        raise errors.NotFound("no such report")
    return back(f"{PATH}/{report['id']}", outcome)


routes = [
    Route(PATH, list_reports, methods=["GET"]),
    Route(PATH + "/{report_id}", show, methods=["GET"]),
    Route(PATH + "/{report_id}/reclassify", reclassify, methods=["POST"]),
]
