"""/api/v1/warmup/{kind}/{id}: the warmup of an SMTP pool (kind `pool`, scope `pools`, the
pool's own visibility) or of a connected account (kind `account`: its owner, those it is
shared with and admins, as for the account itself; a key needs `admin`).

    GET    /api/v1/warmup/{kind}             the warmups of that kind the caller may see
    GET    /api/v1/warmup/{kind}/{id}        one (404 when it has none)
    PUT    /api/v1/warmup/{kind}/{id}        set or replace it: a preset, or start/step/cap
    DELETE /api/v1/warmup/{kind}/{id}        clear it (its counts go too)
    POST   /api/v1/warmup/{kind}/{id}/pause  a person pauses it (sending stops)
    POST   /api/v1/warmup/{kind}/{id}/resume a person resumes it, on the day it paused on

Every change reaches this node's delivery before the answer (other nodes within 2 s).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api import warmup_ops
from api.auth import Caller, authenticate, for_people_matters
from api.context import ApiContext
from api.openapi import operation, path_parameter
from api.schemas import ErrorResponse, Ok, parse
from api.warmup_schemas import Warmup, WarmupList, WarmupPause, WarmupSet

PREFIX = "/api/v1/warmup"
SCOPE = "pools"
_KIND = path_parameter(
    "kind", "pool (an SMTP pool, scope pools) or account (a connected account)",
    enum=["pool", "account"],
)  # fmt: skip
_ID = [_KIND, path_parameter("id", "the pool's or the account's id", minLength=1, maxLength=64)]
_NOT_FOUND = ("no such pool or account, or (but for PUT) it has no warmup", ErrorResponse)
_ACCESS = (
    "A warmup is changed by whoever may change its subject: for a pool, a key with scope "
    "`pools` (or a session) that sees the pool; for an account, its owner, those it is "
    "shared with as admin, and admins (a key needs `admin`). A member it is shared with sees "
    "its warmup, and is refused a change (403 owner_required)."
)
_OWNER = ("a member the account is shared with: only its owner or admins (owner_required)",
          ErrorResponse)  # fmt: skip


async def _caller(request: Request, kind: str) -> tuple[ApiContext, Caller]:
    ctx: ApiContext = request.app.state.api
    if kind == "account":
        return ctx, for_people_matters(await authenticate(request, ctx))
    return ctx, await authenticate(request, ctx, SCOPE)


async def _subject(request: Request, change: bool = False) -> tuple[ApiContext, warmup_ops.Subject]:
    ctx, _, found = await _caller_and_subject(request, change)
    return ctx, found


async def _caller_and_subject(
    request: Request, change: bool = False
) -> tuple[ApiContext, Caller, warmup_ops.Subject]:
    """The caller and the subject; with `change`, one the caller may change (an account:
    its owner or admins, 403 owner_required for a member it is shared with)."""
    kind = request.path_params["kind"]
    ctx, caller = await _caller(request, kind)
    found = await warmup_ops.subject(ctx, caller, kind, request.path_params["id"], change)
    return ctx, caller, found


@operation(
    "List warmups",
    scope="",
    parameters=[_KIND],
    description=_ACCESS,
    responses={200: ("the warmups of that kind the caller may see", WarmupList), 404: _NOT_FOUND},
)
async def list_all(request: Request) -> Response:
    kind = request.path_params["kind"]
    ctx, caller = await _caller(request, kind)
    found = await warmup_ops.records(ctx, caller, kind)
    return JSONResponse(
        {"warmups": [warmup_ops.warmup_json(ctx, record, name) for record, name in found]}
    )


@operation(
    "Get a warmup",
    scope="",
    parameters=_ID,
    description=_ACCESS,
    responses={200: ("the warmup", Warmup), 404: _NOT_FOUND},
)
async def show(request: Request) -> Response:
    ctx, found = await _subject(request)
    record = await warmup_ops.get(ctx, found)
    return JSONResponse(warmup_ops.warmup_json(ctx, record, found.name))


@operation(
    "Set a warmup",
    scope="",
    request=WarmupSet,
    parameters=_ID,
    description=(
        "Start (or replace) the subject's warmup: `preset`, or a linear ramp `start`, "
        "`step`, `cap`. Day 1 is `start_day` (default: today in `timezone`). Its sends are "
        "held to the day's limit, spread by an hourly cap; over it, mail waits in the queue. "
        + _ACCESS
    ),
    responses={200: ("the warmup", Warmup), 403: _OWNER, 404: _NOT_FOUND},
)
async def put(request: Request) -> Response:
    ctx, caller, found = await _caller_and_subject(request, change=True)
    body = parse(WarmupSet, await request.body())
    record = await warmup_ops.set_warmup(ctx, caller, found, body)
    return JSONResponse(warmup_ops.warmup_json(ctx, record, found.name))


@operation(
    "Clear a warmup",
    scope="",
    parameters=_ID,
    description="The subject sends unlimited by warmup again. " + _ACCESS,
    responses={200: ("cleared", Ok), 403: _OWNER, 404: _NOT_FOUND},
)
async def remove(request: Request) -> Response:
    ctx, found = await _subject(request, change=True)
    await warmup_ops.clear(ctx, found)
    return JSONResponse({"success": True})


@operation(
    "Pause a warmup",
    scope="",
    request=WarmupPause,
    request_required=False,
    parameters=_ID,
    description="Its subject sends nothing (mail waits) until resumed. " + _ACCESS,
    responses={200: ("the warmup", Warmup), 403: _OWNER, 404: _NOT_FOUND},
)
async def pause(request: Request) -> Response:
    ctx, found = await _subject(request, change=True)
    raw = await request.body()
    body = parse(WarmupPause, raw) if raw.strip() else WarmupPause(reason=None)
    record = await warmup_ops.pause(ctx, found, body.reason)
    return JSONResponse(warmup_ops.warmup_json(ctx, record, found.name))


@operation(
    "Resume a warmup",
    scope="",
    parameters=_ID,
    description=(
        "A paused warmup goes on from the day it was paused on; its waiting mail is sent "
        "again within the limits. " + _ACCESS
    ),
    responses={200: ("the warmup", Warmup), 403: _OWNER, 404: _NOT_FOUND},
)
async def resume(request: Request) -> Response:
    ctx, found = await _subject(request, change=True)
    record = await warmup_ops.resume(ctx, found)
    wake = ctx.wake
    if wake is not None:
        wake()
    return JSONResponse(warmup_ops.warmup_json(ctx, record, found.name))


routes = [
    Route(PREFIX + "/{kind}", list_all, methods=["GET"]),
    Route(PREFIX + "/{kind}/{id}", show, methods=["GET"]),
    Route(PREFIX + "/{kind}/{id}", put, methods=["PUT"]),
    Route(PREFIX + "/{kind}/{id}", remove, methods=["DELETE"]),
    Route(PREFIX + "/{kind}/{id}/pause", pause, methods=["POST"]),
    Route(PREFIX + "/{kind}/{id}/resume", resume, methods=["POST"]),
]
