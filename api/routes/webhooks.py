"""/api/v1/webhooks: signed event webhooks (scope `webhooks`).

The signing secret is in the creation response and nowhere else: it is stored encrypted,
bound to the webhook's id (gateway.webhooks.signing). URLs pass the webhooks' SSRF guard
(public addresses only unless `[webhooks] allow_private`) at create and PATCH (and the
sender checks again before every POST). A webhook records the user who made it
(`created_by`); a caller sees the webhooks api.ownership lets it see, another's is a 404.
The work is api.webhook_ops' (shared with the dashboard); here requests are read and answered.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api import errors, webhook_ops
from api.auth import Caller, authenticate
from api.context import ApiContext, iso
from api.openapi import operation, path_parameter, query_parameter
from api.schemas import ErrorResponse, Ok, parse, refuse_nulls
from api.webhook_ops import SCOPE
from api.webhook_schemas import (
    AttemptList,
    CreatedWebhookResponse,
    ReplayRequest,
    ReplayResponse,
    WebhookCreate,
    WebhookList,
    WebhookResponse,
    WebhookUpdate,
)
from storage import webhooks as store
from storage.webhooks import WebhookRecord

PREFIX = "/api/v1/webhooks"
MAX_ATTEMPTS = 1000
_ID = [path_parameter("webhook_id", "the webhook's id (wh_...)")]
_NOT_FOUND = ("no such webhook", ErrorResponse)
_URL = ("a bad field, or a URL in a denied network (host_not_allowed)", ErrorResponse)


def webhook_json(record: WebhookRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "url": record.url,
        "event_types": list(record.event_types) or None,
        "final_only": record.final_only,
        "description": record.description,
        "is_active": record.is_active,
        "created_at": iso(record.created_at),
        "updated_at": iso(record.updated_at),
        "failures": record.failures,
        "next_attempt_at": iso(record.next_attempt_at) if record.next_attempt_at else None,
        "created_by": record.created_by,
    }


def _bad(field: str, message: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(f"{field}: {message}", [{"field": field, "message": message}])


async def _caller(request: Request) -> tuple[ApiContext, Caller]:
    ctx: ApiContext = request.app.state.api
    return ctx, await authenticate(request, ctx, SCOPE)


async def _get(ctx: ApiContext, caller: Caller, request: Request) -> WebhookRecord:
    return await webhook_ops.get(ctx, caller, request.path_params["webhook_id"])


@operation("List webhooks", scope=SCOPE, responses={200: ("every webhook", WebhookList)})
async def list_all(request: Request) -> Response:
    ctx, caller = await _caller(request)
    records = await webhook_ops.records(ctx, caller)
    return JSONResponse({"success": True, "webhooks": [webhook_json(r) for r in records]})


@operation(
    "Create a webhook",
    scope=SCOPE,
    request=WebhookCreate,
    responses={
        201: ("the webhook, with its secret (shown this once)", CreatedWebhookResponse),
        400: _URL,
    },
)
async def create(request: Request) -> Response:
    ctx, caller = await _caller(request)
    body = parse(WebhookCreate, await request.body())
    record, secret = await webhook_ops.create(ctx, caller, body.model_dump())
    answer = {**webhook_json(record), "secret": secret}
    return JSONResponse({"success": True, "webhook": answer}, status_code=201)


@operation(
    "Get a webhook",
    scope=SCOPE,
    parameters=_ID,
    responses={200: ("the webhook (never its secret)", WebhookResponse), 404: _NOT_FOUND},
)
async def show(request: Request) -> Response:
    ctx, caller = await _caller(request)
    record = await _get(ctx, caller, request)
    return JSONResponse({"success": True, "webhook": webhook_json(record)})


@operation(
    "Change a webhook",
    scope=SCOPE,
    request=WebhookUpdate,
    parameters=_ID,
    responses={200: ("the webhook", WebhookResponse), 400: _URL, 404: _NOT_FOUND},
)
async def change(request: Request) -> Response:
    ctx, caller = await _caller(request)
    body = parse(WebhookUpdate, await request.body())
    given = body.model_fields_set
    refuse_nulls(body)
    changes = {name: getattr(body, name) for name in given}
    current = await _get(ctx, caller, request)
    record = await webhook_ops.change(ctx, current, changes)
    return JSONResponse({"success": True, "webhook": webhook_json(record)})


@operation(
    "Delete a webhook",
    scope=SCOPE,
    parameters=_ID,
    description="Also drops the events still owed to it.",
    responses={200: ("deleted", Ok), 404: _NOT_FOUND},
)
async def remove(request: Request) -> Response:
    ctx, caller = await _caller(request)
    await webhook_ops.delete(ctx, await _get(ctx, caller, request))
    return JSONResponse({"success": True})


@operation(
    "Replay events to a webhook",
    scope=SCOPE,
    request=ReplayRequest,
    parameters=_ID,
    description=(
        "Sends the webhook again every stored event it wants since `since`, oldest first, "
        "then carries on with new ones. They keep their ids, so a receiver that "
        "de-duplicates by id sees no repeats."
    ),
    responses={
        202: ("queued", ReplayResponse),
        404: _NOT_FOUND,
        409: ("the webhook is inactive (webhook_inactive)", ErrorResponse),
    },
)
async def replay(request: Request) -> Response:
    ctx, caller = await _caller(request)
    body = parse(ReplayRequest, await request.body())
    since = webhook_ops.parse_since(body.since)
    queued = await webhook_ops.replay(ctx, await _get(ctx, caller, request), since)
    return JSONResponse({"success": True, "queued": queued}, status_code=202)


@operation(
    "List a webhook's recent deliveries",
    scope=SCOPE,
    parameters=[
        *_ID,
        query_parameter(
            "limit",
            f"how many, 1 to {MAX_ATTEMPTS} (default 50)",
            "integer",
            minimum=1,
            maximum=MAX_ATTEMPTS,
        ),
    ],
    responses={200: ("its latest POSTs, newest first", AttemptList), 404: _NOT_FOUND},
)
async def deliveries(request: Request) -> Response:
    ctx, caller = await _caller(request)
    raw = request.query_params.get("limit", "50")
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_ATTEMPTS:
        raise _bad("limit", f"1 to {MAX_ATTEMPTS}")
    record = await _get(ctx, caller, request)
    rows = await store.attempts(ctx.db, record.id, int(raw))
    return JSONResponse(
        {
            "success": True,
            "deliveries": [
                {
                    "at": iso(row.at),
                    "status_code": row.status_code,
                    "error": row.error,
                    "events": row.events,
                    "duration_ms": row.duration_ms,
                    "outcome": row.outcome,
                }
                for row in rows
            ],
        }
    )


routes = [
    Route(PREFIX, list_all, methods=["GET"]),
    Route(PREFIX, create, methods=["POST"]),
    Route(PREFIX + "/{webhook_id}", show, methods=["GET"]),
    Route(PREFIX + "/{webhook_id}", change, methods=["PATCH"]),
    Route(PREFIX + "/{webhook_id}", remove, methods=["DELETE"]),
    Route(PREFIX + "/{webhook_id}/replay", replay, methods=["POST"]),
    Route(PREFIX + "/{webhook_id}/deliveries", deliveries, methods=["GET"]),
]
