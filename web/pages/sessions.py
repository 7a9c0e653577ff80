"""Settings → My sessions: the browsers signed in as me, and ending one (or all the others).
Ending the current one is signing out: the next page is the sign-in form."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from api import errors
from web.guard import signed_in
from web.render import page

PATH = "/settings/sessions"
DONE = {"ended": "Session ended.", "others": "Every other session ended."}


async def list_sessions(request: Request) -> Response:
    ctx, caller = await signed_in(request)
    assert caller.user is not None and caller.session is not None
    records = await ctx.persons().sessions.list(caller.user.id)
    notice = DONE.get(request.query_params.get("done", ""), "")
    return page(
        request, "sessions.html", caller,
        records=records, current=caller.session.id, notice=notice,
    )  # fmt: skip


async def end_session(request: Request) -> Response:
    ctx, caller = await signed_in(request)
    assert caller.user is not None and caller.session is not None
    session_id = request.path_params["session_id"]
    if not await ctx.persons().sessions.end(session_id, caller.user.id):
        raise errors.NotFound("no such session of yours")
    target = "/login" if session_id == caller.session.id else f"{PATH}?done=ended"
    return RedirectResponse(target, status_code=303)


async def end_others(request: Request) -> Response:
    ctx, caller = await signed_in(request)
    assert caller.user is not None and caller.session is not None
    await ctx.persons().sessions.end_all(caller.user.id, keep=caller.session.id)
    return RedirectResponse(f"{PATH}?done=others", status_code=303)


routes = [
    Route(PATH, list_sessions, methods=["GET"]),
    Route(PATH + "/end-others", end_others, methods=["POST"]),
    Route(PATH + "/{session_id}/end", end_session, methods=["POST"]),
]
