"""The routing engine (gateway.routing): pure functions, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gateway.message import Route
from gateway.routing import (
    AliasNotVerified,
    AliasView,
    NoActivePool,
    UnknownRoute,
    at_attempt,
    candidates,
    choose_route,
    current,
    default_route,
    within_groups,
)


@dataclass(frozen=True)
class FakePool:
    id: str
    ip_pool: str = "transactional"
    priority: int = 100
    is_default: bool = False
    is_active: bool = True


SES = FakePool("pool_ses", "transactional", priority=10)
POSTMARK = FakePool("pool_postmark", "transactional", priority=20)
BULK_A = FakePool("pool_bulk_a", "marketing", priority=5)
BULK_B = FakePool("pool_bulk_b", "marketing", priority=1)
INTERNAL = FakePool("pool_internal", "internal", priority=50, is_default=True)
POOLS = (SES, POSTMARK, BULK_A, BULK_B)

NEWS = AliasView("alias_news", "news@example.com", "marketing")
ALERTS = AliasView("alias_alerts", "alerts@example.com", None)
ALIASES = (NEWS, ALERTS)


# --- choose_route -------------------------------------------------------------------------


def test_alias_id_naming_a_pool_selects_that_pool() -> None:
    assert choose_route("pool_bulk_a", "app@example.com", POOLS, ALIASES) == Route(
        pool_id="pool_bulk_a"
    )


def test_alias_id_naming_an_alias_selects_its_group() -> None:
    assert choose_route("alias_news", "app@example.com", POOLS, ALIASES) == Route(
        ip_pool="marketing"
    )


def test_alias_id_beats_the_from_alias_and_the_default() -> None:
    pools = (*POOLS, INTERNAL)
    assert choose_route("pool_ses", "news@example.com", pools, ALIASES) == Route(pool_id="pool_ses")


def test_alias_without_group_selects_transactional() -> None:
    assert choose_route("alias_alerts", "app@example.com", POOLS, ALIASES) == Route(
        ip_pool="transactional"
    )


@pytest.mark.parametrize("alias_id", ["alias_nope", "POOL_SES", "pool_ses "])
def test_unknown_alias_id_is_refused(alias_id: str) -> None:
    with pytest.raises(UnknownRoute):
        choose_route(alias_id, "app@example.com", POOLS, ALIASES)


def test_unknown_alias_id_is_refused_even_without_pools() -> None:
    with pytest.raises(UnknownRoute):
        choose_route("alias_nope", "app@example.com", (), ())


@pytest.mark.parametrize("sender", ["news@example.com", "News@Example.COM", '"news"@example.com'])
def test_from_matching_an_alias_selects_its_group(sender: str) -> None:
    pools = (*POOLS, INTERNAL)  # even with a default pool configured
    assert choose_route(None, sender, pools, ALIASES) == Route(ip_pool="marketing")


def test_default_pool_when_nothing_else_matches() -> None:
    pools = (*POOLS, INTERNAL)
    default = Route(pool_id="pool_internal", default=True)
    assert choose_route(None, "app@example.com", pools, ALIASES) == default
    assert choose_route("", "app@example.com", pools, ALIASES) == default


def test_inactive_default_pool_is_not_the_default() -> None:
    inactive = FakePool("pool_old", "internal", is_default=True, is_active=False)
    assert choose_route(None, "app@example.com", (*POOLS, inactive)) == Route(
        ip_pool="transactional", default=True
    )


def test_transactional_group_without_a_default_pool() -> None:
    route = choose_route(None, "app@example.com", POOLS, ALIASES)
    assert route == Route(ip_pool="transactional", default=True)


def test_first_pools_group_without_default_or_transactional() -> None:
    pools = (BULK_A, FakePool("pool_x", "internal", priority=3), BULK_B)
    # BULK_B has the lowest priority number.
    assert choose_route(None, "app@example.com", pools) == Route(ip_pool="marketing", default=True)


def test_no_pools_means_direct_delivery() -> None:
    route = choose_route(None, "app@example.com", (), ALIASES[1:])
    assert route == Route(default=True)
    assert route.direct


def test_only_inactive_pools_means_waiting_not_direct_delivery() -> None:
    """Every pool paused: the default route among them (it waits), never direct MX."""
    off = FakePool("pool_off", is_active=False)
    route = choose_route(None, "app@example.com", (off,))
    assert route == Route(ip_pool="transactional", default=True) and not route.direct
    assert candidates(route, (off,)) == []
    old_default = FakePool("pool_old", "internal", is_default=True, is_active=False)
    assert default_route([off, old_default]) == Route(pool_id="pool_old", default=True)


def test_default_route_alone() -> None:
    assert default_route([]) == Route(default=True)
    assert default_route([BULK_A, INTERNAL]) == Route(pool_id="pool_internal", default=True)


def test_a_default_route_follows_the_current_default_an_explicit_one_keeps_to_its_pool() -> None:
    queued = Route(pool_id="pool_internal", default=True)
    new_default = FakePool("pool_new", "internal", is_default=True)
    old = FakePool("pool_internal", "internal", priority=50, is_active=False)
    assert current(queued, (old, new_default)) == Route(pool_id="pool_new", default=True)
    explicit = Route(pool_id="pool_internal")
    assert current(explicit, (old, new_default)) == explicit


# --- candidates ---------------------------------------------------------------------------


def test_candidates_by_priority() -> None:
    assert candidates(Route(ip_pool="transactional"), POOLS) == ["pool_ses", "pool_postmark"]
    assert candidates(Route(ip_pool="marketing"), POOLS) == ["pool_bulk_b", "pool_bulk_a"]


def test_candidates_ties_are_stable() -> None:
    twins = (FakePool("pool_b", priority=1), FakePool("pool_a", priority=1))
    assert candidates(Route(ip_pool="transactional"), twins) == ["pool_a", "pool_b"]


def test_candidates_skip_deactivated_pools() -> None:
    off = FakePool("pool_off", "transactional", priority=0, is_active=False)
    assert candidates(Route(ip_pool="transactional"), (*POOLS, off)) == [
        "pool_ses",
        "pool_postmark",
    ]


def test_candidates_for_one_pool() -> None:
    assert candidates(Route(pool_id="pool_postmark"), POOLS) == ["pool_postmark"]


def test_a_route_to_a_vanished_pool_or_group_has_no_candidates() -> None:
    """Queued mail waits for its own pool or group: never the default, never direct."""
    pools = (*POOLS, INTERNAL)
    assert candidates(Route(pool_id="pool_deleted"), pools) == []
    assert candidates(Route(ip_pool="gone"), pools) == []


def test_a_route_to_a_deactivated_pool_has_no_candidates() -> None:
    off = FakePool("pool_off", "transactional", is_active=False)
    assert candidates(Route(pool_id="pool_off"), (*POOLS, off)) == []


def test_vanished_route_without_any_pool_has_no_candidates() -> None:
    assert candidates(Route(pool_id="pool_deleted"), ()) == []
    assert candidates(Route(), POOLS) == []  # direct stays direct


# --- verified aliases (issue 4) -------------------------------------------------------------


def test_an_unverified_alias_does_not_claim_mail_by_its_from() -> None:
    pending = AliasView("alias_pending", "promo@example.com", "marketing", is_verified=False)
    assert choose_route(None, "promo@example.com", POOLS, (pending,)) == Route(
        ip_pool="transactional", default=True
    )
    verified = AliasView("alias_ok", "promo@example.com", "marketing", is_verified=True)
    assert choose_route(None, "promo@example.com", POOLS, (verified,)) == Route(ip_pool="marketing")


def test_an_alias_id_naming_an_unverified_alias_is_refused() -> None:
    pending = AliasView("alias_pending", "promo@example.com", "marketing", is_verified=False)
    with pytest.raises(AliasNotVerified):
        choose_route("alias_pending", "app@example.com", POOLS, (pending,))


# --- no silent fallback: the pool or group asked for, or a refusal ---------------------------


def test_alias_id_naming_an_inactive_pool_is_refused() -> None:
    off = FakePool("pool_off", "transactional", is_active=False)
    with pytest.raises(NoActivePool, match="pool pool_off"):
        choose_route("pool_off", "app@example.com", (*POOLS, off, INTERNAL), ALIASES)


def test_an_alias_whose_group_has_no_active_pool_is_refused() -> None:
    lonely = AliasView("alias_lonely", "lonely@example.com", "newsletter")
    off = FakePool("pool_off", "newsletter", is_active=False)
    for pools in ((*POOLS, INTERNAL), (*POOLS, off), ()):
        with pytest.raises(NoActivePool, match="ip_pool newsletter"):
            choose_route("alias_lonely", "app@example.com", pools, (lonely,))
        with pytest.raises(NoActivePool):  # its From claims the group just the same
            choose_route(None, "Lonely@example.com", pools, (lonely,))


def test_from_matching_compares_the_domain_case_insensitively_and_as_a_labels() -> None:
    idn = AliasView("alias_idn", "news@xn--bcher-kva.example", "marketing")
    assert choose_route(None, "news@Bücher.example", POOLS, (idn,)) == Route(ip_pool="marketing")


def test_a_stored_route_without_pool_or_group_takes_the_default_while_pools_exist() -> None:
    """Written while no pool existed, or by an older node: never MX once pools exist."""
    assert current(Route(), (SES, INTERNAL)) == Route(pool_id="pool_internal", default=True)
    assert current(Route(), ()) == Route(default=True)


# --- at each attempt ------------------------------------------------------------------------


def test_an_attempt_tries_the_routes_pools_as_they_are_now() -> None:
    plan = at_attempt(Route(ip_pool="marketing"), POOLS)
    assert plan.pool_ids == ("pool_bulk_b", "pool_bulk_a") and not plan.waits
    followed = at_attempt(Route(pool_id="pool_ses", default=True), (*POOLS, INTERNAL))
    assert followed.route == Route(pool_id="pool_internal", default=True)
    assert followed.pool_ids == ("pool_internal",)


def test_an_attempt_without_an_active_pool_waits_and_says_why() -> None:
    plan = at_attempt(Route(pool_id="pool_deleted"), POOLS)
    assert plan.pool_ids == () and plan.waits and not plan.direct
    assert plan.unserved() == "waiting: no active pool for pool pool_deleted"


def test_an_attempt_without_any_pool_goes_direct() -> None:
    plan = at_attempt(Route(default=True), ())
    assert plan.direct and not plan.waits
    assert plan.unserved() == "no active pool, and direct delivery is off"


# --- a key limited to some groups -----------------------------------------------------------


def test_a_route_in_an_allowed_group_is_kept_to_it() -> None:
    default = Route(pool_id="pool_ses", default=True)
    assert within_groups(default, {"transactional"}, POOLS, named=False) == Route(
        pool_id="pool_ses"
    )


def test_an_unnamed_route_goes_through_the_keys_own_group_active_first() -> None:
    off = FakePool("pool_off", "internal", is_active=False)
    pools = (*POOLS, off)
    route = Route(ip_pool="transactional", default=True)
    assert within_groups(route, {"marketing", "internal"}, pools, named=False) == Route(
        ip_pool="marketing"
    )
    assert within_groups(route, {"internal"}, pools, named=False) == Route(ip_pool="internal")
    assert within_groups(route, {"unknown"}, pools, named=False) is None


def test_a_named_route_outside_the_keys_groups_is_not_permitted() -> None:
    assert within_groups(Route(pool_id="pool_ses"), {"marketing"}, POOLS, named=True) is None
