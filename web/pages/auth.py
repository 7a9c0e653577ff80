"""Signing in and out from a page. The work is POST /auth/login's and /auth/logout's own
(api.routes.auth: throttling, the origin check, rotation, the cookie; the one route module a
page may import, tests/unit/test_layers.py says so); these routes only turn their answers
into pages: a refused login is the form again with the reason, a successful one or a
sign-out a 303 carrying the API's Set-Cookie."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from api import errors
from api.auth import session_caller
from api.forms import form_fields
from api.routes.auth import login as api_login
from api.routes.auth import logout as api_logout
from web.render import page


def local_page(page_path: str) -> str:
    """`page_path` when it is a path on this server, else "/" (no open redirect)."""
    bad = not page_path.startswith("/") or page_path.startswith(("//", "/\\"))
    return "/" if bad or any(c in page_path for c in "\r\n\\") else page_path


def _redirect(target: str, answer: Response) -> Response:
    """A 303 to `target` with the cookies `answer` set."""
    redirect = RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})
    for cookie in answer.headers.getlist("set-cookie"):
        redirect.headers.append("set-cookie", cookie)
    return redirect


async def login_form(request: Request) -> Response:
    next_page = local_page(request.query_params.get("next", "/"))
    if await session_caller(request, request.app.state.api) is not None:
        return RedirectResponse(next_page, status_code=303)
    return page(request, "login.html", None, next_page=next_page, email="", error="")


async def login(request: Request) -> Response:
    fields = form_fields(await request.body())  # read again, from the cache, by the API
    next_page = local_page(fields.get("next", "/"))
    try:
        answer = await api_login(request)
    except errors.ApiError as refused:
        email = fields.get("email", "")[:320]
        return page(
            request, "login.html", None, refused.status,
            next_page=next_page, email=email, error=refused.error,
        )  # fmt: skip
    return _redirect(next_page, answer)


async def logout(request: Request) -> Response:
    return _redirect("/login", await api_logout(request))


routes = [
    Route("/login", login_form, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
]
