"""/invitations/accept: the page of an invitation's emailed link, and its form's target.

GET shows a plain HTML page (no script, nothing loaded from elsewhere, the token never sent
on as a Referer): a form for a name and a password when the invitee has no user yet, else
one for their password (or one button, when they are signed in as the invitee already).
POST takes that form, or the same fields as JSON (`{token, password?, name?}`): it accepts
the invitation, creating the user (role member) if there is none, and logs the invitee in
with the session cookie. The token is the credential, so no CSRF token is asked for, but
the request must come from this site (Origin): another site's page cannot log a visitor in
to an account of its choosing.
"""

from __future__ import annotations

import html
import json
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from api import answers, errors
from api.auth import (
    TOO_MANY_SIGN_INS,
    Caller,
    client_address,
    cookie_header,
    same_origin,
    session_caller,
)
from api.context import ApiContext
from api.forms import form_fields, is_form
from api.invitation_schemas import TokenAccept, TokenAccepted
from api.openapi import operation, query_parameter
from api.schemas import ErrorResponse, parse
from gateway.errors import PosternError
from gateway.people.invitations import LINK_PATH, InvitationNotFound, Invitations, plain
from gateway.people.users import LoginRefused
from storage.accounts import get_account
from storage.users import UserRecord

log = logging.getLogger("postern.auth")

_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # the token is in this page's URL
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'",
}
_STYLE = "body{font-family:sans-serif;max-width:32em;margin:3em auto}label{display:block}"
_GONE = "This invitation link is unknown, already used or expired."


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(document, status_code=status, headers=_HEADERS)


def _field(label: str, name: str, kind: str, required: bool, limit: int) -> str:
    need = " required" if required else ""
    return (
        f"<label>{label} <input type={kind} name={name} maxlength={limit}{need}"
        f"{' autocomplete=new-password' if kind == 'password' else ''}></label>"
    )


def _form(token: str, fields: str, button: str) -> str:
    return (
        f'<form method="post" action="{LINK_PATH}">'
        f'<input type="hidden" name="token" value="{html.escape(token)}">'
        f"{fields}<p><button type=submit>{html.escape(button)}</button></p></form>"
    )


async def _form_page(
    request: Request, ctx: ApiContext, token: str, problem: str = "", status: int = 200
) -> HTMLResponse:
    """The page for this token: the form that fits the invitee, or the link's end."""
    domain = Invitations(ctx.db)
    try:
        invitation = await domain.by_token(token)
    except InvitationNotFound:
        return _page("Invitation", f"<p>{_GONE}</p>", 404)
    account = await get_account(ctx.db, invitation.account_id)
    what = html.escape(account.email if account else "an account")
    inviter = html.escape(plain(invitation.inviter_name) or "Someone")
    intro = f"<p>{inviter} invited you to use <b>{what}</b> as {invitation.role}.</p>"
    if problem:
        intro += f'<p role="alert"><b>{html.escape(problem)}</b></p>'
    user = await domain.invitee(invitation)
    caller = await session_caller(request, ctx)
    email = html.escape(invitation.invitee_email)
    if user is None:
        fields = _field("Your name", "name", "text", False, 128)
        choose = "Choose a password (12 characters or more)"
        fields += _field(choose, "password", "password", True, 1024)
        return _page("Invitation", intro + _form(token, fields, "Create my account"), status)
    if caller is not None and caller.user is not None and caller.user.id == user.id:
        return _page("Invitation", intro + _form(token, "", "Accept"), status)
    fields = f"<p>You have an account as {email}: sign in to accept.</p>"
    fields += _field("Your password", "password", "password", True, 1024)
    return _page("Invitation", intro + _form(token, fields, "Sign in and accept"), status)


