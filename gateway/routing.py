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
2b. The recipient's domain (`DomainRoute`, Postfix's transport maps: `[[routes]]` in the
   config and /api/v1/routes) -> the pool it names, by name, or its ip_pool group. The most
   specific entry wins: an exact domain, else the longest `.suffix` (a leading dot matches
   every subdomain, not the domain itself); between a config entry and an API entry for the
   same domain, the config's (the file is the operator's fixed policy). `choose_routes`
   splits the recipients into one group per route (recipients of no entry: the default).
3. The default pool, else the `transactional` group, else the group of the first pool
   (among active pools; when every pool is inactive, among all: the mail waits for them).
4. No pool at all -> direct delivery to the recipients' MX hosts.
A route chosen by 1, 2 or 2b is explicit: it must have an active pool now (else NoActivePool),
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

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Protocol

from gateway.addresses import mailbox_key
from gateway.errors import InvalidInput, Refused
from gateway.message import Route

DEFAULT_GROUP = "transactional"
# How last_response begins while a message waits for its route to have an active pool.
NO_POOL = "waiting: no active pool"


class PoolLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
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


@dataclass(frozen=True)
class DomainRoute:
    """One transport-map entry: mail to `recipient_domain` (lower-case; `gmail.com` exactly,
    or `.example.com`: any subdomain of example.com) goes through the pool named `pool`, or
    else the group `ip_pool` (exactly one of them is set). `source`: config | api."""

    recipient_domain: str
    pool: str | None = None
    ip_pool: str | None = None
    source: str = "config"
    id: str = ""  # the stored entry's id (API entries); "" for the config's

    def matches(self, domain: str) -> bool:
        if self.recipient_domain.startswith("."):
            return domain.endswith(self.recipient_domain)
        return domain == self.recipient_domain

    @property
    def specificity(self) -> tuple[int, int]:
        """Exact entries before suffixes; longer suffixes before shorter ones."""
        exact = not self.recipient_domain.startswith(".")
        return (int(exact), len(self.recipient_domain))


class InvalidRouteDomain(InvalidInput, ValueError):
    """A recipient_domain that is no domain name (nor `.` and one)."""


_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def route_domain(value: str) -> str:
    """A transport-map domain as stored and matched: lower-case A-labels, `gmail.com` or
    `.example.com` (every subdomain of example.com); InvalidRouteDomain saying why not."""
    suffix = value.startswith(".")
    name = value[1:] if suffix else value
    if not name or name != name.strip() or len(value) > 253:
        raise InvalidRouteDomain("a domain such as gmail.com, or .example.com for its subdomains")
    try:
        ascii_name = name.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise InvalidRouteDomain(f"{name!r} is not a domain name") from None
    labels = ascii_name.split(".")
    if not all(_LABEL.match(label) for label in labels):
        raise InvalidRouteDomain(
            f"{name!r} is not a domain name (labels of letters, digits and inner hyphens)"
        )
    return ("." if suffix else "") + ascii_name


def _recipient_domain(address: str) -> str:
    domain = address.rpartition("@")[2].lower().rstrip(".")
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


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
    """The one route of a message by what it names and who sends it (steps 0 to 3; the
    recipients' domains are `choose_routes`')."""
    route = _named(alias_id, mail_from, pools, aliases, account_id, accounts)
    return default_route(pools) if route is None else route


def choose_routes(
    alias_id: str | None,
    mail_from: str,
    recipients: Sequence[str],
    pools: Sequence[PoolLike],
    aliases: Sequence[AliasView] = (),
    *,
    account_id: str | None = None,
    accounts: Sequence[AccountView] = (),
    domain_routes: Sequence[DomainRoute] = (),
) -> list[tuple[Route, tuple[str, ...]]]:
    """The routes of a message and the recipients of each, in the order their first
    recipient came: one group when the message names its route (steps 0 to 2); else one
    per route its recipients' domains take (step 2b; recipients of no entry: the default),
    groups that come to the same route merged. Each group is one queue entry."""
    route = _named(alias_id, mail_from, pools, aliases, account_id, accounts)
    if route is not None or not domain_routes:
        return [(default_route(pools) if route is None else route, tuple(recipients))]
    active = [pool for pool in pools if pool.is_active]
    groups: dict[Route, list[str]] = {}
    default: Route | None = None
    for rcpt in recipients:
        entry = domain_route_of(rcpt, domain_routes)
        if entry is not None:
            chosen = _served(_by_entry(entry, pools), active)
        else:
            default = default_route(pools) if default is None else default
            chosen = default
        groups.setdefault(chosen, []).append(rcpt)
    return [(chosen, tuple(members)) for chosen, members in groups.items()]


def domain_route_of(address: str, routes: Sequence[DomainRoute]) -> DomainRoute | None:
    """The entry of `routes` for the address's domain (case and a trailing dot ignored):
    the most specific; between two as specific, the first (config entries come first)."""
    domain = _recipient_domain(address)
    best: DomainRoute | None = None
    for entry in routes:
        if entry.matches(domain) and (best is None or entry.specificity > best.specificity):
            best = entry
    return best


def _by_entry(entry: DomainRoute, pools: Sequence[PoolLike]) -> Route:
    """The route a domain entry names: its pool by name (a pool no longer there: one that
    waits, refused as NoActivePool like any explicit route), else its group."""
    if entry.pool is not None:
        for pool in pools:
            if pool.name == entry.pool:
                return Route(pool_id=pool.id)
        raise NoActivePool(f"pool {entry.pool} (route for {entry.recipient_domain})")
    return Route(ip_pool=entry.ip_pool)


def _named(
    alias_id: str | None,
    mail_from: str,
    pools: Sequence[PoolLike],
    aliases: Sequence[AliasView],
    account_id: str | None,
    accounts: Sequence[AccountView],
) -> Route | None:
    """The route the message names or its sender implies (steps 0 to 2), or None."""
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
    return None


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
