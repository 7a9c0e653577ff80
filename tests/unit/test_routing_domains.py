"""Routes by recipient domain (Postfix's transport maps) in the routing engine: pure
functions over plain data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gateway.message import Route
from gateway.routing import (
    AccountView,
    AliasView,
    DomainRoute,
    InvalidRouteDomain,
    NoActivePool,
    choose_routes,
    domain_route_of,
    route_domain,
)


@dataclass(frozen=True)
class Pool:
    id: str
    name: str
    ip_pool: str = "transactional"
    priority: int = 100
    is_default: bool = False
    is_active: bool = True


MAIN = Pool("pool_main", "main", is_default=True)
GMAIL = Pool("pool_gmail", "gmail-relay", ip_pool="bulk")
PAUSED = Pool("pool_paused", "paused", ip_pool="cold", is_active=False)
POOLS = (MAIN, GMAIL, PAUSED)
ROUTES = (
    DomainRoute("gmail.com", pool="gmail-relay"),
    DomainRoute(".example.com", ip_pool="bulk"),
    DomainRoute(".corp.example.com", pool="main"),
)


def routes_of(*recipients: str, alias_id: str | None = None) -> list[tuple[Route, tuple[str, ...]]]:
    return choose_routes(alias_id, "app@sender.test", recipients, POOLS, domain_routes=ROUTES)


def test_recipients_in_several_routes_are_split_one_group_per_route_in_order() -> None:
    assert routes_of("a@other.test", "b@Gmail.COM", "c@x.example.com", "d@gmail.com.") == [
        (Route(pool_id="pool_main", default=True), ("a@other.test",)),
        (Route(pool_id="pool_gmail"), ("b@Gmail.COM", "d@gmail.com.")),
        (Route(ip_pool="bulk"), ("c@x.example.com",)),
    ]


def test_groups_that_come_to_the_same_route_are_one() -> None:
    both = choose_routes(
        None, "app@sender.test", ["a@gmail.com", "b@x.example.com"], POOLS,
        domain_routes=(DomainRoute("gmail.com", ip_pool="bulk"), ROUTES[1]),
    )  # fmt: skip
    assert both == [(Route(ip_pool="bulk"), ("a@gmail.com", "b@x.example.com"))]


def test_no_entry_matches_one_default_group() -> None:
    assert routes_of("a@other.test", "b@else.test") == [
        (Route(pool_id="pool_main", default=True), ("a@other.test", "b@else.test"))
    ]


def test_a_suffix_matches_subdomains_only_and_the_most_specific_wins() -> None:
    assert domain_route_of("a@example.com", ROUTES) is None  # .example.com: subdomains only
    assert domain_route_of("a@mx.example.com", ROUTES) == ROUTES[1]
    assert domain_route_of("a@deep.corp.example.com", ROUTES) == ROUTES[2]
    exact = DomainRoute("corp.example.com", ip_pool="exact")
    assert domain_route_of("a@corp.example.com", (*ROUTES, exact)) == exact
    assert domain_route_of("a@gmail.com.evil.test", ROUTES) is None
    assert domain_route_of("a@notgmail.com", ROUTES) is None


def test_on_a_tie_the_first_entry_wins_the_configs_come_first() -> None:
    config = DomainRoute("gmail.com", pool="main", source="config")
    api = DomainRoute("gmail.com", pool="gmail-relay", source="api", id="rte_1")
    assert domain_route_of("a@gmail.com", (config, api)) == config


def test_alias_id_account_and_from_alias_come_before_the_recipient_domain() -> None:
    recipients = ("a@gmail.com", "b@x.example.com")
    named = routes_of(*recipients, alias_id="pool_main")
    assert named == [(Route(pool_id="pool_main"), recipients)]
    account = AccountView("acc_1", "me@sender.test")
    pinned = choose_routes(None, "me@sender.test", recipients, POOLS, accounts=(account,),
                           domain_routes=ROUTES)  # fmt: skip
    assert pinned == [(Route(pool_id="acc_1"), recipients)]
    alias = AliasView("alias_1", "app@sender.test", "transactional")
    by_from = choose_routes(None, "app@sender.test", recipients, POOLS, (alias,),
                            domain_routes=ROUTES)  # fmt: skip
    assert by_from == [(Route(ip_pool="transactional"), recipients)]


def test_a_route_to_a_pool_that_is_gone_or_paused_is_refused_as_no_active_pool() -> None:
    gone = (DomainRoute("gmail.com", pool="deleted"),)
    with pytest.raises(NoActivePool, match="deleted"):
        choose_routes(None, "a@s.test", ["x@gmail.com"], POOLS, domain_routes=gone)
    cold = (DomainRoute("gmail.com", ip_pool="cold"),)
    with pytest.raises(NoActivePool, match="cold"):
        choose_routes(None, "a@s.test", ["x@gmail.com"], POOLS, domain_routes=cold)


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("gmail.com", "gmail.com"),
        ("Gmail.COM", "gmail.com"),
        (".Example.com", ".example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("localhost", "localhost"),
    ],
)
def test_route_domains_are_stored_lower_case_a_labels(given: str, stored: str) -> None:
    assert route_domain(given) == stored


@pytest.mark.parametrize(
    "bad", ["", ".", "..example.com", "a..b", "-a.com", "a-.com", " gmail.com", "a b.com",
            "x@gmail.com", "*.example.com", "a" * 64 + ".com"],
)  # fmt: skip
def test_what_is_no_domain_is_refused(bad: str) -> None:
    with pytest.raises(InvalidRouteDomain):
        route_domain(bad)
