"""The retry policy: when a deferred message is tried again, and when it expires.

Pure: no I/O, and the time is an argument. A failed attempt (a 4xx, a drop, a timeout)
takes one step of the schedule; an attempt an operator's retry asked for takes none. The
schedule's last interval repeats until max_age after the message was accepted; then the
message bounces (gateway.queue.states.expire).

This is the message's own slow-down, the one that counts attempts. The others (an
upstream's 421, a failing pool, our own rate limits, a route with no active pool) are
named in gateway.delivery.slowdown.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


def deadline(created_at: float, max_age: float) -> float:
    """When a message accepted at `created_at` expires: it gets its last attempt then."""
    return created_at + max_age


def steps_after(steps_taken: int, forced: bool) -> int:
    """The schedule's position after one more failed attempt.

    A forced attempt takes no step: the wait after it is the one the message was on (the
    first, if it never failed), and its next failure takes the next step.
    """
    return steps_taken + (0 if forced else 1)


def next_attempt(
    steps: int,
    created_at: float,
    now: float,
    schedule: Sequence[float],
    max_age: float,
    jitter: float = 0.1,
    rng: random.Random | None = None,
) -> float | None:
    """When to try again after `steps` steps of the schedule, or None once the message has
    expired. Each failed attempt takes one step, except one an operator's retry asked for.

    The schedule's last interval repeats; up to `jitter` of the interval is added so that a
    burst of deferred mail does not come back all at once. The last retry falls exactly at
    the deadline, so a message always gets one attempt at max_age before it bounces.
    """
    end = deadline(created_at, max_age)
    if now >= end:
        return None
    interval = schedule[min(max(steps, 1), len(schedule)) - 1]
    interval += interval * jitter * (rng or random).random()
    return min(now + interval, end)
