"""The warmup schedules' maths (storage.warmup_schedule): presets, the linear ramp, the
day number in a time zone (midnight roll, DST days), the hourly cap."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from storage.warmup_schedule import (
    PRESETS,
    Schedule,
    ScheduleError,
    day_key,
    day_number,
    hourly_cap,
    next_midnight,
    shifted_start,
)


def at(text: str, tz: str = "UTC") -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


@pytest.mark.parametrize(
    ("preset", "days", "first", "last"),
    [
        ("conservative", 30, 20, 3500),
        ("transactional", 21, 50, 10000),
        ("aggressive", 14, 50, 15000),
    ],
)
def test_presets_have_their_documented_length_and_ends(
    preset: str, days: int, first: int, last: int
) -> None:
    schedule = Schedule(preset=preset)
    assert schedule.days == days == len(PRESETS[preset])
    assert schedule.limit(1) == first and schedule.limit(days) == last
    assert schedule.limit(0) is None and schedule.limit(days + 1) is None
    volumes = PRESETS[preset]
    assert all(a < b for a, b in itertools.pairwise(volumes))  # always growing


def test_linear_ramp_grows_by_step_and_stops_at_the_cap() -> None:
    schedule = Schedule(start=50, step=30, cap=200)
    assert [schedule.limit(day) for day in range(1, 8)] == [50, 80, 110, 140, 170, 200, None]
    assert schedule.days == 6  # the first day at 200 is the last
    assert Schedule(start=100, step=0, cap=100).days == 1
    assert Schedule(start=10, step=100, cap=50).limit(2) == 50  # never above the cap


@pytest.mark.parametrize(
    "bad",
    [
        {"preset": "reckless"},
        {"start": 0, "step": 1, "cap": 10},
        {"start": 20, "step": 1, "cap": 10},
        {"start": 1, "step": 0, "cap": 10},
        {"start": 1, "step": 1, "cap": 1000},  # 1000 days
    ],
)
def test_impossible_schedules_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ScheduleError):
        Schedule(**bad)  # type: ignore[arg-type]


def test_the_day_rolls_at_local_midnight() -> None:
    tz = "America/New_York"
    start = "2026-03-02"
    assert day_number(start, at("2026-03-02T00:00:00", tz), tz) == 1
    assert day_number(start, at("2026-03-02T23:59:59", tz), tz) == 1
    assert day_number(start, at("2026-03-03T00:00:00", tz), tz) == 2
    assert day_number(start, at("2026-03-01T23:59:59", tz), tz) == 0  # not started
    # 03:00 UTC on the 3rd is still the 2nd in New York (UTC-5): day 1 there, day 2 in UTC.
    moment = datetime(2026, 3, 3, 3, 0, tzinfo=UTC).timestamp()
    assert day_number(start, moment, tz) == 1
    assert day_number(start, moment, "UTC") == 2
    assert day_key(moment, tz) == "2026-03-02"


@pytest.mark.parametrize(
    ("tz", "day", "hours"),
    [
        ("Europe/Paris", "2026-03-29", 23),  # spring forward: a 23-hour day
        ("Europe/Paris", "2026-10-25", 25),  # fall back: a 25-hour day
        ("America/New_York", "2026-03-08", 23),
        ("UTC", "2026-03-29", 24),
    ],
)
def test_a_dst_day_is_one_day_of_its_true_length(tz: str, day: str, hours: int) -> None:
    midnight = at(f"{day}T00:00:00", tz)
    assert next_midnight(midnight, tz) - midnight == hours * 3600
    assert next_midnight(midnight + 3600 * (hours - 0.5), tz) - midnight == hours * 3600
    assert day_number(day, midnight + 3600 * (hours - 0.5), tz) == 1
    assert day_number(day, next_midnight(midnight, tz), tz) == 2


def test_a_zone_whose_midnight_a_dst_change_skips() -> None:
    # America/Havana springs forward at midnight: 2026-03-08 starts at 01:00 local.
    tz = "America/Havana"
    before = at("2026-03-07T12:00:00", tz)
    start = next_midnight(before, tz)
    assert day_key(start, tz) == "2026-03-08"
    assert day_key(start - 1, tz) == "2026-03-07"


def test_resume_goes_on_from_the_paused_day() -> None:
    tz = "Europe/Paris"
    now = at("2026-05-20T10:00:00", tz)
    start = shifted_start(4, now, tz)
    assert start == "2026-05-17"
    assert day_number(start, now, tz) == 4


@pytest.mark.parametrize(
    ("daily", "hours", "burst", "cap"),
    [
        (20, 24, 0.2, 2),  # ceil(20/24) = 1, +1 burst
        (1000, 24, 0.2, 50),  # ceil(1000/24) = 42, +8
        (100, 10, 0.0, 11),  # 10 an hour, the burst at least one
        (3, 1, 0.5, 3),  # never above the day's limit
        (4, 2, 0.2, 3),
    ],
)
def test_hourly_cap_spreads_the_day(daily: int, hours: int, burst: float, cap: int) -> None:
    assert hourly_cap(daily, hours, burst) == cap
