"""The Starlette application: routes, middleware, error handling.

Served by uvicorn on `[http] listen` in the same process and event loop as the SMTP listener
and the delivery workers. Without an ApiContext (tests of the bare app) only /healthz,
/readyz, /metrics and /openapi.json are served. /metrics may instead be served alone on
`[http] metrics_listen` (metrics_app), and may ask for a key with the `metrics` scope.

Middleware, outermost first: RequestMetrics (every answer is timed, 413s included) ->
SendRefusals (a refused send is a mail-log line, whoever refused it) -> BodyLimit (a declared
body over max_body_size is a 413 before a byte of it is read; a chunked one is cut off at the
limit) -> Starlette's error handling -> the route.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Literal

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import answers, errors
from api.auth import authenticate
from api.context import ApiContext
from api.openapi import build_openapi, operation
from api.routes import (
    accounts,
    aliases,
    auth,
    blocklists,
    bounces,
    domains,
    events_stream,
    invitation_page,
    invitations,
    keys,
    messages,
    pools,
    recipient_routes,
    reputation,
    send,
    send_batch,
    smtp_configs,
    suppressions,
    users,
    warmup,
)  # fmt: skip
from api.routes import webhooks as webhook_routes
from gateway import maillog, metrics
from storage.writer import StorageUnavailable

log = logging.getLogger("postern.api")

HealthCheck = Callable[[], Awaitable[None]]
Endpoint = Callable[[Request], Awaitable[Response]]
Readiness = Callable[[], Awaitable[StorageUnavailable | None]]
MetricsAccess = Literal["open", "key", "elsewhere"]  # "key": scope `metrics`
_NOT_READY = {"full": "storage_full", "error": "storage_error", "stopped": "writer_stopped"}
VERSION = "0.1.0"


class RequestMetrics:
    """Pure ASGI middleware: observes postern_http_request_seconds{route,status}."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            metrics.HTTP_REQUEST_SECONDS.labels(route=template, status=str(status)).observe(
                time.perf_counter() - started
            )


class BodyLimit:
    """Pure ASGI middleware: no request body over `max_size` bytes is ever read in full, and
    none takes longer than `timeout` seconds to arrive (a slow client cannot hold a
    connection and a handler forever)."""

    def __init__(self, app: ASGIApp, max_size: int, timeout: float = 60.0) -> None:
        self.app = app
        self.max_size = max_size
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                error: errors.ApiError = errors.InvalidRequest("bad Content-Length header")
                await answers.response(error)(scope, receive, send)
                return
            if int(declared) > self.max_size:
                await answers.response(self._too_large())(scope, receive, send)
                return
        seen = 0
        loop = asyncio.get_running_loop()
        deadline: float | None = 0.0  # set at the first read; None once the body is in

        async def limited() -> Message:
            nonlocal seen, deadline
            if deadline is None:  # the body is in: what follows is a wait for a disconnect
                return await receive()
            if not deadline:  # from the handler's first read, not from the request's start
                deadline = loop.time() + self.timeout
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise errors.RequestTimeout(
                    f"the request body did not arrive within {self.timeout:g} s"
                ) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                deadline = None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_size:
                    raise self._too_large()  # the route's handler answers 413
            return message

        await self.app(scope, limited, send)

    def _too_large(self) -> errors.PayloadTooLarge:
        return errors.PayloadTooLarge(f"request body larger than {self.max_size} bytes")


