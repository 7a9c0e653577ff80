"""/auth: a person signs in and out, sees who they are, and lists and ends their sessions.

POST /auth/login takes `{"email", "password"}` as JSON or as a form and sets the session
cookie `sb-access-token` (HttpOnly, SameSite=Lax, Path=/, Secure over TLS or behind a proxy
that says so). A form may name a local page to go to (`next`): it gets a 303 there. Login
is throttled per client address and per account before any password is verified, and each
failure is logged with the address and the email it tried (never the password). A login
from a browser that already holds a session replaces it (rotation).
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from api import errors
from api.auth import (
    TOO_MANY_SIGN_INS,
    Caller,
    acting_person,
    authenticate,
    check_csrf,
    client_address,
    cookie_header,
    csrf_token,
    same_origin,
    session_caller,
)
from api.context import ApiContext, iso
from api.forms import form_fields, is_form
from api.openapi import operation, path_parameter
from api.people_schemas import Ended, LoginRequest, LoginResponse, Me, SessionList
from api.schemas import ErrorResponse, parse
from gateway.people.users import LoginRefused
from storage.users import UserRecord

log = logging.getLogger("postern.auth")


class LoginFailed(errors.Unauthorized):
    code = "invalid_credentials"


def user_json(user: UserRecord) -> dict[str, Any]:
    shown = user.as_json()
    del shown["updated_at"]
    return {**shown, "disabled_at": iso(user.disabled_at), "created_at": iso(user.created_at)}


def set_session_cookie(request: Request, response: Response, token: str, max_age: int) -> None:
    """Sets (or, with "" and 0, clears) the session cookie on `response`."""
    response.headers.append("set-cookie", cookie_header(request, token, max_age).decode())


async def _credentials(request: Request) -> tuple[LoginRequest, str | None]:
    """The login fields (JSON or a form) and, from a form, the local page to go to."""
    body = await request.body()
    if not is_form(request.headers.get("content-type", "")):
        return parse(LoginRequest, body), None
    fields = form_fields(body)
    try:
        login = LoginRequest(email=fields.get("email", ""), password=fields.get("password", ""))
    except ValueError:
        raise errors.InvalidRequest("email and password are required") from None
    return login, _local(fields.get("next", ""))


def _local(page: str) -> str | None:
    """`page` if it is a path on this server (never another host: no open redirect)."""
    if page.startswith("/") and not page.startswith(("//", "/\\")) and "\n" not in page:
        return page
    return None


@operation(
    "Sign in",
    request=LoginRequest,
    description="JSON or a url-encoded form; sets the `sb-access-token` session cookie.",
    responses={
        200: ("signed in: the user and the CSRF token of the new session", LoginResponse),
        303: ("signed in from a form that named a local page (`next`)", None),
        400: ("a missing or malformed field", ErrorResponse),
        401: ("wrong email or password", ErrorResponse),
        403: ("a request from another site", ErrorResponse),
        429: ("too many failed logins from this address or for this account", ErrorResponse),
    },
)
async def login(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    people = ctx.persons()
    if not same_origin(request, ctx.public_url):  # no login CSRF from another site's page
        raise errors.CsrfFailed("cross-origin login refused")
    given, next_page = await _credentials(request)
    client = client_address(request)
    wait = people.throttle.admit(client, given.email)
    if wait > 0:
        log.warning("login throttled: email=%r client=%s", given.email[:320], client)
        raise errors.RateLimited(wait, TOO_MANY_SIGN_INS)
    try:
        user = await people.users.login(given.email, given.password)
    except LoginRefused:
        log.warning("login failed: email=%r client=%s", given.email[:320], client)
        raise LoginFailed("wrong email or password") from None
    people.throttle.passed(client, given.email)
    previous = await session_caller(request, ctx)
    replaces = previous.session.id if previous and previous.session else None
    agent = request.headers.get("user-agent", "")
    token, _ = await people.sessions.start(user, agent, client, replaces=replaces)
    log.info("login: user=%s client=%s", user.id, client)
    response: Response
    if next_page is not None:
        response = RedirectResponse(next_page, status_code=303)
    else:
        body = {"success": True, "user": user_json(user), "csrf_token": csrf_token(token)}
        response = JSONResponse(body)
    set_session_cookie(request, response, token, int(people.sessions.lifetimes.absolute))
    return response


@operation(
    "Sign out",
    description="Ends this browser's session (its CSRF token required) and clears the cookie.",
    request_required=False,
    responses={
        200: ("signed out (also when there was no session)", None),
        403: ("a cross-site request, or no CSRF token", ErrorResponse),
    },
)
async def logout(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    people = ctx.persons()
    caller = await session_caller(request, ctx)
    if caller is not None and caller.session is not None:
        await check_csrf(request, caller)
        await people.sessions.end(caller.session.id)
        log.info("logout: user=%s", caller.id)
    response = JSONResponse({"success": True})
    if same_origin(request, ctx.public_url):  # another site's page cannot sign anyone out
        set_session_cookie(request, response, "", 0)
    return response


async def _person(request: Request) -> tuple[ApiContext, Caller, UserRecord]:
    """The caller, who must be a person: a session, or an admin key acting for its user."""
    ctx: ApiContext = request.app.state.api
    caller = await authenticate(request, ctx)
    return ctx, caller, acting_person(caller)


@operation(
    "Who is signed in",
    responses={
        200: ("the user, and the CSRF token for this session's changes", Me),
        401: ("no session or key", ErrorResponse),
    },
)
async def me(request: Request) -> Response:
    caller = await authenticate(request, request.app.state.api)
    user = caller.user  # any key of a user may ask whose it is; sessions' matters need more
    if user is None:
        raise errors.UserRequired("an API key without a user is no person")
    return JSONResponse({
        "success": True, "id": user.id, "email": user.email, "name": user.name,
        "role": user.role, "csrf_token": caller.csrf_token,
        "via": "session" if caller.session else "api_key",
    })  # fmt: skip


def _session_json(record: Any, current: str | None) -> dict[str, Any]:
    shown = record.as_json()
    del shown["user_id"], shown["absolute_expires_at"], shown["role"]
    times = ("created_at", "last_seen_at", "expires_at")
    return {**shown, **{name: iso(shown[name]) for name in times}, "current": record.id == current}


@operation(
    "My sessions",
    responses={200: ("the signed-in browsers, most recent first", SessionList)},
)
async def list_sessions(request: Request) -> Response:
    ctx, caller, user = await _person(request)
    current = caller.session.id if caller.session else None
    records = await ctx.persons().sessions.list(user.id)
    return JSONResponse(
        {"success": True, "sessions": [_session_json(record, current) for record in records]}
    )


@operation(
    "End one of my sessions",
    parameters=[path_parameter("session_id", "the session's id (ses_...)")],
    responses={
        200: ("ended", Ended),
        404: ("no such session of yours", ErrorResponse),
    },
)
async def end_session(request: Request) -> Response:
    ctx, _, user = await _person(request)
    if not await ctx.persons().sessions.end(request.path_params["session_id"], user.id):
        raise errors.NotFound("no such session")
    return JSONResponse({"success": True, "ended": 1})


@operation(
    "End my other sessions",
    description="Every session of mine but this one (signed out elsewhere).",
    responses={200: ("how many ended", Ended)},
)
async def end_other_sessions(request: Request) -> Response:
    ctx, caller, user = await _person(request)
    keep = caller.session.id if caller.session else None
    ended = await ctx.persons().sessions.end_all(user.id, keep=keep)
    return JSONResponse({"success": True, "ended": ended})


routes = [
    Route("/auth/login", login, methods=["POST"]),
    Route("/auth/logout", logout, methods=["POST"]),
    Route("/auth/me", me, methods=["GET"]),
    Route("/auth/sessions", list_sessions, methods=["GET"]),
    Route("/auth/sessions", end_other_sessions, methods=["DELETE"]),
    Route("/auth/sessions/{session_id}", end_session, methods=["DELETE"]),
]
