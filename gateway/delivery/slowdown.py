"""Slowing down: every way delivery holds back, named in one place, and the delays of each.

Two things can slow down, a pool or one message, for four reasons. They are not one
mechanism (each counts and lasts differently), but they share this vocabulary:

  BACKOFF   asked for by the upstream (a 421 or a 4.7.x reply): the pool's connection cap
            is halved (`halved`) for a while. backoff.Backoff.
  COOLDOWN  the pool's own failures, three in a row (unreachable, or it refuses our
            session): the pool is skipped until its cool-down ends (`cooldown`).
            upstream.UpstreamPool.
  WAIT      our side: a pool's rate or daily limit (throttle), a route with no active pool
            (`no_pool_wait`), a retried message whose pools all cool down: one message
            goes back to the queue until `Wait.until` (`Postponed`, raised in workers,
            stored by Queue.postpone), with NO attempt counted.
  RETRY     the upstream, for this message (a 4xx, a drop, a timeout): the message is due
            again on the retry schedule; the attempt counts, and max_age expires it.
            gateway.queue.retry.

Pool slow-downs make a message WAIT or fail over to the route's next pool; only RETRY
spends the message's attempts. Pure: no I/O, and the time is an argument.
"""

from __future__ import annotations

from dataclasses import dataclass

# COOLDOWN: a pool that fails this many times in a row is set aside; the pause starts at
# SessionSettings.cooldown and doubles with each further failure, up to COOLDOWN_MAX.
COOLDOWN_AFTER = 3
COOLDOWN_MAX = 300.0
# WAIT for an active pool: looked at again after NO_POOL_WAIT seconds, doubling up to
# NO_POOL_WAIT_MAX while the reason stays the same; a change of pools wakes it at once.
NO_POOL_WAIT = 60.0
NO_POOL_WAIT_MAX = 900.0


@dataclass(frozen=True)
class Wait:
    """A message that may not go now, through no fault of its own: it may try again at
    `until`, and no attempt is counted."""

    pool: str  # the pool (or the route's pool or group) it waits for
    # rate | daily: a pool's limit (gateway.delivery.throttle); no_pool: none active for
    # its route; cooldown: a retried message whose pools all cool down.
    reason: str
    until: float
    text: str  # for last_response: "waiting: pool X rate limit 60/min"


class Postponed(Exception):
    """Raised out of an attempt that must WAIT: the message goes back to the queue until
    `wait.until`, no attempt counted (unlike a RETRY)."""

    def __init__(self, wait: Wait) -> None:
        super().__init__(wait.text)
        self.wait = wait


def halved(cap: int) -> int:
    """BACKOFF: the connection cap after a throttling reply (never below one)."""
    return max(1, cap // 2)


def cooldown(failures: int, first: float) -> float | None:
    """COOLDOWN: how long a pool is set aside after `failures` failures in a row (the
    first pause `first` seconds), or None while it is not set aside yet."""
    if failures < COOLDOWN_AFTER:
        return None
    return min(COOLDOWN_MAX, first * 2 ** (failures - COOLDOWN_AFTER))


def no_pool_wait(last_response: str | None, reason: str, last_at: float, now: float) -> float:
    """WAIT for an active pool: NO_POOL_WAIT, or twice the last wait (up to
    NO_POOL_WAIT_MAX) when the message was already waiting for the same `reason` (its
    `last_response`, written at `last_at`)."""
    if last_response != reason:
        return NO_POOL_WAIT
    return min(max(2 * (now - last_at), NO_POOL_WAIT), NO_POOL_WAIT_MAX)
