"""The routing engine's connected accounts (gateway.routing): an account is an upstream of
its own, pinned, in no group, never the default, with no failover; and delivery's registry,
which holds the accounts' upstreams beside the pools, never among them."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from gateway.delivery.upstream import PoolSettings, SessionSettings
from gateway.delivery.workers import PoolRegistry
from gateway.message import Route
from gateway.routing import (
    AccountView,
    AliasView,
    UnknownAccount,
    account_of,
    at_attempt,
    choose_route,
    default_route,
    pinned_account,
)


@dataclass(frozen=True)
class FakePool:
    id: str
    ip_pool: str = "transactional"
    priority: int = 100
    is_default: bool = False
    is_active: bool = True


SES = FakePool("pool_ses", priority=10, is_default=True)
BULK = FakePool("pool_bulk", "marketing")
POOLS = (SES, BULK)
ALICE = AccountView("0b9c5f4e-1d2a-4c3b-8e7f-111111111111", "Alice@Example.test")
BOB = AccountView("0b9c5f4e-1d2a-4c3b-8e7f-222222222222", "bob@example.test")
ACCOUNTS = (ALICE, BOB)
ALICE_ALIAS = AliasView("alias_alice", "alice@example.test", "marketing")


def test_account_id_pins_the_route_to_that_account() -> None:
    route = choose_route(None, "app@example.test", POOLS, account_id=BOB.id, accounts=ACCOUNTS)
    assert route == Route(pool_id=BOB.id)
    assert not route.default and not route.direct


def test_an_unknown_account_id_is_refused_never_a_fallback() -> None:
    with pytest.raises(UnknownAccount):
        choose_route(None, "alice@example.test", POOLS, account_id="nope", accounts=ACCOUNTS)


def test_from_an_accounts_address_any_case_pins_to_it() -> None:
    route = choose_route(None, "ALICE@example.TEST", POOLS, (ALICE_ALIAS,), accounts=ACCOUNTS)
    assert route == Route(pool_id=ALICE.id)  # the mailbox's server, before the alias's group


def test_alias_id_still_names_the_aliass_group_for_the_same_address() -> None:
    route = choose_route("alias_alice", ALICE.email, POOLS, (ALICE_ALIAS,), accounts=ACCOUNTS)
    assert route == Route(ip_pool="marketing")


def test_account_routes_need_no_pool_at_all() -> None:
    assert choose_route(None, ALICE.email, (), accounts=ACCOUNTS) == Route(pool_id=ALICE.id)


def test_other_senders_take_the_default_as_before() -> None:
    route = choose_route(None, "app@example.test", POOLS, accounts=ACCOUNTS)
    assert route == default_route(POOLS) == Route(pool_id=SES.id, default=True)


def test_at_attempt_goes_to_the_account_alone() -> None:
    plan = at_attempt(Route(pool_id=ALICE.id), POOLS, {ALICE.id, BOB.id})
    assert plan.pool_ids == (ALICE.id,) and not plan.waits


def test_a_disconnected_account_waits_and_never_fails_over() -> None:
    plan = at_attempt(Route(pool_id=ALICE.id), POOLS, {BOB.id})
    assert plan.pool_ids == () and plan.waits and not plan.direct


def test_pool_routes_ignore_the_accounts() -> None:
    plan = at_attempt(Route(default=True), POOLS, {ALICE.id})
    assert plan.pool_ids == (SES.id,)
    assert at_attempt(Route(ip_pool="marketing"), POOLS, {ALICE.id}).pool_ids == (BULK.id,)


def test_account_lookups() -> None:
    assert account_of("alice@EXAMPLE.test", ACCOUNTS) is ALICE
    assert account_of("", ACCOUNTS) is None
    assert pinned_account(Route(pool_id=BOB.id), ACCOUNTS) is BOB
    assert pinned_account(Route(pool_id=SES.id), ACCOUNTS) is None
    assert pinned_account(Route(ip_pool="marketing"), ACCOUNTS) is None


# --- the live registry: accounts beside the pools ------------------------------------------


async def test_the_registry_keeps_accounts_out_of_the_pools() -> None:
    registry = PoolRegistry(SessionSettings(local_hostname="postern.test"))
    pool = PoolSettings(id="pool_a", name="a", host="127.0.0.1", port=2525)
    account = PoolSettings(
        id=ALICE.id, name=ALICE.email, host="127.0.0.1", port=2526, ip_pool="", source="account"
    )
    registry.load([pool])
    registry.load_accounts([account])
    assert registry.settings() == [pool]  # routing's groups and defaults never see it
    assert registry.account_ids() == {ALICE.id}
    assert registry.get(ALICE.id).name == ALICE.email  # the metrics' pool label
    kept = registry.get(ALICE.id)
    registry.load([])  # the pools change: the account's upstream (and sessions) stay
    assert registry.get(ALICE.id) is kept
    registry.load_accounts([])  # disconnected
    assert registry.account_ids() == frozenset() and registry.all() == []
    await registry.close()


async def test_workers_share_a_pools_connections() -> None:
    """With 3 workers, each opens its share of max_connections (rounded up); reloading the
    same settings keeps the upstream (and its sessions)."""
    registry = PoolRegistry(SessionSettings(local_hostname="postern.test"), processes=3)
    pool = PoolSettings(id="pool_a", name="a", host="127.0.0.1", port=2525, max_connections=10)
    registry.load([pool])
    assert [s.max_connections for s in registry.settings()] == [4]
    kept = registry.get("pool_a")
    registry.load([pool])
    assert registry.get("pool_a") is kept
    await registry.close()


async def test_the_registrys_plans_follow_every_reload() -> None:
    """Delivery asks the registry for a route's plan, kept until the pools or the accounts
    change: each reload is seen by the next attempt."""
    registry = PoolRegistry(SessionSettings(local_hostname="postern.test"))
    first = PoolSettings(id="pool_a", name="a", host="127.0.0.1", port=2525, is_default=True)
    second = PoolSettings(id="pool_b", name="b", host="127.0.0.1", port=2526, is_default=True)
    account = PoolSettings(
        id=ALICE.id, name=ALICE.email, host="127.0.0.1", port=2527, ip_pool="", source="account"
    )
    default, pinned = Route(default=True), Route(pool_id=ALICE.id)
    registry.load([first])
    assert registry.plan(default).pool_ids == ("pool_a",)
    assert registry.plan(default) is registry.plan(default)  # worked out once
    assert registry.plan(pinned).waits  # no such account (yet)
    registry.load([second])
    assert registry.plan(default).pool_ids == ("pool_b",)
    registry.load([replace(second, is_active=False)])
    assert registry.plan(default).waits
    registry.load_accounts([account])
    assert registry.plan(pinned).pool_ids == (ALICE.id,)
    for route in (default, pinned):  # the same answers as routing's own
        assert registry.plan(route) == at_attempt(
            route, registry.settings(), registry.account_ids()
        )
    await registry.close()
