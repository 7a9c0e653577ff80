"""POST /v1/send/batch (also /mail/v1/send/batch and /api/v1/send/batch): up to 100
/v1/send bodies in one request, as Resend's /emails/batch takes them.

    key, scope, rate -> JSON array -> each item checked and built as /v1/send does
    (api.routes.send.prepare) -> the valid ones through intake's policy -> those it takes
    stored in ONE transaction (Intake.submit_many) -> each answered, in order -> 200 | 207

Nothing waits for the upstream: an accepted message is answered as /v1/send's 202 (stored,
delivered by the workers; 200 in the sandbox). Idempotency is per message: an item's own
`idempotency_key`, else the request's `Idempotency-Key` header with the item's index
(`<header>/<index>`), so the same batch sent again returns the same message ids and sends
nothing twice.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api import errors
from api.answers import answer as answer_to  # `answers`, `answer`: locals here
from api.auth import Caller, authenticate
from api.context import ApiContext, iso
from api.openapi import operation
from api.routes import send
from api.schemas import MAX_BATCH, ErrorResponse, SendBatchRequest, SendBatchResponse, SendRequest
from gateway.errors import InvalidInput, StorageUnavailable
from gateway.intake.fields import MAX_IDEMPOTENCY_KEY, text_problem
from gateway.intake.pipeline import Accepted, Duplicate, KeyReused, NoRoute
from gateway.message import Submission
from storage.keys import missing_scope

IDEMPOTENCY_HEADER = "idempotency-key"
_MAX_HEADER_KEY = MAX_IDEMPOTENCY_KEY - 4  # room for "/99"


class _DuplicateKey(InvalidInput):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _DuplicateKey("an object repeats a key")
    return result


def _items(raw: bytes) -> list[Any]:
    """The request's array (400 unless a JSON array of 1 to MAX_BATCH items)."""
    try:
        items = json.loads(raw, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as error:
        problem = [{"field": "body", "message": str(error)}]
        raise errors.InvalidRequest(str(error), problem) from None
    except ValueError:
        message = "the body is not valid JSON"
        raise errors.InvalidRequest(message, [{"field": "body", "message": message}]) from None
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
        message = f"the body is a JSON array of 1 to {MAX_BATCH} /v1/send bodies"
        raise errors.InvalidRequest(message, [{"field": "body", "message": message}])
    return items


def _header_key(request: Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    problem = text_problem(key, header=True)
    if problem is None and not 1 <= len(key) <= _MAX_HEADER_KEY:
        problem = f"must be 1 to {_MAX_HEADER_KEY} characters"
    if problem is not None:
        raise errors.InvalidRequest(
            f"Idempotency-Key: {problem}", [{"field": "Idempotency-Key", "message": problem}]
        )
    return key


def _keyed(submission: Submission, body: SendRequest, header: str | None, index: int,
           sandbox: bool) -> Submission:  # fmt: skip
    """The submission with its idempotency key: its own, else the header's for its index."""
    if body.idempotency_key is not None or header is None:
        return submission
    digest = send.request_digest(body, sandbox)
    return replace(submission, idempotency_key=f"{header}/{index}", request_hash=digest)


@operation(
    "Send up to 100 emails in one request",
    scope="send",
    request=SendBatchRequest,
    description=(
        "A JSON array of 1 to 100 `/v1/send` bodies (the same fields, limits and scopes; "
        "the sandbox header applies to every item). Each is checked and answered on its "
        "own, in order, in `results` (`index`, `status` and the body `/v1/send` would "
        "answer; an accepted message is stored and answered 202 queued, or 200 in the "
        "sandbox: nothing waits for the upstream). Every accepted message is stored in one "
        "transaction. Idempotency is per message: an item's `idempotency_key`, else the "
        "`Idempotency-Key` header plus the item's index (`<key>/<index>`), so the same batch "
        "sent again within 24 h returns the same message ids with `idempotent: true` and "
        "sends nothing. The whole request is bounded by [http] max_body_size."
    ),
    parameters=[
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "description": "the key of this batch (each item's is `<key>/<index>`)",
            "schema": {"type": "string", "minLength": 1, "maxLength": _MAX_HEADER_KEY},
        }
    ],
    responses={
        200: ("every message accepted", SendBatchResponse),
        207: ("some messages refused: each answered in results and errors", SendBatchResponse),
        400: ("not a JSON array of 1 to 100 objects, or a bad Idempotency-Key", ErrorResponse),
        403: ("no send scope (or sandbox scope for a sandbox batch)", ErrorResponse),
        413: ("the body is over [http] max_body_size", ErrorResponse),
        503: ("storage failed: nothing was accepted", ErrorResponse),
        507: ("no space left to store them (storage_full): nothing was accepted", ErrorResponse),
    },
)
async def send_batch(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    key = await authenticate(request, ctx)
    sandbox = send.sandbox_requested(request)
    if missing_scope(key, sandbox) is not None:
        raise errors.Forbidden(send.LACKING_SANDBOX if sandbox else send.LACKING_SEND)
    header = _header_key(request)
    items = _items(await request.body())
    answers: list[tuple[int, dict[str, Any]] | None] = [None] * len(items)
    bodies: list[SendRequest | None] = [None] * len(items)
    waiting: list[tuple[int, Submission]] = []
    for index, item in enumerate(items):
        try:
            body, submission = await send.prepare(
                request, ctx, key, json.dumps(item).encode(), sandbox
            )
        except errors.ApiError as error:
            answers[index] = (error.status, error.body())
            continue
        bodies[index] = body
        waiting.append((index, _keyed(submission, body, header, index, sandbox)))
    request.state.envelope = (None, ())
    if waiting:
        try:
            outcomes = await ctx.intake.submit_many([s for _, s in waiting])
        except StorageUnavailable as error:
            raise answer_to(error, send.NOT_STORED) from None
        for (index, submission), outcome in zip(waiting, outcomes, strict=True):
            parsed = bodies[index]
            assert parsed is not None
            answers[index] = await _answer(ctx, key, parsed, submission, outcome, sandbox)
    return _response(answers)


async def _answer(
    ctx: ApiContext,
    key: Caller,
    body: SendRequest,
    submission: Submission,
    outcome: object,
    sandbox: bool,
) -> tuple[int, dict[str, Any]]:
    """One message's (status, answer), as /v1/send gives it with no wait."""
    idempotency_key = submission.idempotency_key
    if isinstance(outcome, Duplicate):
        assert idempotency_key is not None
        return await send.replayed(ctx, key, idempotency_key, outcome)
    if isinstance(outcome, NoRoute):
        field = "alias_id" if body.alias_id else "from"
        error: errors.ApiError = errors.NoRoute(
            outcome.reason, [{"field": field, "message": outcome.reason}]
        )
        return error.status, error.body()
    if not isinstance(outcome, Accepted):
        assert isinstance(outcome, Exception)
        error = answer_to(outcome)
        if isinstance(outcome, KeyReused):
            error.extra["message_id"] = outcome.message_id
        return error.status, error.body()
    answer: dict[str, Any] = {
        "message_id": outcome.message_id,
        "provider": "sandbox" if sandbox else "smtp",
        "timestamp": iso(outcome.message.created_at),
    }
    if outcome.suppressed:
        answer["suppressed_recipients"] = list(outcome.suppressed)
    if outcome.parts:  # split by the recipients' routes, as /v1/send says it
        answer["message_ids"] = outcome.message_ids
    if submission.scheduled_at is not None and not sandbox:
        answer["scheduled_at"] = iso(submission.scheduled_at)
    if sandbox:
        status, answer = 200, {"success": True, **answer}
    else:
        status = 202
        answer = {"success": False, "queued": True, "message": send.QUEUED_TEXT, **answer}
    if idempotency_key is not None:
        send.save_answer(ctx, key, idempotency_key, outcome.message_id, status, answer)
    return status, answer


def _response(answers: list[tuple[int, dict[str, Any]] | None]) -> Response:
    results: list[dict[str, Any]] = []
    data: list[dict[str, str]] = []
    refusals: list[dict[str, Any]] = []
    for index, answered in enumerate(answers):
        assert answered is not None
        status, answer = answered
        results.append({"index": index, "status": status, **answer})
        if status < 300:
            data.append({"id": answer["message_id"]})
        else:
            code, text = answer.get("code", "error"), answer.get("error", "")
            refusals.append({"index": index, "code": code, "message": text})
    payload = {
        "success": not refusals,
        "accepted": len(data),
        "refused": len(refusals),
        "results": results,
        "data": data,
        "errors": refusals,
    }
    return JSONResponse(payload, status_code=207 if refusals else 200)


PATHS = ("/v1/send/batch", "/mail/v1/send/batch", "/api/v1/send/batch")
routes = [Route(path, send_batch, methods=["POST"]) for path in PATHS]
