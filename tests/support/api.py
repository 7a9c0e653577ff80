"""The HTTP API of an in-process Service (real uvicorn, real sink) and an httpx client
talking to it over loopback, with API keys made through the product's own storage: what the
`api_client`, `api` and `shared` fixtures are made of.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from storage.keys import create_key
from tests.support.service import ManagedService, ServiceFactory, make_config, merge
from tests.support.sink import Sink

SENDER = "app@sender.test"
RCPT = "rcpt@example.test"
# Tests send fast; the rate-limit tests set their own.
DEFAULTS: dict[str, Any] = {
    "http": {"rate_limit": "10000/s"},
    "delivery": {"handoff_timeout": "3s"},
}

# The members of a valid POST /v1/send body as raw JSON, without the braces around them.
VALID = (
    b'"from": {"email": "app@sender.test"}, "to": [{"email": "rcpt@example.test"}], '
    b'"subject": "s", "text": "t"'
)


def payload(**fields: Any) -> dict[str, Any]:
    """A valid POST /v1/send body; keyword arguments replace or add fields (None removes)."""
    body: dict[str, Any] = {
        "from": {"email": SENDER, "name": "App"},
        "to": [{"email": RCPT, "name": "Someone"}],
        "subject": "Hello",
        "text": "Hi there.",
    }
    for name, value in fields.items():
        name = "from" if name == "from_" else name
        if value is None:
            body.pop(name, None)
        else:
            body[name] = value
    return body


@dataclass
class Api:
    """A running Service and a client for its HTTP API."""

    svc: ManagedService
    http: httpx.AsyncClient

    async def key(self, *scopes: str, name: str = "test") -> str:
        """A new API key's secret (scope `send` by default)."""
        _, secret = await create_key(self.svc.db, name, scopes or ("send",))
        return secret

    async def key_record(self, *scopes: str, name: str = "test") -> tuple[str, str]:
        """(key id, secret)."""
        record, secret = await create_key(self.svc.db, name, scopes or ("send",))
        return record.id, secret

    async def send(
        self,
        body: dict[str, Any] | None = None,
        *,
        key: str,
        headers: dict[str, str] | None = None,
        path: str = "/v1/send",
    ) -> httpx.Response:
        return await self.http.post(
            path, json=payload() if body is None else body, headers=auth(key) | (headers or {})
        )

    async def get(self, path: str, *, key: str | None, **params: Any) -> httpx.Response:
        return await self.http.get(path, headers=auth(key), params=params or None)


def auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


ApiFactory = Callable[..., Awaitable[Api]]


class ApiClients:
    """`await clients(**config_overrides)`: a started Service (on DEFAULTS merged with the
    overrides) and an httpx client for it; aclose() closes every client made."""

    def __init__(self, service: ServiceFactory) -> None:
        self._service = service
        self._clients: list[httpx.AsyncClient] = []

    async def __call__(self, **overrides: Any) -> Api:
        svc = await self._service(**merge(DEFAULTS, overrides))
        host, port = svc.config.http.listen
        client = httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=15.0)
        self._clients.append(client)
        return Api(svc, client)

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()


@dataclass
class Shared:
    """One Service for a whole module (tests that only need answers, not a fresh state)."""

    api: Api
    sink: Sink
    key: str  # scopes send and sandbox


@asynccontextmanager
async def shared_service(directory: Path) -> AsyncIterator[Shared]:
    """A Service on DEFAULTS in front of its own sink, data under `directory`; stopped (and
    the sink too) on the way out."""
    sink = Sink().start()
    config = make_config(directory, sink, **DEFAULTS)
    svc = ManagedService(config)
    try:
        await svc.start()
        host, port = config.http.listen
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=15.0) as client:
            api = Api(svc, client)
            yield Shared(api, sink, await api.key("send", "sandbox"))
    finally:
        if hasattr(svc, "writer"):
            await svc.stop()
        sink.stop()
