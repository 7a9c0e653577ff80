"""The reputation score as a pure function over recorded counts (issue 21)."""

from __future__ import annotations

import pytest

from gateway.errors import ConfigError
from gateway.reputation.score import (
    AT_RISK,
    BLOCKLIST_LISTINGS,
    COLLECTING,
    COMPLAINT_RATE,
    DEFERRAL_RATE,
    DKIM_MISSING,
    DMARC_MISSING,
    HARD_BOUNCE_RATE,
    OK,
    SPF_MISSING,
    Counts,
    DomainSetup,
    Inputs,
    Window,
    load_thresholds,
    score,
)

T = load_thresholds()


def both(week: Counts, month: Counts | None = None, **extra: object) -> Inputs:
    return Inputs((Window(7, week), Window(30, month or week)), **extra)  # type: ignore[arg-type]


def points(result: object, signal: str) -> int:
    return next(c.points for c in result.components if c.signal == signal)  # type: ignore[attr-defined]


def test_the_shipped_thresholds_are_the_published_ones() -> None:
    assert T.min_delivered == 100
    assert T.windows == (7, 30)
    complaint = {s.at: s.source for s in T.signals[COMPLAINT_RATE]}
    assert "gmail" in complaint[0.001] and "gmail" in complaint[0.003] and "ses" in complaint[0.005]
    bounce = {s.at: s.source for s in T.signals[HARD_BOUNCE_RATE]}
    assert "ses" in bounce[0.05] and "ses" in bounce[0.10]


def test_no_volume_is_collecting_not_a_number() -> None:
    result = score(both(Counts()), T)
    assert result.score is None and result.status == COLLECTING
    assert result.window_days is None


def test_below_the_minimum_volume_is_collecting_even_with_bad_rates() -> None:
    result = score(both(Counts(delivered=99, hard_bounces=50)), T)
    assert result.score is None and result.status == COLLECTING
    # the values are still shown, as they would cost
    assert points(result, HARD_BOUNCE_RATE) == 70


def test_clean_volume_scores_100() -> None:
    result = score(both(Counts(delivered=1000)), T)
    assert result.score == 100 and result.status == OK and result.window_days == 7


def test_one_window_bad_the_worse_counts() -> None:
    week = Counts(delivered=1000, complaints=3)  # 0.3 %: Gmail's never
    month = Counts(delivered=10_000, complaints=3)  # 0.03 %: fine
    result = score(both(week, month), T)
    assert result.window_days == 7 and result.score == 40 and result.status == AT_RISK
    result = score(both(Counts(delivered=1000), Counts(delivered=2000, hard_bounces=250)), T)
    assert result.window_days == 30 and points(result, HARD_BOUNCE_RATE) == 70


def test_a_quiet_week_leaves_the_month_to_count() -> None:
    result = score(both(Counts(delivered=5, complaints=5), Counts(delivered=1000)), T)
    assert result.score == 100 and result.window_days == 30


@pytest.mark.parametrize(
    ("complaints", "expected"),
    [(4, 0), (5, 10), (9, 10), (10, 35), (29, 35), (30, 60), (49, 60), (50, 80)],
)
def test_complaint_rate_edges(complaints: int, expected: int) -> None:
    result = score(both(Counts(delivered=10_000, complaints=complaints)), T)
    assert points(result, COMPLAINT_RATE) == expected
    assert result.score == 100 - expected


@pytest.mark.parametrize(
    ("bounces", "expected"), [(19, 0), (20, 10), (49, 10), (50, 35), (99, 35), (100, 70)]
)
def test_hard_bounce_rate_edges(bounces: int, expected: int) -> None:
    counts = Counts(delivered=1000 - bounces, hard_bounces=bounces)  # rate = bounces / 1000
    assert points(score(both(counts), T), HARD_BOUNCE_RATE) == expected


@pytest.mark.parametrize(("deferrals", "expected"), [(99, 0), (100, 5), (200, 15), (400, 30)])
def test_deferral_rate_edges(deferrals: int, expected: int) -> None:
    counts = Counts(delivered=1000 - deferrals, deferrals=deferrals)
    assert points(score(both(counts), T), DEFERRAL_RATE) == expected


@pytest.mark.parametrize(("listings", "expected"), [(None, 0), (0, 0), (1, 30), (2, 50), (5, 70)])
def test_blocklist_edges(listings: int | None, expected: int) -> None:
    result = score(both(Counts(delivered=1000), listings=listings), T)
    assert points(result, BLOCKLIST_LISTINGS) == expected


def test_domain_setup_each_missing_record_costs_and_unknown_costs_nothing() -> None:
    setup = DomainSetup(spf=False, dkim=True, dmarc=None)
    result = score(both(Counts(delivered=1000), setup=setup), T)
    assert points(result, SPF_MISSING) == 10
    assert points(result, DKIM_MISSING) == 0
    assert points(result, DMARC_MISSING) == 0
    assert result.score == 90
    assert not any(
        c.signal == SPF_MISSING for c in score(both(Counts(delivered=1000)), T).components
    )


def test_the_threshold_edge_70_is_not_at_risk_69_is() -> None:
    # 0.1 % complaints (35) costs 30 more with one listing: 35 points -> 65
    at_70 = score(both(Counts(delivered=1000), listings=1), T)  # 100 - 30 = 70
    assert at_70.score == 70 and at_70.status == OK
    below = score(both(Counts(delivered=1000), listings=1), T, at_risk_below=71)
    assert below.status == AT_RISK


def test_the_score_never_goes_below_zero() -> None:
    counts = Counts(delivered=1000, hard_bounces=500, complaints=100, deferrals=1000)
    result = score(both(counts, listings=3, setup=DomainSetup(False, False, False)), T)
    assert result.score == 0


def test_components_as_json_name_value_points_and_rule() -> None:
    result = score(both(Counts(delivered=1000, complaints=1)), T)
    first = next(c.as_json() for c in result.components if c.signal == COMPLAINT_RATE)
    assert first == {
        "signal": COMPLAINT_RATE,
        "value": 0.001,
        "points": 35,
        "window_days": 7,
        "rule": "gmail: keep spam rate under 0.1 %; ses: review at 0.1 %",
    }


@pytest.mark.parametrize(
    "text",
    [
        "windows = [7]",
        "min_delivered = 0\nwindows = [7]",
        "min_delivered = 1\nwindows = []",
        'min_delivered = 1\nwindows = [7]\n[[signal]]\nname = "nope"\nsteps = [{at=1, points=1}]',
        'min_delivered = 1\nwindows = [7]\n[[signal]]\nname = "complaint_rate"\n'
        "steps = [{at=0.5, points=10}, {at=0.1, points=20}]",
        "min_delivered = [",
    ],
)
def test_bad_thresholds_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        load_thresholds(text)
