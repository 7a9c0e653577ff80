"""Fixtures for the HTTP API: an in-process Service (real uvicorn, real sink) and an httpx
client talking to it over loopback, with API keys made through the product's own storage.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio

from storage.keys import create_key
from tests.conftest import ManagedService, ServiceFactory, make_config
from tests.support.sink import Sink

SENDER = "app@sender.test"
RCPT = "rcpt@example.test"
# Tests send fast; the rate-limit tests set their own.
DEFAULTS: dict[str, Any] = {
    "http": {"rate_limit": "10000/s"},
    "delivery": {"handoff_timeout": "3s"},
}


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


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for name, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(name), dict):
            merged[name] = _merge(merged[name], value)
        else:
            merged[name] = value
    return merged


ApiFactory = Callable[..., Awaitable[Api]]


@pytest.fixture
async def api_client(service: ServiceFactory) -> AsyncIterator[ApiFactory]:
    """`await api_client(**config_overrides)`: a started Service and an httpx client."""
    clients: list[httpx.AsyncClient] = []

    async def start(**overrides: Any) -> Api:
        svc = await service(**_merge(DEFAULTS, overrides))
        host, port = svc.config.http.listen
        client = httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=15.0)
        clients.append(client)
        return Api(svc, client)

    try:
        yield start
    finally:
        for client in clients:
            await client.aclose()


@pytest.fixture
async def api(api_client: ApiFactory) -> Api:
    """A Service on the defaults above (handoff_timeout 3 s, a generous rate limit)."""
    return await api_client()


@dataclass
class Shared:
    """One Service for a whole module (tests that only need answers, not a fresh state)."""

    api: Api
    sink: Sink
    key: str  # scopes send and sandbox


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Shared]:
    """Its tests must run in the module's loop: `pytest.mark.asyncio(loop_scope="module")`."""
    sink = Sink().start()
    config = make_config(tmp_path_factory.mktemp("shared"), sink, **DEFAULTS)
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