class SessionCookies:
    """Pure ASGI middleware: a session rotated while the request was authenticated (its
    user's role changed: api.auth) sends its new cookie with the answer, whatever it is, and
    its new CSRF token as `X-CSRF-Token` (a page's script takes it from there)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_cookie(message: Message) -> None:
            state = scope.get("state") or {}
            cookie = state.get("session_cookie")
            if message["type"] == "http.response.start" and cookie:
                csrf = state["session_csrf"].encode()
                added = [(b"set-cookie", cookie), (b"x-csrf-token", csrf)]
                message["headers"] = [*message.get("headers", []), *added]
            await send(message)

        await self.app(scope, receive, with_cookie)


class SendRefusals:
    """Pure ASGI middleware: every refused send (4xx, 5xx) is one mail-log line, whoever
    inside it answered (the route, an error handler, BodyLimit), with the reply's status,
    code and error, and the key and envelope the request had shown by then (request.state).
    A stored message bounced within the handoff (its answer names a message_id) is logged by
    delivery. An unhandled exception (a bug) is answered outside it, by Starlette's
    ServerErrorMiddleware: its 500 is not logged here (the server logs the traceback).
    """

    def __init__(self, app: ASGIApp, paths: Collection[str]) -> None:
        self.app = app
        self.paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        status = 0
        body = bytearray()

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif status >= 400 and len(body) < 16384:
                body.extend(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, watch)
        if status >= 400:
            _log_refused(scope, status, bytes(body))


def _log_refused(scope: Scope, status: int, body: bytes) -> None:
    try:
        answer = json.loads(body)
    except ValueError:
        answer = {}
    if not isinstance(answer, dict) or "message_id" in answer:
        return
    state = scope.get("state") or {}
    sender, recipients = state.get("envelope", (None, ()))
    details = [maillog.envelope(sender, recipients), "proto=HTTP"]
    if state.get("key_id"):
        details.append(f"key={state['key_id']}")
    code = answer.get("code")
    reply = f"{status} {code}: {answer.get('error', '')}" if code else str(status)
    stage, peer = f"{scope['method']} {scope['path']}", maillog.client(scope.get("client"))
    maillog.reject(stage, peer, reply, " ".join(filter(None, details)))


_EXCEPTION_HANDLERS: dict[Any, Callable[..., Any]] = {
    errors.ApiError: answers.api_error,
    HTTPException: answers.http_error,
    **dict.fromkeys(answers.ANSWERS, answers.answered),
    Exception: answers.internal_error,
}


def metrics_route(api: ApiContext | None, need_key: bool) -> Route:
    """GET /metrics, open or for a key with the `metrics` scope (`admin` has it too)."""

    @operation(
        "Prometheus metrics",
        scope="metrics" if need_key else None,
        responses={200: ("text exposition format", None)},
    )
    async def metrics_endpoint(request: Request) -> Response:
        if need_key:
            if api is None:
                raise errors.Unauthorized()
            await authenticate(request, api, "metrics")
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return Route("/metrics", metrics_endpoint, methods=["GET"])


def metrics_app(api: ApiContext | None, need_key: bool) -> Starlette:
    """The app of `[http] metrics_listen`: /metrics and nothing else."""
    app = Starlette(routes=[metrics_route(api, need_key)], exception_handlers=_EXCEPTION_HANDLERS)
    app.router.redirect_slashes = False
    return app


def create_app(
    health: HealthCheck,
    api: ApiContext | None = None,
    ready: Readiness | None = None,
    metrics_access: MetricsAccess = "open",
) -> Starlette:
    """The app of `[http] listen`: its routes, their error handlers, the middleware."""
    app = Starlette(
        routes=_routes(health, ready, api, metrics_access),
        exception_handlers=_EXCEPTION_HANDLERS,
    )
    app.router.redirect_slashes = False  # "/v1/send/" is a JSON 404, not a bare redirect
    app.state.api = api
    _add_middleware(app, api)
    return app


# The API's resources, served when the app has an ApiContext.
_RESOURCES = (
    auth, users, send, send_batch, messages, keys, suppressions, pools, smtp_configs, aliases,
    domains, webhook_routes, invitations, invitation_page, accounts, bounces, events_stream,
    blocklists, reputation, warmup, recipient_routes,
)  # fmt: skip


def _routes(
    health: HealthCheck, ready: Readiness | None, api: ApiContext | None, access: MetricsAccess
) -> list[Route]:
    """The routes table: the probes, /metrics unless it is served elsewhere, this document,
    and with an ApiContext every resource of the API."""
    routes = [
        Route("/healthz", _healthz(health), methods=["GET"]),
        Route("/readyz", _readyz(health, ready), methods=["GET"]),
    ]
    if access != "elsewhere":
        routes.append(metrics_route(api, need_key=access == "key"))
    routes.append(Route("/openapi.json", _openapi(), methods=["GET"]))
    if api is not None:
        for module in _RESOURCES:
            routes.extend(module.routes)
    return routes


def _add_middleware(app: Starlette, api: ApiContext | None) -> None:
    """Each one added wraps those before it: RequestMetrics ends up outermost."""
    if api is not None:
        app.add_middleware(BodyLimit, max_size=api.max_body_size, timeout=api.body_timeout)
        app.add_middleware(SendRefusals, paths=send.PATHS + send_batch.PATHS)
        app.add_middleware(SessionCookies)
    app.add_middleware(RequestMetrics)


def _healthz(health: HealthCheck) -> Endpoint:
    @operation(
        "Liveness: the process runs and its database answers",
        responses={200: ("the database answers", None), 503: ("it does not", None)},
    )
    async def healthz(request: Request) -> Response:
        try:
            await health()
        except Exception as error:  # the detail (a host, a port, a path) is for the log only
            log.warning("health check: the database does not answer: %s", error)
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    return healthz


def _readyz(health: HealthCheck, ready: Readiness | None) -> Endpoint:
    @operation(
        "Readiness: this node can take mail now (storage writes commit)",
        responses={
            200: ('`{"status": "ready"}`', None),
            503: (
                '`{"status": "unavailable", "reason"}`; reason is storage_full, '
                "storage_error (a write or the database failed) or writer_stopped "
                "(the detail is logged, never answered)",
                None,
            ),
        },
    )
    async def readyz(request: Request) -> Response:
        failure = await ready() if ready is not None else None
        if failure is not None:  # the writer has logged its detail
            reason = _NOT_READY.get(failure.kind, "storage_error")
        else:
            try:
                await health()
            except Exception as error:  # a host and port, say: for the log, not the prober
                log.warning("readiness: the database does not answer: %s", error)
                reason = "storage_error"
            else:
                return JSONResponse({"status": "ready"})
        body = {"status": "unavailable", "reason": reason}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})

    return readyz


def _openapi() -> Endpoint:
    document: dict[str, Any] = {}  # built at the first request, once every route is in

    @operation("This document", responses={200: ("OpenAPI 3.1", None)})
    async def openapi(request: Request) -> Response:
        if not document:
            document.update(build_openapi(request.app.routes, "Postern", VERSION))
        return JSONResponse(document)

    return openapi
