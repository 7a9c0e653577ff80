"""GET /v1/events/stream: message events as they are written, as server-sent events.

Each event is one `data:` line of the public event JSON (as webhooks send it) with its id
(`evt_<n>`) as the SSE id, so that a client reconnecting with `Last-Event-ID` goes on after
it without a duplicate or a gap. Without it the stream starts at the events written from
now on. Events come in commit order (storage.event_stream, the webhooks' rule).

Bounded: the table is polled every POLL seconds, at most BATCH rows a read; a comment line
every HEARTBEAT seconds keeps proxies from closing a quiet stream; a stream ends after
MAX_DURATION (the client reconnects with its Last-Event-ID), when the client goes, and when
the server stops (ApiContext.closing). A caller holds at most MAX_STREAMS at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from api import errors, event_ops
from api.auth import Caller, authenticate
from api.context import ApiContext
from api.openapi import operation, query_parameter
from api.routes.messages import CLIENT_PARAMETER, SUBJECT_PARAMETER
from gateway.queue import events
from storage import event_stream
from storage.event_stream import EventFilter, Position


@dataclass
class Limits:
    poll: float = 0.5  # seconds between reads when there is nothing new
    batch: int = 200  # rows a read
    heartbeat: float = 15.0  # seconds of quiet before a comment line
    max_duration: float = 3600.0  # then the stream ends; the client reconnects


LIMITS = Limits()  # tests shorten them
QUERY = (*event_ops.FILTERS, "last_event_id")
HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def _last_event_id(request: Request) -> int | None:
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if not raw:
        return None
    number = raw.removeprefix("evt_")
    if not (number.isascii() and number.isdigit() and len(number) <= 18):
        raise errors.InvalidRequest(
            "Last-Event-ID: not an event id", [{"field": "Last-Event-ID", "message": "evt_<n>"}]
        )
    return int(number)


async def _start(ctx: ApiContext, last: int | None) -> Position:
    if last is None:
        return await ctx.db.read(event_stream.horizon)
    return await ctx.db.read(lambda conn: event_stream.resume_at(conn, last))


async def _read(
    ctx: ApiContext, after: Position, flt: EventFilter
) -> tuple[list[event_stream.Streamed], Position]:
    def query(conn: Connection) -> tuple[list[event_stream.Streamed], Position]:
        return event_stream.read(conn, after, event_stream.horizon(conn), flt, LIMITS.batch)

    return await ctx.db.read(query)


async def _pause(ctx: ApiContext, seconds: float) -> None:
    """Sleep, but wake at once when the server stops."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ctx.closing.wait(), seconds)


async def _events(ctx: ApiContext, flt: EventFilter, position: Position) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    ends = loop.time() + LIMITS.max_duration
    quiet_since = loop.time()
    yield "retry: 2000\n\n"
    while loop.time() < ends and not ctx.closing.is_set():
        rows, position = await _read(ctx, position, flt)
        for row in rows:
            yield f"id: evt_{row.id}\ndata: {row.json}\n\n"
        if rows:
            quiet_since = loop.time()
        elif loop.time() - quiet_since >= LIMITS.heartbeat:
            yield ": heartbeat\n\n"
            quiet_since = loop.time()
        if len(rows) < LIMITS.batch:
            await _pause(ctx, LIMITS.poll)


def _slots(request: Request) -> event_ops.StreamSlots:
    state = request.app.state
    if getattr(state, "event_streams", None) is None:
        state.event_streams = event_ops.StreamSlots()
    slots: event_ops.StreamSlots = state.event_streams
    return slots


@operation(
    "Watch events live (server-sent events)",
    scope="",
    parameters=[
        query_parameter("type", f"one or more, comma-separated: {', '.join(events.TYPES)}"),
        query_parameter("message_id", "one message's events", maxLength=64),
        query_parameter("recipient", "a recipient's address", maxLength=320),
        query_parameter("pool", "the pool of the attempt", maxLength=255),
        query_parameter("tag", "one of the tags given at send", maxLength=128),
        SUBJECT_PARAMETER,  # the message search's own
        CLIENT_PARAMETER,
        query_parameter("last_event_id", "as the Last-Event-ID header: go on after it"),
    ],
    responses={200: ("text/event-stream: one `data:` line of event JSON per event", None)},
    description="A key or member sees only the events of the mail GET /v1/messages shows "
    "them; every filter given must match, `subject` and `client` as in GET /v1/messages "
    "(an event about no message matches neither). Reconnect with Last-Event-ID to go on "
    "without a gap; a stream ends after an hour.",
)
async def stream_events(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    caller = await authenticate(request, ctx)
    for name in request.query_params:
        if name not in QUERY:
            raise errors.InvalidRequest(
                f"{name}: unknown parameter", [{"field": name, "message": "unknown parameter"}]
            )
    flt = event_ops.event_filter(caller, request.query_params)
    start = await _start(ctx, _last_event_id(request))
    release = _once(_slots(request), caller)

    async def body() -> AsyncIterator[str]:
        try:
            async for chunk in _events(ctx, flt, start):
                yield chunk
        finally:  # the stream ended, however it ended (a disconnect cancels it here)
            release()

    stream = body()
    # A client gone before the first chunk leaves the generator unstarted (no finally): its
    # place is given back when the generator is collected.
    weakref.finalize(stream, release)
    return StreamingResponse(stream, media_type="text/event-stream", headers=HEADERS)


def _once(slots: event_ops.StreamSlots, caller: Caller) -> Callable[[], None]:
    """Take one of the caller's places (429 past the cap) and a function that gives it back,
    once however often it is called."""
    who = slots.acquire(caller)
    given_back = False

    def release() -> None:
        nonlocal given_back
        if not given_back:
            given_back = True
            slots.release(who)

    return release


routes = [Route("/v1/events/stream", stream_events, methods=["GET"])]
