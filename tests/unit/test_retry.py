"""The retry schedule (gateway.queue.retry.next_attempt): a pure function, no I/O."""

from __future__ import annotations

import random

import pytest

from gateway.queue.retry import next_attempt

SCHEDULE = (60.0, 300.0, 900.0, 3600.0, 14400.0)
DAY = 86400.0
CREATED = 1_700_000_000.0


def at(attempts: int, now: float = CREATED + 10, max_age: float = 5 * DAY) -> float | None:
    return next_attempt(attempts, CREATED, now, SCHEDULE, max_age, jitter=0.0)


@pytest.mark.parametrize(
    ("attempts", "interval"),
    [(1, 60.0), (2, 300.0), (3, 900.0), (4, 3600.0), (5, 14400.0)],
)
def test_schedule_steps(attempts: int, interval: float) -> None:
    now = CREATED + 10
    assert at(attempts, now) == pytest.approx(now + interval)


@pytest.mark.parametrize("attempts", [6, 7, 50])
def test_last_interval_repeats(attempts: int) -> None:
    now = CREATED + 10
    assert at(attempts, now) == pytest.approx(now + 14400.0)


def test_zero_attempts_uses_the_first_step() -> None:
    now = CREATED + 10
    assert at(0, now) == pytest.approx(now + 60.0)


def test_single_step_schedule_repeats() -> None:
    now = CREATED + 10
    for attempts in (1, 2, 9):
        got = next_attempt(attempts, CREATED, now, [120.0], DAY, jitter=0.0)
        assert got == pytest.approx(now + 120.0)


def test_jitter_stays_within_bounds() -> None:
    rng = random.Random(1234)
    now = CREATED + 10
    for attempts in range(1, 8):
        interval = SCHEDULE[min(attempts, len(SCHEDULE)) - 1]
        for _ in range(200):
            got = next_attempt(attempts, CREATED, now, SCHEDULE, 30 * DAY, jitter=0.1, rng=rng)
            assert got is not None
            assert now + interval <= got <= now + interval * 1.1


def test_jitter_is_deterministic_with_a_seeded_random() -> None:
    now = CREATED + 10
    first = next_attempt(2, CREATED, now, SCHEDULE, DAY, jitter=0.1, rng=random.Random(7))
    second = next_attempt(2, CREATED, now, SCHEDULE, DAY, jitter=0.1, rng=random.Random(7))
    assert first == second
    assert first == pytest.approx(now + 300.0 * (1 + 0.1 * random.Random(7).random()))


def test_jitter_spreads_a_burst() -> None:
    rng = random.Random(99)
    now = CREATED + 10
    times = {next_attempt(1, CREATED, now, SCHEDULE, DAY, rng=rng) for _ in range(50)}
    assert len(times) > 40


def test_capped_at_the_deadline() -> None:
    max_age = 1000.0
    deadline = CREATED + max_age
    now = deadline - 30  # the next step (300 s) would overshoot
    assert at(2, now, max_age) == deadline
    with_jitter = next_attempt(2, CREATED, now, SCHEDULE, max_age, rng=random.Random(3))
    assert with_jitter == deadline


def test_none_once_max_age_has_passed() -> None:
    max_age = 1000.0
    assert at(3, CREATED + max_age, max_age) is None  # exactly at the deadline
    assert at(3, CREATED + max_age + 1, max_age) is None
    assert at(1, CREATED, 0.0) is None  # max_age 0: no retry at all


def test_one_attempt_at_the_deadline_before_bouncing() -> None:
    """Walk the schedule: every retry is before or at the deadline; then None."""
    max_age = 3 * 3600.0
    now, attempts, times = CREATED, 0, []
    while True:
        attempts += 1
        nxt = next_attempt(attempts, CREATED, now, SCHEDULE, max_age, jitter=0.0)
        if nxt is None:
            break
        assert nxt > now
        times.append(nxt)
        now = nxt
        assert attempts < 100
    assert times[-1] == CREATED + max_age
    assert times[:4] == pytest.approx([CREATED + 60, CREATED + 360, CREATED + 1260, CREATED + 4860])
