"""Back-off: an upstream that says "slow down" gets fewer connections for a while.

BACKOFF among the slow-downs of gateway.delivery.slowdown: it narrows a pool, unlike its
COOLDOWN (the pool set aside after failures) or a message's WAIT and RETRY.

A `421` reply or a `4.7.x` enhanced status (RFC 3463: security or policy, the class
providers use for throttling) halves the pool's connection cap, floor 1, for a cool-down,
then the full cap returns. Replies arriving together from sessions already in flight are
one signal, not several (as TCP halves its window once per round trip): a second halving
needs `settle` seconds since the first.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time

from gateway.delivery.slowdown import halved
from gateway.message import DeliveryResult


def is_throttling(result: DeliveryResult) -> bool:
    """A reply that asks us to slow down (not one that refuses the message)."""
    return result.code == 421 or bool(result.enhanced and result.enhanced.startswith("4.7."))


class Slots:
    """A semaphore whose size may change while slots are held (first come, first served).

    Shrinking never interrupts a holder: new takers wait until enough slots come back."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.used = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def take_now(self) -> bool:
        """Take a slot if one is free and nobody waits for one (no await: most takers)."""
        if self.used < self.size and not self._waiters:
            self.used += 1
            return True
        return False

    async def take(self) -> None:
        """Take a slot, waiting for one (first come, first served); `give_back` it."""
        if self.take_now():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # resolved by _hand_over, which counted the slot for us
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give_back()  # handed over just as we were cancelled
            else:
                with contextlib.suppress(ValueError):  # already handed over and skipped
                    self._waiters.remove(waiter)
            raise

    async def __aenter__(self) -> None:
        await self.take()

    async def __aexit__(self, *_exc: object) -> None:
        self.give_back()

    def resize(self, size: int) -> None:
        self.size = size
        self._hand_over()

    def give_back(self) -> None:
        self.used -= 1
        self._hand_over()

    def _hand_over(self) -> None:
        while self._waiters and self.used < self.size:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.used += 1
                waiter.set_result(None)


class Backoff:
    """Halves `slots` on throttling replies; restores `full` after `cooldown` quiet seconds."""

    def __init__(self, slots: Slots, full: int, cooldown: float, settle: float = 2.0) -> None:
        self._slots = slots
        self._full = full
        self._cooldown = cooldown
        self._settle = settle
        self._halved_at = -settle
        self._restore: asyncio.TimerHandle | None = None

    @property
    def active(self) -> bool:
        return self._restore is not None

    def trigger(self) -> bool:
        """A throttling reply: (re)start the cool-down; True when this halved the cap."""
        now = time.monotonic()
        if self._restore is not None:
            self._restore.cancel()
        self._restore = asyncio.get_running_loop().call_later(self._cooldown, self.restore)
        if now - self._halved_at < self._settle:
            return False
        self._halved_at = now
        self._slots.resize(halved(self._slots.size))
        return True

    def restore(self) -> None:
        if self._restore is not None:
            self._restore.cancel()
            self._restore = None
        self._slots.resize(self._full)
