"""Stored routes by recipient domain (storage.routes) on SQLite and PostgreSQL: one per
domain, even when two inserts race."""

from __future__ import annotations

import asyncio

import pytest

from storage.db import Database
from storage.routes import RouteExists, add_route, delete_route, get_route, list_routes


async def test_add_list_get_delete(backend: Database) -> None:
    gmail = await add_route(backend, "gmail.com", pool="relay", created_by="usr_1")
    suffix = await add_route(backend, ".example.com", ip_pool="bulk")
    assert [r.recipient_domain for r in await list_routes(backend)] == [
        ".example.com",
        "gmail.com",
    ]
    assert await get_route(backend, gmail.id) == gmail
    assert await get_route(backend, ".example.com") == suffix
    assert (await delete_route(backend, gmail.id)) == gmail
    assert await delete_route(backend, gmail.id) is None
    assert await list_routes(backend) == [suffix]


async def test_one_route_per_domain_even_racing(backend: Database, other_db: Database) -> None:
    await add_route(backend, "taken.test", pool="a")
    with pytest.raises(RouteExists, match=r"taken\.test"):
        await add_route(backend, "taken.test", ip_pool="b")
    results = await asyncio.gather(
        add_route(backend, "race.test", pool="a"),
        add_route(other_db, "race.test", pool="b"),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["RouteExists", "RouteRecord"]
    assert len([r for r in await list_routes(backend) if r.recipient_domain == "race.test"]) == 1
