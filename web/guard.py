"""Who may see a page: a signed-in person (a session cookie; API keys are for machines and
open no page), with the CSRF token on every change, within the rate limit, and with the
scope or role the API itself requires for the same data (a hidden link is also a refused
request). Refusals are answered in HTML: a whole page, or a fragment for htmx.

    no session          GET: 303 to /login?next=<this page>; htmx: 401 fragment + HX-Redirect
    CSRF, role, scope   403 page (fragment for htmx) saying why
    any API refusal     its status, its text (api.errors' table), as a page or fragment
"""

from __future__ import annotations

import logging
from urllib.parse import quote

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from api import answers, errors
from api.auth import SAFE_METHODS, Caller, check_csrf, session_caller
from api.context import ApiContext
from gateway.errors import PosternError
from gateway.people import roles
from web import banner
from web.render import fragment, is_htmx, page

log = logging.getLogger("postern.web")

CSRF_TEXT = (
    "This form could not be accepted: it came without this page's security token, or from "
    "another site. Reload the page and try again."
)


class SignInNeeded(Exception):
    """No live session: the person signs in, then comes back to `next`."""

    def __init__(self, next_page: str) -> None:
        super().__init__(next_page)
        self.next_page = next_page


def login_url(next_page: str) -> str:
    return "/login" if next_page in ("", "/") else f"/login?next={quote(next_page, safe='/')}"


async def signed_in(
    request: Request, scope: str | None = None, owner: bool = False
) -> tuple[ApiContext, Caller]:
    """The context and the signed-in caller, checked as api.auth checks a cookie."""
    ctx: ApiContext = request.app.state.api
    caller = await session_caller(request, ctx)
    if caller is None:
        back = request.url.path if request.method in SAFE_METHODS else "/"
        raise SignInNeeded(back + (f"?{request.url.query}" if request.url.query else ""))
    request.state.caller = caller  # for the error page's navigation
    if request.method not in SAFE_METHODS:
        await check_csrf(request, caller)
    wait = ctx.limiter.take(caller.id)
    if wait > 0:
        raise errors.RateLimited(wait)
    if not is_htmx(request):  # a whole page shows the banner (web.banner); a fragment not
        request.state.invitations = await banner.pending(ctx, caller)
    if scope is not None and not caller.has(scope):
        raise errors.Forbidden(f"a {caller.role} may not see or change this ({scope!r})")
    if owner:
        roles.require_user_manager(caller.role)
    return ctx, caller


async def sign_in_needed(request: Request, error: Exception) -> Response:
    assert isinstance(error, SignInNeeded)
    target = login_url(error.next_page)
    if is_htmx(request):
        answer = fragment("_error.html", 401, title="Signed out", text="Your session ended.")
        answer.headers["HX-Redirect"] = target
        return answer
    headers = {"Cache-Control": "no-store", "Vary": "HX-Request"}
    return RedirectResponse(target, status_code=303, headers=headers)


def _refusal(request: Request, error: errors.ApiError) -> Response:
    text = CSRF_TEXT if isinstance(error, errors.CsrfFailed) else error.error
    title = "Refused" if error.status in (401, 403) else f"Error {error.status}"
    if is_htmx(request):
        answer = fragment("_error.html", error.status, title=title, text=text)
    else:
        caller = getattr(request.state, "caller", None)
        shown = {"title": title, "text": text}
        answer = page(request, "error.html", caller, error.status, vary=True, **shown)
    answer.headers.update({k: v for k, v in error.headers.items() if k != "WWW-Authenticate"})
    return answer


async def api_refusal(request: Request, error: Exception) -> Response:
    """An ApiError, or an error of Postern's tree the API's table answers, as HTML."""
    if not isinstance(error, errors.ApiError):
        assert isinstance(error, PosternError)
        error = answers.answer(error)
    return _refusal(request, error)


async def http_refusal(request: Request, error: Exception) -> Response:
    """Starlette's own 404 and 405 inside the dashboard."""
    assert isinstance(error, HTTPException)
    kinds: dict[int, type[errors.ApiError]] = {404: errors.NotFound}
    kind = kinds.get(error.status_code, errors.MethodNotAllowed)
    return _refusal(request, kind(str(error.detail)))


async def internal(request: Request, error: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
    return _refusal(request, errors.ApiError("Something went wrong; the log has the detail."))
