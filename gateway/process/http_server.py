"""The HTTP door: uvicorn's h11 protocol with the limits uvicorn leaves out.

uvicorn arms no timer on a new connection, and its keep-alive timer is cancelled by any
byte, so a client that trickles a request head holds its connection for ever (slowloris);
its `limit_concurrency` answers 503 per request but still accepts and keeps every
connection. Here a connection past `max_connections` gets a 503 and is closed at once, and
one that has not sent a complete request head within `header_timeout` of connecting (or of
its previous response) is closed, with a 408 if it had begun one. A request body has its
own deadline (api.app.BodyLimit).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway import metrics


@dataclass(frozen=True)
class DoorLimits:
    name: str  # "http" or "metrics": the label of postern_connections_refused_total
    max_connections: int
    header_timeout: float


def _answer(status: str, code: str, error: str, extra: str = "") -> bytes:
    body = json.dumps({"success": False, "code": code, "error": error, "details": []})
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{extra}connection: close\r\n\r\n{body}"
    ).encode()


TOO_MANY_CONNECTIONS = _answer(
    "503 Service Unavailable", "too_many_connections",
    "too many connections, try again later", "retry-after: 1\r\n",
)  # fmt: skip
HEAD_TIMEOUT = _answer(
    "408 Request Timeout", "request_timeout", "the request head did not arrive in time"
)


class LimitedH11Protocol(H11Protocol):
    """One HTTP connection: refused past the cap; closed if its request head is too slow."""

    limits: ClassVar[DoorLimits]  # set on the subclass door_protocol() makes

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refused = False
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self._refused = True
            metrics.CONNECTIONS_REFUSED.labels(door=self.limits.name).inc()
            transport.write(TOO_MANY_CONNECTIONS)
            transport.close()
            return
        super().connection_made(transport)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return  # never counted, nothing set up
        self._stop_head_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        scope = self.scope
        super().handle_events()
        if self.scope is not scope:  # a request head arrived (its body has its own deadline)
            self._stop_head_timer()

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self._await_head()  # of the next request on this kept-alive connection
        super().on_response_complete()  # may handle a pipelined head at once

    def _await_head(self) -> None:
        self._stop_head_timer()
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_too_slow)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.conn.trailing_data[0]:  # part of a head came: say why it is closed
            metrics.HTTP_HEADER_TIMEOUTS.labels(door=self.limits.name).inc()
            self.transport.write(HEAD_TIMEOUT)
        self.transport.close()


def door_protocol(limits: DoorLimits) -> type[LimitedH11Protocol]:
    """The protocol class of one listener (uvicorn makes one instance per connection)."""
    return type("LimitedH11Protocol", (LimitedH11Protocol,), {"limits": limits})


class EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the service owns the lifecycle."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpDoor:
    """One uvicorn server on one listening socket, run as a task of the running loop."""

    def __init__(self, app: ASGIApp, sock: socket.socket, limits: DoorLimits) -> None:
        # log_config=None: uvicorn's own records (a traceback of the app's, a bad request)
        # go up to the root logger, escaped and written in the mail log's stream like ours;
        # its default config gave them a handler of their own, raw on stderr.
        config = uvicorn.Config(
            app, lifespan="off", log_level="warning", access_log=False, log_config=None,
            http=door_protocol(limits), ws="none",
        )  # fmt: skip
        self.server = EmbeddedServer(config)
        self.task = asyncio.get_running_loop().create_task(self.server.serve(sockets=[sock]))

    def close(self) -> None:
        """No new requests; those in flight finish."""
        self.server.should_exit = True

    async def wait_closed(self, timeout: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.task, timeout=timeout)
