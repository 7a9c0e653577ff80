"""Routes by recipient domain (Postfix's transport maps), shared by `/api/v1/routes` and
`postern routes`: the checks of a new entry, its storage, and the list of every entry in
force with where it comes from.

The config's `[[routes]]` and the stored ones both apply; on the same domain the config's
wins (the file is the operator's fixed policy): a stored entry for a domain the config
routes is refused at creation, and one the config came to route later is listed as
`shadowed`. Scope `admin`: an entry reroutes everyone's mail.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from api import errors
from gateway.addresses import has_control
from storage.db import Database
from storage.pools import pool_records
from storage.routes import (
    RouteExists,
    RouteRecord,
    add_route,
    delete_route,
    get_route,
    list_routes,
)

if TYPE_CHECKING:  # `postern routes list` lists: no routing (nor gateway.message) to load
    from gateway.routing import DomainRoute

SCOPE = "admin"
_GROUP = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


@dataclass(frozen=True)
class Entry:
    """One route in force, as the API and CLI list it."""

    recipient_domain: str
    pool: str | None
    ip_pool: str | None
    source: str  # config | api
    id: str | None = None
    created_at: float | None = None
    shadowed: bool = False  # an API entry the config's entry for its domain overrides

    def as_json(self, when: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "recipient_domain": self.recipient_domain,
            "pool": self.pool,
            "ip_pool": self.ip_pool,
            "source": self.source,
            "shadowed": self.shadowed,
            "created_at": when(self.created_at) if self.created_at is not None else None,
        }


def _invalid(field: str, message: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(f"{field}: {message}", [{"field": field, "message": message}])


async def entries(db: Database, config_routes: Sequence[DomainRoute]) -> list[Entry]:
    """The config's entries, then the stored ones, each group by domain."""
    in_config = {route.recipient_domain for route in config_routes}
    found = [
        Entry(route.recipient_domain, route.pool, route.ip_pool, "config")
        for route in sorted(config_routes, key=lambda route: route.recipient_domain)
    ]
    found += [
        Entry(r.recipient_domain, r.pool, r.ip_pool, "api", r.id, r.created_at,
              r.recipient_domain in in_config)
        for r in await list_routes(db)
    ]  # fmt: skip
    return found


async def create(
    db: Database,
    config_routes: Sequence[DomainRoute],
    recipient_domain: str,
    pool: str | None,
    ip_pool: str | None,
    created_by: str | None = None,
    config_pools: Sequence[str] = (),
) -> RouteRecord:
    """Check and store a new entry: a domain (exact or `.suffix`) and exactly one of a
    pool's name (stored, or of `config_pools`: the file's, which `serve` stores at start)
    and a group. 400 / 409 with what to do."""
    from gateway.routing import InvalidRouteDomain, route_domain

    try:
        domain = route_domain(recipient_domain)
    except InvalidRouteDomain as error:
        raise _invalid("recipient_domain", str(error)) from None
    if (pool is None) == (ip_pool is None):
        raise _invalid("pool", 'give exactly one of "pool" (a pool\'s name) and "ip_pool"')
    if pool is not None and (not pool or len(pool) > 128 or has_control(pool)):
        raise _invalid("pool", "1 to 128 characters, no control characters")
    if ip_pool is not None and not _GROUP.fullmatch(ip_pool):
        raise _invalid("ip_pool", "1 to 64 letters, digits, '_', '.' or '-', the first no symbol")
    known = {record.name for record in await pool_records(db)} | set(config_pools)
    if pool is not None and pool not in known:
        raise errors.UnknownPool(f"pool: no pool is named {pool!r}")
    if any(route.recipient_domain == domain for route in config_routes):
        raise errors.RouteInConfig(
            f"{domain} is routed by the config file ([[routes]]), which wins: change it there"
        )
    try:
        return await add_route(db, domain, pool=pool, ip_pool=ip_pool, created_by=created_by)
    except RouteExists as error:
        raise errors.RouteExists(str(error)) from None


async def remove(db: Database, route_id: str, config_routes: Sequence[DomainRoute]) -> RouteRecord:
    """Delete a stored entry by id (or by its domain); 404 when none, 409 for the config's."""
    key = route_id if route_id.startswith("rte_") else _domain_or_404(route_id)
    record = await _stored(db, key)
    if record is None:
        if any(route.recipient_domain == key for route in config_routes):
            raise errors.RouteInConfig(f"{key} is routed by the config file: remove it there")
        raise errors.NotFound("no such route")
    deleted = await delete_route(db, record.id)
    if deleted is None:
        raise errors.NotFound("no such route")
    return deleted


def _domain_or_404(value: str) -> str:
    from gateway.routing import InvalidRouteDomain, route_domain

    try:
        return route_domain(value)
    except InvalidRouteDomain:
        raise errors.NotFound("no such route") from None


async def _stored(db: Database, key: str) -> RouteRecord | None:
    return await get_route(db, key) if len(key) <= 254 else None
