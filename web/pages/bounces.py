"""Bounces: the reports that came back (bounces, complaints, auto-replies), newest first, a
page at a time, all or by status (unmatched: those no message of ours was found for); one
report with its raw text (size-capped) and a form to give it another class.

Who sees and reclassifies which report is the API's rule (api.bounce_ops, shared with GET
/api/v1/bounces): an admin every report, anyone else those of the mail they sent (and of
the connected accounts they own: mail that left through them, reports that arrived in their
mailboxes); another's report is a 404. Reclassifying is an admin's, or the sender's of the
matched message holding the `suppressions` scope (the form is shown only to them).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api import bounce_ops, errors
from api.forms import form_fields
from gateway.bounces.ingest import CLASSES
from storage import bounce_reports as stored
from web.guard import signed_in
from web.pages.resource_form import back
from web.render import page

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
    ctx, caller = await signed_in(request)
    status = _status(request)
    cursor = _number(request.query_params.get("cursor"), "cursor")
    statuses = [status] if status else None
    found = await bounce_ops.page(ctx, caller, statuses, PAGE_SIZE, cursor)
    shown: dict[str, Any] = {
        "reports": [stored.as_json(row) for row in found.rows], "chosen": status or "",
        "statuses": stored.STATUSES, "next_url": _next_url(status, found.next_cursor),
    }  # fmt: skip
    return page(request, "bounces/list.html", caller, **shown)


def _report_id(request: Request) -> int:
    report_id = _number(request.path_params["report_id"], "id")
    if report_id is None:
        raise errors.NotFound("no such report")
    return report_id


async def show(request: Request) -> Response:
    ctx, caller = await signed_in(request)
    row = await bounce_ops.get(ctx, caller, _report_id(request))
    report = stored.as_json(row, with_raw=True)
    raw: str = report["raw"]
    shown: dict[str, Any] = {
        "report": report, "raw": raw[:MAX_SHOWN], "cut": len(raw) > MAX_SHOWN,
        "classes": CLASSES, "notice": DONE.get(request.query_params.get("done", ""), ""),
        "may_reclassify": bounce_ops.may_reclassify(caller, row),
    }  # fmt: skip
    return page(request, "bounces/show.html", caller, **shown)


async def reclassify(request: Request) -> Response:
    """`postern bounces reclassify`: the new class, applied to its matched recipients."""
    ctx, caller = await signed_in(request)
    report_id = _report_id(request)
    cls = form_fields(await request.body()).get("class", "")
    outcome = await bounce_ops.reclassify(ctx, caller, report_id, cls)
    return back(f"{PATH}/{report_id}", outcome)


routes = [
    Route(PATH, list_reports, methods=["GET"]),
    Route(PATH + "/{report_id}", show, methods=["GET"]),
    Route(PATH + "/{report_id}/reclassify", reclassify, methods=["POST"]),
]
