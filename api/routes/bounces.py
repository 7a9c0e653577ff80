"""/api/v1/bounces: the reports that came back (gateway.bounces), recent and unmatched,
one with its raw bytes, one given another class, and a report uploaded by HTTP (providers
that forward bounces that way).

Reading and reclassifying follow the matched message's visibility (api.bounce_ops, shared
with the dashboard): an admin sees every report, anyone else those of the mail they may
see, and another's report is a 404. Uploading needs the scope `suppressions`: what comes
back is what fills the suppression list. An upload by a caller without `admin` acts only on
a message that caller sent (api.bounce_ops.uploader); one naming another's message is kept
unmatched and changes nothing."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api import bounce_ops, errors
from api.auth import authenticate
from api.bounce_schemas import (
    BounceList,
    BounceReclassified,
    BounceReclassify,
    BounceResponse,
    BounceUploaded,
)
from api.context import ApiContext, iso
from api.openapi import operation, path_parameter, query_parameter
from api.schemas import EMAIL, ErrorResponse, parse
from gateway.addresses import envelope_problem
from gateway.bounces.ingest import Source
from gateway.intake.fields import text_problem
from gateway.reports import hand_over
from storage import bounce_reports as stored

SCOPE = "suppressions"
MAX_PAGE = 200
_PARAMETERS = ("status", "limit", "cursor")
_ID = path_parameter("id", "the report's id", pattern=r"^[0-9]{1,18}$")


def _shown(row: Any, with_raw: bool = False) -> dict[str, Any]:
    found = stored.as_json(row, with_raw)
    return found | {"received_at": iso(found["received_at"])}


def _field(name: str, problem: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(f"{name}: {problem}", [{"field": name, "message": problem}])


def _number(value: str, name: str, low: int, high: int) -> int:
    if (
        not (value.isascii() and value.isdigit() and len(value) <= 18)
        or not low <= int(value) <= high
    ):
        raise _field(name, f"{low} to {high}")
    return int(value)


@operation(
    "List reports that came back (bounces, complaints, auto-replies)",
    scope="",
    description="An admin sees every report; anyone else those matched to mail they may "
    "see (as /v1/messages) or sent through a connected account they own or that is shared "
    "with them. Unmatched reports are an admin's only.",
    parameters=[
        query_parameter("status", "only this status (empty: any)", enum=["", *stored.STATUSES]),
        query_parameter(
            "limit",
            f"page size, 1 to {MAX_PAGE} (default 50)",
            "integer",
            minimum=1,
            maximum=MAX_PAGE,
        ),
        query_parameter("cursor", "next_cursor of the previous page", pattern=r"^[0-9]{1,18}$"),
    ],
    responses={200: ("one page, newest first", BounceList)},
)
async def list_all(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    caller = await authenticate(request, ctx)
    query = request.query_params
    for name in query:
        if name not in _PARAMETERS:
            raise _field(name, "unknown parameter")
    status = query.get("status") or None
    if status is not None and status not in stored.STATUSES:
        raise _field("status", f"one of {', '.join(stored.STATUSES)}")
    limit = _number(query.get("limit", "50"), "limit", 1, MAX_PAGE)
    raw_cursor = query.get("cursor")
    cursor = _number(raw_cursor, "cursor", 0, 10**18 - 1) if raw_cursor is not None else None
    statuses = [status] if status else None
    page = await bounce_ops.page(ctx, caller, statuses, limit, cursor)
    more = str(page.next_cursor) if page.next_cursor is not None else None
    bounces = [_shown(row) for row in page.rows]
    return JSONResponse({"success": True, "bounces": bounces, "next_cursor": more})


@operation(
    "Get one report, with its raw bytes",
    scope="",
    parameters=[_ID],
    responses={
        200: ("the report", BounceResponse),
        404: ("no such report, or not one the caller may see", ErrorResponse),
    },
)
async def show(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    caller = await authenticate(request, ctx)
    report = bounce_ops.report_id(request.path_params["id"])
    row = await bounce_ops.get(ctx, caller, report)
    return JSONResponse({"success": True, "bounce": _shown(row, with_raw=True)})


@operation(
    "Give a report another class (`postern bounces reclassify`)",
    scope="",
    parameters=[_ID],
    request=BounceReclassify,
    description="The new class is applied to the report's matched recipients (a `hard` "
    "one suppresses them); what the old class did stays done. An admin, or the sender of "
    "the report's message holding the `suppressions` scope (a suppression applies to "
    "the whole installation).",
    responses={
        200: ("reclassified (or it had that class already)", BounceReclassified),
        403: (
            "the caller did not send the report's message, or lacks `suppressions`",
            ErrorResponse,
        ),
        404: ("no such report, or not one the caller may see", ErrorResponse),
        503: ("bounce processing is not running", ErrorResponse),
    },
)
async def reclassify(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    caller = await authenticate(request, ctx)
    report = bounce_ops.report_id(request.path_params["id"])
    await bounce_ops.get(ctx, caller, report)  # 404 before the body is looked at
    body = parse(BounceReclassify, await request.body())
    outcome = await bounce_ops.reclassify(ctx, caller, report, body.cls)
    row = await bounce_ops.get(ctx, caller, report)
    shown = {"success": True, "outcome": outcome, "bounce": _shown(row, with_raw=True)}
    return JSONResponse(shown)


@operation(
    "Upload a report (the raw message, as a provider forwards it)",
    scope=SCOPE,
    parameters=[
        query_parameter(
            "envelope_recipient",
            "the address the report was sent to (a VERP address), if known",
            maxLength=254,
            **EMAIL,
        ),
    ],
    description="The request body is the raw report (message/rfc822), at most "
    "[bounces] max_report_size bytes. It is processed as a report from the bounce "
    "listener would be, once: the same bytes again answer `duplicate`. Without the "
    "`admin` scope a report acts only on a message the caller sent (as /v1/messages shows "
    "them): one that names another's message (by VERP token, reference or Message-ID) is "
    "stored `unmatched` and changes nothing, answered as a report for an unknown message.",
    request_required=False,
    responses={
        201: ("stored (and applied when it matched)", BounceUploaded),
        200: ("seen before: nothing done again", BounceUploaded),
        413: ("larger than [bounces] max_report_size", ErrorResponse),
        422: ("no report in the body", ErrorResponse),
        503: ("bounce processing is not running", ErrorResponse),
    },
)
async def upload(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    caller = await authenticate(request, ctx, SCOPE)
    for name in request.query_params:
        if name != "envelope_recipient":
            raise _field(name, "unknown parameter")
    rcpt = request.query_params.get("envelope_recipient") or None
    if rcpt is not None and (text_problem(rcpt, header=True) or envelope_problem(rcpt)):
        raise _field("envelope_recipient", "not an address")
    if ctx.bounces is None:
        raise errors.Unavailable("bounce processing is not running on this node")
    raw = await request.body()
    if len(raw) > ctx.max_report_size:
        raise errors.PayloadTooLarge(f"a report is at most {ctx.max_report_size} bytes")
    if not raw.strip():
        raise errors.EmptyReport("the request body must be the raw report")
    # counted in postern_bounce_reports_total{source="api"} as the other ways in are
    source = Source("api", envelope_recipient=rcpt, sender=bounce_ops.uploader(caller))
    result = await hand_over(ctx.bounces, raw, source)
    answer = {"success": True, "outcome": result.outcome, "report_id": result.report_id}
    return JSONResponse(answer, status_code=200 if result.outcome == "duplicate" else 201)


routes = [
    Route("/api/v1/bounces", list_all, methods=["GET"]),
    Route("/api/v1/bounces", upload, methods=["POST"]),
    Route("/api/v1/bounces/{id}", show, methods=["GET"]),
    Route("/api/v1/bounces/{id}/reclassify", reclassify, methods=["POST"]),
]
