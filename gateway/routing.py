"""The routing engine: pure functions from (hints, pools, aliases) to a Route. No I/O.

Routes are decided here alone: at the door (`choose_route`, then `within_groups` for an API
key limited to some groups) and again at each delivery attempt (`at_attempt`, which says
which pools to try, or that the message waits, or goes direct). It knows nothing of the
doors, intake or delivery: they call it.

Order:
0. `account_id` names a connected account -> pinned to that account's own SMTP server
   (names none -> UnknownAccount).
1. `alias_id` names a pool -> that pool; names a verified alias -> the alias's ip_pool
   group; names nothing -> UnknownRoute, an alias not yet verified -> AliasNotVerified.
2. A connected account whose address is the From address -> pinned to that account; else
   a verified alias whose email is the From address -> its ip_pool group.
3. The default pool, else the `transactional` group, else the group of the first pool
   (among active pools; when every pool is inactive, among all: the mail waits for them).
4. No pool at all -> direct delivery to the recipients' MX hosts.
A route chosen by 1 or 2 is explicit: it must have an active pool now (else NoActivePool),
and keeps to it: mail queued for a pool or group that has lost its active pools waits for
them, never going out another way (`candidates` is then empty). Each refusal is a 4xx / 550
at the door. A route chosen by 3 or 4 is the default (`Route.default`): it is chosen again
at each attempt (`current`), so queued mail follows the operator's new default pool.
A key limited to some groups keeps its mail to them (`within_groups`).

A connected account is an upstream of its own, never a pool: it is in no group, never the
default, and its route (`Route(pool_id=<account id>)`) has no failover. Mail from a person's
mailbox leaves through that mailbox's server or not at all: at each attempt the account is
the only candidate (`at_attempt`'s `accounts`: the ids of the accounts delivery holds), and
while it is not there (disconnected) the message waits like one whose pool is gone.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Protocol

from gateway.addresses import mailbox_key
from gateway.errors import Refused
from gateway.message import Route

DEFAULT_GROUP = "transactional"
# How last_response begins while a message waits for its route to have an active pool.
NO_POOL = "waiting: no active pool"


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


@dataclass(frozen=True)
class AccountView:
    """A connected account as routing sees it: its id and its address."""

    id: str
    email: str

    @cached_property
    def key(self) -> str:
        return mailbox_key(self.email)


class RouteRefused(Refused):
    """No route for this message; the door says why (never a silent fallback)."""


class UnknownRoute(RouteRefused):
    """alias_id names neither a pool nor an alias."""


class AliasNotVerified(RouteRefused):
    """alias_id names an alias whose address has not been verified yet."""


class UnknownAccount(RouteRefused):
    """account_id names no connected account."""


class NoActivePool(RouteRefused):
    """The pool or group the message asked for has no active pool."""


def choose_route(
    alias_id: str | None,
    mail_from: str,
    pools: Sequence[PoolLike],
    aliases: Sequence[AliasView] = (),
    *,
    account_id: str | None = None,
    accounts: Sequence[AccountView] = (),
) -> Route:
    active = [pool for pool in pools if pool.is_active]
    if account_id:
        return _by_account_id(account_id, accounts)
    if alias_id:
        return _served(_by_alias_id(alias_id, pools, aliases), active)
    sender = mailbox_key(mail_from) if mail_from else ""
    account = account_of(sender, accounts)
    if account is not None:
        return Route(pool_id=account.id)
    for alias in aliases:
        if alias.is_verified and alias.ip_pool and alias.key == sender:
            return _served(Route(ip_pool=alias.ip_pool), active)
    return default_route(pools)


def account_of(address: str, accounts: Sequence[AccountView]) -> AccountView | None:
    """The connected account whose address `address` is (any case), or None."""
    key = mailbox_key(address) if address else ""
    return next((account for account in accounts if key and account.key == key), None)


def pinned_account(route: Route, accounts: Sequence[AccountView]) -> AccountView | None:
    """The connected account `route` is pinned to, or None (a pool, a group, direct)."""
    return next((account for account in accounts if account.id == route.pool_id), None)


def _by_account_id(account_id: str, accounts: Sequence[AccountView]) -> Route:
    for account in accounts:
        if account.id == account_id:
            return Route(pool_id=account.id)
    raise UnknownAccount(account_id)


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


def candidates(route: Route, pools: Sequence[PoolLike]) -> list[str]:
    """Pool ids to try for `route`, in order of priority.

    Empty when the route's pool or group has no active pool left (deleted, deactivated):
    the message waits for it rather than going through a group it did not ask for.
    """
    if route.direct:
        return []
    chosen = _members(route, [pool for pool in pools if pool.is_active])
    chosen.sort(key=lambda pool: (pool.priority, pool.id))
    return [pool.id for pool in chosen]


def group_of(route: Route, pools: Sequence[PoolLike]) -> str | None:
    """The ip_pool group the route sends through (None: direct, or a pool that is gone)."""
    if route.pool_id is None:
        return route.ip_pool
    for pool in pools:
        if pool.id == route.pool_id:
            return pool.ip_pool
    return None


def within_groups(
    route: Route, allowed: Collection[str], pools: Sequence[PoolLike], named: bool
) -> Route | None:
    """The route for a sender that may use only the `allowed` groups, or None when it may
    not send this way. `named`: the message named its route (alias_id).

    A route in an allowed group is kept to that group: as a default route it would follow
    the default wherever it moves, perhaps out of those groups. A message that named no
    route goes through the sender's own group instead: an active one, else one that waits.
    """
    if group_of(route, pools) in allowed:
        return replace(route, default=False)
    if not named:
        active = {pool.ip_pool for pool in pools if pool.is_active}
        known = {pool.ip_pool for pool in pools}
        for group in sorted(allowed, key=lambda group: (group not in active, group)):
            if group in known:
                return Route(ip_pool=group)
    return None


@dataclass(frozen=True)
class Plan:
    """Where one delivery attempt goes, decided afresh at each attempt (`at_attempt`)."""

    route: Route  # the route in force now: an explicit one as chosen, a default as it is now
    pool_ids: tuple[str, ...]  # the pools to try, in order; empty when none serves it now

    @property
    def direct(self) -> bool:
        """No pool exists at all: the recipients' MX hosts (when direct delivery is on)."""
        return not self.pool_ids and self.route.direct

    @property
    def waits(self) -> bool:
        """No active pool serves the route now: the message waits for one, and never goes
        out another way. (A direct route with direct delivery off is deferred instead.)"""
        return not self.pool_ids and not self.route.direct

    def unserved(self) -> str:
        """Why no pool takes the message now, for its last_response."""
        if self.route.direct:
            return "no active pool, and direct delivery is off"
        return f"{NO_POOL} for {describe(self.route)}"


def at_attempt(route: Route, pools: Sequence[PoolLike], accounts: Collection[str] = ()) -> Plan:
    """Where a message stored with `route` goes at this attempt, among `pools` as they are
    (and the connected accounts' upstreams, by id: a route pinned to one goes there only)."""
    if route.pool_id is not None and route.pool_id in accounts:
        return Plan(route, (route.pool_id,))
    now = current(route, pools)
    return Plan(now, tuple(candidates(now, pools)))