@operation(
    "The invitation link's page",
    parameters=[query_parameter("token", "the emailed token", maxLength=128)],
    description="An HTML page with a form; no API key or session needed.",
    responses={200: ("text/html: the form", None), 404: ("text/html: an unusable link", None)},
)
async def show(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    return await _form_page(request, ctx, request.query_params.get("token", ""))


def _admit(request: Request, ctx: ApiContext, email: str, password: bool) -> None:
    """A password is argon2 work: it draws on the login budgets, as POST /auth/login does."""
    if not password or ctx.people is None:
        return
    wait = ctx.people.throttle.admit(client_address(request), email)
    if wait > 0:
        raise errors.RateLimited(wait, TOO_MANY_SIGN_INS)


async def _read(request: Request) -> tuple[TokenAccept, bool]:
    """The fields, and whether they came as a form."""
    raw = await request.body()
    if not is_form(request.headers.get("content-type", "")):
        return parse(TokenAccept, raw), False
    fields = form_fields(raw)
    given = {name: fields[name] for name in ("token", "password", "name") if fields.get(name)}
    return parse(TokenAccept, json.dumps(given).encode()), True


async def _log_in(
    request: Request, ctx: ApiContext, user: UserRecord, caller: Caller | None, answer: Response
) -> None:
    """A session for the user, unless they are signed in already (replacing another's)."""
    signed_in = caller.user if caller is not None else None
    if ctx.people is None or (signed_in is not None and signed_in.id == user.id):
        return
    replaces = caller.session.id if caller is not None and caller.session is not None else None
    agent = request.headers.get("user-agent", "")
    token, _ = await ctx.people.sessions.start(
        user, agent, client_address(request), replaces=replaces
    )
    max_age = int(ctx.people.sessions.lifetimes.absolute)  # as POST /auth/login sets it
    answer.headers.append("set-cookie", cookie_header(request, token, max_age).decode())


@operation(
    "Accept an invitation by its link",
    request=TokenAccept,
    description="The link's form (url-encoded) or JSON. Creates the user when the invitee has "
    "none (password required, role member); an existing user signs in with their password "
    "(or their session). Sets the session cookie. Same-origin requests only.",
    responses={
        200: ("accepted: the user, now logged in", TokenAccepted),
        401: (
            "the invitee has a user: sign in (sign_in_required), or a wrong password",
            ErrorResponse,
        ),
        403: ("a request from another site (csrf_failed)", ErrorResponse),
        404: ("an unknown, used or expired link (not_found)", ErrorResponse),
    },
)
async def accept(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    if not same_origin(request, ctx.public_url):
        raise errors.CsrfFailed("cross-origin request refused")
    body, form = await _read(request)
    caller = await session_caller(request, ctx)
    signed_in = caller.user if caller is not None else None
    domain = Invitations(ctx.db, ctx.people.users if ctx.people is not None else None)
    try:
        invitation = await domain.by_token(body.token)
        _admit(request, ctx, invitation.invitee_email, bool(body.password))
        user = await domain.accept_token(
            body.token, body.password or "", body.name or "", signed_in
        )
    except PosternError as error:
        if isinstance(error, LoginRefused):  # a sign-in by effect: logged as /auth/login's
            log.warning("login failed via invitation: client=%s", client_address(request))
        if not form:
            raise
        refused = error if isinstance(error, errors.ApiError) else answers.answer(error)
        return await _form_page(request, ctx, body.token, refused.error, refused.status)
    if body.password and ctx.people is not None:
        ctx.people.throttle.passed(client_address(request), invitation.invitee_email)
    account = await get_account(ctx.db, invitation.account_id)
    account_email = account.email if account else ""
    answer = _answer(user, account_email, form)
    await _log_in(request, ctx, user, caller, answer)
    return answer


def _answer(user: UserRecord, account_email: str, form: bool) -> Response:
    if form:
        shown = html.escape(account_email or "the account")
        body = f'<p>You can now use {shown}.</p><p><a href="/">Continue</a></p>'
        return _page("Invitation accepted", body)
    shown_user: dict[str, Any] = {k: getattr(user, k) for k in ("id", "email", "name", "role")}
    return JSONResponse({"success": True, "user": shown_user, "account_email": account_email})


routes = [
    Route(LINK_PATH, show, methods=["GET"]),
    Route(LINK_PATH, accept, methods=["POST"]),
]
