"""gateway.process.descriptors: the doors' connection caps fitted under the open-file limit."""

from __future__ import annotations

import resource

import pytest

from gateway.process.descriptors import MIN_PER_DOOR, TooFewDescriptors, fit, raise_soft_limit


def test_caps_that_fit_are_kept() -> None:
    budget = fit({"smtp": 1000, "http": 1000}, limit=65536, reserve=320)
    assert budget.caps == {"smtp": 1000, "http": 1000} and not budget.lowered


def test_caps_that_do_not_fit_are_scaled_down_in_proportion() -> None:
    budget = fit({"smtp": 1000, "http": 500, "metrics": 32}, limit=1024, reserve=320)
    assert budget.lowered
    assert sum(budget.caps.values()) <= 1024 - 320
    assert abs(budget.caps["smtp"] - 2 * budget.caps["http"]) <= 1
    assert budget.caps["metrics"] == MIN_PER_DOOR  # never below a usable few...


def test_a_small_cap_is_never_raised() -> None:
    budget = fit({"smtp": 5000, "http": 3}, limit=1024, reserve=320)
    assert budget.caps["http"] == 3  # ...nor above what was configured


def test_a_limit_with_no_room_for_the_doors_is_refused() -> None:
    with pytest.raises(TooFewDescriptors, match="open-file limit"):
        fit({"smtp": 1000, "http": 1000}, limit=300, reserve=320)


def test_raise_soft_limit_reaches_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if hard != resource.RLIM_INFINITY and hard > 256:
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
            assert raise_soft_limit() == hard
            assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
        assert raise_soft_limit() == resource.getrlimit(resource.RLIMIT_NOFILE)[0]  # no-op
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
