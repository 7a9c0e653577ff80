"""Warmup schedules, pure: which day of its warmup a subject is on, that day's limit, and
the hourly cap that spreads it over the day. No I/O; the time is an argument.

A schedule is a named preset (a day-by-day table of daily volumes) or a linear ramp
"start N, +k per day, up to C". Day 1 is the warmup's start day; a day is a calendar day in
the warmup's time zone (zoneinfo), so it rolls at local midnight, and a day of 23 or 25
hours (a DST change) is still one day. After the last day the warmup is `complete` and
limits nothing any more.

The presets are Postern's own tables, shaped like the ramps the big senders publish
(SendGrid's and Mailgun's IP warm-up guides start at tens to a few hundred a day and about
double at first, then grow by a third to a half a day; Amazon SES's automatic warm-up of a
dedicated IP takes about 45 days): start small, grow fast while the numbers are small,
slower as they grow.

    conservative  30 days, 20 -> 3,500 a day: a new domain or mailbox, mixed mail
    transactional 21 days, 50 -> 10,000 a day: receipts, resets, alerts (people expect them,
                  so complaints are rare and engagement high)
    aggressive    14 days, 50 -> 15,000 a day: an established domain on a new IP or
                  provider, clean lists only

Volumes are messages (one upstream transaction each, as pool limits count them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from storage.errors import InvalidInput

PRESETS: dict[str, tuple[int, ...]] = {
    "conservative": (
        20, 30, 40, 50, 65, 80, 100, 125, 150, 180,
        220, 260, 300, 350, 400, 475, 550, 650, 750, 875,
        1000, 1150, 1300, 1500, 1750, 2000, 2300, 2650, 3000, 3500,
    ),
    "transactional": (
        50, 75, 100, 150, 200, 300, 400, 500, 650, 800,
        1000, 1250, 1500, 2000, 2500, 3000, 4000, 5000, 6500, 8000, 10000,
    ),
    "aggressive": (
        50, 100, 200, 400, 700, 1000, 1500, 2000, 3000, 4500, 6000, 8000, 10000, 15000,
    ),
}  # fmt: skip

# The largest linear ramp accepted: a warmup longer than a year is a mistake, not a plan.
MAX_DAYS = 366
MAX_VOLUME = 10_000_000


class ScheduleError(InvalidInput):
    """A schedule that cannot be: an unknown preset, a ramp that never ends, a bad zone."""


@dataclass(frozen=True)
class Schedule:
    """A preset (`preset` set) or a linear ramp (`start`, `step`, `cap`)."""

    preset: str | None = None
    start: int = 0
    step: int = 0
    cap: int = 0

    def __post_init__(self) -> None:
        if self.preset is not None:
            if self.preset not in PRESETS:
                known = ", ".join(PRESETS)
                raise ScheduleError(f"unknown preset {self.preset!r} (known: {known})")
            return
        if not 1 <= self.start <= MAX_VOLUME or not 1 <= self.cap <= MAX_VOLUME:
            raise ScheduleError(f"start and cap must be from 1 to {MAX_VOLUME}")
        if self.cap < self.start:
            raise ScheduleError("cap must be at least start")
        if self.step < 1 and self.cap > self.start:
            raise ScheduleError("step must be at least 1")
        if self.days > MAX_DAYS:
            raise ScheduleError(f"the ramp would last {self.days} days (at most {MAX_DAYS})")

    @property
    def days(self) -> int:
        """How many days the warmup lasts (the last is the first at full volume)."""
        if self.preset is not None:
            return len(PRESETS[self.preset])
        if self.cap == self.start:
            return 1
        return math.ceil((self.cap - self.start) / self.step) + 1

    def limit(self, day: int) -> int | None:
        """The daily limit on `day` (1-based); None before day 1 and after the last."""
        if day < 1 or day > self.days:
            return None
        if self.preset is not None:
            return PRESETS[self.preset][day - 1]
        return min(self.cap, self.start + self.step * (day - 1))

    def describe(self) -> str:
        if self.preset is not None:
            return f"preset {self.preset}"
        return f"start {self.start}, +{self.step} a day, up to {self.cap}"


def zone(name: str) -> ZoneInfo:
    """The time zone called `name` (ScheduleError when zoneinfo knows none)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ScheduleError(f"unknown time zone {name!r}") from error


def local_day(now: float, tz: str) -> date:
    """The calendar day `now` falls on in time zone `tz`."""
    return datetime.fromtimestamp(now, zone(tz)).date()


def day_key(now: float, tz: str) -> str:
    """The day counters' key: YYYY-MM-DD of the local day."""
    return local_day(now, tz).isoformat()


def next_midnight(now: float, tz: str) -> float:
    """When the local day after `now`'s begins (UNIX seconds). Midnight always exists in
    the zones zoneinfo ships except where a DST change skips it; then the first moment of
    that day (datetime folds it forward)."""
    tomorrow = local_day(now, tz) + timedelta(days=1)
    start = datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=zone(tz))
    return start.timestamp()


def day_number(start_day: str, now: float, tz: str) -> int:
    """Which day of the warmup `now` is: 1 on `start_day` (YYYY-MM-DD, local), 0 or less
    before it."""
    return (local_day(now, tz) - date.fromisoformat(start_day)).days + 1


def shifted_start(day: int, now: float, tz: str) -> str:
    """The start day that makes `now` day `day` (a resume goes on from the paused day)."""
    return (local_day(now, tz) - timedelta(days=day - 1)).isoformat()


def hourly_cap(daily: int, active_hours: int, burst: float) -> int:
    """At most this many sends in any rolling hour: the daily limit spread evenly over
    `active_hours`, rounded up, plus a small burst (`burst` of it, at least one) so an
    hour after a quiet one can catch up a little. Never above the daily limit."""
    even = math.ceil(daily / max(1, active_hours))
    return min(daily, even + max(1, math.floor(even * burst)))
