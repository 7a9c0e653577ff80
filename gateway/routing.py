"""The routing engine: pure functions from (hints, pools, aliases) to a Route. No I/O.

Order (SPEC "Routing"):
1. `alias_id` names a pool -> that pool; names an alias -> the alias's ip_pool group;
   names nothing -> UnknownRoute (a 400 / 550 at the door, never a silent fallback).
2. A verified alias whose email is the From address -> its ip_pool group.
3. The default pool, else the `transactional` group, else the group of the first pool.
4. No active pool at all -> direct delivery to the recipients' MX hosts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.addresses import normalise
from gateway.message import Route

DEFAULT_GROUP = "transactional"


class PoolLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def ip_pool(self) -> str: ...
    @property
    def priority(self) -> int: ...
    @property
    def is_default(self) -> bool: ...
    @property
    def is_active(self) -> bool: ...


@dataclass(frozen=True)
class AliasView:
    id: str
    email: str
    ip_pool: str | None
    is_verified: bool = True  # only a verified alias claims mail by its From address


class UnknownRoute(Exception):
    """alias_id names neither a pool nor an alias."""


def choose_route(
    alias_id: str | None,
    mail_from: str,
    pools: Sequence[PoolLike],
    aliases: Sequence[AliasView] = (),
) -> Route:
    active = [pool for pool in pools if pool.is_active]
    if alias_id:
        return _by_alias_id(alias_id, pools, aliases)
    sender = normalise(mail_from).lower() if mail_from else ""
    for alias in aliases:
        if alias.is_verified and alias.email.lower() == sender and alias.ip_pool:
            return Route(ip_pool=alias.ip_pool)
    return default_route(active)


def _by_alias_id(alias_id: str, pools: Sequence[PoolLike], aliases: Sequence[AliasView]) -> Route:
    for pool in pools:
        if pool.id == alias_id:
            return Route(pool_id=pool.id)
    for alias in aliases:
        if alias.id == alias_id:
            return Route(ip_pool=alias.ip_pool or DEFAULT_GROUP)
    raise UnknownRoute(alias_id)


def default_route(active: Sequence[PoolLike]) -> Route:
    for pool in active:
        if pool.is_default:
            return Route(pool_id=pool.id)
    if any(pool.ip_pool == DEFAULT_GROUP for pool in active):
        return Route(ip_pool=DEFAULT_GROUP)
    if active:
        first = min(active, key=lambda pool: (pool.priority, pool.id))
        return Route(ip_pool=first.ip_pool)
    return Route()


def candidates(route: Route, pools: Sequence[PoolLike], unhealthy: set[str]) -> list[str]:
    """Pool ids to try for `route`, in order: by priority, unhealthy pools last.

    A route whose pool or group has since gone (deleted, deactivated) falls back to the
    default route, so mail already queued follows the operator's current configuration.
    """
    active = [pool for pool in pools if pool.is_active]
    chosen: list[PoolLike] = []
    if route.pool_id:
        chosen = [pool for pool in active if pool.id == route.pool_id]
    elif route.ip_pool:
        chosen = [pool for pool in active if pool.ip_pool == route.ip_pool]
    if not chosen and not route.direct:
        fallback = default_route(active)
        if fallback != route and not fallback.direct:
            return candidates(fallback, pools, unhealthy)
    if not chosen:
        return []
    chosen.sort(key=lambda pool: (pool.id in unhealthy, pool.priority, pool.id))
    return [pool.id for pool in chosen]
