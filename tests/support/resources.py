"""Helpers for the tests of the management resources (pools, aliases, domains): each made
through the API as a client would, verified where the product asks for it."""

from __future__ import annotations

import email
import email.policy
import re
from typing import Any

import httpx

from tests.support.api import Api, auth
from tests.support.sink import Sink

POOLS = "/api/v1/smtp-pools"
ALIASES = "/api/v1/aliases"
LINK = re.compile(r"http://[^\s]+/api/v1/aliases/verify\?token=([A-Za-z0-9_\-]+)")


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


# --- domains and aliases -------------------------------------------------------------------


async def verified_domain(api: Api, domain: str = "yourdomain.test") -> None:
    admin = await api.key("admin")
    body = {"domain": domain, "verified": True, "algorithm": "ed25519"}
    response = await call(api, "POST", "/api/v1/domains", admin, body)
    assert response.status_code == 201, response.text


async def create(api: Api, key: str, **fields: Any) -> dict[str, Any]:
    body = {"email": "marketing@yourdomain.test", "name": "Your Company Marketing"} | fields
    response = await call(api, "POST", ALIASES, key, body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def link_for(sink: Sink, address: str) -> str:
    assert await sink.wait_for_async(1)
    [message] = [m for m in sink.messages if address in m.rcpt_tos]
    parsed = email.message_from_bytes(message.data, policy=email.policy.default)
    text = parsed.get_content()  # type: ignore[attr-defined]
    found = LINK.search(text)
    assert found, text
    return found.group(0)


async def verify(api: Api, link: str) -> dict[str, Any]:
    path = link.split("://", 1)[1].split("/", 1)[1]
    response = await api.http.get("/" + path)
    assert response.status_code == 200, response.text
    verified: dict[str, Any] = response.json()
    return verified


async def verified_alias(api: Api, sink: Sink, key: str, address: str, **fields: Any) -> str:
    sink.messages.clear()
    created = await create(api, key, email=address, **fields)
    await verify(api, await link_for(sink, address))
    return str(created["alias"]["id"])
