"""The routing engine: pure functions from (hints, pools, aliases) to a Route. No I/O.

Order (SPEC "Routing"):
1. `alias_id` names a pool -> that pool; names a verified alias -> the alias's ip_pool
   group; names nothing -> UnknownRoute, an alias not yet verified -> AliasNotVerified.
2. A verified alias whose email is the From address -> its ip_pool group.
3. The default pool, else the `transactional` group, else the group of the first pool
   (among active pools; when every pool is inactive, among all: the mail waits for them).
4. No pool at all -> direct delivery to the recipients' MX hosts.
A route chosen by 1 or 2 is explicit: it must have an active pool now (else NoActivePool),
and keeps to it: mail queued for a pool or group that has lost its active pools waits for
them, never going out another way (`candidates` is then empty). Each refusal is a 4xx / 550
at the door. A route chosen by 3 or 4 is the default (`Route.default`): it is chosen again
at each attempt (`current`), so queued mail follows the operator's new default pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

from gateway.addresses import mailbox_key
from gateway.errors import Refused
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

    @cached_property
    def key(self) -> str:
        return mailbox_key(self.email)


class RouteRefused(Refused):
    """No route for this message; the door says why (never a silent fallback)."""


class UnknownRoute(RouteRefused):
    """alias_id names neither a pool nor an alias."""


class AliasNotVerified(RouteRefused):
    """alias_id names an alias whose address has not been verified yet."""


class NoActivePool(RouteRefused):
    """The pool or group the message asked for has no active pool."""


def choose_route(
    alias_id: str | None,
    mail_from: str,
    pools: Sequence[PoolLike],
    aliases: Sequence[AliasView] = (),
) -> Route:
    active = [pool for pool in pools if pool.is_active]
    if alias_id:
        return _served(_by_alias_id(alias_id, pools, aliases), active)
    sender = mailbox_key(mail_from) if mail_from else ""
    for alias in aliases:
        if alias.is_verified and alias.ip_pool and alias.key == sender:
            return _served(Route(ip_pool=alias.ip_pool), active)
    return default_route(pools)


def _by_alias_id(alias_id: str, pools: Sequence[PoolLike], aliases: Sequence[AliasView]) -> Route:
    for pool in pools:
        if pool.id == alias_id:
            return Route(pool_id=pool.id)
    for alias in aliases:
        if alias.id == alias_id:
            if not alias.is_verified:
                raise AliasNotVerified(alias_id)
            return Route(ip_pool=alias.ip_pool or DEFAULT_GROUP)
    raise UnknownRoute(alias_id)


def _served(route: Route, active: Sequence[PoolLike]) -> Route:
    """`route` when an active pool serves it now, else NoActivePool."""
    if not _members(route, active):
        raise NoActivePool(describe(route))
    return route


def _members(route: Route, active: Sequence[PoolLike]) -> list[PoolLike]:
    if route.pool_id:
        return [pool for pool in active if pool.id == route.pool_id]
    return [pool for pool in active if pool.ip_pool == route.ip_pool]


def describe(route: Route) -> str:
    """The route in words, for replies, events and last_response."""
    if route.pool_id:
        return f"pool {route.pool_id}"
    return f"ip_pool {route.ip_pool}" if route.ip_pool else "direct delivery"


def default_route(pools: Sequence[PoolLike]) -> Route:
    """The default route among the active pools; when every pool is inactive (paused), the
    one it would be among all of them, which waits; direct delivery only with no pool."""
    active = [pool for pool in pools if pool.is_active]
    for group in (active, pools):
        for pool in group:
            if pool.is_default:
                return Route(pool_id=pool.id, default=True)
        if any(pool.ip_pool == DEFAULT_GROUP for pool in group):
            return Route(ip_pool=DEFAULT_GROUP, default=True)
        if group:
            first = min(group, key=lambda pool: (pool.priority, pool.id))
            return Route(ip_pool=first.ip_pool, default=True)
    return Route(default=True)


def current(route: Route, pools: Sequence[PoolLike]) -> Route:
    """The route to try now: an explicit one as chosen; the default as it is now."""
    # A stored route of neither pool nor group (written while no pool existed, or by an
    # older node) means "the default, whatever it is": never MX while pools exist.
    return default_route(pools) if route.default or route.direct else route


def candidates(route: Route, pools: Sequence[PoolLike], unhealthy: set[str]) -> list[str]:
    """Pool ids to try for `route`, in order: by priority, unhealthy pools last.

    Empty when the route's pool or group has no active pool left (deleted, deactivated):
    the message waits for it rather than going through a group it did not ask for.
    """
    if route.direct:
        return []
    chosen = _members(route, [pool for pool in pools if pool.is_active])
    chosen.sort(key=lambda pool: (pool.id in unhealthy, pool.priority, pool.id))
    return [pool.id for pool in chosen]
