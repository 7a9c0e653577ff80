"""/api/v1/suppressions: the addresses Postern will not send to (scope `suppressions`).

One mailbox, one entry: addresses are kept under `gateway.addresses.mailbox_key` (quotes
removed, lower-cased, IDNs as A-labels), so `"Bob"@Example.org` adds, finds and removes
`bob@example.org`. Changes apply to this node's in-memory copy at once, to other nodes'
within their refresh. The work is api.suppression_ops' (shared with the dashboard); here
requests are read and answered.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api import errors, suppression_ops
from api.auth import authenticate
from api.context import ApiContext, iso
from api.openapi import operation, path_parameter, query_parameter
from api.schemas import (
    EMAIL,
    HEADER_TEXT,
    ErrorResponse,
    Ok,
    SuppressionCreate,
    SuppressionList,
    SuppressionResponse,
    parse,
)
from api.suppression_ops import MAX_CURSOR, SCOPE
from gateway.intake.fields import text_problem
from storage.suppressions import REASONS, SuppressionRecord, list_suppressions

MAX_PAGE = 1000
_EMAIL = path_parameter("email", "the address", maxLength=254, **EMAIL)


def _json(record: SuppressionRecord) -> dict[str, str | None]:
    found = {"email": record.email, "reason": record.reason, "created_at": iso(record.created_at)}
    return found | ({"note": record.note} if record.note else {})


_LIST_PARAMETERS = ("reason", "limit", "cursor")


@operation(
    "List suppressed addresses",
    scope=SCOPE,
    parameters=[
        query_parameter(
            "reason", f"only this reason: {', '.join(REASONS)} (empty: any)", enum=["", *REASONS]
        ),
        query_parameter(
            "limit",
            f"page size, 1 to {MAX_PAGE} (default 100)",
            "integer",
            minimum=1,
            maximum=MAX_PAGE,
        ),
        query_parameter(
            "cursor", "next_cursor of the previous page", maxLength=MAX_CURSOR, **HEADER_TEXT
        ),
    ],
    responses={200: ("one page, in address order", SuppressionList)},
)
async def list_all(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    await authenticate(request, ctx, SCOPE)
    query = request.query_params
    for name in query:  # a misspelt filter is refused, not silently ignored (as /v1/messages)
        if name not in _LIST_PARAMETERS:
            raise errors.InvalidRequest(
                f"{name}: unknown parameter", [{"field": name, "message": "unknown parameter"}]
            )
    reason = query.get("reason") or None
    if reason is not None and reason not in REASONS:
        raise errors.InvalidRequest(
            "reason: unknown", [{"field": "reason", "message": f"one of {', '.join(REASONS)}"}]
        )
    raw_limit = query.get("limit", "100")
    if not (raw_limit.isascii() and raw_limit.isdigit()) or not 1 <= int(raw_limit) <= MAX_PAGE:
        raise errors.InvalidRequest(
            "limit: out of bounds", [{"field": "limit", "message": f"1 to {MAX_PAGE}"}]
        )
    cursor = query.get("cursor") or None
    if cursor is not None and (len(cursor) > MAX_CURSOR or text_problem(cursor, header=True)):
        raise errors.InvalidRequest("cursor: invalid", [{"field": "cursor", "message": "invalid"}])
    page, next_cursor = await list_suppressions(ctx.db, reason, int(raw_limit), cursor)
    return JSONResponse(
        {"success": True, "suppressions": [_json(r) for r in page], "next_cursor": next_cursor}
    )


@operation(
    "Suppress an address",
    scope=SCOPE,
    request=SuppressionCreate,
    responses={
        201: ("added", SuppressionResponse),
        200: ("was already there; its reason is updated", SuppressionResponse),
    },
)
async def add(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    await authenticate(request, ctx, SCOPE)
    body = parse(SuppressionCreate, await request.body())
    record, created = await suppression_ops.add(ctx, body)
    return JSONResponse(
        {"success": True, "suppression": _json(record)}, status_code=201 if created else 200
    )


@operation(
    "Get one suppressed address",
    scope=SCOPE,
    parameters=[_EMAIL],
    responses={200: ("the entry", SuppressionResponse), 404: ("not suppressed", ErrorResponse)},
)
async def show(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    await authenticate(request, ctx, SCOPE)
    record = await suppression_ops.get(ctx, request.path_params["email"])
    return JSONResponse({"success": True, "suppression": _json(record)})


@operation(
    "Stop suppressing an address",
    scope=SCOPE,
    parameters=[_EMAIL],
    responses={200: ("removed", Ok), 404: ("not suppressed", ErrorResponse)},
)
async def remove(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    await authenticate(request, ctx, SCOPE)
    await suppression_ops.remove(ctx, request.path_params["email"])
    return JSONResponse({"success": True})


routes = [
    Route("/api/v1/suppressions", list_all, methods=["GET"]),
    Route("/api/v1/suppressions", add, methods=["POST"]),
    Route("/api/v1/suppressions/{email:path}", show, methods=["GET"]),
    Route("/api/v1/suppressions/{email:path}", remove, methods=["DELETE"]),
]
