"""Direct-to-MX planning: which hosts to try for each recipient domain, or why none.

The decisions are pure functions of DNS answers (gateway.dns result types), so tests call
them with plain values; `plan_message` is the one async step that asks the resolver and
hands the answers to them. Delivery then walks each `DomainPlan`:

    plan.outcome is not None   every recipient of the domain gets it, no connection is made
                               (null MX -> 556 5.1.10 and NXDOMAIN -> 550 5.1.2 bounce at
                               once; a DNS failure -> 4.4.3 defers)
    else plan.targets          try in order; the next on connect failure or 4xx; connect to
                               `address`, say EHLO and SNI / pool by `host`

Targets come from MX hosts by preference (random among equals, done by gateway.dns), or from
the domain itself when it has no MX (RFC 5321 §5.1), each host's IPv4 then IPv6 addresses,
at most `limit` of them. Hosts are resolved with the same resolver, never getaddrinfo, so
`[dns] nameservers` governs the whole path. A domain literal (`user@[192.0.2.1]`) is its
own single target.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from gateway.addresses import normalise
from gateway.dns import (
    Addresses,
    AddressResult,
    MxHosts,
    MxResult,
    NoMx,
    NoSuchDomain,
    NullMx,
    Resolver,
    Temporary,
)
from gateway.message import DeliveryResult, Outcome

DEFAULT_TARGET_LIMIT = 10


class HostToTry(NamedTuple):
    """One host to try, before its addresses are known."""

    host: str
    port: int


@dataclass(frozen=True)
class MxTarget:
    """One connection to try: the address to dial, the name to greet and pool by."""

    host: str
    address: str
    port: int


@dataclass(frozen=True)
class DomainPlan:
    """What to do for the recipients of one domain."""

    domain: str
    recipients: tuple[str, ...]
    targets: tuple[MxTarget, ...] = ()
    outcome: DeliveryResult | None = None  # set when no connection is to be made


def null_mx(domain: str) -> DeliveryResult:
    return DeliveryResult(
        Outcome.BOUNCED, 556, "5.1.10", f"{domain} does not accept mail (null MX, RFC 7505)"
    )


def no_such_domain(domain: str) -> DeliveryResult:
    return DeliveryResult(Outcome.BOUNCED, 550, "5.1.2", f"domain {domain} does not exist")


def unroutable(domain: str) -> DeliveryResult:
    return DeliveryResult(Outcome.BOUNCED, 550, "5.4.4", f"no mail host of {domain} has an address")


def dns_failure(domain: str, reason: str) -> DeliveryResult:
    return DeliveryResult(
        Outcome.DEFERRED, None, "4.4.3", f"DNS lookup for {domain} failed: {reason}"
    )


def recipient_domain(address: str) -> str:
    """The normalised domain of an envelope address (lower case, A-label, no final dot)."""
    return normalise(address).rpartition("@")[2]


def group_by_domain(recipients: Iterable[str]) -> dict[str, list[str]]:
    """Recipients by normalised domain, in first-seen order, addresses kept as given."""
    groups: dict[str, list[str]] = {}
    for rcpt in recipients:
        groups.setdefault(recipient_domain(rcpt), []).append(rcpt)
    return groups


def domain_literal(domain: str) -> str | None:
    """The IP of `[192.0.2.1]` / `[IPv6:2001:db8::1]`, else None."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    if inner[:5].lower() == "ipv6:":
        inner = inner[5:]
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        return None


def hops(domain: str, mx: MxResult, port: int) -> tuple[HostToTry, ...] | DeliveryResult:
    """The hosts to try for `domain` given its MX answer, or the outcome for every recipient."""
    if isinstance(mx, MxHosts):
        return tuple(HostToTry(item.host, port) for item in mx.hosts)
    if isinstance(mx, NoMx):
        return (HostToTry(domain, port),)
    if isinstance(mx, NullMx):
        return null_mx(domain)
    if isinstance(mx, NoSuchDomain):
        return no_such_domain(domain)
    assert isinstance(mx, Temporary)
    return dns_failure(domain, mx.reason)


def targets(
    domain: str,
    route: Sequence[HostToTry],
    addresses: Mapping[str, AddressResult],
    limit: int = DEFAULT_TARGET_LIMIT,
) -> tuple[MxTarget, ...] | DeliveryResult:
    """Hops expanded to addresses, in order, without repeats, at most `limit`.

    A host that is temporarily unresolvable is skipped while others work; when no host has
    an address the domain defers if any lookup failed temporarily, else bounces (5.4.4).
    """
    found: list[MxTarget] = []
    seen: set[tuple[str, int]] = set()
    failure: Temporary | None = None
    for hop in route:
        answer = addresses.get(hop.host)
        if isinstance(answer, Temporary):
            failure = failure or answer
            continue
        if not isinstance(answer, Addresses):
            continue
        for address in answer.addresses:
            if (address, hop.port) not in seen and len(found) < limit:
                seen.add((address, hop.port))
                found.append(MxTarget(hop.host, address, hop.port))
    if found:
        return tuple(found)
    if failure is not None:
        return dns_failure(domain, failure.reason)
    return unroutable(domain)


async def plan_domain(
    resolver: Resolver,
    domain: str,
    recipients: Sequence[str],
    port: int,
    limit: int = DEFAULT_TARGET_LIMIT,
) -> DomainPlan:
    """Ask DNS for `domain` and decide (see the module docstring)."""
    rcpts = tuple(recipients)
    literal = domain_literal(domain)
    if literal is not None:
        return DomainPlan(domain, rcpts, (MxTarget(literal, literal, port),))
    route = hops(domain, await resolver.mx(domain), port)
    if isinstance(route, DeliveryResult):
        return DomainPlan(domain, rcpts, outcome=route)
    hosts = list(dict.fromkeys(hop.host for hop in route))
    answers = await asyncio.gather(*(resolver.addresses(host) for host in hosts))
    found = targets(domain, route, dict(zip(hosts, answers, strict=True)), limit)
    if isinstance(found, DeliveryResult):
        return DomainPlan(domain, rcpts, outcome=found)
    return DomainPlan(domain, rcpts, found)


async def plan_message(
    resolver: Resolver,
    recipients: Iterable[str],
    port: int,
    limit: int = DEFAULT_TARGET_LIMIT,
) -> list[DomainPlan]:
    """One plan per recipient domain of a message, looked up concurrently."""
    groups = group_by_domain(recipients)
    return list(
        await asyncio.gather(
            *(plan_domain(resolver, domain, rcpts, port, limit) for domain, rcpts in groups.items())
        )
    )


def outcomes(plan: DomainPlan) -> dict[str, DeliveryResult]:
    """Per-recipient results for a plan that makes no connection (empty otherwise)."""
    if plan.outcome is None:
        return {}
    return dict.fromkeys(plan.recipients, plan.outcome)
