"""The Starlette application: routes, middleware, error handling.

Served by uvicorn on `[http] listen` in the same process and event loop as the SMTP listener
and the delivery workers.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import metrics

HealthCheck = Callable[[], Awaitable[None]]


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


def create_app(health: HealthCheck) -> Starlette:
    async def healthz(request: Request) -> Response:
        try:
            await health()
        except Exception as error:
            return JSONResponse(
                {"status": "unavailable", "error": str(error)[:200]}, status_code=503
            )
        return JSONResponse({"status": "ok"})

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ]
    )
    app.add_middleware(RequestMetrics)
    return app
