"""One message: its status and route, each recipient's last reply, its timeline of events,
its header fields and body, the raw source, and retry, cancel, hold and release (through the
same queue operations as POST /v1/messages/{id}/retry|cancel|hold|release).

The HTML of a message is never part of a dashboard page: it is served alone, at /html, to a
frame with `sandbox` (no script, no form, no same origin) and under a policy of its own that
loads nothing from anywhere (images only as data: URLs). Another's message is a 404, as
over the API. A message's body is kept only while it has work left (and in the sandbox):
once it is final the page says it is gone.
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from api import errors, message_ops
from api.auth import Caller
from api.context import ApiContext
from gateway.mailview import MailView, view
from gateway.queue import operations as queue_ops
from gateway.queue.operations import (
    DONE_WORD,
    MessageBusy,
    MessageFinal,
    MessageHeld,
    MessageNotHeld,
)
from storage.messages import MessageState
from web.guard import signed_in
from web.render import fragment, html, is_htmx, page

PATH = "/messages/{message_id}"
# The frame's own policy: nothing loads (no script, no remote image, font or style sheet),
# only inline styles and data: images show; the frame is sandboxed even if opened alone.
FRAME_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "frame-ancestors 'self'; base-uri 'none'; form-action 'none'; sandbox"
)
DONE = {
    "retried": "Retried: the message is due now.",
    "cancelled": "Message cancelled.",
    "held": "Held: no worker takes it until it is released.",
    "released": "Released: the message is due now.",
}
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


def timeline(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events as rows, their time as UNIX seconds (for the `when` filter)."""
    return [event | {"at": _seconds(event["created_at"])} for event in events]


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def _mail(ctx: ApiContext, message_id: str) -> MailView | None:
    data = await message_ops.stored_body(ctx, message_id)
    return None if data is None else await asyncio.to_thread(view, data)  # bounded by size


async def show(request: Request) -> Response:
    ctx, caller = await signed_in(request)
    state = await message_ops.get(ctx, caller, request.path_params["message_id"])
    notice = DONE.get(request.query_params.get("done", ""), "")
    return page(
        request, "messages/show.html", caller, vary=True,
        **_summary(state, notice=notice), mail=await _mail(ctx, state.id),
        events=timeline(state.events),
    )  # fmt: skip


def _summary(state: MessageState, notice: str = "", problem: str = "") -> dict[str, Any]:
    recipients = [(r, message_ops.recipient_status(r)) for r in state.recipients]
    active = state.status in ("queued", "deferred", "held")
    return {
        "message": state, "recipients": recipients, "active": active,
        "held": state.status == "held", "notice": notice, "problem": problem,
    }  # fmt: skip


async def framed_html(request: Request) -> Response:
    """The message's HTML, alone, for the sandboxed frame of its page."""
    ctx, caller = await signed_in(request)
    state = await message_ops.get(ctx, caller, request.path_params["message_id"])
    mail = await _mail(ctx, state.id)
    if mail is None or mail.html is None:
        raise errors.NotFound("this message has no HTML body (any more)")
    answer = html(mail.html)
    answer.headers["Content-Security-Policy"] = FRAME_CSP
    answer.headers["X-Frame-Options"] = "SAMEORIGIN"
    return answer


async def raw(request: Request) -> Response:
    """The source as stored (text/plain; `?download=1`: as a file, <id>.eml)."""
    ctx, caller = await signed_in(request)
    state = await message_ops.get(ctx, caller, request.path_params["message_id"])
    data = await message_ops.stored_body(ctx, state.id)
    if data is None:
        raise errors.BodyGone(
            "the body of this message is gone: it is kept storage.body_retention after final"
        )
    headers = {"Cache-Control": "no-store"}
    if request.query_params.get("download") == "1":
        name = _SAFE_NAME.sub("_", state.id)
        headers["Content-Disposition"] = f'attachment; filename="{name}.eml"'
    return Response(data, media_type="text/plain; charset=utf-8", headers=headers)


async def _act(request: Request, action: queue_ops.Action) -> Response:
    """Retry, cancel, hold or release; htmx gets the status part of the page again, a
    browser a 303."""
    ctx, caller = await signed_in(request)
    state = await message_ops.get(ctx, caller, request.path_params["message_id"])
    queue = ctx.message_queue()
    try:
        if action == "retry":
            await queue_ops.retry_one(queue, ctx.db, state)
        elif action == "cancel":
            await queue_ops.cancel_one(queue, state)
        elif action == "hold":
            await queue_ops.hold_one(queue, state)
        else:
            await queue_ops.release_one(queue, state)
    except (MessageFinal, MessageBusy, MessageHeld, MessageNotHeld) as error:
        return await _refused(request, ctx, caller, state, error)
    if action in ("retry", "release") and ctx.wake is not None:
        ctx.wake()
    done = DONE_WORD[action]
    if is_htmx(request):
        after = await message_ops.get(ctx, caller, state.id)
        shown = _summary(after, notice=DONE[done])
        return fragment("messages/_summary.html", csrf=caller.csrf_token, **shown)
    return RedirectResponse(f"/messages/{state.id}?done={done}", status_code=303)


async def _refused(
    request: Request, ctx: ApiContext, caller: Caller, state: MessageState, error: Exception
) -> Response:
    if isinstance(error, MessageBusy):
        problem = "The message is being delivered right now; try again shortly."
    elif isinstance(error, MessageHeld):
        problem = "The message is on hold: release it first."
    elif isinstance(error, MessageNotHeld):
        problem = f"The message is not on hold (it is {state.status})."
    else:
        problem = f"The message has no work left (it is {state.status})."
    if is_htmx(request):
        shown = _summary(state, problem=problem)
        return fragment("messages/_summary.html", 409, csrf=caller.csrf_token, **shown)
    return page(
        request, "messages/show.html", caller, 409, vary=True,
        **_summary(state, problem=problem), mail=await _mail(ctx, state.id),
        events=timeline(state.events),
    )  # fmt: skip


async def retry(request: Request) -> Response:
    return await _act(request, "retry")


async def cancel(request: Request) -> Response:
    return await _act(request, "cancel")


async def hold(request: Request) -> Response:
    return await _act(request, "hold")


async def release(request: Request) -> Response:
    return await _act(request, "release")


routes = [
    Route(PATH, show, methods=["GET"]),
    Route(PATH + "/html", framed_html, methods=["GET"]),
    Route(PATH + "/raw", raw, methods=["GET"]),
    Route(PATH + "/retry", retry, methods=["POST"]),
    Route(PATH + "/cancel", cancel, methods=["POST"]),
    Route(PATH + "/hold", hold, methods=["POST"]),
    Route(PATH + "/release", release, methods=["POST"]),
]
