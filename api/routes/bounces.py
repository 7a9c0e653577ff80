"""/api/v1/bounces: the reports that came back (gateway.bounces), recent and unmatched,
one with its raw bytes, and a report uploaded by HTTP (providers that forward bounces
that way). Scope `suppressions`: what comes back is what fills the suppression list."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api import errors
from api.auth import authenticate
from api.bounce_schemas import BounceList, BounceResponse, BounceUploaded
from api.context import ApiContext, iso
from api.openapi import operation, path_parameter, query_parameter
from api.schemas import EMAIL, ErrorResponse
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
    scope=SCOPE,
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
    await authenticate(request, ctx, SCOPE)
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
    page = await ctx.db.read(lambda conn: stored.page(conn, statuses, limit, cursor))
    more = str(page.next_cursor) if page.next_cursor is not None else None
    bounces = [_shown(row) for row in page.rows]
    return JSONResponse({"success": True, "bounces": bounces, "next_cursor": more})


@operation(
    "Get one report, with its raw bytes",
    scope=SCOPE,
    parameters=[_ID],
    responses={200: ("the report", BounceResponse), 404: ("no such report", ErrorResponse)},
)
async def show(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    await authenticate(request, ctx, SCOPE)
    raw_id = request.path_params["id"]
    if not (raw_id.isascii() and raw_id.isdigit() and len(raw_id) <= 18):
        raise errors.NotFound("no such report")
    row = await ctx.db.read(lambda conn: stored.get(conn, int(raw_id)))
    if row is None:
        raise errors.NotFound("no such report")
    return JSONResponse({"success": True, "bounce": _shown(row, with_raw=True)})


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
    "listener would be, once: the same bytes again answer `duplicate`.",
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
    await authenticate(request, ctx, SCOPE)
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
    result = await hand_over(ctx.bounces, raw, Source("api", envelope_recipient=rcpt))
    answer = {"success": True, "outcome": result.outcome, "report_id": result.report_id}
    return JSONResponse(answer, status_code=200 if result.outcome == "duplicate" else 201)


routes = [
    Route("/api/v1/bounces", list_all, methods=["GET"]),
    Route("/api/v1/bounces", upload, methods=["POST"]),
    Route("/api/v1/bounces/{id}", show, methods=["GET"]),
]
