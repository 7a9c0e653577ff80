"""The delays of delivery's slow-downs (gateway.delivery.slowdown): pure functions."""

from __future__ import annotations

import pytest

from gateway.delivery.slowdown import NO_POOL_WAIT, NO_POOL_WAIT_MAX, cooldown, halved, no_pool_wait


@pytest.mark.parametrize(("cap", "after"), [(8, 4), (3, 1), (1, 1)])
def test_backoff_halves_the_cap_never_below_one(cap: int, after: int) -> None:
    assert halved(cap) == after


@pytest.mark.parametrize(
    ("failures", "pause"), [(1, None), (2, None), (3, 10.0), (4, 20.0), (5, 40.0), (12, 300.0)]
)
def test_a_pool_cools_down_from_its_third_failure_doubling_to_five_minutes(
    failures: int, pause: float | None
) -> None:
    assert cooldown(failures, 10.0) == pause


def test_a_message_waiting_for_a_pool_backs_off_while_the_reason_stays() -> None:
    now = 10_000.0
    assert no_pool_wait(None, "waiting", now - 5, now) == NO_POOL_WAIT
    assert no_pool_wait("other", "waiting", now - 500, now) == NO_POOL_WAIT
    assert no_pool_wait("waiting", "waiting", now - 100, now) == 200.0
    assert no_pool_wait("waiting", "waiting", now - 5, now) == NO_POOL_WAIT
    assert no_pool_wait("waiting", "waiting", now - 5000, now) == NO_POOL_WAIT_MAX
