"""/v1/messages: find messages, see where one is and what it says (its stored bytes, or them
parsed), retry, cancel, hold or release them one by one or in bulk.

A key sees and acts on only the messages it sent (an `admin` key on all); a member, and any
key of a user, those of that user (an admin or owner on all: see `restriction`). Another's
message is a 404, so that a message id reveals nothing. Bulk operations take
the search's filters; one with no criterion must say `"all": true` to touch the whole queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api import errors, message_ops, schemas
from api.auth import authenticate
from api.context import ApiContext, iso
from api.message_ops import DEFAULT_LIMIT, restriction
from api.openapi import operation, path_parameter, query_parameter
from api.schemas import (
    BulkRequest,
    BulkResult,
    CancelResult,
    ErrorResponse,
    HoldResult,
    MessageContent,
    MessageList,
    MessageStatus,
    ReleaseResult,
    RetryResult,
    parse,
)
from gateway import mailview, timestamps
from gateway.queue import operations as queue_ops
from gateway.queue.operations import (
    FilterError,
    MessageBusy,
    MessageFinal,
    MessageHeld,
    MessageNotHeld,
    make_filter,
    summary_json,
)
from storage.message_search import (
    MAX_LIMIT,
    STATUSES,
    InvalidCursor,
    decode_cursor,
    search,
)
from storage.messages import MessageState
from storage.search_keys import MAX_QUERY_WORDS, MAX_WORD, MAX_WORDS

QUERY = (*queue_ops.FILTER_FIELDS, "limit", "cursor")


def _invalid(field: str, message: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(f"{field}: {message}", [{"field": field, "message": message}])


# Named: GET /v1/events/stream takes these two filters as they are stated here.
SUBJECT_PARAMETER = query_parameter(
    "subject",
    f"words the Subject has, all of them, in any order and case (at most "
    f"{MAX_QUERY_WORDS}; each up to {MAX_WORD} characters, among its first {MAX_WORDS})",
    **schemas.FILTER_FIELDS["subject"],
)
CLIENT_PARAMETER = query_parameter(
    "client",
    "the IP address the message was submitted from (SMTP or HTTP client), or a CIDR "
    "block such as 192.0.2.0/24 or 2001:db8::/32",
    **schemas.FILTER_FIELDS["client"],
)
_FILTER_PARAMETERS = [
    query_parameter(
        "status",
        f"one or more, comma-separated: {', '.join(STATUSES)}",
        pattern=queue_ops.STATUS_PATTERN,
    ),
    query_parameter(
        "pool",
        "the pool of the last attempt, or the one chosen at intake",
        **schemas.FILTER_FIELDS["pool"],
    ),
    query_parameter("recipient", "a recipient's address", **schemas.FILTER_FIELDS["recipient"]),
    query_parameter("from", "the envelope sender", **schemas.FILTER_FIELDS["from"]),
    query_parameter("tag", "one of the tags given at send", **schemas.FILTER_FIELDS["tag"]),
    query_parameter(
        "message_id_header",
        "the client's own Message-ID, with or without its angle brackets",
        **schemas.FILTER_FIELDS["message_id_header"],
    ),
    SUBJECT_PARAMETER,
    CLIENT_PARAMETER,
    query_parameter(
        "since", "created at or after: ISO 8601 or UNIX seconds", pattern=timestamps.PATTERN
    ),
    query_parameter(
        "until", "created before: ISO 8601 or UNIX seconds", pattern=timestamps.PATTERN
    ),
]


@operation(
    "Search messages",
    scope="",
    parameters=[
        *_FILTER_PARAMETERS,
        query_parameter(
            "limit",
            f"page size, 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT})",
            "integer",
            minimum=1,
            maximum=MAX_LIMIT,
        ),
        query_parameter(
            "cursor",
            "next_cursor of the previous page",
            maxLength=schemas.MAX_CURSOR,
            **schemas.CURSOR,
        ),
    ],
    responses={200: ("one page, newest first", MessageList)},
    description="Every criterion given must match. A key sees only the mail it sent.",
)
async def list_messages(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    key = await authenticate(request, ctx)
    query = request.query_params
    for name in query:
        if name not in QUERY:
            raise _invalid(name, "unknown parameter")
        if len(query.getlist(name)) > 1:
            raise _invalid(name, "given more than once")
    try:
        flt = make_filter(dict(query), **restriction(key))
    except FilterError as error:
        raise _invalid(error.field, error.message) from None
    raw_limit = query.get("limit", str(DEFAULT_LIMIT))
    if not (raw_limit.isascii() and raw_limit.isdigit()) or not 1 <= int(raw_limit) <= MAX_LIMIT:
        raise _invalid("limit", f"1 to {MAX_LIMIT}")
    cursor = query.get("cursor") or None
    if cursor is not None:
        try:
            if len(cursor) > schemas.MAX_CURSOR:
                raise InvalidCursor(cursor[:16])
            decode_cursor(cursor)
        except InvalidCursor:
            raise _invalid("cursor", "not a cursor this API returned") from None
    page, next_cursor = await search(ctx.db, flt, int(raw_limit), cursor)
    return JSONResponse({"data": [summary_json(m, iso) for m in page], "next_cursor": next_cursor})


@operation(
    "Get a message's status",
    scope="",
    parameters=[path_parameter("message_id", "the id POST /v1/send returned")],
    responses={
        200: ("the message, each recipient's last result, and its events", MessageStatus),
        404: ("no such message, or another key's", ErrorResponse),
    },
)
async def get_message(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    key = await authenticate(request, ctx)
    state = await message_ops.get(ctx, key, request.path_params["message_id"])
    return JSONResponse(
        {
            "message_id": state.id,
            "status": state.status,
            "pool": state.pool,
            "attempts": state.attempts,
            "recipients": [
                {
                    "email": r.email,
                    "status": message_ops.recipient_status(r),
                    "response": r.response,
                }
                for r in state.recipients
            ],
            "created_at": iso(state.created_at),
            "updated_at": iso(state.updated_at),
            "provider": state.provider,
            "tags": state.tags,
            "metadata": state.metadata,
            "next_attempt_at": iso(state.next_attempt_at),
            "last_response": state.last_response,
            "scheduled_at": iso(state.scheduled_at),
            "events": state.events,
            "client_address": state.client_address,
        }
    )


_BODY_404 = ("no such message, or another key's (not_found)", ErrorResponse)
_BODY_410 = (
    "body_gone: the message is there but its body was deleted ([storage] body_retention "
    "after it became final); its status and events remain",
    ErrorResponse,
)


@operation(
    "Get a message's raw source",
    scope="",
    parameters=[path_parameter("message_id", "the id POST /v1/send returned")],
    responses={
        200: ("message/rfc822: the bytes as stored (DKIM-signed), exactly", None),
        404: _BODY_404,
        410: _BODY_410,
    },
    description=(
        "Like `postcat -q`. Bodies are kept while a message has work left, then for "
        "[storage] body_retention (7 days by default)."
    ),
)
async def message_raw(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    key = await authenticate(request, ctx)
    state = await message_ops.get(ctx, key, request.path_params["message_id"])
    data = await message_ops.body(ctx, state)
    headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
    return Response(bytes(data), media_type="message/rfc822", headers=headers)


@operation(
    "Get a message's content, parsed",
    scope="",
    parameters=[path_parameter("message_id", "the id POST /v1/send returned")],
    responses={
        200: ("its header fields, text, HTML and attachments", MessageContent),
        404: _BODY_404,
        410: _BODY_410,
    },
    description=f"Text and HTML are cut at {mailview.SHOWN_CHARACTERS:,} characters each "
    f"(`truncated`); at most {mailview.MAX_HEADERS} header fields and "
    f"{mailview.MAX_ATTACHMENTS} attachments are listed. Attachment bytes are in /raw.",
)
async def message_content(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    key = await authenticate(request, ctx)
    state = await message_ops.get(ctx, key, request.path_params["message_id"])
    data = await message_ops.body(ctx, state)
    shown = await asyncio.to_thread(mailview.view, bytes(data))  # bounded by max size
    return JSONResponse(_content_json(state.id, shown), headers={"Cache-Control": "no-store"})


def _content_json(message_id: str, shown: mailview.MailView) -> dict[str, Any]:
    attachments = [
        {"filename": a.name, "content_type": a.content_type, "size": a.size}
        | {"content_id": a.content_id}
        for a in shown.attachments
    ]
    return {
        "message_id": message_id,
        "headers": [[name, value] for name, value in shown.headers],
        "text": shown.text,
        "html": shown.html,
        "attachments": attachments,
        "truncated": shown.cut,
    }


_ONE = [path_parameter("message_id", "the id POST /v1/send returned")]
_CONFLICT = (
    "the message has no work left (message_final), is being delivered (message_busy) or is "
    "on hold (message_held: release it first)"
)
_RETRY = (
    "Like `postqueue -f`: the message is due now, the cool-down of its route's pools ends, "
    "and its attempt counts but takes no step of retry_schedule (if it fails, the message "
    "waits the interval it was on)."
)


async def _act_on_one(
    request: Request, act: Callable[[ApiContext, MessageState], Awaitable[Any]]
) -> tuple[ApiContext, MessageState]:
    """Retry, cancel, hold or release the message of the path, if the key may see it; 409
    when it is final, being delivered, or (not) on hold."""
    ctx: ApiContext = request.app.state.api
    key = await authenticate(request, ctx)
    state = await message_ops.get(ctx, key, request.path_params["message_id"])
    try:
        await act(ctx, state)
    except (MessageFinal, MessageBusy, MessageHeld, MessageNotHeld) as error:
        raise _conflict(error, state) from None
    return ctx, state


def _conflict(error: Exception, state: MessageState) -> errors.ApiError:
    if isinstance(error, MessageBusy):
        return errors.MessageBusy("the message is being delivered right now; try again shortly")
    if isinstance(error, MessageHeld):
        return errors.MessageHeld("the message is on hold: release it first")
    if isinstance(error, MessageNotHeld):
        return errors.MessageNotHeld(f"the message is not on hold (it is {state.status})")
    return errors.MessageFinal(f"the message has no work left (it is {state.status})")


@operation(
    "Retry a message now",
    scope="",
    parameters=_ONE,
    responses={
        200: ("due now: the next free worker delivers it", RetryResult),
        404: ("no such message, or another key's", ErrorResponse),
        409: (_CONFLICT, ErrorResponse),
    },
    description=_RETRY,
)
async def retry_message(request: Request) -> Response:
    ctx, state = await _act_on_one(
        request, lambda ctx, state: queue_ops.retry_one(ctx.message_queue(), ctx.db, state)
    )
    if ctx.wake is not None:
        ctx.wake()
    return JSONResponse({"message_id": state.id, "retried": True})


@operation(
    "Cancel a message",
    scope="",
    parameters=_ONE,
    responses={
        200: ("stopped: its pending recipients are cancelled", CancelResult),
        404: ("no such message, or another key's", ErrorResponse),
        409: (_CONFLICT, ErrorResponse),
    },
)
async def cancel_message(request: Request) -> Response:
    _, state = await _act_on_one(
        request, lambda ctx, state: queue_ops.cancel_one(ctx.message_queue(), state)
    )
    return JSONResponse({"message_id": state.id, "status": "cancelled"})


_HOLD = (
    "Like `postsuper -h`: a queued or deferred message is held, never delivered and never "
    "expired, until released; the time it spends held does not count towards max_age. A "
    "retry leaves it held; a cancel stops it."
)
_RELEASE = (
    "Like `postsuper -H`: a held message is due now, queued again (deferred if it was tried "
    "before), with its max_age deadline moved on by the time it was held."
)


@operation(
    "Hold a message",
    scope="",
    parameters=_ONE,
    responses={
        200: ("held: no worker takes it until it is released", HoldResult),
        404: ("no such message, or another key's", ErrorResponse),
        409: (_CONFLICT, ErrorResponse),
    },
    description=_HOLD,
)
async def hold_message(request: Request) -> Response:
    _, state = await _act_on_one(
        request, lambda ctx, state: queue_ops.hold_one(ctx.message_queue(), state)
    )
    return JSONResponse({"message_id": state.id, "status": "held"})


@operation(
    "Release a held message",
    scope="",
    parameters=_ONE,
    responses={
        200: ("released: due now", ReleaseResult),
        404: ("no such message, or another key's", ErrorResponse),
        409: ("the message is not on hold (message_not_held) or final", ErrorResponse),
    },
    description=_RELEASE,
)
async def release_message(request: Request) -> Response:
    ctx, state = await _act_on_one(
        request, lambda ctx, state: queue_ops.release_one(ctx.message_queue(), state)
    )
    if ctx.wake is not None:
        ctx.wake()
    status = "deferred" if state.attempts else "queued"
    return JSONResponse({"message_id": state.id, "status": status})


async def _bulk(request: Request, action: queue_ops.Action) -> Response:
    ctx: ApiContext = request.app.state.api
    key = await authenticate(request, ctx)
    body = parse(BulkRequest, await request.body())
    given = body.filter.model_dump(by_alias=True, exclude={"all"})
    try:
        flt = make_filter(given, **restriction(key))
    except FilterError as error:
        raise _invalid(f"filter.{error.field}", error.message) from None
    if flt.is_empty() and not body.filter.all:
        raise _invalid("filter", 'give at least one criterion, or "all": true for every message')
    try:
        result = await queue_ops.bulk(
            ctx.message_queue(), ctx.db, flt, action, body.dry_run, cursor=body.cursor
        )
    except InvalidCursor:
        raise _invalid("cursor", "not a cursor this API returned") from None
    if action in ("retry", "release") and result.done and ctx.wake is not None:
        ctx.wake()
    return JSONResponse(result.as_json())


_BULK = (
    "Acts on the messages matching the filter that the action applies to (retry and hold: "
    'queued, deferred; release: held; cancel: queued, deferred, held); `"dry_run": '
    "true` only counts them. Messages being delivered right now are left alone and counted "
    "as busy. A key acts only on the mail it sent. One call acts on at most "
    f"{queue_ops.MAX_BULK:,} messages, newest first; when more match, the answer says how "
    "many `remaining` and gives a `next_cursor` to pass as `cursor` with the same filter."
)


@operation(
    "Retry matching messages now",
    scope="",
    request=BulkRequest,
    responses={200: ("how many matched and were made due", BulkResult)},
    description=f"{_RETRY} {_BULK}",
)
async def retry_many(request: Request) -> Response:
    return await _bulk(request, "retry")


@operation(
    "Cancel matching messages",
    scope="",
    request=BulkRequest,
    responses={200: ("how many matched and were cancelled", BulkResult)},
    description=_BULK,
)
async def cancel_many(request: Request) -> Response:
    return await _bulk(request, "cancel")


@operation(
    "Hold matching messages",
    scope="",
    request=BulkRequest,
    responses={200: ("how many matched and were held", BulkResult)},
    description=f"{_HOLD} {_BULK}",
)
async def hold_many(request: Request) -> Response:
    return await _bulk(request, "hold")


@operation(
    "Release matching held messages",
    scope="",
    request=BulkRequest,
    responses={200: ("how many matched and were released", BulkResult)},
    description=f"{_RELEASE} {_BULK}",
)
async def release_many(request: Request) -> Response:
    return await _bulk(request, "release")


routes = [
    Route("/v1/messages", list_messages, methods=["GET"]),
    Route("/v1/messages/retry", retry_many, methods=["POST"]),
    Route("/v1/messages/cancel", cancel_many, methods=["POST"]),
    Route("/v1/messages/hold", hold_many, methods=["POST"]),
    Route("/v1/messages/release", release_many, methods=["POST"]),
    Route("/v1/messages/{message_id}", get_message, methods=["GET"]),
    Route("/v1/messages/{message_id}/raw", message_raw, methods=["GET"]),
    Route("/v1/messages/{message_id}/content", message_content, methods=["GET"]),
    Route("/v1/messages/{message_id}/retry", retry_message, methods=["POST"]),
    Route("/v1/messages/{message_id}/cancel", cancel_message, methods=["POST"]),
    Route("/v1/messages/{message_id}/hold", hold_message, methods=["POST"]),
    Route("/v1/messages/{message_id}/release", release_message, methods=["POST"]),
]
