"""The dashboard's Starlette app and the one route that mounts it in the API's app.

`postern serve` appends `dashboard(api)` after the API's routes (gateway.process.service).
It matches only the dashboard's own paths: an unknown path, or a wrong method on an API
path, stays the API's JSON 404 or 405 (a plain Mount at / would take them all). Inside,
the dashboard has its own error answers (HTML: web.guard) and security headers.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match, NoMatchFound, Route
from starlette.types import Receive, Scope, Send

from api import answers, errors
from api.context import ApiContext
from gateway.errors import PosternError
from web import guard, static_files
from web.headers import SecurityHeaders
from web.pages import (
    accounts,
    aliases,
    auth,
    bounces,
    domains,
    invitations,
    keys,
    live,
    message,
    messages,
    overview,
    pools,
    recipient_routes,
    reputation,
    sandbox,
    sessions,
    suppressions,
    users,
    webhooks,
)


class Dashboard(BaseRoute):
    """The dashboard app as one route of the API's app (see the module's docstring)."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        best = Match.NONE
        for route in self.app.router.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return Match.FULL, {}
            if match == Match.PARTIAL:
                best = Match.PARTIAL
        return best, {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        raise NoMatchFound(name, path_params)


_HANDLERS: dict[Any, Any] = {
    guard.SignInNeeded: guard.sign_in_needed,
    errors.ApiError: guard.api_refusal,
    HTTPException: guard.http_refusal,
    **dict.fromkeys(answers.ANSWERS, guard.api_refusal),
    PosternError: guard.api_refusal,
    Exception: guard.internal,
}


def routes() -> list[BaseRoute]:
    table: list[BaseRoute] = [
        Route("/static/{digest}/{name}", static_files.serve, methods=["GET"]),
    ]
    for module in (auth, overview, pools, sessions, users, messages, message, invitations, live):
        table.extend(module.routes)
    for module in (
        aliases, domains, keys, webhooks, suppressions, sandbox, accounts, bounces, reputation,
    ):  # fmt: skip
        table.extend(module.routes)
    table.extend(recipient_routes.routes)
    return table


def create_web_app(api: ApiContext) -> Starlette:
    app = Starlette(routes=routes(), exception_handlers=_HANDLERS)
    app.router.redirect_slashes = False
    app.state.api = api  # api.auth reads request.app.state.api: here, this app
    app.add_middleware(SecurityHeaders)
    return app


def dashboard(api: ApiContext) -> Dashboard:
    """The route `postern serve` adds after the API's."""
    return Dashboard(create_web_app(api))
