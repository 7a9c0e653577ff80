"""A real webhook receiver for tests: Starlette served by uvicorn on 127.0.0.1, in the test's
own event loop. It verifies every request's signature with the secret registered for the
webhook id it names, records the events, and can be told to answer an error (`status`) or
be stopped and started again on the same port (a receiver that is down).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.webhooks.signing import verify


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class Receiver:
    port: int = 0
    status: int = 200  # what to answer; 500 makes every POST fail
    secrets: dict[str, str] = field(default_factory=dict)  # webhook id -> secret
    events: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)  # headers of each POST
    arrivals: list[float] = field(default_factory=list)  # time.monotonic() of each POST
    bad_signatures: int = 0
    _server: _Server | None = None
    _task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def ids(self) -> list[str]:
        return [event["id"] for event in self.events]

    async def _hook(self, request: Request) -> Response:
        body = await request.body()
        headers = dict(request.headers)
        self.requests.append(headers)
        self.arrivals.append(time.monotonic())
        secret = self.secrets.get(headers.get("postern-webhook-id", ""), "")
        if not verify(secret, headers.get("postern-signature", ""), body, time.time()):
            self.bad_signatures += 1
            return JSONResponse({"error": "bad signature"}, status_code=400)
        if self.status >= 300:
            return JSONResponse({"error": "told to fail"}, status_code=self.status)
        self.events.extend(json.loads(body)["events"])
        return JSONResponse({"ok": True})

    async def start(self) -> Receiver:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        app = Starlette(routes=[Route("/hook", self._hook, methods=["POST"])])
        config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
        self._server = _Server(config)
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            await asyncio.sleep(0.01)
        return self

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await asyncio.wait_for(self._task, 10)
        self._server = self._task = None
