"""Helpers for the tests of the management resources (pools, aliases, domains)."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.api import Api, auth
from tests.support.sink import Sink

POOLS = "/api/v1/smtp-pools"


def pool_body(sink: Sink | None = None, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "relay",
        "host": "127.0.0.1",
        "port": sink.port if sink is not None else 2525,
        "encryption": "none",
    }
    body.update(fields)
    return body


async def create_pool(
    api: Api, key: str, sink: Sink | None = None, **fields: Any
) -> dict[str, Any]:
    response = await api.http.post(POOLS, json=pool_body(sink, **fields), headers=auth(key))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def call(
    api: Api, method: str, path: str, key: str | None, body: Any = None
) -> httpx.Response:
    return await api.http.request(method, path, json=body, headers=auth(key))


def live_pools(api: Api) -> dict[str, Any]:
    """The pools delivery uses right now, by name."""
    return {settings.name: settings for settings in api.svc.registry.settings()}
